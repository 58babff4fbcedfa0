"""ERM vs group-balanced ERM on the full embedded default data set (synthetic Waterbirds, 4,795 training images at
32 px, the default CPU model from scratch), several seeds: the check that the default data has Waterbirds' ERM gap.

    python benchmarks/erm_baseline.py --seeds 0 1 2 --out benchmarks/results/erm_default.json

Settings are the cpu preset's ERM optimiser (15 epochs, SGD lr 1e-2, momentum 0.9, wd 5e-4, batch 64), model
selection by validation WGA. Prints per-run numbers and mean ± std; writes them as JSON.
"""
from __future__ import annotations
import argparse, json, time
import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--out", default="benchmarks/results/erm_default.json")
    args = p.parse_args(argv)
    from oilwater_jax.core import atomic_write_json
    from oilwater_jax.data import load_dataset, WaterbirdsLikeConfig
    from oilwater_jax.pipeline import stage_key
    from oilwater_jax.train import TrainConfig, fit
    data = load_dataset("synthetic-waterbirds")
    runs = []
    for sampler in ("shuffle", "group_balanced"):
        for seed in args.seeds:
            t0 = time.perf_counter()
            cfg = TrainConfig(epochs=args.epochs, batch_size=64, learning_rate=1e-2, weight_decay=5e-4, sampler=sampler)
            r = fit(cfg, data, stage_key(seed, "train"), progress=False)
            run = {"sampler": sampler, "seed": seed, "acc": 100 * r.test.acc, "adjusted_acc": 100 * r.test.adjusted_acc,
                   "wga": 100 * r.test.wga, "group_acc": [100 * float(a) for a in r.test.group_acc],
                   "best_epoch": r.best_epoch, "seconds": time.perf_counter() - t0}
            runs.append(run)
            print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in run.items() if k != "group_acc"}), flush=True)
    summary = {}
    for sampler in ("shuffle", "group_balanced"):
        rs = [r for r in runs if r["sampler"] == sampler]
        summary[sampler] = {m: (float(np.mean([r[m] for r in rs])), float(np.std([r[m] for r in rs], ddof=1) if len(rs) > 1 else 0.0))
                            for m in ("acc", "adjusted_acc", "wga")}
        print(sampler, "  ".join(f"{m} {mu:.1f} ± {sd:.1f}" for m, (mu, sd) in summary[sampler].items()))
    atomic_write_json(args.out, {"data": "synthetic-waterbirds (defaults)", "config": WaterbirdsLikeConfig().__dict__,
                                 "epochs": args.epochs, "runs": runs, "summary": summary})


if __name__ == "__main__":
    main()
