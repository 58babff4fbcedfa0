"""Per-layer profile of the train step: every distinct convolution of a ResNet (forward, input gradient and weight
gradient), timed in JAX (hybrid and lax lowerings) and in PyTorch (eager, contiguous and channels_last), interleaved.

A convolution's share of the step is its time times the number of layers with its shape; comparing the sums with the
whole step (`bench_train.py`) shows how much is convolution and how much BatchNorm, ReLU, pooling and the optimiser.

    python benchmarks/profile_layers.py --model resnet18 --size 64 --out benchmarks/results/profile_resnet18_64.json
"""
from __future__ import annotations
import argparse, json, os, statistics, sys, time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def conv_shapes(name, size, batch):
    "Counter of (n, c_in, h, w, c_out, k, stride, pad) over the Conv2d layers of the PyTorch twin."
    import torch
    from oilwater_jax.models import make_model
    from torch_resnet import ResNet, BasicBlock, Bottleneck
    spec = make_model(name)
    block = {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck}[spec.block_cls.__name__]
    model = ResNet(block, spec.stage_sizes, 2, spec.width, spec.stem)
    seen = Counter()
    def hook(m, inp, out):
        n, c, h, w = inp[0].shape
        seen[(batch, c, h, w, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0])] += 1
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d): m.register_forward_hook(hook)
    with torch.no_grad(): model(torch.zeros(1, 3, size, size))
    return seen


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18"); p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=128); p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--torch-threads", type=int, default=2); p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import jax, jax.numpy as jnp, torch
    from oilwater_jax.models import conv2d
    from oilwater_jax.onednn import onednn_available
    impls = ("hybrid", "lax", "onednn") if onednn_available() else ("hybrid", "lax") # oneDNN loaded before torch runs
    torch.set_num_threads(args.torch_threads)
    shapes = conv_shapes(args.model, args.size, 1)
    rng = np.random.default_rng(0)
    rows = []
    for (_, c, h, w, co, k, s, pd), count in shapes.items():
        x = rng.standard_normal((args.batch, h, w, c)).astype(np.float32)
        kern = (rng.standard_normal((k, k, c, co)) * 0.05).astype(np.float32)
        fns = {}
        for impl in impls:
            f = lambda x, kk, impl=impl: conv2d(x, kk, (s, s), ((pd, pd), (pd, pd)), impl=impl)
            @jax.jit
            def fb(x, kk, f=f):
                y, vjp = jax.vjp(f, x, kk)
                return vjp(y)  # the output as cotangent: same shapes as a real backward pass
            xj, kj = jnp.asarray(x), jnp.asarray(kern)
            fns[impl] = lambda fb=fb, xj=xj, kj=kj: jax.block_until_ready(fb(xj, kj))
        for fmt_name, fmt in (("torch", torch.contiguous_format), ("torch_channels_last", torch.channels_last)):
            conv = torch.nn.Conv2d(c, co, k, s, pd, bias=False).to(memory_format=fmt)
            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(memory_format=fmt).requires_grad_(True)
            def tb(conv=conv, xt=xt):
                conv.zero_grad(set_to_none=True); xt.grad = None
                y = conv(xt); y.backward(y.detach())
            fns[fmt_name] = tb
        for f in fns.values(): f()  # compile / warm up
        times = {k_: [] for k_ in fns}
        for r in range(args.rounds):
            for k_, f in fns.items():
                t0 = time.perf_counter(); f(); f(); times[k_].append((time.perf_counter() - t0) / 2)
        ms = {k_: round(1e3 * statistics.median(v), 3) for k_, v in times.items()}
        row = dict(c_in=c, hw=h, c_out=co, k=k, stride=s, layers=count, ms=ms,
                   hybrid_over_best_torch=round(min(ms["torch"], ms["torch_channels_last"]) / ms["hybrid"], 2),
                   **({"onednn_over_best_torch": round(min(ms["torch"], ms["torch_channels_last"]) / ms["onednn"], 2)}
                      if "onednn" in ms else {}))
        rows.append(row); print(json.dumps(row), flush=True)
    total = {k_: round(sum(r["ms"][k_] * r["layers"] for r in rows), 1) for k_ in rows[0]["ms"]}
    info = dict(model=args.model, px=args.size, batch=args.batch, jax=jax.__version__, torch=torch.__version__,
                torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(), load_average=os.getloadavg(),
                caution="measured on a shared machine under load: compare within this file only")
    print("total convolution ms per step (forward + both gradients):", total)
    if args.out:
        out = Path(args.out); tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(dict(info=info, rows=rows, total_ms=total), indent=2) + "\n"); os.replace(tmp, out)


if __name__ == "__main__":
    main()
