"""Federated learning (Appendix A.3): the aggregation rules on hand-made updates and their degenerate equivalences
with FedAvg, the partitions, the vmapped round against the per-client loop, and a Table 9 cell against its FedAvg
reference."""
import dataclasses

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from tiny_models import TinyCNN

from oilwater_jax.core import GroupDataset, OilwaterError
from oilwater_jax.experiments import FedSettings, get_preset, get_table
from oilwater_jax.federated import (fedavg, coordinate_median, trimmed_mean, sparsefed_init, sparsefed_update,
                                    make_aggregator, iid_partition, non_iid_partition, with_poisons, fed_round,
                                    run_federation, kept_share, cell_partition, minority_groups, fed_cell)
from oilwater_jax.runner import StageCache
from oilwater_jax.train import TrainConfig, create_train_state



def make_toy(n=400, seed=0, size=8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n); a = np.where(rng.random(n) < 0.9, y, 1 - y)
    img = rng.integers(0, 60, (n, size, size, 3))
    img[:, :size // 2] += 60 * y[:, None, None, None]; img[:, size // 2:] += 150 * a[:, None, None, None]
    return GroupDataset(images=img.clip(0, 255).astype(np.uint8), labels=y.astype(np.int32),
                        attributes=a.astype(np.int32), splits=rng.choice(3, n, p=[0.6, 0.2, 0.2]).astype(np.int8),
                        sample_ids=np.arange(n), name="toy")


def _tree(rng, m):
    "A two-leaf pytree of m clients' updates."
    return {"conv": {"kernel": jnp.asarray(rng.normal(size=(m, 3, 2)), jnp.float32)},
            "bias": jnp.asarray(rng.normal(size=(m, 5)), jnp.float32)}


# ---- aggregators on hand-made arrays -------------------------------------------------------------------------

def test_median_and_trimmed_mean_by_hand():
    u = jnp.array([[1., 10.], [2., -10.], [3., 0.], [4., 1.], [100., 2.], [-7., 3.]])
    np.testing.assert_allclose(coordinate_median(u), [2.5, 1.5])                  # mean of the two middle values
    np.testing.assert_allclose(trimmed_mean(u, 1), [(1 + 2 + 3 + 4) / 4, (0 + 1 + 2 + 3) / 4])
    np.testing.assert_allclose(trimmed_mean(u, 2), [2.5, 1.5])
    np.testing.assert_allclose(fedavg(u), u.mean(0))
    with pytest.raises(OilwaterError, match="trim=3"):
        trimmed_mean(u, 3)


def test_trimmed_mean_sorts_across_clients_not_within_a_client():
    # The sparsefed repository's bug sorts inside each client's vector; across clients, client 0's large first
    # coordinate is trimmed, its small second one is not.
    u = jnp.array([[9., 0.], [1., 1.], [2., 2.], [3., 3.], [4., 4.]])
    np.testing.assert_allclose(trimmed_mean(u, 1), [3., 2.])


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "sparsefed"])
def test_degenerate_rules_equal_fedavg(rule):
    rng = np.random.default_rng(0)
    same = jax.tree.map(lambda a: jnp.broadcast_to(a[:1], a.shape), _tree(rng, 6))
    different = _tree(rng, 6)
    if rule == "median":
        got, want = coordinate_median(same), fedavg(same)
    elif rule == "trimmed_mean":
        for trim in (1, 2):
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), trimmed_mean(same, trim), fedavg(same))
        got, want = trimmed_mean(different, 0), fedavg(different)          # trim = 0 is FedAvg on any updates
    else:
        k = sum(x[0].size for x in jax.tree.leaves(different))
        got, state = sparsefed_update(different, sparsefed_init(fedavg(different)), k=k, rho=0.0)
        want = fedavg(different)
        jax.tree.map(lambda e: np.testing.assert_array_equal(e, 0), state.error)   # everything was sent
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, want)


def test_sparsefed_top_k_is_global_and_accumulates_error():
    # k = 2 over both leaves together: the two largest magnitudes are one in each leaf
    u = {"a": jnp.array([[5., 0.1, 0.2]]), "b": jnp.array([[-0.3, -6.]])}
    upd, s = sparsefed_update(u, sparsefed_init(fedavg(u)), k=2, rho=0.0)
    np.testing.assert_allclose(upd["a"], [5., 0., 0.]); np.testing.assert_allclose(upd["b"], [0., -6.])
    np.testing.assert_allclose(s.error["a"], [0., 0.1, 0.2]); np.testing.assert_allclose(s.error["b"], [-0.3, 0.])
    # with momentum 0.9 the unsent coordinates' velocity keeps growing the error: v = 0.9 v + g, e = e + v
    zero = jax.tree.map(jnp.zeros_like, u)
    upd2, s2 = sparsefed_update(zero, s._replace(momentum=s.error), k=1, rho=0.9)
    np.testing.assert_allclose(upd2["b"], [-0.3 - 0.27, 0.], rtol=1e-6)
    np.testing.assert_allclose(s2.momentum["a"], [0., 0.09, 0.18], rtol=1e-6)


def test_make_aggregator_names_and_errors():
    rng = np.random.default_rng(1)
    u = _tree(rng, 5)
    agg = make_aggregator("trimmed_mean", trim=1)
    jax.tree.map(np.testing.assert_allclose, agg.update(u, agg.init(None))[0], trimmed_mean(u, 1))
    with pytest.raises(OilwaterError, match="aggregator"):
        make_aggregator("krum")
    with pytest.raises(OilwaterError, match="needs trim"):
        make_aggregator("trimmed_mean")


