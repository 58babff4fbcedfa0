"""The README's benchmark tables, generated from the results files of `bench_train.py`, `bench_attacks.py`,
`bench_epic.py`, `bench_federated.py`, `profile_layers.py` and `conv_kernels.py`.

    python benchmarks/report.py                                   # print the Markdown
    python benchmarks/report.py --index nbs/index.ipynb           # replace the block between the markers in the
    oilwater readme                                               # landing notebook, then regenerate README.md

The block in `nbs/index.ipynb` lies between `<!-- bench:start -->` and `<!-- bench:end -->`; nothing else is touched.
"""
from __future__ import annotations
import argparse, json, os, sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
NAMES = {"torch": "eager", "torch_channels_last": "channels_last", "torch_compile": "compile",
         "torch_channels_last_compile": "channels_last + compile"}


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def load_note(info: dict, script: str) -> str:
    "How loaded the machine was: a quiet run's absolute rates stand; under load only the ratios within a row do."
    starts = [x for x in (info.get("load_average_start"), info.get("load_average_end")) if x]
    la = max((x[0] if isinstance(x, list) else x) for x in starts) if starts else None
    cpus = info.get("cpu_count") or info.get("cpus") or 1
    if la is not None and la <= cpus + 0.5:   # the benchmark itself keeps the cores busy
        return f"Measured with nothing else running (load average at most {la:.1f} on {cpus} cores, the benchmark's own)."
    return (f"**Measured on a shared machine under load** (load average up to {la:.1f} on {cpus} cores): the ratios in a "
            f"row are comparable, the absolute rates are not; re-measure on a quiet machine with `python benchmarks/{script}`.")


IMPL_NAMES = {"hybrid": "hybrid", "onednn": "oneDNN", "lax": "lax", "hybrid_all": "hybrid, all paths"}


def _impl_label(info: dict) -> str:
    "' with conv_impl=onednn' when a results file was measured with the oneDNN lowering, else ''."
    if info.get("conv_impl", "hybrid") == "hybrid": return ""
    same = (" (PyTorch in the same process, whose bundled OpenMP runtime then serves oneDNN too, which slows ours: see "
            "the notebook `onednn`)") if info.get("conv_impl") == "onednn" and info.get("torch") else ""
    return f", ours with `conv_impl={info['conv_impl']}`{same}"


def _ratio(row: dict, impl: str, versus: str) -> float:
    "`impl`'s rate over PyTorch's (`versus`: 'torch' or 'best'): in a multi-run file the median of the runs' ratios."
    if row.get("runs", 1) > 1: return row[f"{impl}/{versus}"]
    return row[impl] / row[row["torch_best"] if versus == "best" else versus]


def _range(row: dict, impl: str) -> str:
    "' (runs a-b)': the range of `impl`'s ratio to PyTorch's best over the runs of a multi-run file."
    rng = row.get("ratio_range", {}).get(f"{impl}/best")
    return f" ({rng[0]:.2f}-{rng[1]:.2f})" if rng and row.get("runs", 1) > 1 else ""


def train_table(path: Path, impls: tuple[str, ...] = ("hybrid", "onednn")) -> str:
    "Markdown: one row per (model, px, work) with each JAX lowering in the file, every PyTorch configuration, and ratios."
    res = json.loads(path.read_text())
    info, rows = res["info"], res["rows"]
    tkeys = [k for k in NAMES if any(k in r for r in rows)]
    impls = [i for i in impls if all(i in r for r in rows)]
    one = len(impls) == 1
    ours = lambda i: "ours" if one else f"{IMPL_NAMES[i]}"
    head = ["model", "px", "work", *[f"ours ({IMPL_NAMES[i]})" for i in impls], *[f"PyTorch {NAMES[k]}" for k in tkeys],
            *[f"{ours(i)} / eager" for i in impls], *[f"**{ours(i)} / best**" for i in impls]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["model"], str(r["px"]), r["work"], *[_fmt(r[i]) for i in impls],
                                          *[_fmt(r[k]) for k in tkeys],
                                          *[f"{_ratio(r, i, 'torch'):.2f}x" if "torch" in r else "" for i in impls],
                                          *[f"**{_ratio(r, i, 'best'):.2f}x**" + _range(r, i) for i in impls]]) + " |")
    la, lb = info["load_average_start"][0], info["load_average_end"][0]
    comp = [f"{r['work']} {r['compile_s'][k]:.0f} s" for r in rows for k in r.get("compile_s", {}) if k.endswith("compile")]
    cap = (f"Samples/s, batch {info['batch']}, {info['dtype']}, {info['backend']} ({info['cpu_count']} cores), jax "
           f"{info['jax']}, torch {info.get('torch', '-')} with {info.get('torch_threads', '-')} threads; medians of "
           f"{info.get('rounds', 1)} interleaved rounds" + (f", medians of {len(res['runs'])} runs (separate processes; the range of "
           f"the ratio to the best in brackets)" if res.get("runs") else "") + (", PyTorch in its own process" if info.get("torch_process") else "") +
           f"; load average {la:.1f} -> {lb:.1f} "
           f"(`{path.relative_to(HERE.parent).as_posix()}`)" + (f"; torch.compile took {', '.join(comp)} to compile" if comp else "") +
           ". " + load_note(info, "bench_train.py"))
    return "\n".join(lines) + "\n\n" + cap + "\n"


