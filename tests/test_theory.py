"Closed forms of `theory/` against simulation of the linear spurious-feature model, and exact amplification arithmetic."
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.special import ndtr

from oilwater_jax.core import OilwaterError
from oilwater_jax.theory import (
    CORE, SPURIOUS, TRIGGER, LinearGaussianConfig, amplified_poison_share, amplified_poison_share_limit, asr_gaussian,
    dkw_epsilon, empirical_auc, fit_logistic, gaussian_auc, gaussian_hellinger, gaussian_tv, idnf_gaussian,
    logistic_loss, margin_law, margins, product_tv_bound, removal_curve, sample_group, sample_poisons,
    sample_training_set, sample_triggered, survival_gap, upsample_indices)

CFG = LinearGaussianConfig()  # d=50, alpha=1, beta=2, sigma=1, tau=3, Waterbirds group sizes, 48 poisons, l2=1e-2
N_FRESH = 20_000


@pytest.fixture(scope="module")
def model():
    "The identification model trained on the reference training set (dirty-label backdoor, delta = 2 alpha)."
    data = sample_training_set(CFG, seed=0)
    return data, fit_logistic(data.x, data.y, CFG.l2)


def rng(stream):
    return np.random.default_rng([0, 1000 + stream])


# ---------------------------------------------------------------- Result 6: exact amplification arithmetic
def test_rho_hand_computed():
    # 10 samples, 3 poisons, 3 flagged of which 2 poisons
    assert amplified_poison_share(10, 3, 3, 2, 4, "total") == Fraction(3 + 3 * 2, 10 + 3 * 3) == Fraction(9, 19)
    assert amplified_poison_share(10, 3, 3, 2, 4, "extra") == Fraction(3 + 4 * 2, 10 + 4 * 3) == Fraction(1, 2)
    assert amplified_poison_share(10, 3, 3, 2, 1, "total") == Fraction(3, 10)  # lambda = 1: ERM
    assert amplified_poison_share(10, 3, 3, 2, 0, "extra") == Fraction(3, 10)  # lambda = 0: ERM
    assert amplified_poison_share_limit(3, 2) == Fraction(2, 3)
    # the Waterbirds-like worked example: poisons and LRG-1 flagged at 0.95 (F_P = 45.6, F = 98.8)
    q = Fraction(95, 100)
    FP, F1, F2 = q * 48, q * 104, q * 288 + 30
    assert amplified_poison_share(4843, 48, F1, FP, 100) == Fraction(22812, 73121)  # 4562.4 / 14624.2 = 0.31198
    assert amplified_poison_share(4843, 48, F2, FP, 100) == Fraction(22812, 174497)  # 4562.4 / 34899.4 = 0.13073
    assert amplified_poison_share(4843, 48, F1, FP, 100, "extra") == Fraction(4608, 14723)  # 0.31298
    assert round(float(Fraction(22812, 73121)), 4) == 0.3120 and round(float(Fraction(22812, 174497)), 4) == 0.1307


def test_rho_monotone_iff_idnf_above_flag_rate():
    for N, n_p, F, F_P in ((4843, 48, 251, 46), (100, 10, 50, 2), (100, 10, 20, 2)):
        rhos = [amplified_poison_share(N, n_p, F, F_P, lam) for lam in range(1, 50)]
        diffs = {np.sign(float(b - a)) for a, b in zip(rhos, rhos[1:])}
        assert diffs == {np.sign(float(Fraction(F_P, n_p) - Fraction(F, N)))}


def test_upsampling_identity_exact():
    r = np.random.default_rng(0)
    for _ in range(20):
        n = int(r.integers(5, 200))
        is_poison, flagged = r.random(n) < 0.2, r.random(n) < 0.3
        is_poison[0] = True
        for conv, lam in (("total", int(r.integers(1, 30))), ("extra", int(r.integers(0, 30)))):
            idx = upsample_indices(flagged, n, lam, conv)
            assert len(idx) == n + (lam - (conv == "total")) * flagged.sum()
            assert np.array_equal(np.sort(np.unique(idx)), np.arange(n))
            share = Fraction(int(is_poison[idx].sum()), len(idx))
            assert share == amplified_poison_share(n, int(is_poison.sum()), int(flagged.sum()),
                                                   int((flagged & is_poison).sum()), lam, conv)
    assert np.array_equal(upsample_indices(np.array([1, 3]), 5, 2, "extra"), [0, 1, 2, 3, 4, 1, 3, 1, 3])
    assert np.array_equal(upsample_indices(np.array([1, 3]), 5, 2, "total"), [0, 1, 2, 3, 4, 1, 3])


