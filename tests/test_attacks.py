"Poisoning attacks: trigger placement, budgets, provenance, ASR definitions, per-example gradients, gradient matching."
import numpy as np
import pytest
import jax, jax.numpy as jnp
import flax.linen as nn

from oilwater_jax.core import GroupDataset, OilwaterError, images_to_float
from oilwater_jax.poisons import (POISON_ID_BASE, ATTACKS, DLBDConfig, SAConfig, backdoor_asr, backdoor_asr_conditional,
                                  make_attack, poison_count, stamp_trigger, subpopulation_asr, targeted_asr,
                                  trigger_geometry)
from oilwater_jax.per_example import per_example_grads, example_loss
from oilwater_jax.gradient_matching import GMConfig, brew, flat_grad, matching_loss, project
from oilwater_jax.train import TrainConfig, fit


def make_toy(n_per_group=(60, 12, 10, 30), n_eval=(8, 8, 8, 8), size=16, seed=0, name="toy-waterbirds"):
    rng = np.random.default_rng(seed)
    rows = [(g, s) for s, counts in enumerate((n_per_group, n_eval, n_eval)) for g, c in enumerate(counts) for _ in range(c)]
    g, s = np.array(rows).T
    img = rng.integers(0, 80, (len(g), size, size, 3))
    img[..., 0] += 150 * (g // 2)[:, None, None]; img[..., 2] += 150 * (g % 2)[:, None, None]
    return GroupDataset(images=img.clip(0, 255).astype(np.uint8), labels=(g // 2).astype(np.int32),
                        attributes=(g % 2).astype(np.int32), splits=s.astype(np.int8),
                        sample_ids=1000 + 2 * np.arange(len(g), dtype=np.int64), name=name)


class SmallNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False, return_features=False):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3), strides=(2, 2))(x)))
        h = nn.relu(nn.Conv(8, (3, 3))(x)).mean(axis=(1, 2))
        z = nn.Dense(2, name="fc")(h)
        return (z, h) if return_features else z


@pytest.fixture(scope="module")
def toy():
    return make_toy()


@pytest.fixture(scope="module")
def toy_state(toy):
    return fit(TrainConfig.smoke(epochs=3, learning_rate=0.05), toy, jax.random.key(0), model=SmallNet(), progress=False).state


# --- DLBD trigger and budget -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, rows", [(32, (27, 31)), (64, (56, 63)), (224, (198, 223))])
def test_trigger_pixels(size, rows):
    side, gap = trigger_geometry(size)
    assert (side, gap) == {32: (4, 1), 64: (7, 1), 224: (25, 1)}[size]
    x = np.full((1, size, size, 3), 7, np.uint8)
    t = stamp_trigger(x, side, gap)
    expected = np.zeros((size, size), bool)
    expected[rows[0]:rows[1], rows[0]:rows[1]] = True      # square side×side, last row/column of the image untouched
    changed = (t[0] != x[0]).any(-1)
    np.testing.assert_array_equal(changed, expected)
    assert (t[0][expected] == 255).all()


def test_budget_rounding():
    assert [poison_count(f, 4795) for f in (0.004, 0.005, 0.006, 0.008, 0.01, 0.02)] == [20, 24, 29, 39, 48, 96]
    assert poison_count(0.01, 4800) == 48 and poison_count(0.03, 100) == 3      # exact products are not pushed up
    with pytest.raises(OilwaterError):
        poison_count(1.0, 10)


def test_dlbd_labels_and_provenance(toy):
    p = make_attack("dlbd", toy, jax.random.key(0), poison_fraction=0.1)
    train, clean = p.train, toy.split("train")
    n = poison_count(0.1, len(clean))
    assert p.n_poisons == n and len(train) == len(clean) + n
    np.testing.assert_array_equal(train.sample_ids[:len(clean)], clean.sample_ids)     # clean part untouched, in order
    np.testing.assert_array_equal(p.source_ids[~p.is_poison], clean.sample_ids)
    assert (train.labels[p.is_poison] == 1).all() and (p.base_group_ids[p.is_poison] == 0).all()
    np.testing.assert_array_equal(train.sample_ids[p.is_poison], POISON_ID_BASE + np.arange(n))
    by_id = dict(zip(clean.sample_ids.tolist(), range(len(clean))))
    for img, sid in zip(train.images[p.is_poison], p.source_ids[p.is_poison]):
        src = clean.images[by_id[int(sid)]]
        assert clean.group_ids[by_id[int(sid)]] == 0
        np.testing.assert_array_equal(img, stamp_trigger(src[None], *trigger_geometry(16))[0])
    for s in ("val", "test"):
        np.testing.assert_array_equal(p.data.split(s).images, toy.split(s).images)
    assert (p.evaluation.labels == 0).all() and len(p.evaluation.labels) == (toy.split("test").labels == 0).sum()


