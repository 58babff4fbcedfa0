"""EPIC's hot paths on this machine: per-example gradients against `torch.func`, and one EPIC selection round.

* Per-example gradients of all parameters (eval-mode BatchNorm, chunks of `--chunk`): JAX's
  `oilwater_jax.per_example.per_example_grads` against `torch.func.vmap(grad(...))` over `functional_call` on the same
  network built in PyTorch (`tests/torch_resnet.py`), back to back in one process, for full ResNet-18 at 64 px and the
  default CPU model at 32 px. Medians after a warm-up call; compile time reported apart; speedup > 1: JAX faster.
* One EPIC selection round, proxy included (`gradient_proxies` with the default logit proxy on the current model,
  then `epic.epic_select` with subset size 0.1), on the first n training samples of the embedded Waterbirds-like set
  (n = 1,000, 2,000, 4,795) and of the embedded CelebA-like set (16,277), default CPU model at 32 px.

    python benchmarks/bench_epic.py --out benchmarks/results/bench_epic_cpu.json
    python benchmarks/bench_epic.py --skip-grads --sizes 1000 4795      # selection only
"""
from __future__ import annotations
import argparse, json, os, platform, sys, time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent)); sys.path.insert(0, str(HERE.parents[1] / "tests"))
from bench_attacks import timed, torch_model  # noqa: E402  (the same timing rule and PyTorch twin)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grad-configs", nargs="*", default=["resnet18:64", "default:32"], help="model:px pairs")
    p.add_argument("--examples", type=int, default=64, help="examples per per-example-gradient measurement")
    p.add_argument("--chunk", type=int, default=32, help="per-example gradient chunk size (both frameworks)")
    p.add_argument("--sizes", type=int, nargs="*", default=[1000, 2000, 4795, 16277], help="training samples per EPIC round")
    p.add_argument("--greedy", default="lazy", choices=("lazy", "dense"), help="the facility-location greedy: lazy "
                   "bounds (the package's) or every gain at every step (`epic_select(greedy='dense')`, the same medoids)")
    p.add_argument("--skip-grads", action="store_true"); p.add_argument("--skip-select", action="store_true")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--torch-device", default="cpu", help="cpu or cuda")
    p.add_argument("--repeats", type=int, default=3); p.add_argument("--budget", type=float, default=20.0)
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def grad_inputs(px, args):
    rng = np.random.default_rng(0)
    return (rng.uniform(size=(args.examples, px, px, 3)).astype(np.float32), rng.integers(0, 2, args.examples).astype(np.int32))


def bench_grads_jax(name, px, args):
    import jax
    from oilwater_jax.models import make_model, init_model
    from oilwater_jax.per_example import per_example_grads
    x, y = grad_inputs(px, args)
    model = make_model(name, num_classes=2); v = init_model(model, jax.random.key(0), (px, px, 3))
    run = lambda: jax.block_until_ready(per_example_grads(model.apply, v, x, y, chunk_size=args.chunk))
    first, sec = timed(run, args.repeats, args.budget)
    return dict(model=name, px=px, jax_per_s=args.examples / sec, jax_compile_s=first - sec, load_average_jax=os.getloadavg()[0])


