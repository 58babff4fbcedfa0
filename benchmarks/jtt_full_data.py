"""JTT without an attack on the full embedded default data set (synthetic Waterbirds, 4,795 training images at 32 px,
the default CPU model from scratch), against ERM on the same data (`erm_baseline.py`): does JTT raise worst-group
accuracy when it has more than the cpu preset's 14 images of the smallest group to upsample?

    python benchmarks/jtt_full_data.py --seeds 0 1 2 --out benchmarks/results/jtt_default.json

Settings are the cpu preset's JTT stages unchanged (identification: 6 epochs, SGD lr 1e-3, wd 5e-3; final: 10 epochs,
lr 1e-2, wd 1e-3, λ = 100 with the reference's 1 + λ copies, selection by validation WGA; batch 64).
"""
from __future__ import annotations
import argparse, json, time
import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--factor", type=int, default=100, help="upsampling factor λ")
    p.add_argument("--out", default="benchmarks/results/jtt_default.json")
    args = p.parse_args(argv)
    from oilwater_jax.core import atomic_write_json
    from oilwater_jax.data import load_dataset
    from oilwater_jax.pipeline import stage_key
    from oilwater_jax.train import TrainConfig
    from oilwater_jax.jtt import jtt_identify, jtt_final
    data = load_dataset("synthetic-waterbirds")
    train = data.split("train")
    ident = TrainConfig(epochs=6, batch_size=64, learning_rate=1e-3, weight_decay=5e-3)
    final = TrainConfig(epochs=10, batch_size=64, learning_rate=1e-2, weight_decay=1e-3, select_by="val_wga")
    runs = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        flagged, _ = jtt_identify(ident, data, stage_key(seed, "identification"))
        r = jtt_final(final, data, flagged, args.factor, stage_key(seed, "final"))
        counts = np.bincount(train.group_ids, minlength=4)
        run = {"seed": seed, "n_flagged": int(flagged.sum()),
               "flagged_by_group": np.bincount(train.group_ids[flagged], minlength=4).tolist(), "train_counts": counts.tolist(),
               "acc": 100 * r.test.acc, "adjusted_acc": 100 * r.test.adjusted_acc, "wga": 100 * r.test.wga,
               "group_acc": [round(100 * float(a), 1) for a in r.test.group_acc], "best_epoch": r.best_epoch,
               "seconds": time.perf_counter() - t0}
        runs.append(run)
        print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in run.items()}), flush=True)
    summary = {m: (float(np.mean([r[m] for r in runs])), float(np.std([r[m] for r in runs], ddof=1) if len(runs) > 1 else 0.0))
               for m in ("acc", "adjusted_acc", "wga")}
    print({m: f"{a:.1f} ± {s:.1f}" for m, (a, s) in summary.items()})
    atomic_write_json(args.out, {"runs": runs, "summary": summary, "factor": args.factor})


if __name__ == "__main__":
    main()
