"""The `oilwater` console script end to end, in subprocesses: help and version, error messages and exit codes, the
`--seeds 0 1 2` syntax, `data show`, `train erm`'s results file, and Ctrl-C."""
import json, math, os, re, signal, subprocess, sys, time
from pathlib import Path

import pytest

import oilwater_jax

REPO = Path(oilwater_jax.__file__).resolve().parent.parent
TOY_PLUGIN = str(REPO / "tests" / "toy_plugin.py")
SCRIPT = Path(sys.executable).parent / "oilwater"
OILWATER = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "oilwater_jax.cli"]


def oilwater(*args, cwd=None, timeout=120, env=None):
    "Run the console script; return the completed process (text output)."
    return subprocess.run([*OILWATER, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def strict_json(path: Path):
    "Parse JSON, rejecting NaN and infinities (not JSON)."
    def bad(c): raise ValueError(f"{path}: non-standard JSON constant {c}")
    return json.loads(path.read_text(), parse_constant=bad)


def test_help_is_fast_and_lists_the_commands():
    t0 = time.perf_counter()
    p = oilwater("--help")
    assert p.returncode == 0, p.stderr
    for name in ("data", "train", "reproduce", "tables", "docs"): assert f"│ {name} " in p.stdout
    assert time.perf_counter() - t0 < 10
    # the module itself does not import JAX (commands import what they need when they run)
    code = "import sys, oilwater_jax.cli; assert 'jax' not in sys.modules, 'jax imported'"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_version_both_entry_points():
    expected = f"oilwater-jax {oilwater_jax.__version__}"
    assert oilwater("--version").stdout.strip() == expected
    p = subprocess.run([sys.executable, "-m", "oilwater_jax.cli", "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == expected


def test_typo_exits_2_without_traceback():
    p = oilwater("train", "erm", "--sampler", "balanced")
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr == ("error: Unknown --sampler 'balanced'. Did you mean 'group_balanced'? "
                        "Choose one of: shuffle, group_balanced.\n")


@pytest.mark.parametrize("args, message", [
    (["train", "erm", "--select-by", "val-wga"], "Did you mean 'val_wga'?"),
    (["train", "erm", "--model", "resnet19"], "Unknown --model 'resnet19'. Did you mean 'resnet18'?"),
    (["data", "show", "synthetic-waterbird"], "Unknown data set 'synthetic-waterbird'. Did you mean 'synthetic-waterbirds'?"),
    (["data", "show", "synthetic-celeba", "--split", "tset"], "Unknown --split 'tset'. Did you mean 'test'?"),
    (["data", "prepare", "waterbirds"], "set OILWATER_DATA (or pass --root) to the data root, a folder holding waterbirds/"),
    (["train", "erm", "--data", "celeba", "--epochs", "1"], "set OILWATER_DATA (or pass --root) to the data root"),
    (["data", "show", "waterbirds", "--root", "/no/such/root"], "--root /no/such/root does not exist"),
    (["data", "show", "synthetic-waterbirds", "--n-cols", "0"], "--n-cols must be at least 1"),
    (["tables", "--results", "/no/such/results"], "--results /no/such/results: no results"),
    (["reproduce", "tabel2", "--dry-run"], "Unknown table 'tabel2'. Did you mean 'table2'?"),
    (["reproduce", "table2", "--preset", "cpuu", "--dry-run"], "Unknown preset 'cpuu'. Did you mean 'cpu'?"),
    (["reproduce", "table2", "--seeds", "0,x", "--dry-run"], "--seeds takes non-negative integers"),
    (["tables", "table2", "--preset", "papr"], "Did you mean 'paper'?"),
])
def test_user_errors_in_process(args, message, capsys, monkeypatch):
    monkeypatch.delenv("OILWATER_DATA", raising=False)
    from oilwater_jax.cli import run_cli
    assert run_cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_ctrl_c_in_a_command_exits_130(monkeypatch, capsys):
    from oilwater_jax import cli
    def interrupted(*args, **kwargs): raise KeyboardInterrupt
    monkeypatch.setattr(cli, "load_data", interrupted)
    assert cli.run_cli(["data", "show", "synthetic-waterbirds"]) == 130
    assert capsys.readouterr().err.strip() == cli.INTERRUPTED


def test_usage_errors_keep_clicks_message():
    p = oilwater("train", "erm", "--no-such-option")
    assert p.returncode == 2
    assert "Usage: oilwater train erm" in p.stderr and re.search(r"No such option:? '?--no-such-option", p.stderr)
    assert "Traceback" not in p.stderr
    p = oilwater("data", "show")
    assert p.returncode == 2 and "Missing argument 'NAME'" in p.stderr


@pytest.mark.parametrize("seeds", [["0", "1", "2"], ["0,1,2"]])
def test_reproduce_dry_run_lists_cells(tmp_path, seeds):
    p = oilwater("reproduce", "toy", "--preset", "smoke", "--seeds", *seeds, "--dry-run", "--results", tmp_path,
                 "--plugin", TOY_PLUGIN)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("12 cells (12 missing) under preset 'smoke'; would run 12 cells")
    for s in range(3): assert sum(f" seed {s} " in l for l in lines) == 4
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_reproduce_runs_and_tables_render(tmp_path, capsys):
    p = oilwater("reproduce", "toy", "--preset", "smoke", "--seeds", "0", "1", "--results", tmp_path / "results",
                 "--plugin", TOY_PLUGIN, "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "ran 8 (8 ok, 0 failed)" in p.stdout and "| row 0 |" in p.stdout
    from oilwater_jax.cli import run_cli  # in process, to keep the test short
    assert run_cli(["tables", "toy", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "tables"),
                    "--plugin", TOY_PLUGIN]) == 0
    assert (tmp_path / "tables" / "toy_smoke.md").exists() and (tmp_path / "tables" / "toy_smoke.html").exists()


def test_reproduce_interrupted_exits_130(tmp_path):
    env = {"TOY_SLEEP": "2"}
    proc = subprocess.Popen([*OILWATER, "reproduce", "toy_slow", "--preset", "smoke", "--seeds", "0", "--results",
                             str(tmp_path), "--plugin", TOY_PLUGIN, "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    assert proc.stdout.readline().startswith("12 cells")  # the plan is printed before the first cell starts
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Interrupted" in err and "Traceback" not in err


def test_data_show_writes_a_png(tmp_path):
    p = oilwater("data", "show", "synthetic-waterbirds", "--scale", "0.02", "--size", "16", "--n-cols", "3",
                 "--out", tmp_path / "grid.png")
    assert p.returncode == 0, p.stderr
    assert "236 images of 16x16x3" in p.stdout and "waterbird/land" in p.stdout
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_list():
    p = oilwater("data", "list")
    assert p.returncode == 0, p.stderr
    names = [l.split()[0] for l in p.stdout.splitlines()[1:]]
    assert names == ["synthetic-waterbirds", "synthetic-celeba", "waterbirds", "celeba"]


def test_train_erm_results_file_in_process(tmp_path, monkeypatch, capsys):
    "The results file's fields, with `fit` replaced by a stub (the real run is the slow test below)."
    import numpy as np
    from oilwater_jax import cli, train
    from oilwater_jax.metrics import group_metrics

    def fake_fit(cfg, data, key, progress=True):
        test = data.split("test")
        m = group_metrics(np.zeros(len(test), int), test.labels, test.group_ids, test.n_groups)
        val = data.split("val")
        v = group_metrics(np.zeros(len(val), int), val.labels, val.group_ids, val.n_groups)
        return train.FitResult(state=None, best_epoch=cfg.epochs, val=v, test=m,
                               history=[{"epoch": 1, "train_loss": float("nan")}], seconds=0.1)
    monkeypatch.setattr(train, "fit", fake_fit)
    status = cli.run_cli(["train", "erm", "--scale", "0.02", "--size", "16", "--epochs", "3", "--lr", "0.05",
                          "--sampler", "group_balanced", "--seed", "7", "--out", str(tmp_path / "r.json")])
    assert status == 0
    rec = strict_json(tmp_path / "r.json")
    assert rec["seed"] == 7 and rec["best_epoch"] == 3
    assert rec["config"] == {**train.TrainConfig().__dict__, "epochs": 3, "learning_rate": 0.05, "sampler": "group_balanced",
                             "lr_drops": []}  # JSON has no tuples
    assert rec["history"][0]["train_loss"] is None  # NaN written as null
    assert rec["package_version"] == oilwater_jax.__version__ and rec["wall_seconds"] > 0
    assert rec["data"]["group_counts"]["test"] == [45, 45, 13, 13] and rec["data"]["image_size"] == 16
    test = rec["metrics"]["test"]
    assert [g["n"] for g in test["groups"]] == [45, 45, 13, 13] and test["wga"] == 0.0
    assert math.isclose(test["acc"], 90 / 116)
    out = capsys.readouterr().out
    assert "landbird/water" in out and "WGA 0.0%" in out


@pytest.mark.slow
def test_train_erm_writes_results(tmp_path):
    p = oilwater("train", "erm", "--data", "synthetic-waterbirds", "--scale", "0.02", "--epochs", "1",
                 "--no-progress", "--out", tmp_path / "results.json", cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    rec = strict_json(tmp_path / "results.json")
    for k in ("config", "seed", "metrics", "package_version", "wall_seconds", "provenance", "history", "data"):
        assert k in rec, k
    assert set(rec["metrics"]) == {"val", "test"} and rec["config"]["epochs"] == 1
    assert 0 <= rec["metrics"]["test"]["wga"] <= rec["metrics"]["test"]["acc"] <= 1
    table = p.stdout.splitlines()
    assert table[0].startswith("synthetic-waterbirds, test split (epoch 1 of 1")
    assert [l.split()[0] for l in table[2:6]] == ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
    assert table[6].startswith("  ACC ") and "WGA" in table[6]


def _one_line_error(p, *parts):
    "The process failed with status 2 and one `error:` line on stderr that contains every part (no traceback)."
    assert p.returncode == 2, (p.stdout, p.stderr)
    err = p.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for part in parts: assert part in err, (part, err)


def test_data_show_out_is_a_folder(tmp_path):
    from oilwater_jax.cli import run_cli
    p = oilwater("data", "show", "synthetic-waterbirds", "--scale", "0.02", "--out", tmp_path)
    _one_line_error(p, f"--out {tmp_path} is a folder")


def test_latin1_metadata_names_file_and_line(tmp_path):
    from oilwater_jax.real_data import write_fixture_waterbirds
    folder = write_fixture_waterbirds(tmp_path / "root" / "waterbirds", n_per_group_split=1)
    meta = folder / "metadata.csv"
    lines = meta.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b".jpg", b"\xe9.jpg", 1)  # one latin-1 "é" in a file name, as a spreadsheet export writes it
    meta.write_bytes(b"\n".join(lines))
    p = oilwater("data", "prepare", "waterbirds", "--root", tmp_path / "root", "--size", "16",
                 env={"OILWATER_CACHE": str(tmp_path / "cache")})
    _one_line_error(p, f"{meta} line 4: byte 0xe9", "not UTF-8", "iconv")


def test_root_convention_is_shared_with_the_environment(tmp_path):
    from oilwater_jax.real_data import write_fixture_waterbirds
    write_fixture_waterbirds(tmp_path / "root" / "waterbirds", n_per_group_split=1)
    env = {"OILWATER_CACHE": str(tmp_path / "cache"), "OILWATER_DATA": str(tmp_path / "root")}
    p = oilwater("data", "prepare", "waterbirds", "--size", "16", env=env)          # $OILWATER_DATA
    assert p.returncode == 0 and "12 images of 16x16x3 ready" in p.stdout, p.stderr
    p = oilwater("data", "prepare", "waterbirds", "--size", "16", "--root", tmp_path / "root",
                 env={**env, "OILWATER_DATA": str(tmp_path / "elsewhere")})        # --root overrides it
    assert p.returncode == 0 and "already cached" in p.stdout, p.stderr
    p = oilwater("data", "prepare", "waterbirds", "--root", tmp_path / "root" / "waterbirds", env=env)
    _one_line_error(p, "is the waterbirds folder itself", "ln -s")


def test_paper_preset_checks_every_input_before_running(tmp_path):
    env = {"OILWATER_DATA": str(tmp_path / "data"), "OILWATER_WEIGHTS": str(tmp_path / "weights")}
    (tmp_path / "data").mkdir(); (tmp_path / "weights").mkdir()
    p = oilwater("reproduce", "table1", "--preset", "paper", "--results", tmp_path / "results", "--no-progress", env=env)
    assert p.returncode == 2, (p.stdout, p.stderr)
    err = p.stderr
    assert err.startswith("error: Nothing was run") and "Traceback" not in err, err
    items = [l for l in err.splitlines() if l.startswith("  - ")]
    assert [l.split(" (")[0] for l in items] == ["  - waterbirds data", "  - pretrained resnet18 weights", "  - celeba data"], err
    assert str(tmp_path / "data") in items[0] and str(tmp_path / "weights") in items[1]
    assert not (tmp_path / "results" / "cells").exists()
