"""STRIP's score against a plain per-overlay loop, its entropy unit (bits), threshold and AUC."""
from __future__ import annotations

import numpy as np
import pytest
import jax, jax.numpy as jnp
import flax.linen as nn

from oilwater_jax.core import OilwaterError
from oilwater_jax.strip import entropy_bits, strip_entropies, strip_threshold, detection_auc, strip_report
from oilwater_jax.metrics import WATERBIRDS_ROLES


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        return nn.Dense(2)(x.mean(axis=(1, 2)) * 8)


def test_entropy_in_bits():
    assert float(entropy_bits(jnp.array([1.0, 0.0]))) == 0.0          # a constant prediction
    assert float(entropy_bits(jnp.array([0.5, 0.5]))) == pytest.approx(1.0, abs=1e-7)   # uniform binary: 1 bit
    assert float(entropy_bits(jnp.full(8, 1 / 8))) == pytest.approx(3.0, abs=1e-6)


def test_strip_entropies_equal_a_plain_loop():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (7, 12, 12, 3)).astype(np.uint8)
    ov = rng.integers(0, 256, (5, 12, 12, 3)).astype(np.uint8)
    model = Net(); v = model.init(jax.random.key(1), jnp.zeros((1, 12, 12, 3)))
    got = strip_entropies(model.apply, v, x, ov, chunk_size=3)
    want = []
    for xi in x:
        ent = []
        for o in ov:
            mixed = np.minimum(xi.astype(int) + o.astype(int), 255).astype(np.float32) / 255
            p = np.asarray(jax.nn.softmax(model.apply(v, jnp.asarray(mixed[None]))))[0].astype(np.float64)
            ent.append(-(p * np.log2(p)).sum())
        want.append(np.mean(ent))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert 0 < got.min() and got.max() <= 1
    with pytest.raises(OilwaterError, match="uint8"): strip_entropies(model.apply, v, x.astype(np.float32), ov)


def test_threshold_auc_and_report():
    clean = np.random.default_rng(2).normal(0.8, 0.1, 5000)
    t = strip_threshold(clean)
    assert abs(np.mean(clean < t) - 0.01) < 0.004                     # 1% false rejections
    assert detection_auc([0.1], [0.2, 0.0]) == 0.5
    rep = strip_report(np.array([0.9, 0.9, 0.8, 0.85, 0.1]), np.array([0, 2, 2, 1, 3]),
                       np.array([0, 0, 0, 0, 1], bool), WATERBIRDS_ROLES, threshold=0.5)
    assert rep["entropy_lrg1"] == pytest.approx(0.85) and rep["entropy_lrg1_std"] == pytest.approx(np.std([0.9, 0.8], ddof=1))
    assert rep["flagged_poisons"] == 100.0 and rep["auc_poisons_vs_hrg"] == 1.0
    with pytest.raises(OilwaterError, match="at least 2"): strip_threshold([0.5])
