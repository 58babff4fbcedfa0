"""Training and evaluation throughput: oilwater_jax ResNets (hybrid and lax convolutions) against the same network
hand-written in PyTorch, run in one process.

The train step is what `oilwater_jax.train` runs: forward in training mode (BatchNorm batch statistics), mean
cross-entropy, backward, SGD with momentum 0.9 and weight decay, jitted, with the state donated. Evaluation is a
forward pass in eval mode. Figures are samples per second, medians of repeated calls after a warm-up call (compile
time is excluded and reported separately). PyTorch runs eagerly (`torch.compile` costs about a minute per model for a
few percent, see shared/reference/cpu-performance.md) with `--torch-threads` threads.

    python benchmarks/bench_train.py                              # default CPU model @32, resnet18 @32 and @64
    python benchmarks/bench_train.py --models resnet10,resnet18_w16 --sizes 32 --out results.json
    python benchmarks/bench_train.py --torch-configs eager,channels_last,compile --models resnet18_w16 --sizes 32
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
    p.add_argument("--torch-configs", default="eager,channels_last", help="PyTorch configurations: eager, channels_last, "
                   "compile, channels_last_compile (torch.compile costs about a minute per model on a small CPU)")
    p.add_argument("--torch-process", action="store_true", help="run PyTorch in its own process (interleaved rounds "
                   "as before): its bundled OpenMP runtime then shares no process with XLA's threads or oneDNN's")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians over rounds are reported")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per round at most (at least 2)")
    p.add_argument("--budget", type=float, default=3.0, help="stop repeating within a round after this many seconds")
    p.add_argument("--matmul-precision", default=None, help="jax_default_matmul_precision (e.g. 'highest', 'bfloat16')")
    p.add_argument("--devices", default="1", help="data parallelism: 1, k or all local devices (oilwater_jax.sharding); "
                   "the batch is split over them, so it must be a multiple of their number")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. the XLA_FLAGS tried)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--append", action="store_true", help="add this run to the runs already in --out; the rows become "
                   "medians over the runs (separate processes) with each ratio's range")
    return p.parse_args(argv)


def first_call(fn) -> float:
    "Seconds of the first call (compile included); `fn()` must block until done."
    t0 = time.perf_counter(); fn(); return time.perf_counter() - t0


def measure(fn, repeats: int, budget: float) -> tuple[float, int]:
    "(median seconds per call, calls timed) of a warmed-up `fn`."
    times = []
    while len(times) < max(2, repeats):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
        if len(times) >= 2 and sum(times) > budget: break
    return statistics.median(times), len(times)


# ---------------------------------------------------------------- JAX
def bench_jax(name, size, impl, args, work):
    "{work: (fn, first-call seconds)} for the JAX model with the `impl` convolution lowering."
    import jax, jax.numpy as jnp, optax
    from oilwater_jax.models import make_model, init_model, HYBRID, HYBRID_ALL_PATHS
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    conv_impl, policy = ("hybrid", HYBRID_ALL_PATHS) if impl == "hybrid_all" else (impl, HYBRID)
    model = make_model(name, num_classes=2, conv_impl=conv_impl, hybrid_policy=policy, dtype=dtype)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(args.batch, size, size, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, args.batch), jnp.int32)
    variables = init_model(model, jax.random.key(0), (size, size, 3))
    from oilwater_jax.sharding import resolve_mesh, replicate, shard_batch
    mesh = resolve_mesh(args.devices)
    if mesh is not None: variables, (x, y) = replicate(mesh, variables), shard_batch(mesh, x, y)
    out = {}
    if "eval" in work:
        forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
        fwd = lambda: forward(variables, x).block_until_ready()
        out["eval"] = (fwd, first_call(fwd))
    if "train" in work:
        tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.01, momentum=0.9))
        state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
        state = jax.tree.map(lambda a: a.copy(), state)  # donated by the step: eval keeps its own `variables`
        if mesh is not None: state = replicate(mesh, state)

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
        out["train"] = (step, first_call(step))
    return out


# ---------------------------------------------------------------- PyTorch
TORCH_CONFIGS = ("eager", "channels_last", "compile", "channels_last_compile")
def bench_torch(name, size, args, work, device, config="eager"):
    "{work: (fn, first-call seconds)} for the PyTorch twin in `config` (eager, channels_last, compile, ...)."
    import torch
    from oilwater_jax.models import make_model
    from torch_resnet import ResNet, BasicBlock, Bottleneck
    spec = make_model(name)
    block = {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck}[spec.block_cls.__name__]
    torch.manual_seed(0)
    model = ResNet(block, spec.stage_sizes, 2, spec.width, spec.stem).to(device)
    fmt = torch.channels_last if config.startswith("channels_last") else torch.contiguous_format
    sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(size=(args.batch, 3, size, size)).astype(np.float32)).to(device).to(memory_format=fmt)
    model = model.to(memory_format=fmt)
    net = torch.compile(model) if config.endswith("compile") else model
    y = torch.from_numpy(rng.integers(0, 2, args.batch)).to(device)
    autocast = partial(torch.autocast, device_type=device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    out = {}
    if "eval" in work:
        def forward():
            model.eval()
            with torch.no_grad(), autocast(): net(x)
            sync()
        out["eval"] = (forward, first_call(forward))
    if "train" in work:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        def step():
            model.train()
            opt.zero_grad(set_to_none=True)
            with autocast(): loss = torch.nn.functional.cross_entropy(net(x).float(), y)
            loss.backward(); opt.step(); sync()
        out["train"] = (step, first_call(step))
    return out


class TorchWorker:
    """The PyTorch side in a process of its own (`--torch-process`). PyTorch's wheel bundles a `libgomp.so.1`; in one
    process with JAX, whichever copy loads first serves oneDNN as well (same soname), and with PyTorch's copy the
    `onednn` lowering ran 1.3-1.4x slower (measured here); loading the system's copy first slowed the hybrid lowering
    and PyTorch instead. Each framework in its own process is also how a user runs it."""
    def __init__(self, args):
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_torch_worker, args=(child, args), daemon=True)
        self.proc.start()

    def __call__(self, *msg):
        self.conn.send(msg)
        ok, value = self.conn.recv()
        if not ok: raise RuntimeError(f"PyTorch worker, {msg[0]}: {value}")
        return value

    def close(self):
        self("stop"); self.proc.join(timeout=30)


def _torch_worker(conn, args):
    import torch
    torch.set_num_threads(args.torch_threads)
    fns = {}
    while True:
        msg = conn.recv()
        try:
            if msg[0] == "stop": conn.send((True, None)); return
            if msg[0] == "info":
                device = ("cuda" if torch.cuda.is_available() else "cpu") if args.torch_device == "auto" else args.torch_device
                value = dict(torch=torch.__version__, torch_threads=torch.get_num_threads(), device=device)
            elif msg[0] == "setup":
                _, key, name, size, work, device, config = msg
                fns[key] = bench_torch(name, size, args, work, device, config)
                value = {w: f[1] for w, f in fns[key].items()}
            else:  # ("measure", key, work)
                value = measure(fns[msg[1]][msg[2]][0], args.repeats, args.budget)
            conn.send((True, value))
        except Exception as e:  # reported in the main process
            conn.send((False, repr(e)))


# ---------------------------------------------------------------- main
def _uptime() -> str:
    import subprocess
    try: return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError): return ""


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
    torch_device, worker = None, None
    if not args.no_torch and args.torch_process:
        worker = TorchWorker(args)
        tinfo = worker("info"); torch_device = tinfo["device"]
    elif not args.no_torch:
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
                devices=args.devices, n_devices=len(jax.devices()),
                load_average_start=os.getloadavg(), uptime_start=_uptime(), rounds=args.rounds,
                torch_configs=args.torch_configs if torch_device else None,
                caution="measured on a shared machine under load: compare ratios within this file only, and re-measure "
                        "absolute throughput on a quiet machine (python benchmarks/bench_train.py)")
    if worker:
        info.update(torch=tinfo["torch"], torch_threads=tinfo["torch_threads"], torch_process=True)
    elif torch_device:
        import torch; info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    torch_cfgs = [c for c in args.torch_configs.split(",") if c] if torch_device else []
    for c in torch_cfgs:
        if c not in TORCH_CONFIGS: raise SystemExit(f"--torch-configs: {c!r} is not one of {', '.join(TORCH_CONFIGS)}")
    tkey = lambda c: "torch" if c == "eager" else f"torch_{c}"
    rows, t_start = [], time.perf_counter()
    for name, size in cases(args):
        fns = {impl: bench_jax(name, size, impl, args, work) for impl in impls}
        if not worker: fns.update({tkey(c): bench_torch(name, size, args, work, torch_device, c) for c in torch_cfgs})
        first = {k: {w: f[1] for w, f in v.items()} for k, v in fns.items()}  # first-call seconds
        timer = {k: (lambda w, k=k: measure(fns[k][w][0], args.repeats, args.budget)) for k in fns}
        for c in torch_cfgs if worker else ():
            k = tkey(c)
            first[k] = worker("setup", k, name, size, work, torch_device, c)
            timer[k] = lambda w, k=k: worker("measure", k, w)
        per_round = {(k, w): [] for k in timer for w in work}
        for r in range(max(1, args.rounds)):  # interleaved: every configuration once per round, order rotated
            keys = list(per_round)
            keys = keys[r % len(keys):] + keys[:r % len(keys)]
            for k, w in keys: per_round[(k, w)].append(timer[k](w)[0])
        for w in work:
            sec = {k: statistics.median(per_round[(k, w)]) for k in timer}
            row = dict(model=name, px=size, work=w, **{k: round(args.batch / v, 1) for k, v in sec.items()},
                       compile_s={k: round(first[k][w] - sec[k], 1) for k in timer},
                       spread={k: round(max(per_round[(k, w)]) / min(per_round[(k, w)]), 2) for k in timer})
            tk = [tkey(c) for c in torch_cfgs]
            if tk:
                best = max(tk, key=lambda k: row[k])
                row["torch_best"] = best
                for impl in impls:
                    if "torch" in row: row[f"{impl}/torch"] = round(row[impl] / row["torch"], 2)
                    row[f"{impl}/best"] = round(row[impl] / row[best], 2)
            rows.append(row); print(json.dumps(row), flush=True)
    if worker: worker.close()
    info.update(load_average_end=os.getloadavg(), uptime_end=_uptime(), total_s=round(time.perf_counter() - t_start, 1))
    cols = ["model", "px", "work", *impls, *[tkey(c) for c in torch_cfgs],
            *([f"{i}/torch" for i in impls] if "eager" in torch_cfgs else []), *[f"{i}/best" for i in impls if torch_cfgs]]
    print(f"\nsamples/s, batch {args.batch}, {args.dtype}, {info['backend']} ({info['device']}); "
          f"load average {info['load_average_start'][0]:.1f} -> {info['load_average_end'][0]:.1f}; {info['total_s']} s")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows: print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    if args.out:
        out = Path(args.out)
        prev = json.loads(out.read_text()) if args.append and out.exists() else None
        runs = (prev.get("runs") or [dict(info=prev["info"], rows=prev["rows"])]) if prev else []
        runs.append(dict(info=info, rows=rows))
        result = dict(info=info, rows=rows) if len(runs) == 1 else dict(info=info, rows=median_rows(runs), runs=runs)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n"); os.replace(tmp, out)
    return rows


def median_rows(runs: list[dict]) -> list[dict]:
    """Rows whose rates are medians over separate runs (processes), with each ratio's range over the runs. Rates of one
    configuration moved by up to 30% between processes here while the ratios within a run moved far less."""
    out = []
    for i, row in enumerate(runs[-1]["rows"]):
        same = [r["rows"][i] for r in runs]
        assert all((r["model"], r["px"], r["work"]) == (row["model"], row["px"], row["work"]) for r in same), "runs differ"
        med = dict(row)
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "px":
                med[k] = round(statistics.median(r[k] for r in same), 2 if "/" in k else 1)
                if "/" in k: med.setdefault("ratio_range", {})[k] = [min(r[k] for r in same), max(r[k] for r in same)]
        tk = [k for k in row if k.startswith("torch") and isinstance(row[k], (int, float))]
        if tk: med["torch_best"] = max(tk, key=lambda k: med[k])
        med["runs"] = len(same)
        out.append(med)
    return out


if __name__ == "__main__":
    main()