def profile_summary(path: Path) -> str:
    "One sentence: the convolutions' share and the layers where JAX is slowest against PyTorch's best."
    res = json.loads(path.read_text())
    tot, info = res["total_ms"], res["info"]
    best_t = min(tot["torch"], tot["torch_channels_last"])
    worst = sorted(res["rows"], key=lambda r: r["hybrid_over_best_torch"])[:3]
    w = "; ".join(f"{r['c_in']}->{r['c_out']} {r['k']}x{r['k']}/{r['stride']} at {r['hw']} px: {r['hybrid_over_best_torch']:.2f}x"
                  for r in worst)
    onednn = (f"; with `conv_impl=onednn` they take {tot['onednn']:.0f} ms ({best_t / tot['onednn']:.2f}x)"
              if "onednn" in tot else "")
    return (f"Per-layer profile ({info['model']} at {info['px']} px, `{path.relative_to(HERE.parent).as_posix()}`): "
            f"the convolutions (forward and both gradients) take {tot['hybrid']:.0f} ms per step in ours (hybrid) against "
            f"{best_t:.0f} ms in PyTorch's best format ({best_t / tot['hybrid']:.2f}x){onednn}; the slowest hybrid layers against "
            f"PyTorch: {w}. The stem's row (3->64 7x7/2) includes an input gradient that a training step never computes. "
            + load_note({"load_average_start": info.get("load_average"), "cpu_count": info.get("cpu_count")}, "profile_layers.py") + "\n")


def attacks_summary(path: Path) -> str:
    "One sentence from `bench_attacks.py` runs: median speedup against PyTorch's faster memory format (and range)."
    res = json.loads(path.read_text())
    n = len(res["runs"])
    bits = [f"{r['work']}: **{r['speedup_median']:.2f}x**" + (f" (runs {r['speedup_min']:.2f}-{r['speedup_max']:.2f})" if n > 1 else "")
            for r in res["summary"]]
    info = res["runs"][-1]["info"]
    return (f"Attack work ({info['model']} at {info['px']} px{_impl_label(info)}, {n} run{'s' if n > 1 else ''}, against the faster of PyTorch's "
            f"contiguous and channels_last formats, `torch.func` for per-example gradients, "
            f"`{path.relative_to(HERE.parent).as_posix()}`): " + "; ".join(bits) + ". " + load_note(info, "bench_attacks.py") + "\n")


def epic_summary(path: Path) -> str:
    "Per-example gradients against `torch.func`, and one EPIC selection round by training-set size (lazy and dense greedy)."
    res = json.loads(path.read_text())
    g = "; ".join(f"{r['model']} at {r['px']} px {r['jax_per_s']:.1f}/s against {r['torch_per_s']:.1f}/s "
                  f"(**{r['speedup']:.2f}x**)" for r in res.get("grads", []))
    dense = {r["n"]: r for r in res.get("select_dense", []) if r.get("seconds")}
    rounds = []
    for r in res.get("select", []):
        d = dense.get(r["n"])
        rounds.append(f"{r['n']:,}: {r['seconds']:.2f} s" + (f" (dense greedy {d['seconds']:.2f} s)" if d else ""))
    select = (f" One EPIC selection round (logit proxies of the default CPU model and the per-class greedy, subset 10%) "
              f"by training-set size: " + "; ".join(rounds) + ".") if rounds else ""
    return (f"Per-example gradients, all parameters{_impl_label(res['info'])} (`{path.relative_to(HERE.parent).as_posix()}`): "
            f"{g}.{select} " + load_note(res["info"], "bench_epic.py") + "\n")


def federated_summary(path: Path) -> str:
    "A federated round against PyTorch's client loop, and the aggregators against numpy and PyTorch."
    res = json.loads(path.read_text())
    rounds = {r["impl"]: r for r in res["rows"] if r["case"] == "round"}
    out = []
    if rounds:
        r = next(iter(rounds.values()))
        t = rounds.get("torch_eager_loop", {}).get("median_s")
        names = {"jax_vmapped": "vmapped JAX", "jax_loop": "JAX client loop", "torch_eager_loop": "PyTorch eager client loop"}
        out.append(f"one federated round ({r['clients']} clients × {r['local_epochs']} local epochs, {r['samples']:,} samples, "
                   f"batch {r['batch']}): " + ", ".join(f"{names.get(k, k)} {v['median_s']:.2f} s" +
                                                         (f" (**{t / v['median_s']:.2f}x**)" if t and k != "torch_eager_loop" else "")
                                                         for k, v in rounds.items()))
    ops = {}
    for r in res["rows"]:
        if r["case"] == "aggregator": ops.setdefault(r["op"], []).append(r)
    for op, rows in ops.items():
        rows = sorted(rows, key=lambda r: r["median_s"])
        out.append(f"{op.replace('_', ' ')} over {rows[0]['clients']} × {rows[0]['params']:,}: " +
                   ", ".join(f"{r['impl']} {r['median_s']:.3g} s" + (f" (recall {r['recall']:.2f})" if "recall" in r else "") for r in rows))
    return (f"Federated work (`{path.relative_to(HERE.parent).as_posix()}`): " + "; ".join(out) + ". " +
            load_note({"load_average_start": res["rows"][0].get("load_start"), "load_average_end": res["rows"][-1].get("load_end"),
                       "cpus": res["info"].get("cpus")}, "bench_federated.py") + "\n")


