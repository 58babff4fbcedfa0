"""Federated learning on the CPU: one round of local training, vmapped JAX against the reference structure
(clients trained one after another in PyTorch eager, then averaged), and the robust rules over ResNet-18-sized
updates against NumPy/PyTorch. With `--curve`, WGA and ACC per round of a cpu-preset federation (FedAvg and the
rules of Table 9), saved as a PNG: how the number of rounds of the cpu preset was chosen.

    python benchmarks/bench_federated.py --out benchmarks/results/bench_federated_cpu.json
    python benchmarks/bench_federated.py --only aggregators --clients 10
    python benchmarks/bench_federated.py --curve 30 --out benchmarks/results/fed_curve_cpu.json   # + a PNG beside it

Load averages (`os.getloadavg`) are stored with every measurement: the machine is shared, so compare ratios measured
in the same run. The same script runs on a GPU (JAX's default device; PyTorch on CUDA when available).
"""
from __future__ import annotations
import argparse, copy, dataclasses, json, os, platform, statistics, sys, time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see bench_train.py: spinning OpenMP threads on a shared machine
HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "tests"))     # torch_resnet.py, the hand-written PyTorch twin


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="round,aggregators", help="what to time: round, aggregators or both")
    p.add_argument("--clients", type=int, default=10, help="clients in the round / stacked updates")
    p.add_argument("--local-epochs", type=int, default=10, help="local epochs of the round (Appendix A.1: 10)")
    p.add_argument("--params", type=int, default=11_177_538, help="coordinates per update (ResNet-18 with 2 classes)")
    p.add_argument("--topk", type=int, default=400_000, help="SparseFed's k (Appendix A.1)")
    p.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    p.add_argument("--curve", type=int, default=0, help="rounds of the cpu-preset curve (0: no curve)")
    p.add_argument("--rules", default="all", help="curve: comma-separated Table 9 row indices (IID rows), or all")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def load() -> list:
    return [round(x, 2) for x in os.getloadavg()]


def timed(fn, repeats=3, budget=60.0):
    "(first call seconds, median seconds of the next calls); `fn()` must block until done."
    t0 = time.perf_counter(); fn(); first = time.perf_counter() - t0
    times = []
    while len(times) < repeats:
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
        if sum(times) > budget: break
    return first, statistics.median(times)


# ---- one round ----------------------------------------------------------------------------------------------------

def round_case(args):
    import jax, jax.numpy as jnp, torch
    from torch_resnet import make_torch_resnet
    from oilwater_jax.experiments import get_preset, get_table
    from oilwater_jax import pipeline
    from oilwater_jax.federated import federation_setup, fed_round, make_aggregator
    torch.set_num_threads(args.torch_threads)
    row = get_table("table9").rows[0].config
    cfg = get_preset("cpu")(row)
    cfg = dataclasses.replace(cfg, fed=dataclasses.replace(cfg.fed, clients_per_round=args.clients))
    data = pipeline.run_data(cfg)
    train = data.split("train")
    s = federation_setup(cfg, data, 0)
    local = dataclasses.replace(s.local, epochs=args.local_epochs)
    clients = np.arange(args.clients)
    fedavg = make_aggregator("fedavg")
    dev = (jax.device_put(train.images), jax.device_put(train.labels.astype(np.int32)))
    key = jax.random.key(1)
    def jax_round(vmapped):
        def go():
            r = fed_round(s.state, (), fedavg, s.partition, train, clients, local.epochs, local.batch_size, key, vmapped, dev)
            jax.block_until_ready(r.state.params)
        return go
    from oilwater_jax.federated import client_batches
    index, weights = client_batches(s.partition, clients, train.group_ids, local.epochs, local.batch_size, key)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = make_torch_resnet("resnet18", num_classes=2, width=16).to(device)
    x_all = torch.tensor(train.images, device=device).permute(0, 3, 1, 2).float().div_(255)
    y_all = torch.tensor(train.labels.astype(np.int64), device=device)
    def torch_round():
        states = []
        for j in range(len(clients)):       # the reference: a copy of the global model per client, a fresh optimiser
            m = copy.deepcopy(net); m.train()
            opt = torch.optim.SGD(m.parameters(), lr=local.learning_rate, momentum=local.momentum, weight_decay=local.weight_decay)
            for idx, w in zip(index[j], weights[j]):
                real = idx[w > 0]
                if len(real) == 0: continue
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(m(x_all[real]), y_all[real])
                loss.backward(); opt.step()
            states.append(m.state_dict())
        avg = {k: (torch.stack([st[k].float() for st in states]).mean(0)).to(states[0][k].dtype) for k in states[0]}
        net.load_state_dict(avg)
        if device == "cuda": torch.cuda.synchronize()
    real_steps = int((weights.sum(-1) > 0).sum())
    rows = []
    for name, fn in (("jax_vmapped", jax_round(True)), ("jax_loop", jax_round(False)), ("torch_eager_loop", torch_round)):
        l0 = load(); first, med = timed(fn, repeats=2, budget=120)
        rows.append(dict(case="round", impl=name, clients=args.clients, local_epochs=args.local_epochs,
                         batch=local.batch_size, samples=int(s.partition.sizes[clients].sum()) * args.local_epochs,
                         steps=real_steps, first_s=round(first, 2), median_s=round(med, 3), load_start=l0, load_end=load()))
        print(json.dumps(rows[-1]), flush=True)
    ref = {r["impl"]: r["median_s"] for r in rows}
    for r in rows: r["speedup_vs_torch"] = round(ref["torch_eager_loop"] / r["median_s"], 2)
    return rows


