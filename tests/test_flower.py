"""Flower as the deployment engine: telemetry is off, the strategy aggregates as the in-process rules do, and a
loopback federation (a SuperLink, three SuperNodes and `flwr run`, each a separate process on 127.0.0.1, insecure,
bounded in time and stopped by PID) ends two rounds with the same global model as the in-process simulation."""
import os
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"   # before anything imports flwr
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from oilwater_jax import flower
from oilwater_jax.flower import OilwaterStrategy, to_arrays, from_arrays, write_flower_app, write_flower_config
from oilwater_jax.federated import make_aggregator, trimmed_mean, fedavg, run_federation

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_telemetry_is_disabled():
    assert os.environ["FLWR_TELEMETRY_ENABLED"] == "0"
    assert 'os.environ["FLWR_TELEMETRY_ENABLED"] = "0"' in Path(flower.__file__).read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "FLWR_TELEMETRY_ENABLED=0" in ci, ".ci/run must export FLWR_TELEMETRY_ENABLED=0 before the tests"


def test_strategy_aggregates_like_the_rule():
    from flwr.app import MetricRecord, RecordDict

    class Reply:   # a reply as the strategy reads it (real Messages exist only inside a run)
        def __init__(self, content): self.content = content
        def has_error(self): return False
    rng = np.random.default_rng(0)
    like = {"params": {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}, "batch_stats": {"mean": jnp.zeros(2)}}
    clients = [jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), like) for _ in range(5)]
    strategy = OilwaterStrategy(make_aggregator("trimmed_mean", trim=1), like, 5)
    strategy.current = like
    order = [3, 0, 4, 1, 2]                                                # replies arrive in any order
    replies = [Reply(RecordDict({"arrays": to_arrays(clients[i]), "metrics": MetricRecord({"partition-id": i})}))
               for i in order]
    arrays, _ = strategy.aggregate_train(1, replies)
    got = from_arrays(arrays, like)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *clients)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got["params"], trimmed_mean(stacked["params"], 1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got["batch_stats"], fedavg(stacked["batch_stats"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    "PIDs whose parent is `pid` (Flower starts a SuperExec beside every SuperLink and SuperNode)."
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid: out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    return out


def _alive(pid: int) -> bool:
    "Whether `pid` runs (not a zombie)."
    try: return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError: return False


def _stop(pids: list[int]):
    "Stop the started processes and their children, by PID (children collected before their parents exit)."
    everyone, todo = [], list(pids)
    while todo:                                   # every descendant (SuperExec, then its ServerApp or ClientApp)
        pid = todo.pop()
        everyone.append(pid); todo += _children(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in everyone:
            try: os.kill(pid, sig)
            except ProcessLookupError: pass
        time.sleep(1.0)


def _wait_for_port(port: int, seconds: float):
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0: return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


RUN_CONFIG = {"preset": "smoke", "method": "fed_trimmed_mean", "iid": True, "trim": 1, "seed": 0, "n-clients": 3,
              "rounds": 2, "timeout": 500}


@pytest.mark.timeout(900)
def test_loopback_deployment_equals_in_process_simulation(tmp_path):
    if shutil.which("flower-superlink", path=str(BIN)) is None:
        pytest.skip("flwr's executables are not installed in this environment")
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_HOME": str(tmp_path / "flwr_home"),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore",
           "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}   # SuperExecs look for a ServerApp/ClientApp to start every 0.1 s (1 s)
    out = tmp_path / "final.npz"
    app = write_flower_app(tmp_path / "app", {**RUN_CONFIG, "out": str(out)})
    link = _free_port()
    write_flower_config(env["FLWR_HOME"], f"127.0.0.1:{link}", name="loopback")
    logs, pids = {}, []
    def start(name, *args):
        logs[name] = open(tmp_path / f"{name}.log", "w")
        p = subprocess.Popen([str(BIN / args[0]), *args[1:]], env=env, cwd=tmp_path, stdout=logs[name], stderr=subprocess.STDOUT)
        pids.append(p.pid)
        return p
    # The in-process reference runs in a thread while the SuperLink and SuperNodes start. It first runs a node's round 1
    # (`node_update`, as a ClientApp does), which compiles `client_start` and `local_train` into the persistent
    # compilation cache; the run is submitted after that, so that three ClientApp processes do not compile the same
    # program at once on a cold cache (CI's). The ServerApp's `server_step` is compiled by the reference's first round
    # while the ServerApp starts.
    reference, compiled = {}, threading.Event()
    def simulate():
        try:
            flower.node_update(RUN_CONFIG, 0, 1)
            compiled.set()
            cfg, seed, data, s = flower.client_data(RUN_CONFIG)   # the setup node_update built (the nodes build the same)
            history = []
            run_federation(data, s.partition, s.aggregator, cfg.fed, s.local, s.key, model=s.model, state=s.state,
                           per_client=True,
                           on_round=lambda res: history.append([np.asarray(x) for x in jax.tree.leaves(
                               {"params": res.state.params, "batch_stats": res.state.batch_stats})]))
            reference.update(like=[np.asarray(x) for x in jax.tree.leaves({"params": s.state.params, "batch_stats": s.state.batch_stats})],
                             history=history)
        except BaseException as e:   # re-raised in the test's thread
            reference["error"] = e
        compiled.set()
    worker = threading.Thread(target=simulate, daemon=True)
    try:
        start("superlink", "flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
              "--host", "127.0.0.1", "--port", str(link))
        for i in range(3):   # SuperNodes retry until the SuperLink listens (--max-retries)
            start(f"supernode{i}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                  "--host", "127.0.0.1", "--port", str(_free_port()), "--node-config", f"partition-id={i}",
                  "--max-retries", "30")
        worker.start()
        _wait_for_port(link, 90)
        compiled.wait(300)
        run = subprocess.run([str(BIN / "flwr"), "run", str(app), "loopback", "--stream"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
        deadline = time.time() + 30                                    # the ServerApp writes the model as it ends
        while not out.exists() and time.time() < deadline: time.sleep(0.5)
    finally:
        _stop(pids)
        for f in logs.values(): f.close()
    tail = run.stdout[-2000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    assert out.exists(), tail + (tmp_path / "supernode0.log").read_text()[-2000:]
    deadline = time.time() + 10
    while any(_alive(p) for p in pids) and time.time() < deadline: time.sleep(0.5)
    assert not any(_alive(p) for p in pids)
    worker.join(300)
    if "error" in reference: raise reference["error"]
    assert "history" in reference, "the in-process reference did not finish within 300 s"
    rounds = [np.load(tmp_path / f"final_round{r}.npz") for r in range(3)]
    for i, b in enumerate(reference["like"]):
        np.testing.assert_array_equal(rounds[0][f"leaf{i}"], b)              # the deployment starts from our model
    final = np.load(out)
    for i in range(len(final.files)): np.testing.assert_array_equal(final[f"leaf{i}"], rounds[2][f"leaf{i}"])
    # The deployment runs, on each node, our vmapped local training for one client; the in-process simulation with
    # `per_client=True` runs the same programs on the same inputs: the global models must agree after every round.
    # (Against the all-clients vmapped program or the per-client loop they agree only to rounding, which training at
    # this scale amplifies: a 1e-7 change before a round moves the model by 2e-3 after it; see 40_federated.)
    for r in (1, 2):
        want = reference["history"][r - 1]
        moved = max(float(np.abs(w - rounds[r - 1][f"leaf{i}"]).max()) for i, w in enumerate(want))
        worst = max(float(np.abs(rounds[r][f"leaf{i}"] - w).max()) for i, w in enumerate(want))
        print(f"round {r}: max |deployment - in-process| = {worst:.3g} (the round moved the model by {moved:.3g})")
        assert moved > 1e-3
        for i, w in enumerate(want):
            np.testing.assert_allclose(rounds[r][f"leaf{i}"], w, rtol=1e-6, atol=1e-7)
