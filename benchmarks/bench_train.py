"""Training and evaluation throughput: oilwater_jax ResNets (hybrid and lax convolutions) against the same network
hand-written in PyTorch, run in one process.

The train step is what `oilwater_jax.train` runs: forward in training mode (BatchNorm batch statistics), mean
cross-entropy, backward, SGD with momentum 0.9 and weight decay, jitted, with the state donated. Evaluation is a
forward pass in eval mode. Figures are samples per second, medians of repeated calls after a warm-up call (compile
time is excluded and reported separately). PyTorch runs eagerly (`torch.compile` costs about a minute per model for a
few percent, see shared/reference/cpu-performance.md) with `--torch-threads` threads.

    python benchmarks/bench_train.py                              # default CPU model @32, resnet18 @32 and @64
    python benchmarks/bench_train.py --models resnet10,resnet18_w16 --sizes 32 --out results.json
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false python benchmarks/bench_train.py --xla-flags-note single-thread

The same code runs on a GPU: JAX uses its default device and PyTorch uses CUDA when it is available (`--torch-device`).
"""
from __future__ import annotations
import argparse, json, os, platform, statistics, sys, time
from functools import partial
from pathlib import Path

import numpy as np

# PyTorch's OpenMP threads spin while they wait; on a small machine shared with other processes that made a 2-thread
# forward pass 80x slower than with passive waiting (measured here). Set before torch is imported; override by env.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "tests"))  # torch_resnet.py, the hand-written PyTorch twin


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="comma-separated registry names (default: the default CPU model and resnet18)")
    p.add_argument("--sizes", default=None, help="comma-separated image sizes in pixels (default: 32,64; the default CPU model only at 32)")
    p.add_argument("--batch", type=int, default=128, help="samples per step")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="computation dtype")
    p.add_argument("--impls", default="hybrid,lax", help="JAX convolution lowerings to run: hybrid, lax, auto, or "
                   "hybrid_all (every hybrid replacement on: im2col weight gradients everywhere, slice max-pool)")
    p.add_argument("--work", default="train,eval", help="what to time: train, eval or both")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--torch-device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls at most (at least 2)")
    p.add_argument("--budget", type=float, default=6.0, help="stop repeating a measurement after this many seconds")
    p.add_argument("--matmul-precision", default=None, help="jax_default_matmul_precision (e.g. 'highest', 'bfloat16')")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. the XLA_FLAGS tried)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def timed(fn, repeats: int, budget: float) -> tuple[float, float, int]:
    "(compile + first call seconds, median seconds per call, calls timed); `fn()` must block until done."
    t0 = time.perf_counter(); fn(); first = time.perf_counter() - t0
    times = []
    while len(times) < max(2, repeats):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
        if len(times) >= 2 and sum(times) > budget: break
    return first, statistics.median(times), len(times)


# ---------------------------------------------------------------- JAX
def bench_jax(name, size, impl, args, work):
    import jax, jax.numpy as jnp, optax
    from oilwater_jax.models import make_model, init_model, HYBRID, HYBRID_ALL_PATHS
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    conv_impl, policy = ("hybrid", HYBRID_ALL_PATHS) if impl == "hybrid_all" else (impl, HYBRID)
    model = make_model(name, num_classes=2, conv_impl=conv_impl, hybrid_policy=policy, dtype=dtype)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(args.batch, size, size, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, args.batch), jnp.int32)
    variables = init_model(model, jax.random.key(0), (size, size, 3))
    out = {}
    if "eval" in work:
        forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
        first, sec, n = timed(lambda: forward(variables, x).block_until_ready(), args.repeats, args.budget)
        out["eval"] = dict(samples_per_s=args.batch / sec, compile_s=first - sec, calls=n)
    if "train" in work:
        tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.01, momentum=0.9))
        state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

        @partial(jax.jit, donate_argnums=0)
        def train_step(state, x, y):
            params, batch_stats, opt_state = state
            def loss_fn(params):
                logits, upd = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                          mutable=["batch_stats"])
                return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean(), upd
            (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), upd["batch_stats"], opt_state), loss

        box = [state]
        def step():
            box[0], loss = train_step(box[0], x, y); loss.block_until_ready()
        first, sec, n = timed(step, args.repeats, args.budget)
        out["train"] = dict(samples_per_s=args.batch / sec, compile_s=first - sec, calls=n)
    return out


