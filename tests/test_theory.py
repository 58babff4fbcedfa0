"Closed forms of `theory/` against simulation of the linear spurious-feature model, and exact amplification arithmetic."
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.special import ndtr

from oilwater_jax.core import OilwaterError
from dataclasses import replace

from scipy.special import ndtri

from oilwater_jax.theory import (
    CORE, SPURIOUS, TRIGGER, LinearGaussianConfig, amplified_poison_share, amplified_poison_share_limit, asr_gaussian,
    coordinate_median_reference, cross_fit, dkw_epsilon, empirical_auc, fit_logistic, gaussian_auc, gaussian_hellinger,
    gaussian_tv, honest_range, idnf_gaussian, ks_distance, logistic_loss, margin_law, margins, piecewise_rule_rate,
    product_tv_bound, removal_curve, sample_group, sample_poisons, sample_training_set, sample_triggered, survival_gap,
    trimmed_mean_reference, upsample_indices)

@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    "Hundreds of small fits: one BLAS thread is faster (and fair to shared CI cores); restored after this module."
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):
        yield


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


# ---------------------------------------------------------------- Theorem 0: the headline identity
def _identity_sides(fit, x_trig):
    "Measured IDNF_G - IDNF_P (loss > ln 2) and ASR - Acc_G (predicted class), four independent fresh samples, and SE."
    ps = [float(np.mean(logistic_loss(margins(fit.w, fit.b, sample_group(rng(20), N_FRESH, 1, -1, CFG), 1.0)) > math.log(2))),
          float(np.mean(logistic_loss(margins(fit.w, fit.b, sample_poisons(rng(21), N_FRESH, CFG), 1.0)) > math.log(2))),
          float(np.mean(x_trig @ fit.w + fit.b > 0)),
          float(np.mean(sample_group(rng(23), N_FRESH, 1, -1, CFG) @ fit.w + fit.b > 0))]
    return ps[0] - ps[1], ps[2] - ps[3], math.sqrt(sum(p * (1 - p) for p in ps) / N_FRESH)


def test_headline_identity_linear(model):
    "IDNF_G - IDNF_P = ASR - Acc_G at JTT's rule: exact in closed form, within 4 SE measured; off when (A) fails."
    _, fit = model
    law = margin_law(fit.w, fit.b, CFG)
    g, p = (float(v) for v in idnf_gaussian(law, 0.0))
    assert g - p == pytest.approx(asr_gaussian(fit.w, fit.b, CFG) - (1 - g), abs=1e-12)
    assert g - p == pytest.approx(0.044 - 0.174, abs=2e-3)  # 0.826 - 0.956 = 0.044 - 0.174
    lhs, rhs, se = _identity_sides(fit, sample_triggered(rng(22), N_FRESH, CFG))
    assert abs(lhs - rhs) <= 4 * se
    lhs, rhs, se = _identity_sides(fit, sample_triggered(rng(22), N_FRESH, replace(CFG, tau=1.0)))  # (A) violated
    assert abs(lhs - rhs) > 4 * se


def test_duality_detects_a_mismatched_trigger(model):
    "Test-time trigger 2 vs poisons' 3: IDNF_P - (1 - ASR_T) is off 0 by > 4 SE, matches the closed form, below TV."
    _, fit = model
    cfg_t = replace(CFG, tau=2.0)
    idnf_p = float(np.mean(logistic_loss(margins(fit.w, fit.b, sample_poisons(rng(7), N_FRESH, CFG), 1.0)) > math.log(2)))
    asr_t = float(np.mean(sample_triggered(rng(24), N_FRESH, cfg_t) @ fit.w + fit.b > 0))
    pbar = (idnf_p + 1 - asr_t) / 2
    se = math.sqrt(pbar * (1 - pbar) * 2 / N_FRESH)
    pred = float(idnf_gaussian(margin_law(fit.w, fit.b, CFG), 0.0)[1]) - (1 - asr_gaussian(fit.w, fit.b, cfg_t))
    gap = idnf_p - (1 - asr_t)
    assert abs(gap) > 4 * se and abs(gap - pred) <= 4 * se and abs(gap) <= float(gaussian_tv(1.0))


def test_duality_gap_identity_below_ln2(model):
    "Theorem 3 (b): IDNF_G(t) - IDNF_P(t) = ASR - P(s_G <= t) - P(s_P > t, hit), exactly on one sample, t < ln 2."
    _, fit = model
    lg = logistic_loss(margins(fit.w, fit.b, sample_group(rng(25), 5000, 1, -1, CFG), 1.0))
    mp = margins(fit.w, fit.b, sample_poisons(rng(26), 5000, CFG), 1.0)
    lp, hit = logistic_loss(mp), mp > 0
    for t in (0.05, 0.3, 0.69):
        gap = np.mean(lg > t) - np.mean(lp > t)
        assert gap == pytest.approx(hit.mean() - np.mean(lg <= t) - np.mean((lp > t) & hit), abs=1e-12)
        assert np.mean(lg <= t) <= np.mean(lg < math.log(2))  # P(s_G <= t) <= Acc_G


