"""What limits ResNet-18 at 64 px on the CPU: the convolution kernel, not the matrix multiply.

For each 3x3, stride-1 convolution shape of ResNet-18 at 64 px (the layers that dominate `profile_layers.py`), this
times the forward pass four ways in JAX (XLA's convolution; im2col + one matmul; Winograd F(2x2, 3x3), 16 batched
matmuls between linear transforms; and the im2col matmul alone, its operand already materialised) and two ways in
PyTorch (the `channels_last` convolution; `torch.mm` of the same product), interleaved, and reports each as
GFLOP/s of the direct convolution (2 * n * h * w * 9 * c_in * c_out). If XLA's matmul keeps up with PyTorch's while
its convolution does not, the gap is the convolution kernel; if im2col and Winograd are slower than XLA's
convolution, no lowering built from XLA's operations closes it.

    python benchmarks/conv_kernels.py --out benchmarks/results/conv_kernels_cpu.json
"""
from __future__ import annotations
import argparse, json, os, platform, statistics, time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SHAPES = ((64, 16), (128, 8), (256, 4))   # (channels, output size) of ResNet-18's 3x3/1 convolutions at 64 px
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)   # Winograd F(2, 3)
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def winograd(x, k):
    "3x3, stride 1, padding 1 convolution by Winograd F(2x2, 3x3) (even output sizes), NHWC/HWIO."
    import jax.numpy as jnp
    from jax import lax
    n, h, w, c = x.shape; co = k.shape[-1]; th, tw = h // 2, w // 2
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    d = [[lax.slice(xp, (0, a, b, 0), (n, a + 2 * (th - 1) + 1, b + 2 * (tw - 1) + 1, c), (1, 2, 2, 1)) for b in range(4)]
         for a in range(4)]
    comb = lambda coef, xs: sum(float(f) * v for f, v in zip(coef, xs) if f)
    t = [[comb(BT[i], [d[a][b] for a in range(4)]) for b in range(4)] for i in range(4)]
    v = jnp.stack([comb(BT[j], t[i]) for i in range(4) for j in range(4)])                  # [16, n, th, tw, c]
    u = jnp.einsum("ia,abcd,jb->ijcd", G, k, G).reshape(16, c, co)
    m = jnp.einsum("tnhwc,tcd->tnhwd", v, u).reshape(4, 4, n, th, tw, co)
    r = [comb(AT[p], [m[i] for i in range(4)]) for p in range(2)]                            # [4, n, th, tw, co]
    y = [[comb(AT[q], [r[p][j] for j in range(4)]) for q in range(2)] for p in range(2)]
    return jnp.stack([jnp.stack(y[p], axis=3) for p in range(2)], axis=2).reshape(n, h, w, co)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128); p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--torch-threads", type=int, default=2); p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import jax, jax.numpy as jnp, torch
    from jax import lax
    from oilwater_jax.models import im2col
    torch.set_num_threads(args.torch_threads)
    dims = ("NHWC", "HWIO", "NHWC")
    load_start = os.getloadavg()
    rows = []
    for c, hw in SHAPES:
        n = args.batch
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((n, hw, hw, c)), jnp.float32)
        k = jnp.asarray(rng.standard_normal((3, 3, c, c)) * 0.05, jnp.float32)
        cols = jnp.asarray(rng.standard_normal((n * hw * hw, 9 * c)), jnp.float32)
        kmat = k.reshape(9 * c, c)
        pad = ((1, 1), (1, 1))
        jfns = {"xla_conv": jax.jit(lambda x, k: lax.conv_general_dilated(x, k, (1, 1), pad, dimension_numbers=dims)),
                "im2col_matmul": jax.jit(lambda x, k: (im2col(x, (3, 3), (1, 1), pad).reshape(-1, 9 * c)
                                                       @ k.reshape(9 * c, c)).reshape(x.shape[:3] + (c,))),
                "winograd_f2x3": jax.jit(winograd)}
        ref = np.asarray(jfns["xla_conv"](x, k))
        err = {name: float(np.abs(np.asarray(f(x, k)) - ref).max()) for name, f in jfns.items() if name != "xla_conv"}
        dot = jax.jit(jnp.dot)
        tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
        tcols, tk = torch.from_numpy(np.array(cols)), torch.from_numpy(np.array(kmat))
        calls = {**{name: (lambda f=f: jax.block_until_ready(f(x, k))) for name, f in jfns.items()},
                 "xla_matmul_only": lambda: jax.block_until_ready(dot(cols, kmat)),
                 "torch_channels_last_conv": lambda: conv(tx),
                 "torch_mm_only": lambda: torch.mm(tcols, tk)}
        times = {name: [] for name in calls}
        with torch.no_grad():
            for f in calls.values(): f()                                                   # compile / warm up
            for _ in range(args.rounds):
                for name, f in calls.items():
                    t = time.perf_counter(); f(); times[name].append(time.perf_counter() - t)
        flop = 2 * n * hw * hw * 9 * c * c
        row = {"c": c, "hw": hw, "batch": n, "gflop": flop / 1e9, "max_abs_err_vs_xla_conv": err,
               **{f"{name}_ms": 1e3 * statistics.median(ts) for name, ts in times.items()}}
        row.update({f"{name}_gflops": flop / 1e9 / statistics.median(ts) for name, ts in times.items()})
        rows.append(row)
        print(f"{c}->{c} 3x3/1 at {hw} px: " + ", ".join(f"{name} {row[name + '_gflops']:.0f}" for name in calls)
              + " GFLOP/s", flush=True)
    info = {"jax": jax.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(), "rounds": args.rounds,
            "load_average_start": list(load_start), "load_average_end": list(os.getloadavg())}
    if args.out:
        out = Path(args.out); tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"info": info, "rows": rows}, indent=1)); os.replace(tmp, out)


if __name__ == "__main__":
    main()
