"""The main job on the smoke preset: `oilwater reproduce --preset smoke` runs the package's tables to the end, each
cell finishes "ok", and the rendered tables show our numbers beside the paper's: every method of the paper is
registered, so no row may say "not implemented". This is the CI check that every registered method works end to end
on real (tiny) data.

To keep CI under its time limit, the CI test covers every *method and attack* once rather than every table: it leaves
out the hyperparameter sweeps of Tables 4–6 (JTT cells of Table 2 with other identification epochs, upsampling
factors and poison fractions) and Tables 3 and 10 (the `epic` cells of Figure 1 under the ideal and worst cases and
other poison fractions, whose code paths `nbs/30_epic.ipynb` tests on a toy set). The `slow` test runs every table."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oilwater_jax.experiments import ALL_TABLE_IDS, TABLES
from oilwater_jax.runner import load_methods

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ("table3", "table4", "table5", "table6", "table10")   # see the module docstring
SMOKE_TABLES = tuple(t for t in ALL_TABLE_IDS if t not in SWEEPS)
FED_METHODS = ("fedavg", "fed_median", "fed_trimmed_mean", "sparsefed")


def _oilwater(*args, timeout=1500):
    cmd = [sys.executable, "-m", "oilwater_jax.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _reproduce_and_check(tables, tmp_path):
    "Run `tables` on the smoke preset and check every cell, the rendered tables and the page; returns the records."
    results = tmp_path / "results"
    run = _oilwater("reproduce", *tables, "--preset", "smoke", "--results", str(results), "--no-progress")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    first = run.stdout.splitlines()[0]
    assert "under preset 'smoke'" in first and "estimated" in first   # the time estimate comes first
    methods = load_methods()
    implemented = {r.config for t in tables for r in TABLES[t].rows if r.config.method in methods}
    assert implemented == {r.config for t in tables for r in TABLES[t].rows}, "every method of the paper is registered"
    records = [json.loads(p.read_text()) for p in (results / "cells" / "smoke").glob("*/*.json")]
    assert len(records) == len(implemented), (len(records), len(implemented))
    failed = [(r["config"]["row"], r["error"]["message"]) for r in records if r["status"] != "ok"]
    assert not failed, failed[:3]
    for r in records:   # every finished cell has its table metrics as numbers (or None where undefined)
        assert "wga" in r["metrics"] or "idnf_poisons" in r["metrics"], r["metrics"].keys()
    out = run.stdout
    assert "not implemented" not in out
    assert all(f"## {TABLES[t].title} (smoke)" in out for t in tables)

    page_dir = tmp_path / "tables"
    rendered = _oilwater("tables", "--results", str(results), "--out", str(page_dir), "--preset", "smoke")
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    page = (page_dir / "tables.md").read_text()
    assert all(f"## {TABLES[t].title}" in page for t in ALL_TABLE_IDS)
    return records


@pytest.mark.timeout(1800)
def test_reproduce_smoke_runs_every_method(tmp_path):
    records = _reproduce_and_check(SMOKE_TABLES, tmp_path)
    methods_run = {r["config"]["row"]["method"] for r in records}
    assert methods_run >= {"erm", "erm_balanced", "group_dro", "jtt", "george", "epic", "epic_jtt", "strip", *FED_METHODS}
    attacks_run = {r["config"]["row"]["attack"] for r in records}
    assert attacks_run >= {"none", "dlbd", "sa", "gm"}, attacks_run
    fed = [r for r in records if r["config"]["row"]["method"] in FED_METHODS]
    assert len(fed) == len(TABLES["table9"].rows) + len(TABLES["fed_attack"].rows), len(fed)
    epic = [r for r in records if r["config"]["row"]["method"] == "epic"]
    assert len(epic) == 4 and all(len(r["metrics"]["elmf_hrg"]) == 2 for r in epic)   # 2 elimination rounds each


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_reproduce_smoke_runs_every_table(tmp_path):
    _reproduce_and_check(ALL_TABLE_IDS, tmp_path)


def test_every_method_is_found_by_a_fresh_runner():
    "`load_methods` in a fresh process (as the CLI does) registers every method the tables name."
    code = ("from oilwater_jax.runner import load_methods; from oilwater_jax.experiments import METHOD_NAMES; "
            "print(sorted(set(METHOD_NAMES) - set(load_methods())))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout
