"""Data parallelism (`oilwater_jax.sharding`) on two host devices: the sharded train step, evaluation and per-example
gradients equal the single-device ones to float32 tolerance.

JAX fixes its device count when it is first imported, so the check runs in a fresh interpreter with
`XLA_FLAGS=--xla_force_host_platform_device_count=2`. The model is a real (narrow) ResNet with BatchNorm and the CPU
path's hybrid convolution, so a step that computed BatchNorm statistics per device, or a custom VJP that did not
partition, would fail here.
"""
import json, os, subprocess, sys, textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import json
    import numpy as np, jax, jax.numpy as jnp
    from oilwater_jax.models import make_model
    from oilwater_jax.train import TrainConfig, create_train_state, train_step, predict
    from oilwater_jax.per_example import per_example_grads
    from oilwater_jax.sharding import (make_mesh, make_sharded_train_step, replicate, shard_batch, sharded_predict,
                                       sharded_per_example_grads)
    from oilwater_jax.core import OilwaterError

    def max_rel(a, b):
        la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
        assert len(la) == len(lb)
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / (np.max(np.abs(np.asarray(y))) + 1e-12))
                   for x, y in zip(la, lb))

    mesh = make_mesh()
    out = {"n_devices": mesh.devices.size}
    model = make_model("resnet10", num_classes=2, width=4)
    cfg = TrainConfig.smoke(batch_size=8, learning_rate=0.05)
    state = create_train_state(jax.random.key(0), model, (16, 16, 3), cfg)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, 24).astype(np.int32)
    batches = [rng.permutation(24)[:8].astype(np.int32) for _ in range(3)]
    weights = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)  # padding rows carry no loss, as in fit

    plain = state
    step = make_sharded_train_step(mesh)
    sharded = replicate(mesh, state)
    img_r, lab_r = replicate(mesh, images), replicate(mesh, labels)
    losses = []
    for idx in batches:
        plain, mp = train_step(plain, jnp.asarray(images), jnp.asarray(labels), jnp.asarray(idx), jnp.asarray(weights))
        sharded, ms = step(sharded, img_r, lab_r, *shard_batch(mesh, idx, weights))
        losses.append((float(mp["loss"]), float(ms["loss"])))
    out["shards_of_losses"] = len(ms["losses"].addressable_shards)
    out["shard_rows"] = int(ms["losses"].addressable_shards[0].data.shape[0])
    out["params_devices"] = len(jax.tree.leaves(sharded.params)[0].sharding.device_set)
    out["losses"] = losses
    out["params_rel"] = max_rel(sharded.params, plain.params)
    out["batch_stats_rel"] = max_rel(sharded.batch_stats, plain.batch_stats)
    out["params_moved"] = max_rel(plain.params, state.params)
    out["logits_rel"] = max_rel(sharded_predict(mesh, plain, images, batch_size=8), predict(plain, images, batch_size=8))
    g1 = per_example_grads(plain.apply_fn, plain.variables, images[:10], labels[:10], "params", chunk_size=4)
    g2 = sharded_per_example_grads(mesh, plain.apply_fn, plain.variables, images[:10], labels[:10], "params", chunk_size=4)
    out["grads_rel"] = max_rel(g2, g1)
    out["grads_shape"] = list(jax.tree.leaves(g2)[0].shape)
    try: step(sharded, img_r, lab_r, np.arange(3, dtype=np.int32), np.ones(3, np.float32)); out["odd_batch"] = "ran"
    except OilwaterError as e: out["odd_batch"] = str(e)
    print("RESULT", json.dumps(out))
''')


def test_two_devices_equal_one():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])
    assert out["n_devices"] == 2
    # the batch really is split: two shards of 4 rows; the parameters live on both devices
    assert out["shards_of_losses"] == 2 and out["shard_rows"] == 4 and out["params_devices"] == 2
    # three SGD steps moved the parameters far more than the sharded and plain runs differ (float32 sums reordered)
    assert out["params_moved"] > 1e-3
    for a, b in out["losses"]: assert abs(a - b) <= 1e-5 * max(1.0, abs(b))
    for k in ("params_rel", "batch_stats_rel", "logits_rel", "grads_rel"): assert out[k] < 1e-4, (k, out[k])
    assert out["grads_shape"][0] == 10
    assert "does not split over 2 devices" in out["odd_batch"]
