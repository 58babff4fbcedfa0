"""Toy methods and tables for the runner's tests: fast, deterministic, importable as a plugin (also in a subprocess).

Each execution of a toy method touches a file `<cell key>.<pid>.<random>` in `$TOY_EXEC_DIR` (when set), so a test
can count how often each cell ran; `$TOY_SLEEP` (seconds, default 0.01) makes a cell slow.
"""
import os, time, uuid
from pathlib import Path

import numpy as np

from oilwater_jax.experiments import Row, RowConfig, Table, register_table
from oilwater_jax.runner import cell_key, register_method


def _log_execution(cfg, seed):
    folder = os.environ.get("TOY_EXEC_DIR")
    if folder: Path(folder, f"{cell_key(cfg, seed)}.{os.getpid()}.{uuid.uuid4().hex[:8]}").touch()


@register_method("toy")
def run_toy(cfg, seed, stages):
    "Metrics from a seeded RNG, after a shared stage and a nap."
    _log_execution(cfg, seed)
    time.sleep(float(os.environ.get("TOY_SLEEP", "0.01")))
    shared = stages.get("toy_shared", {"data": cfg.row.data}, seed,
                        lambda: {"offset": np.random.default_rng(seed).normal(size=2)})
    rng = np.random.default_rng([seed, round(cfg.row.poison_fraction * 10_000)])
    return {"wga": float(60 + 10 * rng.random() + shared["offset"][0]),
            "asr": float(100 * cfg.row.poison_fraction + rng.random()), "acc": float(90 + rng.random())}


@register_method("toy_fail")
def run_toy_fail(cfg, seed, stages):
    "Fails on seed 1, works otherwise."
    _log_execution(cfg, seed)
    if seed == 1: raise RuntimeError("toy failure on seed 1")
    return {"wga": 1.0, "asr": 2.0, "acc": 3.0}


@register_method("toy_crash")
def run_toy_crash(cfg, seed, stages):
    "Kills its own process on seed 1 (a segmentation fault stand-in), works otherwise."
    _log_execution(cfg, seed)
    if seed == 1: os._exit(139)
    return {"wga": 4.0, "asr": 5.0, "acc": 6.0}


def toy_rows(method: str, n: int) -> tuple:
    return tuple(Row(RowConfig(method, "waterbirds", "dlbd", poison_fraction=round(0.001 * (i + 1), 6)), (f"row {i}",), {})
                 for i in range(n))


def toy_table(table_id: str, method: str, n: int) -> Table:
    return register_table(Table(table_id, f"Toy {table_id}", "A toy table for tests.", "tests", ("Row",),
                                ("wga", "asr", "acc"), toy_rows(method, n)), replace=True)


TOY = toy_table("toy", "toy", 4)
TOY_FAIL = toy_table("toy_fail", "toy_fail", 2)
TOY_SLOW = toy_table("toy_slow", "toy", 12)
TOY_CRASH = toy_table("toy_crash", "toy_crash", 2)