def bench_grads_torch(name, px, args):
    import torch, torch.nn.functional as F
    from torch.func import functional_call, grad, vmap
    x, y = grad_inputs(px, args)
    dev = args.torch_device
    tm, _, _ = torch_model(name, dev)
    params = {k: p.detach() for k, p in tm.named_parameters()}; buffers = dict(tm.named_buffers())
    def one_loss(p, xi, yi): return F.cross_entropy(functional_call(tm, (p, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))
    pe = vmap(grad(one_loss), in_dims=(None, 0, 0))
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(dev); yt = torch.from_numpy(y.astype(np.int64)).to(dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    def trun():  # the same work as ours: every example's gradients end up in one stacked tensor per parameter
        out = {k: torch.empty((len(xt), *p.shape), device=dev) for k, p in params.items()}
        for s in range(0, len(xt), args.chunk):
            g = pe(params, xt[s:s + args.chunk], yt[s:s + args.chunk])
            for k, v in g.items(): out[k][s:s + len(v)].copy_(v)
        sync()
    _, tsec = timed(trun, args.repeats, args.budget)
    return dict(torch_per_s=args.examples / tsec, load_average_torch=os.getloadavg()[0])


def bench_select(n, args):
    import jax
    from oilwater_jax.data import load_dataset
    from oilwater_jax.models import make_model, init_model, DEFAULT_CPU_MODEL
    from oilwater_jax.per_example import gradient_proxies
    from oilwater_jax.epic import epic_select
    data = load_dataset("synthetic-waterbirds" if n <= 4795 else "synthetic-celeba", image_size=32).split("train")
    if n > len(data): raise SystemExit(f"only {len(data)} training samples")
    imgs, labels = data.images[:n], data.labels[:n]
    model = make_model(DEFAULT_CPU_MODEL, num_classes=2); v = init_model(model, jax.random.key(0), (32, 32, 3))
    # a trained-looking model is not needed for timing, but random logits give near-identical proxies and an early
    # stop of the greedy; perturbing the head spreads them as training does
    v = {**v, "params": {**v["params"], "fc": jax.tree.map(lambda a: a + 0.5 * jax.random.normal(jax.random.key(1), a.shape), v["params"]["fc"])}}
    timings = {}
    def run():
        t0 = time.perf_counter(); g = gradient_proxies(model.apply, v, imgs, labels, "logits", chunk_size=256)
        t1 = time.perf_counter(); sel = epic_select(g, labels, 0.1, greedy=args.greedy); t2 = time.perf_counter()
        timings.update(proxy_s=t1 - t0, select_s=t2 - t1, medoids=len(sel.medoids), eliminated=int(sel.eliminated.sum()))
    if n > 5000:   # minutes per call at this size: one call, its compile included (a second of it)
        t0 = time.perf_counter(); run(); first = sec = time.perf_counter() - t0
    else: first, sec = timed(run, args.repeats, args.budget)
    return dict(n=n, greedy=args.greedy, seconds=sec, first_call_s=first, **timings, load_average=os.getloadavg()[0])


def select_key(args) -> str:
    "Where a run's selection rounds go in the results file: the report shows the lazy and the dense greedy side by side."
    return "select" if args.greedy == "lazy" else "select_dense"


def save(res, args):
    "Write what has been measured so far (a long round may be stopped before the end)."
    if not args.out: return
    old = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    out = {**old, **res}   # keeps what this run did not measure (e.g. `select_dense` from a `--greedy dense` run)
    if args.skip_grads: out["grads"] = old.get("grads", [])
    if args.skip_select: out[select_key(args)] = old.get(select_key(args), [])
    Path(args.out).write_text(json.dumps(out, indent=2, default=float) + "\n")


def main(argv=None):
    args = parse_args(argv)
    import jax
    from oilwater_jax.models import resolve_conv_impl
    info = dict(jax=jax.__version__, backend=jax.default_backend(), cpu_count=os.cpu_count(),
                platform=platform.platform(), load_average_start=os.getloadavg(),
                conv_impl=resolve_conv_impl("auto")) # set OILWATER_CONV_IMPL=onednn for oneDNN
    sel = select_key(args)
    res = dict(info=info, grads=[], **{sel: []})
    if not args.skip_grads:   # JAX first, then PyTorch (its OpenMP pool would compete with XLA's threads)
        from oilwater_jax.models import DEFAULT_CPU_MODEL
        specs = [(DEFAULT_CPU_MODEL if s.split(":")[0] == "default" else s.split(":")[0], int(s.split(":")[1])) for s in args.grad_configs]
        res["grads"] = [bench_grads_jax(name, px, args) for name, px in specs]
        import torch
        torch.set_num_threads(args.torch_threads); info.update(torch=torch.__version__, torch_threads=args.torch_threads)
        for r, (name, px) in zip(res["grads"], specs):
            r.update(bench_grads_torch(name, px, args)); r["speedup"] = r["jax_per_s"] / r["torch_per_s"]
            print(f"per-example grads {name} @ {px}px: JAX {r['jax_per_s']:.1f}/s, torch.func {r['torch_per_s']:.1f}/s, "
                  f"speedup {r['speedup']:.2f} (compile {r['jax_compile_s']:.1f} s, load {r['load_average_jax']:.1f}/{r['load_average_torch']:.1f})", flush=True)
            save(res, args)
    if not args.skip_select:
        for n in args.sizes:
            r = bench_select(n, args); res[sel].append(r)
            print(f"EPIC round n={n}: {r['seconds']:.2f} s (proxy {r['proxy_s']:.2f} s, selection {r['select_s']:.2f} s; "
                  f"{r['medoids']} medoids, {r['eliminated']} eliminated; first call {r['first_call_s']:.1f} s, load {r['load_average']:.1f})", flush=True)
            save(res, args)
    info["load_average_end"] = os.getloadavg()
    save(res, args)
    return res


if __name__ == "__main__":
    main()