def test_sa_with_replacement(toy):
    p = make_attack("sa", toy, jax.random.key(2), poison_fraction=0.6)
    clean = toy.split("train")
    assert p.n_poisons == poison_count(0.6, len(clean)) > (clean.group_ids == 0).sum()   # more than the group: replacement
    assert (p.train.labels[p.is_poison] == 1).all() and (p.base_group_ids[p.is_poison] == 0).all()
    assert p.evaluation.group == 0 and p.evaluation.test_mask.sum() == (toy.split("test").group_ids == 0).sum()


def test_roles_required_for_unknown_names(toy):
    import dataclasses
    with pytest.raises(OilwaterError, match="pass roles="):
        make_attack("dlbd", dataclasses.replace(toy, name="mnist"), jax.random.key(0))
    p = make_attack("dlbd", dataclasses.replace(toy, name="mnist"), jax.random.key(0),
                    roles={"LRG-1": (2,), "HRG": (0, 3)}, poison_fraction=0.1)
    assert (p.base_group_ids[p.is_poison] == 0).all()


# --- ASR definitions -------------------------------------------------------------------------------------------------

def test_asr_definitions():
    labels = np.array([0, 0, 0, 0, 0, 1, 1])
    clean = np.array([0, 0, 0, 1, 1, 1, 0])
    trig = np.array([1, 1, 0, 1, 0, 1, 1])
    # non-target samples 0..4: success = correct clean and target when triggered -> samples 0, 1
    assert backdoor_asr(clean, trig, labels, 1) == pytest.approx(2 / 5)
    assert backdoor_asr_conditional(clean, trig, labels, 1) == pytest.approx(2 / 3)
    assert targeted_asr(np.array([1, 1, 0, 1]), 1) == pytest.approx(0.75)
    r = subpopulation_asr(poisoned_predictions=np.array([1, 1, 0, 1, 0, 0, 1]), clean_predictions=clean, labels=labels,
                          in_target=np.array([1, 1, 1, 0, 0, 0, 0], bool))
    assert r["asr"] == pytest.approx(1 - 1 / 3) and r["collateral"] == pytest.approx(1 / 4 - 1 / 2)


# --- per-example gradients -------------------------------------------------------------------------------------------

def test_per_example_grads_match_loop_resnet():
    from oilwater_jax.models import make_model, init_model
    model = make_model("resnet10", num_classes=2, width=4)
    v = init_model(model, jax.random.key(0), (16, 16, 3))
    v = {**v, "batch_stats": jax.tree.map(lambda a: a + 0.2, v["batch_stats"])}
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (3, 16, 16, 3)).astype(np.uint8); y = np.array([1, 0, 1], np.int32)
    G = per_example_grads(model.apply, v, x, y, chunk_size=2)
    one = jax.jit(jax.grad(lambda p, xi, yi: example_loss(model.apply, {**v, "params": p}, images_to_float(xi), yi)))
    for i in range(3):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-5), G, one(v["params"], x[i], y[i]))


# --- gradient matching -----------------------------------------------------------------------------------------------

def _setup(toy, toy_state):
    tr, te = toy.split("train"), toy.split("test")
    xb, yb = images_to_float(tr.images[tr.group_ids == 2][:6]), jnp.ones(6, jnp.int32)
    xt = images_to_float(te.images[te.labels == 0][:2])
    return xb, yb, xt


def test_gm_loss_decreases_and_stays_feasible(toy, toy_state):
    xb, yb, xt = _setup(toy, toy_state)
    cfg = GMConfig(steps=30, restarts=2)
    b = brew(toy_state.apply_fn, toy_state.variables, xb, yb, xt, jnp.ones(2, jnp.int32), jax.random.key(3), cfg)
    assert b.losses[:, -5:].mean() < b.losses[:, :5].mean() - 0.01
    assert b.best == int(np.argmin(b.losses[:, -1]))
    assert np.abs(b.delta).max() <= cfg.eps + 1e-6
    assert (np.asarray(xb) + b.delta).min() >= -1e-6 and (np.asarray(xb) + b.delta).max() <= 1 + 1e-6


def test_projection():
    x = jnp.array([[[[0.0, 0.5, 1.0]]]])
    std = jnp.array([0.2, 0.2, 0.2])
    u = jnp.array([[[[-1.0, 1.0, 1.0]]]])           # δ = σu = (-0.2, 0.2, 0.2)
    d = project(u, x, 0.1, std) * std
    np.testing.assert_allclose(d, [[[[0.0, 0.1, 0.0]]]], atol=1e-7)


