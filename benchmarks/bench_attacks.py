"""Attack-side throughput: one gradient-matching step and per-example gradients, oilwater_jax against the same
computation hand-written in PyTorch (`torch.func` for per-example gradients), in one process.

* GM step: the matching loss 1 - cos(grad_theta target loss, grad_theta poison loss) over all parameters, its gradient
  with respect to the perturbations (a second-order derivative), the differentiable augmentation (random translation
  by up to 1/8 of the image, random horizontal flip), the sign, one Adam step and the projection; eval-mode BatchNorm.
  JAX runs `oilwater_jax.gradient_matching`'s own pieces jitted; PyTorch uses `torch.autograd.grad(create_graph=True)`
  and `F.grid_sample` for the translation.
* Per-example gradients: the cross-entropy gradient of every example with respect to all parameters, eval-mode
  BatchNorm. JAX: `oilwater_jax.per_example.per_example_grads` (vmap of grad, chunked); PyTorch:
  `torch.func.vmap(torch.func.grad(...))` over `functional_call`, the same chunks, each copied into one stacked tensor
  per parameter as ours are (same work: the whole [n, ...] result).

The network is the default CPU model (`resnet18_w16`, 32 px) in both frameworks (`tests/torch_resnet.py` is the
PyTorch twin, with the ImageNet normalisation added in front as the Flax model does inside). Figures are medians of
repeated calls after a warm-up call (compile time reported apart); ratios > 1 mean JAX is faster.

    python benchmarks/bench_attacks.py                    # 48 poisons / 5 targets (1% of Waterbirds), 128 examples
    python benchmarks/bench_attacks.py --poisons 96 --examples 256 --out bench_attacks.json
    python benchmarks/bench_attacks.py --out benchmarks/results/bench_attacks_cpu.json --append   # one more run
"""
from __future__ import annotations
import argparse, subprocess, json, os, platform, statistics, sys, time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_train.py: spinning OpenMP threads on a shared machine
HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "tests"))  # torch_resnet.py


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="registry name (default: the default CPU model)")
    p.add_argument("--size", type=int, default=32, help="image size, pixels")
    p.add_argument("--poisons", type=int, default=48, help="poisons per GM step (1%% of Waterbirds is 48)")
    p.add_argument("--targets", type=int, default=5, help="GM targets")
    p.add_argument("--examples", type=int, default=128, help="examples for the per-example gradients")
    p.add_argument("--chunk", type=int, default=64, help="per-example gradient chunk size")
    p.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--torch-device", default="cpu", help="cpu, cuda or auto (cuda when available)")
    p.add_argument("--no-torch", action="store_true", help="JAX only")
    p.add_argument("--torch-formats", default="contiguous,channels_last", help="PyTorch memory formats to time; "
                   "speedups are against the faster one (`speedup`) and against contiguous (`speedup_contiguous`)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls at most (at least 2)")
    p.add_argument("--budget", type=float, default=8.0, help="stop repeating a measurement after this many seconds")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--append", action="store_true", help="add this run to the runs already in --out (shared machines are noisy)")
    return p.parse_args(argv)


def timed(fn, repeats: int, budget: float) -> tuple[float, float]:
    "(first call seconds, median seconds per later call); `fn()` must block until done."
    t0 = time.perf_counter(); fn(); first = time.perf_counter() - t0
    times = []
    while len(times) < max(2, repeats):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
        if len(times) >= 2 and sum(times) > budget: break
    return first, statistics.median(times)


def inputs(args):
    rng = np.random.default_rng(0)
    s = args.size
    return dict(xp=rng.uniform(size=(args.poisons, s, s, 3)).astype(np.float32), yp=np.ones(args.poisons, np.int64),
                xt=rng.uniform(size=(args.targets, s, s, 3)).astype(np.float32), yt=np.ones(args.targets, np.int64),
                xe=rng.uniform(size=(args.examples, s, s, 3)).astype(np.float32), ye=rng.integers(0, 2, args.examples))


# ---------------------------------------------------------------- JAX
def bench_jax(name, args, d):
    import jax, jax.numpy as jnp, optax
    from oilwater_jax.models import make_model, init_model
    from oilwater_jax.gradient_matching import GMConfig, flat_grad, matching_loss, project, step_size
    from oilwater_jax.per_example import per_example_grads
    model = make_model(name, num_classes=2)
    v = init_model(model, jax.random.key(0), (args.size, args.size, 3))
    cfg = GMConfig()
    std = jnp.asarray(cfg.input_std)
    x, y = jnp.asarray(d["xp"]), jnp.asarray(d["yp"], jnp.int32)
    tg = flat_grad(model.apply, v, jnp.asarray(d["xt"]), jnp.asarray(d["yt"], jnp.int32))
    opt = optax.adam(step_size(cfg))

    @jax.jit
    def gm_step(u, opt_state, i):
        loss, g = jax.value_and_grad(matching_loss)(u, x, y, tg, model.apply, v, jax.random.fold_in(jax.random.key(1), i), cfg)
        upd, opt_state = opt.update(jnp.sign(g), opt_state, u)
        return project(u + upd, x, cfg.eps, std), opt_state, loss

    box = [jnp.zeros_like(x), opt.init(jnp.zeros_like(x)), 0]
    def step():
        u, s, loss = gm_step(box[0], box[1], box[2]); loss.block_until_ready(); box[:] = [u, s, box[2] + 1]
    out = {}
    first, sec = timed(step, args.repeats, args.budget)
    out["gm_step"] = dict(seconds=sec, compile_s=first - sec)
    xe, ye = d["xe"], d["ye"].astype(np.int32)
    run = lambda: jax.block_until_ready(per_example_grads(model.apply, v, xe, ye, chunk_size=args.chunk))
    first, sec = timed(run, args.repeats, args.budget)
    out["per_example"] = dict(examples_per_s=args.examples / sec, compile_s=first - sec)
    return out


