"""Result 6 (amplification arithmetic) on the real pipeline: the poison share of the index list JTT's final stage
trains on equals rho_lambda at the measured identification counts, exactly (see nbs/62_pipeline_check.ipynb)."""
from fractions import Fraction

import numpy as np
import pytest

from oilwater_jax import attack_runs, jtt, pipeline, theory
from oilwater_jax.experiments import get_preset, make_row


@pytest.fixture(scope="module")
def smoke_cell():
    "The smoke preset's JTT DLBD cell, its clean data and its poisoned data (seed 0)."
    cfg = get_preset("smoke")(make_row("jtt", "waterbirds", "dlbd", "standard"))
    poisoned = attack_runs.poison_for_run(cfg, pipeline.run_data(cfg), 0)
    return cfg, poisoned


def captured_index_list(cfg, poisoned, amplified, monkeypatch):
    "The index list `jtt.final_stage` passes to `fit` (replaced by a recorder: nothing is trained)."
    seen = {}
    monkeypatch.setattr(jtt, "fit", lambda *a, index_list=None, **k: seen.setdefault("index_list", np.asarray(index_list)))
    jtt.final_stage(cfg, poisoned.data, 0, amplified)
    monkeypatch.undo()
    return seen["index_list"]


def check_identity(index_list, is_poison, amplified, factor):
    "Measured poison share of the list == rho_lambda (JTT's convention) == rho^total_{lambda+1}, as fractions."
    n, n_p = len(is_poison), int(is_poison.sum())
    f, f_p = int(amplified.sum()), int((amplified & is_poison).sum())
    measured = Fraction(int(is_poison[index_list].sum()), len(index_list))
    assert jtt.UPSAMPLING_CONVENTION == "extra"
    assert measured == theory.amplified_poison_share(n, n_p, f, f_p, factor, jtt.UPSAMPLING_CONVENTION)
    assert measured == theory.amplified_poison_share(n, n_p, f, f_p, factor + 1, "total")
    if f and factor >= 1:  # between n_p / N and the limit F_P / F, on the side the sign of IDNF_P - F/N says
        sign = np.sign(f_p * n - n_p * f)
        assert np.sign(measured - Fraction(n_p, n)) == sign
        assert np.sign(theory.amplified_poison_share_limit(f, f_p) - measured) == sign
    return measured


@pytest.mark.parametrize("case", ["standard", "ideal", "worst"])
def test_identity_on_handmade_flags(smoke_cell, case, monkeypatch):
    "A hand-made error set (2 of the poisons and 20 clean samples), through each of the paper's interventions."
    cfg, poisoned = smoke_cell
    is_poison = poisoned.is_poison
    rng = np.random.default_rng(0)
    flagged = np.zeros(len(is_poison), bool)
    flagged[np.flatnonzero(is_poison)[:2]] = True
    flagged[rng.choice(np.flatnonzero(~is_poison), 20, replace=False)] = True
    amplified = jtt.intervene(flagged, is_poison, case)
    idx = captured_index_list(cfg, poisoned, amplified, monkeypatch)
    np.testing.assert_array_equal(idx, theory.upsample_indices(amplified, len(is_poison), cfg.row.upsample_factor, "extra"))
    measured = check_identity(idx, is_poison, amplified, cfg.row.upsample_factor)
    n, n_p, lam = len(is_poison), int(is_poison.sum()), cfg.row.upsample_factor
    expected = {"standard": Fraction(n_p + lam * 2, n + lam * 22), "ideal": Fraction(n_p, n + lam * 20),
                "worst": Fraction(n_p + lam * n_p, n + lam * (20 + n_p))}[case]
    assert measured == expected


def test_identity_on_jtt_identification(smoke_cell, monkeypatch):
    "JTT's own identification stage on the smoke cell: the upsampled list's poison share is rho_lambda exactly."
    cfg, poisoned = smoke_cell
    flagged, _ = jtt.identification_stage(cfg, poisoned.data, 0)
    amplified = jtt.intervene(flagged, poisoned.is_poison, cfg.row.case)
    idx = captured_index_list(cfg, poisoned, amplified, monkeypatch)
    np.testing.assert_array_equal(idx, theory.upsample_indices(flagged, len(flagged), cfg.row.upsample_factor, "extra"))
    check_identity(idx, poisoned.is_poison, amplified, cfg.row.upsample_factor)
    for lam in (0, 1, 10, 1000):
        check_identity(theory.upsample_indices(flagged, len(flagged), lam, "extra"), poisoned.is_poison, flagged, lam)