@pytest.mark.slow
def test_gm_gradient_finite_differences_small_net(toy, toy_state):
    xb, yb, xt = _setup(toy, toy_state)
    cfg = GMConfig()
    with jax.enable_x64(True):
        v = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), toy_state.variables)
        x = jnp.asarray(xb[:3], jnp.float64)
        u = 0.01 * jax.random.normal(jax.random.key(4), x.shape, jnp.float64)
        tg = flat_grad(toy_state.apply_fn, v, jnp.asarray(xt, jnp.float64), jnp.ones(2, jnp.int32))
        f = lambda u: matching_loss(u, x, yb[:3], tg, toy_state.apply_fn, v, jax.random.key(5), cfg)
        for k in range(1):
            d = jax.random.normal(jax.random.key(10 + k), u.shape, jnp.float64)
            fd = (f(u + 1e-5 * d) - f(u - 1e-5 * d)) / 2e-5
            an = jnp.vdot(jax.grad(f)(u), d)
            assert abs(float(an) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd)))


class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False, return_features=False):
        h = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3), strides=(2, 2))(x))).mean(axis=(1, 2))
        z = nn.Dense(2, name="fc")(h)
        return (z, h) if return_features else z


def test_gm_gradient_finite_differences():
    "d/du of the matching loss (a gradient of a gradient, augmentation on) against central differences, float64."
    net, cfg = TinyNet(), GMConfig()
    with jax.enable_x64(True):
        v = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
        v = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), {**v, "batch_stats": jax.tree.map(lambda a: a + 0.3, v["batch_stats"])})
        x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 3), jnp.float64, 0.1, 0.9)
        tg = flat_grad(net.apply, v, jax.random.uniform(jax.random.key(2), (2, 8, 8, 3), jnp.float64), jnp.ones(2, jnp.int32))
        f = lambda u: matching_loss(u, x, jnp.array([1, 1, 0]), tg, net.apply, v, jax.random.key(5), cfg)

        @jax.jit
        def check(u, d, h=1e-6):
            return jnp.vdot(jax.grad(f)(u), d), (f(u + h * d) - f(u - h * d)) / (2 * h)
        u = 0.05 * jax.random.normal(jax.random.key(4), x.shape, jnp.float64)
        an, fd = jax.vmap(check, in_axes=(None, 0))(u, jax.random.normal(jax.random.key(10), (3, *x.shape), jnp.float64))
    assert np.all(np.abs(an) > 1e-7)                                     # a non-trivial direction
    np.testing.assert_allclose(np.asarray(an), np.asarray(fd), rtol=1e-5, atol=1e-10)