# ---------------------------------------------------------------- PyTorch
def torch_model(name, device="cpu"):
    import torch
    from oilwater_jax.models import make_model, IMAGENET_MEAN, IMAGENET_STD
    from torch_resnet import ResNet, BasicBlock, Bottleneck
    spec = make_model(name)
    block = {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck}[spec.block_cls.__name__]
    net = ResNet(block, spec.stage_sizes, 2, spec.width, spec.stem)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1); sd = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    class Normalised(torch.nn.Module):
        def __init__(self):
            super().__init__(); self.net = net
        def forward(self, x): return self.net((x - mean) / sd)
    for m in net.modules():  # in-place ReLU and functorch transforms do not mix well; it changes no value
        if isinstance(m, torch.nn.ReLU): m.inplace = False
    return Normalised().to(device).eval(), mean, sd


def torch_augment(x, gen, max_shift=0.125):
    "Per-image random translation (bilinear, up to max_shift of the side) and horizontal flip, differentiable."
    import torch, torch.nn.functional as F
    n = x.shape[0]
    r = torch.rand(n, 3, generator=gen, device=x.device)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = torch.where(r[:, 2] > 0.5, -1.0, 1.0)
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = (r[:, :2] * 2 - 1) * max_shift * 2  # normalised coordinates span 2 units per side
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def bench_torch(name, args, d, device="cpu", fmt="contiguous"):
    "PyTorch timings; `fmt` 'channels_last' puts the model and every input in NHWC memory format."
    import torch, torch.nn.functional as F
    from torch.func import functional_call, grad, vmap
    torch.manual_seed(0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    model, mean, sd = torch_model(name, device)
    memfmt = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=memfmt)
    params = {k: p for k, p in model.named_parameters()}
    buffers = {k: b for k, b in model.named_buffers()}
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(device).to(memory_format=memfmt)
    x, y = nchw(d["xp"]), torch.from_numpy(d["yp"]).to(device)
    xt, yt = nchw(d["xt"]), torch.from_numpy(d["yt"]).to(device)
    tg = torch.autograd.grad(F.cross_entropy(model(xt), yt), list(params.values()))
    tg_flat = torch.cat([g.reshape(-1) for g in tg]).detach()
    eps = 16 / 255
    u = torch.zeros_like(x, requires_grad=True)
    opt = torch.optim.Adam([u], lr=0.1)
    gen = torch.Generator(device=device).manual_seed(1)

    def step():
        xp = mean + torch_augment(x + u * sd - mean, gen)  # pixels shifted in take the mean colour, as in JAX
        loss_p = F.cross_entropy(model(xp), y)
        g = torch.autograd.grad(loss_p, list(params.values()), create_graph=True)
        gf = torch.cat([a.reshape(-1) for a in g])
        loss = 1 - torch.dot(gf, tg_flat) / (gf.norm() * tg_flat.norm())
        opt.zero_grad(); loss.backward()
        u.grad.sign_(); opt.step()
        with torch.no_grad():
            dlt = torch.clamp(u * sd, -eps, eps)
            u.copy_(torch.max(torch.min(dlt, 1 - x), -x) / sd)
        sync()
    out = {}
    first, sec = timed(step, args.repeats, args.budget)
    out["gm_step"] = dict(seconds=sec, compile_s=0.0)

    def one_loss(p, xi, yi):
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0))
    pe = vmap(grad(one_loss), in_dims=(None, 0, 0))
    xe, ye = nchw(d["xe"]), torch.from_numpy(d["ye"]).to(device)
    detached = {k: p.detach() for k, p in params.items()}
    def run():  # the same work as ours: every example's gradients end up in one stacked tensor per parameter
        out = {k: torch.empty((len(xe), *p.shape), device=device) for k, p in detached.items()}
        for s in range(0, len(xe), args.chunk):
            g = pe(detached, xe[s:s + args.chunk], ye[s:s + args.chunk])
            for k, v in g.items(): out[k][s:s + len(v)].copy_(v)
        sync()
    first, sec = timed(run, args.repeats, args.budget)
    out["per_example"] = dict(examples_per_s=args.examples / sec, compile_s=0.0)
    return out


