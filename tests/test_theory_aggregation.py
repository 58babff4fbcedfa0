"""Result 7 of `theory/07_aggregation.md` on the package's own aggregators (`oilwater_jax.federated`).

If at most `trim` of a round's clients hold the minority, the coordinate-wise trimmed mean lies, on every coordinate,
inside the range of the other clients' updates, whatever the minority sends; the coordinate-wise median does if fewer
than half do. Updates are stacked on axis 0 (clients first). `trim` is read as the number of values dropped at each
end of every coordinate (the paper drops two of ten); the test compares with `oilwater_jax.theory`'s reference
versions, so a different convention fails loudly here rather than silently.
"""
import numpy as np
import pytest

from oilwater_jax.theory import coordinate_median_reference, honest_range, trimmed_mean_reference

federated = pytest.importorskip("oilwater_jax.federated")


def _rounds(k, n=10, d=20, reps=200, seed=16):
    r = np.random.default_rng(seed)
    mino = np.arange(n) >= n - k
    for _ in range(reps):
        u = r.standard_normal((n, d)).astype(np.float32)
        u[mino, 0] = 1e6  # the minority direction: only the minority's clients move it, by a lot
        yield u, mino


@pytest.mark.parametrize("k", [1, 2])
def test_trimmed_mean_keeps_minority_in_majority_range(k):
    for u, mino in _rounds(k):
        agg = np.asarray(federated.trimmed_mean(u, 2))
        np.testing.assert_allclose(agg, trimmed_mean_reference(u, 2), rtol=1e-5, atol=1e-5)
        lo, hi = honest_range(u, mino)
        assert np.all((lo - 1e-6 <= agg) & (agg <= hi + 1e-6))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_median_keeps_minority_in_majority_range(k):
    for u, mino in _rounds(k):
        agg = np.asarray(federated.coordinate_median(u))
        np.testing.assert_allclose(agg, coordinate_median_reference(u), rtol=1e-5, atol=1e-5)
        lo, hi = honest_range(u, mino)
        assert np.all((lo - 1e-6 <= agg) & (agg <= hi + 1e-6))


def test_trimmed_mean_bound_fails_when_minority_exceeds_trim():
    "k = 3 > trim = 2: one minority value survives the trimming, and the aggregate leaves the majority's range."
    for u, mino in _rounds(3, reps=20):
        assert np.asarray(federated.trimmed_mean(u, 2))[0] > honest_range(u, mino)[1][0]