# ---------------------------------------------------------------- PyTorch
def bench_torch(name, size, args, work, device):
    import torch
    from oilwater_jax.models import make_model
    from torch_resnet import ResNet, BasicBlock, Bottleneck
    spec = make_model(name)
    block = {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck}[spec.block_cls.__name__]
    model = ResNet(block, spec.stage_sizes, 2, spec.width, spec.stem).to(device)
    sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(size=(args.batch, 3, size, size)).astype(np.float32)).to(device)
    y = torch.from_numpy(rng.integers(0, 2, args.batch)).to(device)
    autocast = partial(torch.autocast, device_type=device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    out = {}
    if "eval" in work:
        model.eval()
        def forward():
            with torch.inference_mode(), autocast(): model(x)
            sync()
        first, sec, n = timed(forward, args.repeats, args.budget)
        out["eval"] = dict(samples_per_s=args.batch / sec, compile_s=0.0, calls=n)
    if "train" in work:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        def step():
            opt.zero_grad(set_to_none=True)
            with autocast(): loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward(); opt.step(); sync()
        first, sec, n = timed(step, args.repeats, args.budget)
        out["train"] = dict(samples_per_s=args.batch / sec, compile_s=0.0, calls=n)
    return out


# ---------------------------------------------------------------- main
def cases(args):
    from oilwater_jax.models import DEFAULT_CPU_MODEL
    if args.models is None and args.sizes is None:
        return [(DEFAULT_CPU_MODEL, 32), ("resnet18", 32), ("resnet18", 64)]
    models = (args.models or f"{DEFAULT_CPU_MODEL},resnet18").split(",")
    sizes = [int(s) for s in (args.sizes or "32,64").split(",")]
    return [(m, s) for m in models for s in sizes]


def main(argv=None):
    args = parse_args(argv)
    import jax
    if args.matmul_precision: jax.config.update("jax_default_matmul_precision", args.matmul_precision)
    from oilwater_jax.models import resolve_conv_impl
    impls = args.impls.split(",")
    work = args.work.split(",")
    torch_device = None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(args.torch_threads)
            torch_device = ("cuda" if torch.cuda.is_available() else "cpu") if args.torch_device == "auto" else args.torch_device
        except ImportError:
            print("PyTorch is not installed: running JAX only.", file=sys.stderr)
    info = dict(jax=jax.__version__, backend=jax.default_backend(), device=str(jax.devices()[0].device_kind),
                cpu_count=os.cpu_count(), platform=platform.platform(), xla_flags=os.environ.get("XLA_FLAGS", ""),
                matmul_precision=args.matmul_precision, dtype=args.dtype, batch=args.batch,
                auto_impl=resolve_conv_impl("auto"), torch_device=torch_device, note=args.note, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                load_average_start=os.getloadavg())
    if torch_device:
        import torch; info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    rows, t_start = [], time.perf_counter()
    for name, size in cases(args):
        res = {impl: bench_jax(name, size, impl, args, work) for impl in impls}
        if torch_device: res["torch"] = bench_torch(name, size, args, work, torch_device)
        for w in work:
            row = dict(model=name, px=size, work=w, **{k: round(v[w]["samples_per_s"], 1) for k, v in res.items()},
                       compile_s={k: round(v[w]["compile_s"], 1) for k, v in res.items() if k != "torch"})
            for impl in impls:
                if "torch" in res: row[f"{impl}/torch"] = round(res[impl][w]["samples_per_s"] / res["torch"][w]["samples_per_s"], 2)
            rows.append(row); print(json.dumps(row), flush=True)
    info.update(load_average_end=os.getloadavg(), total_s=round(time.perf_counter() - t_start, 1))
    cols = ["model", "px", "work", *impls, *(["torch"] if torch_device else []),
            *([f"{i}/torch" for i in impls] if torch_device else [])]
    print(f"\nsamples/s, batch {args.batch}, {args.dtype}, {info['backend']} ({info['device']}); "
          f"load average {info['load_average_start'][0]:.1f} -> {info['load_average_end'][0]:.1f}; {info['total_s']} s")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows: print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(info=info, rows=rows), indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