def main(argv=None):
    args = parse_args(argv)
    import jax
    from oilwater_jax.models import DEFAULT_CPU_MODEL, resolve_conv_impl
    name = args.model or DEFAULT_CPU_MODEL
    d = inputs(args)
    info = dict(jax=jax.__version__, backend=jax.default_backend(), device=str(jax.devices()[0].device_kind), cpu_count=os.cpu_count(), platform=platform.platform(),
                model=name, px=args.size, poisons=args.poisons, targets=args.targets, examples=args.examples,
                chunk=args.chunk, load_average_start=os.getloadavg(),
                conv_impl=resolve_conv_impl("auto")) # the lowering the models use: set OILWATER_CONV_IMPL=onednn for oneDNN
    t0 = time.perf_counter()
    res = {"jax": bench_jax(name, args, d)}
    if not args.no_torch:
        import torch
        torch.set_num_threads(args.torch_threads)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.torch_device == "auto" else args.torch_device
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), torch_device=device)
        for fmt in args.torch_formats.split(","):
            res[f"torch_{fmt}"] = bench_torch(name, args, d, device, fmt)
        gm = min((k for k in res if k.startswith("torch_")), key=lambda k: res[k]["gm_step"]["seconds"])
        pe = max((k for k in res if k.startswith("torch_")), key=lambda k: res[k]["per_example"]["examples_per_s"])
        res["torch"] = dict(gm_step=res[gm]["gm_step"], per_example=res[pe]["per_example"])
        info.update(torch_best=dict(gm_step=gm, per_example=pe), torch_formats=args.torch_formats,
                    uptime=subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
                    caution="measured on a shared machine under load: compare within this file only")
    info.update(load_average_end=os.getloadavg(), total_s=round(time.perf_counter() - t0, 1))
    rows = [dict(work=f"GM step ({args.poisons} poisons, {args.targets} targets)", unit="s/step",
                 jax=round(res["jax"]["gm_step"]["seconds"], 3), jax_compile_s=round(res["jax"]["gm_step"]["compile_s"], 1)),
            dict(work=f"per-example grads ({args.examples}, all params, chunk {args.chunk})", unit="examples/s",
                 jax=round(res["jax"]["per_example"]["examples_per_s"], 1),
                 jax_compile_s=round(res["jax"]["per_example"]["compile_s"], 1))]
    if "torch" in res:
        rows[0].update(torch=round(res["torch"]["gm_step"]["seconds"], 3),
                       speedup=round(res["torch"]["gm_step"]["seconds"] / res["jax"]["gm_step"]["seconds"], 2))
        for i, w in enumerate(("gm_step", "per_example")):
            for k in res:
                if k.startswith("torch_"):
                    v = res[k][w]
                    rows[i][k] = round(v["seconds"], 3) if w == "gm_step" else round(v["examples_per_s"], 1)
        if "torch_contiguous" in res:
            rows[0]["speedup_contiguous"] = round(res["torch_contiguous"]["gm_step"]["seconds"] / res["jax"]["gm_step"]["seconds"], 2)
            rows[1]["speedup_contiguous"] = round(res["jax"]["per_example"]["examples_per_s"] / res["torch_contiguous"]["per_example"]["examples_per_s"], 2)
        rows[1].update(torch=round(res["torch"]["per_example"]["examples_per_s"], 1),
                       speedup=round(res["jax"]["per_example"]["examples_per_s"] / res["torch"]["per_example"]["examples_per_s"], 2))
    print(f"{name} @ {args.size}px, {info['backend']}; load average {info['load_average_start'][0]:.1f} -> "
          f"{info['load_average_end'][0]:.1f}; {info['total_s']} s. speedup = JAX/PyTorch throughput (>1: JAX faster)")
    cols = ["work", "unit", "jax", *[f"torch_{f}" for f in args.torch_formats.split(",") if "torch" in res], "speedup",
            "speedup_contiguous", "jax_compile_s"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows: print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if args.out:
        path = Path(args.out)
        old = json.loads(path.read_text()) if args.append and path.exists() else {}
        runs = old.get("runs", [dict(info=old["info"], rows=old["rows"])] if "rows" in old else []) + [dict(info=info, rows=rows)]
        speed = [[r["rows"][i].get("speedup") for r in runs] for i in range(len(rows))]
        summary = [dict(work=row["work"], speedup_median=round(statistics.median(s), 2), speedup_min=min(s), speedup_max=max(s), runs=len(s))
                   for row, s in zip(rows, speed) if None not in s]
        path.write_text(json.dumps(dict(runs=runs, summary=summary), indent=2) + "\n")
        for r in summary: print(f"{r['work']}: speedup median {r['speedup_median']} (min {r['speedup_min']}, max {r['speedup_max']}, {r['runs']} runs)")
    return rows


if __name__ == "__main__":
    main()
