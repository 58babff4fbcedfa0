"""ERM under each of the paper's attacks, through the reproduction engine's adapter (`oilwater_jax.attack_runs`).

For every attack row below, `erm_attack_cell(cpu_preset(row), seed, stages)` runs for seeds 0, 1, 2: the embedded
synthetic Waterbirds at 32 px, the cpu preset's 1,200 training images and ERM optimiser (15 epochs, SGD lr 0.01,
momentum 0.9, batch 64, weight decay 5e-4, selection by validation WGA), the default CPU model from scratch. Gradient
matching is crafted with the cpu preset's settings (2 restarts of 100 signed-Adam steps, eps 16/255, on a 10-epoch
clean model). The `clean` section is ERM without poisons (same seed, same optimiser: SA's reference model) and the
ASR that this clean model scores on each attack's own inputs (DLBD's triggered test set, GM's targets): the floor that
an attack's ASR must be read against.

    python benchmarks/attack_baselines.py                          # writes benchmarks/results/attacks_cpu.json
    python benchmarks/attack_baselines.py --sections clean --merge # recompute one section, keep the others
    python benchmarks/attack_baselines.py --seeds 0 --sections dlbd_1 --out /tmp/a.json

Shared stages (GM's crafted poisons, the clean model) are cached on disk (`--stage-cache`), so reruns reuse them.

Results are written after every cell, so an interrupted run keeps what it finished. Means and standard deviations
(sample std, ddof = 1) are over seeds, in percent.
"""
from __future__ import annotations
import argparse, json, os, platform, statistics, sys, time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve()

ATTACK_ROWS = {  # label -> make_row keyword arguments (all ERM on Waterbirds)
    "dlbd_1": dict(attack="dlbd", poison_fraction=0.01),
    "dlbd_2": dict(attack="dlbd", poison_fraction=0.02),
    "sa_2": dict(attack="sa"),
    "gm_5": dict(attack="gm", n_targets=5),
}
PAPER_IDEAL = {  # Table 2, JTT on Waterbirds, "ideal" case (poisons never amplified: the closest to plain ERM)
    "dlbd_1": "ASR 0.5 ± 0.3%, WGA 81.4 ± 0.9%, ACC 91.0 ± 0.4%",
    "dlbd_2": "ASR 0.6 ± 0.3%, WGA 82.5 ± 1.6%, ACC 91.1 ± 0.2% (Table 6, 2%)",
    "sa_2": "ASR 0.8 ± 1.3%, WGA 82.3 ± 1.5%, ACC 90.8 ± 0.3%",
    "gm_5": "ASR 13.3 ± 11.5%, WGA 75.9 ± 0.8%, ACC 91.3 ± 0.1%",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sections", nargs="+", default=list(ATTACK_ROWS) + ["clean"], choices=list(ATTACK_ROWS) + ["clean"])
    p.add_argument("--merge", action="store_true", help="update the sections in an existing --out file, keep the others")
    p.add_argument("--stage-cache", default=None, help="folder of the on-disk stage cache (default: the package cache)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--out", default=str(HERE.parent / "results" / "attacks_cpu.json"))
    return p.parse_args(argv)


def summarise(per_seed: list[dict]) -> tuple[dict, dict]:
    keys = sorted({k for r in per_seed for k in r})
    mean = {k: statistics.fmean(r[k] for r in per_seed if k in r) for k in keys}
    std = {k: (statistics.stdev([r[k] for r in per_seed if k in r]) if sum(k in r for r in per_seed) > 1 else 0.0) for k in keys}
    return mean, std


def main(argv=None):
    args = parse_args(argv)
    from oilwater_jax.core import cache_dir
    from oilwater_jax.experiments import make_row, get_preset
    from oilwater_jax.runner import StageCache, provenance
    from oilwater_jax.pipeline import run_data
    from oilwater_jax.poisons import poison_count
    from oilwater_jax.train import evaluate
    from oilwater_jax.attack_runs import erm_attack_cell, clean_reference, clean_model_asr
    preset = get_preset(args.preset)
    stages = StageCache(args.stage_cache or cache_dir("attack_baselines_stages"), memory_items=64)
    path = Path(args.out)
    out = json.loads(path.read_text()) if args.merge and path.exists() else {"configs": {}, "results": {}}
    runs = out.pop("runs", []) + ([out.pop("info")] if "info" in out else [])   # earlier runs merged into this file
    info = {**provenance(), "preset": args.preset, "seeds": args.seeds, "cpu_count": os.cpu_count(),
            "load_average_start": os.getloadavg(), "sections_run": args.sections}
    out["runs"] = runs + [info]
    out["notes"] = {**out.get("notes", {}), "std": "sample standard deviation over seeds (ddof=1)", "units": "percent",
                    "acc": "test accuracy by the data set's convention (Waterbirds: adjusted to training group proportions); plain_acc: plain",
                    "seconds": "wall time of the cell on a 2-core machine shared with other jobs"}
    out["paper_table2_ideal"] = PAPER_IDEAL
    cfgs = {label: preset(make_row("erm", "waterbirds", **kw)) for label, kw in ATTACK_ROWS.items()}
    data = run_data(cfgs["dlbd_1"])        # the clean data is the same for every row (ERM, Waterbirds, this preset)
    t_all = time.perf_counter()

    def save(label, per_seed):
        mean, std = summarise(per_seed)
        out["results"][label] = {"per_seed": per_seed, "mean": mean, "std": std}
        info.update(total_s=round(time.perf_counter() - t_all, 1), load_average_end=os.getloadavg())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")

    for label in args.sections:
        per_seed = []
        if label != "clean":
            cfg = cfgs[label]
            out["configs"][label] = {"row": cfg.row.name, "n_train": cfg.n_train, "image_size": cfg.image_size, "model": cfg.model,
                                     "train": cfg.stages["train"].__dict__, "attack": repr(cfg.attack),
                                     "n_poisons": poison_count(cfg.row.poison_fraction, len(data.split("train")))}
        for seed in args.seeds:
            t0 = time.perf_counter()
            if label == "clean":
                state = clean_reference(cfgs["sa_2"], data, seed, stages)
                cm = evaluate(state, data.split("test"), data.split("train").group_counts())
                m = {"wga": 100 * cm.wga, "acc": 100 * cm.adjusted_acc, "plain_acc": 100 * cm.acc}
                m.update({f"asr_{a}": clean_model_asr(cfgs[a], data, seed, state) for a in ("dlbd_1", "dlbd_2", "gm_5")})
            else:
                m = erm_attack_cell(cfgs[label], seed, stages)
            m["seconds"] = time.perf_counter() - t0
            per_seed.append(m)
            print(f"{label} seed {seed}: " + ", ".join(f"{k} {v:.1f}" for k, v in m.items()), flush=True)
            save(label, per_seed)
    cols = ["asr", "asr_conditional", "collateral", "wga", "acc", "plain_acc", "asr_dlbd_1", "asr_dlbd_2", "asr_gm_5", "seconds"]
    print("| attack | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for label, r in out["results"].items():
        cells = [f"{r['mean'][c]:.1f} ± {r['std'][c]:.1f}" if r["mean"].get(c) is not None else "" for c in cols]
        print(f"| {label} | " + " | ".join(cells) + " |")
    return out


if __name__ == "__main__":
    main()