def kernels_summary(path: Path) -> str:
    "One sentence: GFLOP/s of XLA's convolution, its matmul, im2col and Winograd against PyTorch's, per shape."
    res = json.loads(path.read_text())
    g = lambda r, k: f"{r[k + '_gflops']:.0f}"
    shapes = "; ".join(f"{r['c']}->{r['c']} at {r['hw']} px: XLA conv {g(r, 'xla_conv')}, XLA matmul {g(r, 'xla_matmul_only')}, "
                       f"im2col {g(r, 'im2col_matmul')}, Winograd {g(r, 'winograd_f2x3')}, PyTorch conv "
                       f"{g(r, 'torch_channels_last_conv')}, torch.mm {g(r, 'torch_mm_only')}" for r in res["rows"])
    return (f"What limits ResNet-18 at 64 px (`{path.relative_to(HERE.parent).as_posix()}`, forward 3x3/1 convolutions, "
            f"GFLOP/s of the direct convolution, batch {res['rows'][0]['batch']}): {shapes}. XLA's matrix multiply keeps up "
            f"with PyTorch's `torch.mm`; oneDNN's `channels_last` convolution is faster than either GEMM, and the GEMM-based "
            f"lowerings built from XLA operations (im2col, Winograd F(2x2, 3x3)) lose more to their data movement than "
            f"they gain, so the gap is XLA:CPU's convolution kernel; the `onednn` lowering calls oneDNN's kernel from inside "
            f"the jitted step instead. " + load_note(res["info"], "conv_kernels.py") + "\n")


def render(files: list[Path], profiles: list[Path], attacks: list[Path] = (), epic: list[Path] = (),
           federated: list[Path] = (), kernels: list[Path] = ()) -> str:
    parts = [train_table(f) for f in files if f.exists()]
    parts += [attacks_summary(a) for a in attacks if a.exists()]
    parts += [epic_summary(e) for e in epic if e.exists()]
    parts += [federated_summary(f) for f in federated if f.exists()]
    parts += [profile_summary(p) for p in profiles if p.exists()]
    parts += [kernels_summary(k) for k in kernels if k.exists()]
    if not parts: raise SystemExit(f"no results files among {', '.join(map(str, [*files, *profiles, *attacks, *epic, *federated]))}")
    return "\n".join(parts)


def update_index(index: Path, text: str) -> None:
    "Replace the marked block in the landing notebook's Markdown cell (atomically)."
    nb = json.loads(index.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "markdown" and START in src and END in src:
            a, b = src.index(START) + len(START), src.index(END)
            new = src[:a] + "\n" + text.rstrip("\n") + "\n" + src[b:]
            cell["source"] = new.splitlines(keepends=True)
            break
    else:
        raise SystemExit(f"{index}: no Markdown cell holds both {START} and {END}")
    tmp = index.with_name(index.name + ".tmp")
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"); os.replace(tmp, index)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", default="results/bench_train_cpu_onednn.json,results/bench_train_cpu_fair.json,"
                   "results/bench_train_cpu_fair_compile.json",
                   help="bench_train.py results, relative to benchmarks/")
    p.add_argument("--profiles", default="results/profile_resnet18_64.json", help="profile_layers.py results")
    p.add_argument("--attacks", default="results/bench_attacks_cpu_fair.json,results/bench_attacks_cpu_r18_64.json,"
                   "results/bench_attacks_cpu_onednn.json,results/bench_attacks_cpu_r18_64_onednn.json", help="bench_attacks.py results")
    p.add_argument("--epic", default="results/bench_epic_cpu.json,results/bench_epic_cpu_onednn.json", help="bench_epic.py results")
    p.add_argument("--federated", default="results/bench_federated_cpu.json", help="bench_federated.py results")
    p.add_argument("--kernels", default="results/conv_kernels_cpu.json", help="conv_kernels.py results")
    p.add_argument("--index", default=None, help="write into this notebook's marked block instead of printing")
    args = p.parse_args(argv)
    paths = lambda a: [HERE / f for f in a.split(",") if f]
    text = render(paths(args.files), paths(args.profiles), paths(args.attacks), paths(args.epic), paths(args.federated),
                  paths(args.kernels))
    if args.index: update_index(Path(args.index), text)
    else: sys.stdout.write(text)


if __name__ == "__main__":
    main()