def test_gm_vmapped_restarts_equal_sequential():
    net = TinyNet()
    v = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3), jnp.float32, 0.1, 0.9)
    xt = jax.random.uniform(jax.random.key(2), (2, 8, 8, 3))
    args = (net.apply, v, x, jnp.ones(4, jnp.int32), xt, jnp.zeros(2, jnp.int32), jax.random.key(7))
    seq, vm = brew(*args, GMConfig(steps=4, restarts=2)), brew(*args, GMConfig(steps=4, restarts=2, vmap_restarts=True))
    np.testing.assert_allclose(vm.losses, seq.losses, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(vm.delta, seq.delta, atol=1e-5)
    assert vm.best == seq.best


def test_make_gm_registry_and_provenance(toy, toy_state):
    assert {"dlbd", "sa", "gm"} <= set(ATTACKS)
    p = make_attack("gm", toy, jax.random.key(0), state=toy_state, **{**GMConfig.smoke().__dict__, "craft": TrainConfig.smoke()})
    clean = toy.split("train")
    assert len(p.train) == len(clean) and p.n_poisons == poison_count(0.05, len(clean))
    assert (p.base_group_ids[p.is_poison] == 2).all() and (p.train.labels[p.is_poison] == 1).all()
    assert not set(p.source_ids[p.is_poison].tolist()) & set(p.train.sample_ids[~p.is_poison].tolist())
    assert p.evaluation.intended_class == 1 and (p.evaluation.labels == 0).all()


# --- the engine's adapter (oilwater_jax.attack_runs) -------------------------------------------------------------------

def test_poison_for_run_gm_stage_sharing_fast(monkeypatch, tmp_path):
    "The caching and assembly around GM's crafting, with the crafting replaced by a cheap stand-in."
    import dataclasses
    from oilwater_jax import attack_runs
    from oilwater_jax.experiments import make_row, smoke_preset
    from oilwater_jax.gradient_matching import gm_samples
    from oilwater_jax.runner import StageCache
    calls = []
    def fake_craft(cfg, data, seed):
        calls.append(seed)
        g = attack_runs.attack_config(cfg)
        t, b = gm_samples(data, attack_runs.stage_key(seed, "attack", "gm"), g)
        return {"target_index": t, "base_index": b, "poisons": data.split("train").images[b] // 2,
                "losses": np.ones((g.restarts, g.steps), np.float32), "best": np.int64(0), "seconds": np.float64(0.0)}
    monkeypatch.setattr(attack_runs, "craft_gm_stage", fake_craft)
    data = make_toy()
    cfgs = [dataclasses.replace(smoke_preset(make_row(m, "waterbirds", "gm", c)), image_size=16)
            for m, c in (("jtt", "standard"), ("jtt", "worst"), ("erm", None))]
    stages = StageCache(root=tmp_path)
    ps = [attack_runs.poison_for_run(c, data, 5, stages) for c in cfgs]
    assert calls == [5] and stages.stats["memory"] == 2
    q = attack_runs.poison_for_run(cfgs[0], data, 5, StageCache(root=tmp_path))    # restored from disk
    for p in ps[1:] + [q]:
        np.testing.assert_array_equal(p.train.images, ps[0].train.images)
        np.testing.assert_array_equal(p.source_ids, ps[0].source_ids)
    attack_runs.poison_for_run(cfgs[0], data, 6, stages)
    assert calls == [5, 6]                                                          # another seed: crafted again


@pytest.mark.slow
def test_poison_for_run_gm_is_a_shared_stage(monkeypatch, tmp_path):
    import dataclasses
    from oilwater_jax import models
    from oilwater_jax.experiments import make_row, smoke_preset
    from oilwater_jax.runner import StageCache
    from oilwater_jax.attack_runs import poison_for_run, attack_config
    monkeypatch.setitem(models.MODELS, "tiny_test", lambda num_classes=2: TinyNet())
    data = make_toy()
    cfgs = [dataclasses.replace(smoke_preset(make_row(m, "waterbirds", "gm", c)), model="tiny_test", image_size=16)
            for m, c in (("jtt", "standard"), ("jtt", "ideal"), ("erm", None))]
    stages = StageCache(root=tmp_path)
    ps = [poison_for_run(c, data, 3, stages) for c in cfgs]
    assert stages.stats["computed"] == 1 and stages.stats["memory"] == 2          # crafted once, shared by the cases
    for p in ps[1:]:
        np.testing.assert_array_equal(p.train.images, ps[0].train.images)
        np.testing.assert_array_equal(p.evaluation.test_index, ps[0].evaluation.test_index)
    p, g = ps[0], attack_config(cfgs[0])
    clean = data.split("train")
    assert p.n_poisons == poison_count(0.01, len(clean)) and len(p.train) == len(clean)
    assert (p.base_group_ids[p.is_poison] == 2).all() and (p.train.labels[p.is_poison] == 1).all()
    assert len(p.evaluation.test_index) == 5 and (p.evaluation.labels == 0).all()
    by_id = dict(zip(clean.sample_ids.tolist(), clean.images.astype(int)))
    d = np.stack([p.train.images[i].astype(int) - by_id[int(s)] for i, s in zip(np.flatnonzero(p.is_poison), p.source_ids[p.is_poison])])
    assert np.abs(d).max() <= round(g.eps * 255)
    fresh = StageCache(root=tmp_path)                                             # from disk in a new process
    q = poison_for_run(cfgs[1], data, 3, fresh)
    assert fresh.stats == {"memory": 0, "disk": 1, "computed": 0, "corrupt": 0}
    np.testing.assert_array_equal(q.train.images, p.train.images)
    assert q.info["final_losses"] == pytest.approx(p.info["final_losses"])


def test_erm_attack_cell_without_attack_is_erm(monkeypatch):
    "Degenerate equivalence: the attack adapter adds nothing when the row has no attack."
    import dataclasses
    from oilwater_jax import models
    from oilwater_jax.experiments import make_row, smoke_preset
    from oilwater_jax.erm import erm_cell
    from oilwater_jax.attack_runs import erm_attack_cell
    monkeypatch.setitem(models.MODELS, "tiny_test", lambda num_classes=2: TinyNet())
    cfg = dataclasses.replace(smoke_preset(make_row("erm", "waterbirds")), model="tiny_test")
    assert erm_attack_cell(cfg, 0) == erm_cell(cfg, 0, None)
