"""The reproduction engine end to end with toy methods: missing cells only, cache keys, failures, corrupt files, and a
run killed with SIGKILL that resumes without losing or recomputing a finished cell."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest

import oilwater_jax
from oilwater_jax.core import OilwaterError
from oilwater_jax.experiments import Optim, get_preset, make_row
from oilwater_jax.runner import (CorruptResultsFile, cell_key, iter_cell_files, load_results, plan, read_record, reproduce,
                                 to_records)

sys.path.insert(0, str(Path(__file__).parent))
import toy_plugin  # noqa: E402  (registers the toy methods and tables)

REPO = Path(oilwater_jax.__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def execs(tmp_path, monkeypatch):
    "A folder counting executions of toy cells."
    d = tmp_path / "execs"; d.mkdir()
    monkeypatch.setenv("TOY_EXEC_DIR", str(d))
    monkeypatch.delenv("TOY_SLEEP", raising=False)
    return d


def executions(folder: Path) -> dict:
    counts = {}
    for p in folder.iterdir(): counts[p.name.split(".")[0]] = counts.get(p.name.split(".")[0], 0) + 1
    return counts


def run(table, results, seeds, **kw):
    return reproduce([table], "smoke", seeds=seeds, results_dir=results, progress=False, plugins=["toy_plugin"], **kw)


def test_runs_missing_cells_only(tmp_path, execs):
    results = tmp_path / "results"
    r1 = run("toy", results, [0, 1])
    assert (r1.ran, r1.ok, r1.failed) == (8, 8, 0)
    assert sum(executions(execs).values()) == 8 and len(iter_cell_files(results)) == 8
    r2 = run("toy", results, [0, 1])
    assert r2.ran == 0 and sum(executions(execs).values()) == 8
    r3 = run("toy", results, [0, 1, 2])
    assert r3.ran == 4 and {c.seed for c in r3.cells if c.status == "done"} == {0, 1, 2}
    assert max(executions(execs).values()) == 1
    # the shared stage ran once per seed, not once per cell
    assert len(list((results / "stages" / "toy_shared").glob("*.msgpack"))) == 3
    # records carry their provenance
    rec = read_record(iter_cell_files(results)[0])
    assert rec["provenance"]["package_version"] == oilwater_jax.__version__
    assert {"git_revision", "jax_version", "device", "conv_impl", "wall_seconds", "started", "finished"} <= set(rec["provenance"])
    assert rec["config"]["row"]["method"] == "toy" and rec["config"]["preset"] == "smoke"


def test_cache_key_changes_with_config_seed_and_version(tmp_path, execs, monkeypatch):
    row = toy_plugin.TOY.rows[0].config
    cfg = get_preset("smoke")(row)
    assert cell_key(cfg, 0) == cell_key(get_preset("smoke")(row.replace()), 0)
    keys = {cell_key(cfg, 0), cell_key(cfg, 1), cell_key(cfg, 0, version="999"),
            cell_key(get_preset("smoke")(row.replace(poison_fraction=0.005)), 0), cell_key(get_preset("cpu")(row), 0)}
    assert len(keys) == 5
    results = tmp_path / "results"
    run("toy", results, [0])
    monkeypatch.setattr(oilwater_jax, "__version__", "999.0")
    report = run("toy", results, [0], dry_run=True)
    assert [c.status for c in report.cells] == ["missing"] * 4   # a new version recomputes everything


def test_failing_cell_is_recorded_and_the_run_continues(tmp_path, execs):
    results = tmp_path / "results"
    r = run("toy_fail", results, [0, 1, 2])
    assert (r.ran, r.ok, r.failed) == (6, 4, 2)
    failed = [read_record(p) for p in iter_cell_files(results) if read_record(p)["status"] == "failed"]
    assert len(failed) == 2 and all(f["seed"] == 1 for f in failed)
    assert failed[0]["error"]["type"] == "RuntimeError" and "toy failure on seed 1" in failed[0]["error"]["traceback"]
    tidy = [x for x in to_records(load_results(results)) if x["status"] == "failed"]
    assert len(tidy) == 2 and tidy[0]["metric"] is None and "toy failure" in tidy[0]["error"]
    assert run("toy_fail", results, [0, 1, 2], retry_failed=False).ran == 0
    assert run("toy_fail", results, [0, 1, 2]).ran == 2   # failures are retried by default


def test_missing_metric_fails_the_cell(tmp_path, execs, monkeypatch):
    from oilwater_jax.runner import METHODS
    monkeypatch.setitem(METHODS, "toy", lambda cfg, seed, stages: {"wga": 1.0})
    r = run("toy", tmp_path / "results", [0])
    assert r.failed == 4
    assert "returned no 'acc', 'asr'" in read_record(iter_cell_files(tmp_path / "results")[0])["error"]["message"]


def test_corrupt_cell_file_is_detected_and_recomputed(tmp_path, execs):
    results = tmp_path / "results"
    run("toy", results, [0])
    files = iter_cell_files(results)
    truncated, edited = files[0], files[1]
    truncated.write_text(truncated.read_text()[:50])
    rec = json.loads(edited.read_text()); rec["metrics"]["wga"] += 1.0   # a hand-edited number
    edited.write_text(json.dumps(rec))
    with pytest.raises(CorruptResultsFile) as err: load_results(results)
    assert str(truncated) in str(err.value)
    with pytest.raises(CorruptResultsFile, match="checksum mismatch"): read_record(edited)
    report = run("toy", results, [0], dry_run=True)
    assert sorted(c.status for c in report.cells) == ["corrupt", "corrupt", "done", "done"]
    r = run("toy", results, [0])
    assert r.ran == 2 and sorted(executions(execs).values()) == [1, 1, 2, 2]
    assert all(read_record(p)["status"] == "ok" for p in iter_cell_files(results))
    assert load_results(results).num_rows == 4 * 3


def test_dry_run_writes_nothing_and_estimates_from_measurements(tmp_path, execs):
    results = tmp_path / "results"
    report = run("toy", results, [0, 1], dry_run=True)
    assert not results.exists() and len(report.to_run) == 8
    assert report.estimated_seconds == pytest.approx(8 * 10.0)   # the smoke preset's declared 10 s per cell
    run("toy", results, [0])
    refined = run("toy", results, [0, 1], dry_run=True)
    assert len(refined.to_run) == 4 and refined.estimated_seconds < 4 * 5   # measured: far below 10 s per cell
    assert "would run 4 cells" in refined.describe()


def test_user_errors_are_clear(tmp_path):
    with pytest.raises(OilwaterError, match="Did you mean 'table2'"):
        reproduce(["tabel2"], "smoke", results_dir=tmp_path, dry_run=True)
    with pytest.raises(OilwaterError, match="Unknown preset 'fastest'"):
        reproduce(["toy"], "fastest", results_dir=tmp_path, dry_run=True)
    with pytest.raises(OilwaterError, match="poison_fraction must be in"):
        make_row("jtt", "waterbirds", "dlbd", "standard", poison_fraction=1.5)
    with pytest.raises(OilwaterError, match="epochs must be an integer >= 1"):
        Optim(epochs=-2, learning_rate=0.1, weight_decay=0.0)
    with pytest.raises(OilwaterError, match="Cannot import plugin 'no_such_plugin'"):
        reproduce(["toy"], "smoke", results_dir=tmp_path, dry_run=True, plugins=["no_such_plugin"])


def test_kill9_loses_at_most_the_cell_in_progress(tmp_path, execs):
    results = tmp_path / "results"
    n_cells = 12 * 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "TOY_SLEEP": "0.5", "TOY_EXEC_DIR": str(execs), "OILWATER_PLUGINS": "toy_plugin"}
    code = (f"from oilwater_jax.runner import reproduce\n"
            f"reproduce(['toy_slow'], 'smoke', seeds=[0, 1], results_dir={str(results)!r}, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 45
    try:
        while len(iter_cell_files(results)) < 3:
            assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
            assert time.time() < deadline, "the subprocess did not finish 3 cells in time"
            time.sleep(0.05)
        time.sleep(0.25)   # now in the middle of a cell
    finally:
        proc.send_signal(signal.SIGKILL); proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = {p.stem for p in iter_cell_files(results)}
    before = executions(execs)
    assert 3 <= len(finished) < n_cells, "the kill must land mid-run"
    assert sum(before.values()) - len(finished) <= 1   # at most the cell in progress is lost
    assert all(read_record(p)["status"] == "ok" for p in iter_cell_files(results))   # no torn file

    report = run("toy_slow", results, [0, 1])
    assert report.ran == n_cells - len(finished) and report.failed == 0
    after = executions(execs)
    assert all(after[k] == 1 for k in finished)   # no finished cell recomputed
    assert len(iter_cell_files(results)) == n_cells and len(after) == n_cells
    assert sum(after.values()) <= n_cells + 1
    assert all(read_record(p)["status"] == "ok" for p in iter_cell_files(results))


def test_isolated_workers_give_the_same_records_and_contain_crashes(tmp_path, execs):
    "Cells run in worker processes (the CLI's mode) give the in-process numbers; a crashed worker fails only its cell."
    inproc, isolated = tmp_path / "a", tmp_path / "b"
    run("toy", inproc, [0, 1])
    report = run("toy", isolated, [0, 1], isolate=True)
    assert (report.ran, report.ok) == (8, 8)
    metrics = lambda d: sorted((read_record(p)["key"], read_record(p)["metrics"]["wga"]) for p in iter_cell_files(d))
    assert metrics(inproc) == metrics(isolated)
    pids = {p.name.split(".")[1] for p in execs.iterdir()}
    assert str(os.getpid()) in pids and len(pids) >= 2   # in-process cells, then 8 cells in a worker

    crash = tmp_path / "c"
    report = run("toy_crash", crash, [0, 1, 2], isolate=True)
    assert (report.ran, report.ok, report.failed) == (6, 4, 2)
    failed = [read_record(p) for p in iter_cell_files(crash) if read_record(p)["status"] == "failed"]
    assert {r["seed"] for r in failed} == {1} and all("worker process" in r["error"]["message"] for r in failed)