def test_kept_share_fedavg_is_the_clients_share():
    rng = np.random.default_rng(2)
    u = _tree(rng, 8)
    who = np.zeros(8, bool); who[[1, 5]] = True
    assert abs(kept_share(u, fedavg(u), who) - 2 / 8) < 1e-5
    far = jax.tree.map(lambda a: a.at[1].add(50.).at[5].add(50.), u)     # two outliers: the median ignores them
    assert abs(kept_share(far, coordinate_median(far), who)) < 0.05


# ---- partitions -----------------------------------------------------------------------------------------------

def test_non_iid_partition_puts_the_minority_on_the_holders_only():
    g = np.repeat([0, 1, 2, 3], [500, 30, 20, 450])
    p = non_iid_partition(g, minority_groups("waterbirds"), 20, 0.1, jax.random.key(3))
    counts = p.group_counts(g)
    assert p.holders.sum() == 2
    assert counts[~p.holders][:, [1, 2]].sum() == 0 and counts[p.holders][:, [1, 2]].sum() == 50
    assert (counts[:, [0, 3]] > 0).all()                                    # the majority reaches every client
    np.testing.assert_array_equal(np.sort(np.concatenate(p.clients)), np.arange(len(g)))
    q = non_iid_partition(g, (1, 2), 20, 0.1, jax.random.key(3))
    assert all(np.array_equal(a, b) for a, b in zip(p.clients, q.clients))  # seeded
    r = non_iid_partition(g, (1, 2), 20, 0.1, jax.random.key(4))
    assert not all(np.array_equal(a, b) for a, b in zip(p.clients, r.clients))


def test_iid_partition_and_poisons():
    p = iid_partition(103, 10, jax.random.key(0))
    assert sorted(p.sizes) == [10] * 7 + [11] * 3
    pp = with_poisons(p, np.arange(103, 113), 0.2, jax.random.key(1))
    assert pp.malicious.sum() == 2
    held = np.concatenate([c for c, bad in zip(pp.clients, pp.malicious) if bad])
    assert set(range(103, 113)) <= set(held.tolist())
    assert all(np.array_equal(a, b) for a, b, bad in zip(pp.clients, p.clients, pp.malicious) if not bad)


def test_cell_partition_keeps_poisons_on_malicious_clients():
    cfg = get_preset("smoke")(get_table("fed_attack").rows[1].config)
    n = 300
    is_poison = np.zeros(n, bool); is_poison[-15:] = True
    groups = np.repeat([0, 1, 2, 3], [120, 40, 40, 100])
    train = make_toy(n).subset(np.arange(n))
    train = dataclasses.replace(train, labels=(groups // 2).astype(np.int32), attributes=(groups % 2).astype(np.int32))
    p = cell_partition(cfg, train, 0, is_poison)
    assert p.n_clients == cfg.fed.n_clients and p.malicious.sum() == round(cfg.fed.malicious_client_fraction * p.n_clients)
    for c, bad in zip(p.clients, p.malicious):
        assert is_poison[c].any() == bad


# ---- the vmapped round against the per-client loop ------------------------------------------------------------

def test_vmapped_round_equals_the_client_loop():
    toy = make_toy(); tr = toy.split("train")
    part = non_iid_partition(tr.group_ids, (1, 2), 8, 0.25, jax.random.key(0))
    assert len(set(part.sizes.tolist())) > 1                                 # unequal clients: padding is exercised
    tc = TrainConfig(learning_rate=0.05, momentum=0.9, weight_decay=5e-4, batch_size=16)
    g0 = create_train_state(jax.random.key(0), TinyCNN(), toy.image_shape, tc)
    clients = np.array([int(np.flatnonzero(part.holders)[0]), 2, 6])
    agg = make_aggregator("median")
    a = fed_round(g0, (), agg, part, tr, clients, 2, 16, jax.random.key(1))
    b = fed_round(g0, (), agg, part, tr, clients, 2, 16, jax.random.key(1), vmapped=False)
    moved = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(b.updates))
    assert moved > 1e-2                                                     # training did move the clients
    for x, y in zip(jax.tree.leaves((a.updates, a.state.params, a.state.batch_stats)),
                    jax.tree.leaves((b.updates, b.state.params, b.state.batch_stats))):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_federation_is_deterministic_and_learns():
    toy = make_toy()
    part = iid_partition(len(toy.split("train")), 6, jax.random.key(0))
    tc = TrainConfig(learning_rate=0.05, momentum=0.9, weight_decay=5e-4, batch_size=16, epochs=2)
    run = lambda: run_federation(toy, part, make_aggregator("fedavg"), FedSettings(6, 3, 3), tc, jax.random.key(5),
                                 model=TinyCNN())
    a, b = run(), run()
    jax.tree.map(np.testing.assert_array_equal, a.state.params, b.state.params)
    assert a.test.acc > 0.9


# ---- a Table 9 cell --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_table9_cell_drops_are_against_its_fedavg_reference():
    row = get_table("table9").rows[1].config                                 # trimmed mean, IID
    cfg = get_preset("smoke")(row)
    stages = StageCache()
    out = fed_cell(cfg, 0, stages)
    assert stages.stats["computed"] == 1                                     # FedAvg, as a shared stage
    assert abs(out["wga_drop"] - (out["fedavg_wga"] - out["wga"])) < 1e-9
    base = fed_cell(get_preset("smoke")(row.replace(method="fedavg", defense="none", trim=None)), 0, stages)
    assert stages.stats["memory"] == 1 and base["wga_drop"] == 0.0 and base["wga"] == out["fedavg_wga"]