# ---- aggregators --------------------------------------------------------------------------------------------------

def aggregator_case(args):
    import jax, jax.numpy as jnp, torch
    from oilwater_jax.federated import coordinate_median, trimmed_mean
    torch.set_num_threads(args.torch_threads)
    rng = np.random.default_rng(0)
    u_np = rng.standard_normal((args.clients, args.params), dtype=np.float32)
    u_jax = jax.device_put(u_np); u_t = torch.from_numpy(u_np)
    e_np = u_np.mean(0); e_jax = jnp.asarray(e_np); e_t = torch.from_numpy(e_np)
    k, trim = args.topk, 2
    med_j = jax.jit(coordinate_median); trim_j = jax.jit(lambda u: trimmed_mean(u, trim))
    med_jnp = jax.jit(lambda u: jnp.median(u, axis=0))
    trim_jnp = jax.jit(lambda u: jnp.mean(jnp.sort(u, axis=0)[trim:len(u) - trim], axis=0))
    topk_j = jax.jit(lambda e: jax.lax.top_k(jnp.abs(e), k)[1])
    approx_j = jax.jit(lambda e: jax.lax.approx_max_k(jnp.abs(e), k, recall_target=0.95)[1])
    def trim_np(u): s = np.sort(u, axis=0); return s[trim:len(u) - trim].mean(0)
    def trim_t(u): s = torch.sort(u, dim=0).values; return s[trim:len(u) - trim].mean(0)
    cases = [
        ("median", "jax_sorting_network", lambda: med_j(u_jax).block_until_ready()),
        ("median", "jax_jnp_median", lambda: med_jnp(u_jax).block_until_ready()),
        ("median", "numpy_median", lambda: np.median(u_np, axis=0)),
        ("median", "torch_median_lower", lambda: torch.median(u_t, dim=0).values),   # lower middle value, not the mean
        ("median", "torch_quantile_0.5", lambda: torch.quantile(u_t[:, : 2 ** 24 - 1], 0.5, dim=0)),
        ("trimmed_mean", "jax_sorting_network", lambda: trim_j(u_jax).block_until_ready()),
        ("trimmed_mean", "jax_jnp_sort", lambda: trim_jnp(u_jax).block_until_ready()),
        ("trimmed_mean", "numpy_sort", lambda: trim_np(u_np)),
        ("trimmed_mean", "torch_sort", lambda: trim_t(u_t)),
        ("topk", "jax_lax_top_k", lambda: topk_j(e_jax).block_until_ready()),
        ("topk", "jax_approx_max_k_0.95", lambda: approx_j(e_jax).block_until_ready()),
        ("topk", "torch_topk", lambda: torch.topk(e_t.abs(), k).indices),
        ("topk", "numpy_argpartition", lambda: np.argpartition(-np.abs(e_np), k)[:k]),
    ]
    exact = set(np.asarray(topk_j(e_jax)).tolist())
    recall = len(exact & set(np.asarray(approx_j(e_jax)).tolist())) / k
    rows = []
    for op, impl, fn in cases:
        l0 = load(); first, med = timed(fn, repeats=3, budget=30)
        row = dict(case="aggregator", op=op, impl=impl, clients=args.clients, params=args.params, first_s=round(first, 3),
                   median_s=round(med, 4), load_start=l0, load_end=load())
        if impl.startswith("jax_approx"): row["recall"] = round(recall, 4)
        rows.append(row); print(json.dumps(row), flush=True)
    np.testing.assert_allclose(np.asarray(med_j(u_jax)), np.median(u_np, axis=0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(trim_j(u_jax)), trim_np(u_np), rtol=1e-5, atol=1e-6)
    return rows


# ---- rounds curve -------------------------------------------------------------------------------------------------

def curve_case(args, out):
    import jax
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from oilwater_jax.experiments import get_preset, get_table
    from oilwater_jax import pipeline
    from oilwater_jax.federated import federation_setup, run_federation
    rows, curves = [], {}
    for i, r in enumerate(get_table("table9").rows):
        if not r.config.iid or (args.rules != "all" and str(i) not in args.rules.split(",")): continue
        for method in (["fedavg"] if not curves else []) + [r.config.method]:
            cfg = get_preset("cpu")(r.config)
            cfg = dataclasses.replace(cfg, fed=dataclasses.replace(cfg.fed, rounds=args.curve))
            label = "FedAvg" if method == "fedavg" else " ".join(r.label)
            data = pipeline.run_data(cfg)
            s = federation_setup(cfg, data, 0, method=method)
            l0 = load(); t0 = time.perf_counter()
            res = run_federation(data, s.partition, s.aggregator, cfg.fed, s.local, s.key, model=s.model, state=s.state, eval_every=1)
            sec = time.perf_counter() - t0
            curves[label] = [(h["round"], 100 * h["test_wga"], 100 * h["test_adjusted_acc"]) for h in res.history]
            rows.append(dict(case="curve", rule=label, rounds=args.curve, seconds=round(sec, 1), load_start=l0, load_end=load(),
                             curve=curves[label]))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "curve"}), flush=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for label, c in curves.items():
        rr = [x[0] for x in c]
        axes[0].plot(rr, [x[1] for x in c], label=label); axes[1].plot(rr, [x[2] for x in c], label=label)
    axes[0].set(title="test WGA (%)", xlabel="round"); axes[1].set(title="test ACC (%, Waterbirds-adjusted)", xlabel="round")
    axes[1].legend(fontsize=8); fig.suptitle("cpu preset, IID, seed 0: 20 clients, 10 per round, 2 local epochs")
    png = Path(out).with_suffix(".png") if out else HERE.parent / "results" / "fed_curve_cpu.png"
    fig.tight_layout(); fig.savefig(png, dpi=110)
    print(f"wrote {png}")
    return rows


def main(argv=None):
    args = parse_args(argv)
    import jax
    info = dict(platform=platform.platform(), device=str(jax.devices()[0]), cpus=os.cpu_count(), jax=jax.__version__,
                started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), argv=sys.argv[1:])
    try:
        import torch; info["torch"] = torch.__version__
    except ImportError: pass
    rows = []
    if args.curve: rows += curve_case(args, args.out)
    else:
        if "round" in args.only: rows += round_case(args)
        if "aggregators" in args.only: rows += aggregator_case(args)
    if args.out:
        tmp = Path(args.out + ".tmp"); tmp.write_text(json.dumps(dict(info=info, rows=rows), indent=1) + "\n")
        tmp.replace(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