def test_upsampling_errors():
    with pytest.raises(OilwaterError, match="Choose one of"): upsample_indices([1], 5, 2, "jtt")
    with pytest.raises(OilwaterError, match=">= 1"): upsample_indices([1], 5, 0, "total")
    with pytest.raises(OilwaterError, match=r"\[0, 5\)"): upsample_indices([5], 5, 2)
    with pytest.raises(OilwaterError, match="shape"): upsample_indices(np.ones(4, bool), 5, 2)
    with pytest.raises(OilwaterError, match="inconsistent"): amplified_poison_share(10, 3, 3, 4, 2)


def test_jtt_without_amplification_is_erm(model):
    data, fit = model
    flagged = margins(fit.w, fit.b, data.x, data.y) < 0
    w1 = np.bincount(upsample_indices(flagged, len(data.y), 1, "total"))
    assert np.array_equal(w1, np.ones(len(data.y)))
    idx = upsample_indices(flagged, len(data.y), 3, "extra")
    np.testing.assert_allclose(fit_logistic(data.x[idx], data.y[idx], CFG.l2).w,
                               fit_logistic(data.x, data.y, CFG.l2, weights=np.bincount(idx)).w, atol=1e-8)


# ---------------------------------------------------------------- Result 2: the linear model
def test_fit_matches_scikit_learn(model):
    sklearn = pytest.importorskip("sklearn.linear_model")
    data, fit = model
    assert fit.grad_norm < 1e-10
    # sklearn minimises C * sum(loss) + |w|^2 / 2 (intercept unpenalised with lbfgs): C = 1 / (l2 * N)
    ref = sklearn.LogisticRegression(C=1 / (CFG.l2 * len(data.y)), tol=1e-12, max_iter=10_000).fit(data.x, data.y)
    np.testing.assert_allclose(ref.coef_[0], fit.w, atol=1e-5)
    np.testing.assert_allclose(ref.intercept_[0], fit.b, atol=1e-5)


def test_margin_shift_is_exact_for_any_noise():
    "Coupled through the same noise, poison margin = minority margin - D for any (w, b) and any noise law."
    r = np.random.default_rng(1)
    w, b, delta = r.normal(size=CFG.d), 0.3, 1.3
    xi = r.standard_t(df=2, size=(1000, CFG.d)) * r.uniform(0.1, 3, CFG.d)  # heavy-tailed, anisotropic
    x_g = xi.copy(); x_g[:, CORE] += CFG.alpha; x_g[:, SPURIOUS] -= CFG.beta
    x_p = xi.copy(); x_p[:, CORE] += CFG.alpha - delta; x_p[:, SPURIOUS] -= CFG.beta; x_p[:, TRIGGER] += CFG.tau
    D = delta * w[CORE] - CFG.tau * w[TRIGGER]
    np.testing.assert_allclose(margins(w, b, x_p, 1.0), margins(w, b, x_g, 1.0) - D, atol=1e-10)
    assert D == pytest.approx(margin_law(w, b, CFG, delta).shift)


def test_auc_formula_on_fresh_samples(model):
    "Empirical AUC of the loss (poisons vs minority) within 4 DeLong SE (~0.010) of Phi(D / (sqrt 2 sigma |w|))."
    _, fit = model
    law = margin_law(fit.w, fit.b, CFG)
    sg = logistic_loss(margins(fit.w, fit.b, sample_group(rng(1), N_FRESH, 1, -1, CFG), 1.0))
    sp = logistic_loss(margins(fit.w, fit.b, sample_poisons(rng(2), N_FRESH, CFG), 1.0))
    est = empirical_auc(sp, sg)
    assert abs(est.auc - gaussian_auc(law)) <= 4 * est.se
    assert 0.68 < gaussian_auc(law) < 0.74  # our planning note: about 0.70


def test_auc_half_when_shift_is_zero(model):
    "Poisons moved to delta = tau w_t / w_c for the same model: equal laws, AUC 1/2, no gap beyond the DKW band."
    _, fit = model
    delta0 = CFG.tau * fit.w[TRIGGER] / fit.w[CORE]
    assert gaussian_auc(margin_law(fit.w, fit.b, CFG, delta0)) == pytest.approx(0.5, abs=1e-12)
    sg = logistic_loss(margins(fit.w, fit.b, sample_group(rng(3), N_FRESH, 1, -1, CFG), 1.0))
    sp = logistic_loss(margins(fit.w, fit.b, sample_poisons(rng(4), N_FRESH, CFG, delta0), 1.0))
    est = empirical_auc(sp, sg)
    assert abs(est.auc - 0.5) <= 4 * est.se
    band = 2 * float(dkw_epsilon(N_FRESH, 0.005))
    assert survival_gap(sg, sp) <= band and survival_gap(sp, sg) <= band


