"""The generated-corpus pretraining as a preset uses it: `init='corpus'` pretrains once, caches the Orbax checkpoint,
and starts a cell from its backbone under a fresh head."""
import dataclasses

import jax
import numpy as np
import pytest

from oilwater_jax import pretrain
from oilwater_jax.core import OilwaterError
from oilwater_jax.data import WaterbirdsLikeConfig, load_synthetic_waterbirds
from oilwater_jax.experiments import get_preset, make_row
from oilwater_jax.pipeline import initial_state, stage_key, stage_train_config


@pytest.fixture
def smoke_pretraining(tmp_path, monkeypatch):
    "An empty cache and the seconds-long pretraining in place of the cpu one."
    monkeypatch.setenv("OILWATER_CACHE", str(tmp_path))
    monkeypatch.setattr(pretrain, "CPU_PRETRAIN", pretrain.PretrainConfig.smoke())
    return tmp_path


def test_init_corpus_fine_tunes_the_cached_backbone(smoke_pretraining):
    cfg = dataclasses.replace(get_preset("smoke")(make_row("erm", "waterbirds")), init="corpus")
    data = load_synthetic_waterbirds(WaterbirdsLikeConfig.smoke(image_size=cfg.image_size), cache=False)
    tc = stage_train_config(cfg, "train")
    state = initial_state(cfg, tc, data, stage_key(0, "train"))
    ckpt = pretrain.pretrained_checkpoint_path(pretrain.corpus_pretrain_config(cfg.model, cfg.image_size))
    assert (ckpt / "meta.json").exists() and str(ckpt).startswith(str(smoke_pretraining))
    saved = pretrain.load_variables(ckpt)
    params = jax.device_get(state.params)
    for name in saved["params"]:  # the backbone is the checkpoint's, the head a fresh two-class one
        if name != "fc":
            for a, b in zip(jax.tree.leaves(params[name]), jax.tree.leaves(saved["params"][name])): np.testing.assert_array_equal(a, b)
    assert params["fc"]["kernel"].shape[-1] == data.n_classes == 2
    scratch = initial_state(dataclasses.replace(cfg, init="scratch"), tc, data, stage_key(0, "train"))
    assert scratch is None
    again = initial_state(cfg, tc, data, stage_key(0, "train"))  # read from the cache: the same start
    for a, b in zip(jax.tree.leaves(jax.device_get(again.params)), jax.tree.leaves(params)): np.testing.assert_array_equal(a, b)


def test_corpus_is_disjoint_from_the_evaluation_sets():
    corpus = pretrain.generate_corpus(pretrain.CorpusConfig.smoke(image_size=16))
    wb = load_synthetic_waterbirds(WaterbirdsLikeConfig.smoke(image_size=16), cache=False)
    seen = {im.tobytes() for im in wb.images}
    assert not any(im.tobytes() in seen for im in corpus.images)
    # the corpus's streams are not the evaluation sets' streams for the same entropy
    assert not np.array_equal(pretrain.corpus_rng(0, 0, 0).random(8), np.random.default_rng([0, 0, 0]).random(8))


def test_bad_configs_are_one_line_errors():
    with pytest.raises(OilwaterError, match="image_size"): pretrain.CorpusConfig(image_size=4)
    with pytest.raises(OilwaterError, match="epochs"): pretrain.PretrainConfig(epochs=0)
