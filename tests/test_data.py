"""The procedural data sets: exact group counts, determinism, sizes, colour independence, the cache and the registry."""
import colorsys, dataclasses, time

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from oilwater_jax.core import OilwaterError, SPLITS
from oilwater_jax import data as D
from oilwater_jax.data import (CELEBA_COUNTS, CELEBA_LIKE, CelebALikeConfig, DATASETS, WATERBIRDS_COUNTS,
                               WATERBIRDS_LIKE, WaterbirdsLikeConfig, generate_synthetic, render_celeba,
                               sample_celeba_scenes,
                               load_dataset, load_synthetic_waterbirds, render_waterbirds, sample_waterbirds_scenes,
                               scale_counts, synthetic_cache_path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    "A private, empty cache folder."
    monkeypatch.setenv("OILWATER_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def smoke_data():
    return generate_synthetic(WATERBIRDS_LIKE, WaterbirdsLikeConfig.smoke())


def test_full_size_layout_has_waterbirds_exact_counts():
    labels, attributes, splits = D.group_layout(WaterbirdsLikeConfig().split_counts, seed=3)
    assert len(labels) == 11788
    for s in range(3):
        groups = 2*labels[splits == s] + attributes[splits == s]
        assert np.bincount(groups, minlength=4).tolist() == list(WATERBIRDS_COUNTS[s])


@pytest.mark.parametrize("scale", [1.0, 0.1, 0.02, 1e-4])
def test_scaled_counts_keep_every_group(scale):
    counts = scale_counts(WATERBIRDS_COUNTS, scale)
    assert counts.shape == (3, 4) and counts.min() >= 1
    if scale == 0.1: assert counts[0].tolist() == [350, 18, 6, 106]


def test_smoke_dataset_counts_types_and_names(smoke_data):
    d = smoke_data
    for s, name in enumerate(SPLITS):
        assert d.split(name).group_counts().tolist() == WaterbirdsLikeConfig.smoke().split_counts[s].tolist()
    assert d.images.dtype == np.uint8 and d.image_shape == (32, 32, 3)
    assert d.labels.dtype == np.int32 and d.attributes.dtype == np.int32 and d.splits.dtype == np.int8
    assert d.sample_ids.tolist() == list(range(len(d)))
    assert d.group_names == ("landbird/land", "landbird/water", "waterbird/land", "waterbird/water")
    assert d.class_names == ("landbird", "waterbird") and d.name == "synthetic-waterbirds"


def test_determinism(smoke_data):
    again = generate_synthetic(WATERBIRDS_LIKE, WaterbirdsLikeConfig.smoke())
    np.testing.assert_array_equal(again.images, smoke_data.images)
    np.testing.assert_array_equal(again.group_ids, smoke_data.group_ids)
    other = generate_synthetic(WATERBIRDS_LIKE, WaterbirdsLikeConfig.smoke(seed=7))
    assert (other.images != smoke_data.images).mean() > 0.5


def test_scene_of_an_image_does_not_depend_on_chunking(monkeypatch):
    cfg = WaterbirdsLikeConfig.smoke(pixel_noise=0.0)
    reference = generate_synthetic(WATERBIRDS_LIKE, cfg)
    monkeypatch.setattr(D, "MAX_CHUNK_PIXELS", 32*32*7)   # chunks of 7 images instead of 256
    np.testing.assert_array_equal(generate_synthetic(WATERBIRDS_LIKE, cfg).images, reference.images)


@pytest.mark.parametrize("size", [32, 64])
def test_sizes_draw_the_same_scene(size):
    clean = dict(scale=0.01, pixel_noise=0.0, blur=0.0)
    ref = generate_synthetic(WATERBIRDS_LIKE, WaterbirdsLikeConfig(image_size=16, **clean)).images.astype(np.float32)
    d = generate_synthetic(WATERBIRDS_LIKE, WaterbirdsLikeConfig(image_size=size, **clean))
    assert d.images.dtype == np.uint8 and d.image_shape == (size, size, 3)
    f = size//16
    pooled = d.images.astype(np.float32).reshape(-1, 16, f, 16, f, 3).mean((2, 4))
    assert np.abs(pooled - ref).mean() < 8


def test_224_with_smoke_counts():
    d = generate_synthetic(WATERBIRDS_LIKE, WaterbirdsLikeConfig(image_size=224, scale=0.002))
    assert d.images.shape == (len(d), 224, 224, 3) and d.images.dtype == np.uint8
    assert d.split("train").group_counts().min() >= 1


def test_background_mix_removes_the_shortcut():
    "At background_mix=0.5 land and water images have the same background: mean colours overlap."
    g = np.repeat([0, 1], 64)
    def blue_minus_green(mix):
        cfg = WaterbirdsLikeConfig(background_mix=mix, bird_size=0.25)  # a small bird: the test is about backgrounds
        P = sample_waterbirds_scenes(np.random.default_rng(0), np.zeros(128, int), g, cfg)
        img = render_waterbirds(P, cfg)[0]
        return img[..., 2].mean((1, 2)) - img[..., 1].mean((1, 2))
    pure, mixed = blue_minus_green(0.0), blue_minus_green(0.5)
    assert pure[g == 0].max() < pure[g == 1].min()
    np.testing.assert_allclose(mixed[g == 0].mean(), mixed[g == 1].mean(), atol=0.02)


def test_bird_colour_is_independent_of_group():
    "Hue sectors of the mean colour inside each bird: chi-square homogeneity across the 4 groups (p > 0.001)."
    cfg = WaterbirdsLikeConfig(texture_noise=0.0, seed=5)
    g = np.repeat(np.arange(4), 400)
    P = sample_waterbirds_scenes(np.random.default_rng(11), g // 2, g % 2, cfg)
    images, cover = render_waterbirds(P, cfg)
    inside = cover > 0.999
    assert inside.sum((1, 2)).min() > 0
    mean = (images*inside[..., None]).sum((1, 2))/inside.sum((1, 2))[:, None]
    hsv = np.array([colorsys.rgb_to_hsv(*m) for m in mean])
    table = np.stack([np.bincount((hsv[g == k, 0]*6).astype(int) % 6, minlength=6) for k in range(4)])
    assert chi2_contingency(table).pvalue > 1e-3, table
    # Saturation and brightness: the drawn colours are independent of the group (checked on the scene parameters, all
    # four groups); the rendered interior mixes body, wing, head and bill, whose areas differ between the two shapes,
    # so on rendered pixels we compare the two backgrounds within each class.
    drawn = P["body_hsv"]
    for channel in (1, 2):
        means = np.array([drawn[g == k, channel].mean() for k in range(4)])
        assert np.ptp(means) < 4*np.sqrt(2/400)*drawn[:, channel].std(), means
        for land, water in ((0, 1), (2, 3)):
            diff = abs(hsv[g == land, channel].mean() - hsv[g == water, channel].mean())
            assert diff < 4*np.sqrt(2/400)*hsv[:, channel].std(), (channel, land, water, diff)


def test_cache_hit_returns_identical_arrays(cache):
    cfg = WaterbirdsLikeConfig.smoke()
    first = load_synthetic_waterbirds(cfg)
    path = synthetic_cache_path(WATERBIRDS_LIKE, cfg)
    assert path.exists() and path.parent == cache/"data"
    stamp = path.stat().st_mtime_ns
    second = load_synthetic_waterbirds(cfg)
    assert path.stat().st_mtime_ns == stamp          # read, not rewritten
    for f in ("images", "labels", "attributes", "splits", "sample_ids"):
        np.testing.assert_array_equal(getattr(second, f), getattr(first, f))
    assert second.group_names == first.group_names
    assert synthetic_cache_path(WATERBIRDS_LIKE, cfg.smoke(seed=1)) != path


def test_corrupt_cache_is_regenerated(cache):
    cfg = WaterbirdsLikeConfig.smoke()
    path = synthetic_cache_path(WATERBIRDS_LIKE, cfg)
    path.write_bytes(b"not an npz")
    d = load_synthetic_waterbirds(cfg)
    assert len(d) == cfg.split_counts.sum()
    assert np.load(path)["images"].shape == d.images.shape


def test_registry_and_overrides(cache):
    assert set(DATASETS) == {"synthetic-waterbirds", "synthetic-celeba"}
    d = load_dataset("synthetic-waterbirds", scale=0.005, image_size=16)
    assert d.image_shape == (16, 16, 3) and d.split("val").group_counts().tolist() == [2, 2, 1, 1]
    with pytest.raises(OilwaterError, match="Did you mean 'synthetic-waterbirds'"):
        load_dataset("synthetic_waterbirds")
    with pytest.raises(OilwaterError, match="'bird_sise', 'colour'"):
        load_dataset("synthetic-waterbirds", bird_sise=0.2, colour=1)


@pytest.mark.parametrize("field,value", [("image_size", 4), ("scale", 0.0), ("scale", 2.0), ("shape_gap", 1.5),
                                         ("background_mix", 0.6), ("bird_size", 0.0), ("blur", -1.0)])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(OilwaterError, match=f"WaterbirdsLikeConfig.{field}"):
        WaterbirdsLikeConfig(**{field: value})


def test_celeba_like_counts_are_ten_percent_of_celeba():
    counts = CelebALikeConfig().split_counts
    np.testing.assert_array_equal(counts, np.maximum(1, np.rint(np.asarray(CELEBA_COUNTS)*0.1)))
    assert counts[0].tolist() == [7163, 6687, 2288, 139]
    labels, attributes, splits = D.group_layout(counts, seed=0)
    for s in range(3):
        assert np.bincount(2*labels[splits == s] + attributes[splits == s], minlength=4).tolist() == counts[s].tolist()


def test_celeba_like_smoke_and_registry(cache):
    d = load_dataset("synthetic-celeba", scale=0.002)
    assert d.name == "synthetic-celeba" and d.class_names == ("not blond", "blond")
    assert d.images.dtype == np.uint8 and d.image_shape == (32, 32, 3)
    for s, name in enumerate(SPLITS):
        assert d.split(name).group_counts().tolist() == CelebALikeConfig.smoke().split_counts[s].tolist()
    again = load_dataset("synthetic-celeba", scale=0.002)
    np.testing.assert_array_equal(again.images, d.images)
    with pytest.raises(OilwaterError, match="'hair_colour'"):
        load_dataset("synthetic-celeba", hair_colour=1)


def test_celeba_like_cues():
    "Long hair (a = 0) covers far more of the image than a crop; blond hair is lighter than non-blond in both groups."
    cfg = CelebALikeConfig(lighting=0.0, texture_noise=0.0)
    g = np.repeat(np.arange(4), 100)
    P = sample_celeba_scenes(np.random.default_rng(0), g // 2, g % 2, cfg)
    images, hair = render_celeba(P, cfg)
    area = hair.mean((1, 2))
    assert area[g % 2 == 0].min() > 2*area[g % 2 == 1].max()
    inside = hair > 0.999
    assert inside.sum((1, 2)).min() > 0
    lightness = (images.mean(-1)*inside).sum((1, 2))/inside.sum((1, 2))
    for a in (0, 1):
        assert np.median(lightness[g == 2 + a]) > np.median(lightness[g == a]) + 0.2


def test_celeba_like_hair_knobs():
    "A thicker crop shows more hair on a = 1 and leaves a = 0 alone; a stubble beard darkens blond men's beards."
    g = np.repeat(np.arange(4), 50)
    def render(**kw):
        cfg = CelebALikeConfig(lighting=0.0, texture_noise=0.0, **kw)
        P = sample_celeba_scenes(np.random.default_rng(1), g // 2, g % 2, cfg)
        return P, *render_celeba(P, cfg)
    _, img_thin, thin = render(short_hair=0.3, stubble=1.0)
    P, img_thick, thick = render(short_hair=1.0, stubble=0.0)
    assert thick[g % 2 == 1].mean() > 1.5*thin[g % 2 == 1].mean()
    np.testing.assert_array_equal(thick[g % 2 == 0], thin[g % 2 == 0])
    blond_beard = (g == 3) & (P["beard"] > 0)
    assert blond_beard.sum() > 5
    lower = np.zeros(thin.shape[1:], bool); lower[18:] = True   # below the face's centre: the beard, not the cap
    changed = (np.abs(img_thin - img_thick).max(-1) > 0.05) & lower
    beard_px = changed[blond_beard]
    assert beard_px.sum() > 5*blond_beard.sum()
    assert img_thin[blond_beard][beard_px].mean() < img_thick[blond_beard][beard_px].mean() - 0.2
    with pytest.raises(OilwaterError, match="CelebALikeConfig.stubble"):
        CelebALikeConfig(stubble=-0.1)


@pytest.mark.slow
def test_generation_speed_full_size():
    for size, limit in ((32, 30), (64, 120)):
        t0 = time.perf_counter()
        d = generate_synthetic(WATERBIRDS_LIKE, WaterbirdsLikeConfig(image_size=size))
        assert len(d) == 11788 and time.perf_counter() - t0 < limit