def test_dominance_within_dkw_band_and_its_failure():
    "D > 0: sup_t [S_G - S_P] inside the band (1% level); D < 0: outside, and within the band of 2 Phi(|Delta|/2) - 1."
    band = 2 * float(dkw_epsilon(N_FRESH, 0.005))
    for delta, dominates in ((2.0, True), (0.0, False)):
        data = sample_training_set(CFG, 0, delta)
        fit = fit_logistic(data.x, data.y, CFG.l2)
        law = margin_law(fit.w, fit.b, CFG, delta)
        assert (law.shift > 0) == dominates
        sg = logistic_loss(margins(fit.w, fit.b, sample_group(rng(5), N_FRESH, 1, -1, CFG), 1.0))
        sp = logistic_loss(margins(fit.w, fit.b, sample_poisons(rng(6), N_FRESH, CFG, delta), 1.0))
        gap = survival_gap(sg, sp)
        if dominates: assert gap <= band
        else:
            assert gap > band
            assert abs(gap - (2 * ndtr(abs(law.separation) / 2) - 1)) <= band


# ---------------------------------------------------------------- Result 3: backdoor duality
def test_duality_fresh_poisons_vs_triggered_inputs(model):
    "Misclassification rate of fresh poisons (loss > ln 2) = 1 - ASR on independent triggered inputs, within 4 SE."
    _, fit = model
    idnf_p = float(np.mean(logistic_loss(margins(fit.w, fit.b, sample_poisons(rng(7), N_FRESH, CFG), 1.0)) > math.log(2)))
    asr = float(np.mean(sample_triggered(rng(8), N_FRESH, CFG) @ fit.w + fit.b > 0))
    pbar = (idnf_p + 1 - asr) / 2
    assert abs(idnf_p - (1 - asr)) <= 4 * math.sqrt(pbar * (1 - pbar) * 2 / N_FRESH)
    assert abs(asr - asr_gaussian(fit.w, fit.b, CFG)) <= 4 * math.sqrt(asr * (1 - asr) / N_FRESH)
    assert asr < 0.10  # the identification model is not yet backdoored, so it flags the poisons


def test_jtt_in_sample_rates_and_asr(model):
    "Our planning note: IDNF_P ~ 0.98 vs IDNF_G ~ 0.77 in-sample, ASR ~5% (ERM) -> ~95% (JTT, lambda = 100)."
    data, fit = model
    flagged = margins(fit.w, fit.b, data.x, data.y) < 0
    idnf_p, idnf_g = flagged[data.is_poison].mean(), flagged[data.minority].mean()
    assert idnf_p > idnf_g and idnf_p > 0.9 and 0.6 < idnf_g < 0.9
    jtt = fit_logistic(data.x, data.y, CFG.l2, weights=np.bincount(upsample_indices(flagged, len(data.y), 100, "extra")))
    assert asr_gaussian(fit.w, fit.b, CFG) < 0.1 and asr_gaussian(jtt.w, jtt.b, CFG) > 0.9


# ---------------------------------------------------------------- Result 5: removal
def test_removal_curve_on_fresh_samples(model):
    "Threshold removing q = 0.9 of poisons removes Phi(Phi^-1(q) - Delta) of the minority, within 4 binomial SE."
    _, fit = model
    law = margin_law(fit.w, fit.b, CFG)
    g, p = idnf_gaussian(law, law.mu - law.shift + law.scale * 1.2815515655446004)  # Phi^-1(0.9)
    assert float(p) == pytest.approx(0.9) and float(g) == pytest.approx(float(removal_curve(0.9, law.separation)))
    c = law.mu - law.shift + law.scale * 1.2815515655446004
    mg = margins(fit.w, fit.b, sample_group(rng(9), N_FRESH, 1, -1, CFG), 1.0)
    mp = margins(fit.w, fit.b, sample_poisons(rng(10), N_FRESH, CFG), 1.0)
    pred = float(removal_curve(0.9, law.separation))
    assert abs(np.mean(mp < c) - 0.9) <= 4 * math.sqrt(0.09 / N_FRESH)
    assert abs(np.mean(mg < c) - pred) <= 4 * math.sqrt(pred * (1 - pred) / N_FRESH)


# ---------------------------------------------------------------- Result 4: twin worlds
def test_product_tv_bounds_hold_for_gaussians():
    for r in (0.001, 0.01, 0.1, 0.5, 2.0):
        tv, h = float(gaussian_tv(r)), float(gaussian_hellinger(r))
        assert tv <= h * math.sqrt(2 - h * h) + 1e-12  # TV <= H sqrt(2 - H^2)
        for k in (1, 5, 48, 500):
            exact = float(gaussian_tv(math.sqrt(k) * r))  # k i.i.d. Gaussians = one Gaussian at distance sqrt(k) r
            assert exact <= product_tv_bound(tv, h, k) + 1e-12
            hk = float(gaussian_hellinger(math.sqrt(k) * r))  # 1 - H_k^2 = (1 - H^2)^k
            assert 1 - hk**2 == pytest.approx((1 - h**2) ** k, rel=1e-9)