# ---------------------------------------------------------------- Theorem 1': per fold
def test_cross_fitted_dkw_per_fold():
    "Each fold's poison and minority margins within the DKW band of their laws under that fold's model; a swap leaves it."
    cfg10 = replace(CFG, group_counts=tuple(10 * c for c in CFG.group_counts), n_poisons=10 * CFG.n_poisons)
    data = sample_training_set(cfg10, 0)
    cf = cross_fit(data, CFG.l2, 0)
    sizes = []
    for k in (0, 1):
        f, s = cf.fits[k], cf.fold == k
        law = margin_law(f.w, f.b, cfg10)
        mg, mp = margins(f.w, f.b, data.x[s & data.minority], 1.0), margins(f.w, f.b, data.x[s & data.is_poison], 1.0)
        sizes.append((len(mp), len(mg)))
        cdf_g = lambda c: ndtr((c - law.mu) / law.scale)
        cdf_p = lambda c: ndtr((c - law.mu + law.shift) / law.scale)
        eg, ep = float(dkw_epsilon(len(mg), 0.005)), float(dkw_epsilon(len(mp), 0.005))
        assert ks_distance(mg, cdf_g) <= eg and ks_distance(mp, cdf_p) <= ep
        assert law.shift > 0 and survival_gap(logistic_loss(mg), logistic_loss(mp)) <= eg + ep
        assert ks_distance(mp, cdf_g) > ep  # the poisons against the minority's law: rejected
    assert sizes[0] != sizes[1] and sum(n for n, _ in sizes) == 480  # unstratified folds of different sizes


# ---------------------------------------------------------------- Result 5: no loss-based rule beats the threshold
def test_no_loss_rule_beats_the_threshold(model):
    "Two-sided, interval and randomised margin rules never remove less minority than Phi(Phi^-1(q) - Delta); unequal variances break it."
    _, fit = model
    law = margin_law(fit.w, fit.b, CFG)
    r = np.random.default_rng(3)
    worst, worst_bad = np.inf, np.inf
    for i in range(900):
        k = (2, 2, int(r.integers(1, 6)))[i % 3]
        cuts = np.sort(r.uniform(-8, 6, k))
        probs = (np.array([1.0, 0, 1]), np.array([0, 1.0, 0]), r.uniform(0, 1, k + 1))[i % 3]
        q = piecewise_rule_rate(cuts, probs, law.mu - law.shift, law.scale)
        if not 1e-9 < q < 1 - 1e-9: continue
        worst = min(worst, piecewise_rule_rate(cuts, probs, law.mu, law.scale) - float(removal_curve(q, law.separation)))
        c_q = law.mu - law.shift + law.scale * float(ndtri(q))
        # the bound is attained: the threshold rule with the same poison rate removes exactly that much minority
        assert piecewise_rule_rate([c_q], [1, 0], law.mu, law.scale) == pytest.approx(float(removal_curve(q, law.separation)), abs=1e-9)
        narrow = 0.6 * law.scale  # minority law narrower than the poisons': the likelihood ratio is not monotone
        worst_bad = min(worst_bad, piecewise_rule_rate(cuts, probs, law.mu, narrow) - piecewise_rule_rate([c_q], [1, 0], law.mu, narrow))
    assert worst >= -1e-12
    assert worst_bad < -0.01


# ---------------------------------------------------------------- Result 4: a pipeline that attains the bound
def test_lecam_pipeline_attains_the_twin_world_bound():
    "The likelihood-ratio pipeline has E1[Err] + E2[ASR] = 1 - TV(M^48, M'^48) within 4 SE; the one-sample TV is too small."
    tau, r, k, reps = 8.0, 0.25, 48, 1000
    cfg_tw = replace(CFG, tau=tau)
    err_keep = float(ndtr(-tau / 2))
    e1, a2 = [], []
    for rep in range(reps):
        for world, store in ((1, e1), (2, a2)):
            x = sample_triggered(np.random.default_rng([rep, 30 + world]), k, cfg_tw)
            if world == 2: x[:, 3] += r
            reject = x[x[:, TRIGGER] > tau / 2, 3].mean() > r / 2
            err = 1 - err_keep if reject else err_keep
            store.append(err if world == 1 else 1 - err)
    total = np.mean(e1) + np.mean(a2)
    se = math.sqrt(np.var(e1, ddof=1) / reps + np.var(a2, ddof=1) / reps)
    tv = float(gaussian_tv(math.sqrt(k) * r))
    assert abs(total - (1 - tv)) <= 4 * se and abs(total - 1) <= tv + 4 * se
    assert abs(total - 1) > float(gaussian_tv(r)) + 4 * se


# ---------------------------------------------------------------- Result 7: robust aggregation
def test_aggregation_stays_in_majority_range():
    "k <= b minority clients: trimmed mean (b = 2) and median inside the others' range on every coordinate; k = 3 > b: not."
    r = np.random.default_rng(16)
    for k in (1, 2, 3):
        mino = np.arange(10) >= 10 - k
        outside = 0
        for _ in range(300):
            u = r.standard_normal((10, 20)); u[mino, 0] = 1e6
            lo, hi = honest_range(u, mino)
            for agg in (coordinate_median_reference(u),) + ((trimmed_mean_reference(u, 2),) if k <= 2 else ()):
                assert np.all((lo <= agg) & (agg <= hi))
            outside += trimmed_mean_reference(u, 2)[0] > hi[0]
            assert u.mean(0)[0] > hi[0]  # FedAvg follows the minority
        assert (outside == 300) == (k == 3) and (outside == 0) == (k <= 2)
    np.testing.assert_allclose(trimmed_mean_reference(u, 0), u.mean(0))  # nothing trimmed: FedAvg
