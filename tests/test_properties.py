"""Property tests (hypothesis): any augmentation config inside the ranges that
:meth:`simclr_xb.config.AugmentConfig.validate` allows, any source size and batch size, give
valid sampled parameters and, in BOTH backends, finite views in [0, 1] of the right shape."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simclr_xb.augment import sample_pair, sample_view_params, view_rng
from simclr_xb.config import AugmentConfig, ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _range(lo_min: float, hi_max: float):
    """(lo, hi) with lo_min <= lo <= hi <= hi_max."""
    return st.tuples(st.floats(lo_min, hi_max), st.floats(lo_min, hi_max)).map(lambda t: tuple(sorted(t)))


def _log_range(lo_min: float, hi_max: float):
    e = st.floats(math.log(lo_min), math.log(hi_max))
    return st.tuples(e, e).map(lambda t: tuple(sorted(math.exp(v) for v in t)))


augment_configs = st.builds(
    AugmentConfig,
    image_size=st.integers(8, 24),
    crop_scale=_range(1e-4, 1.0),
    crop_ratio=_log_range(1 / 100, 100),
    crop_tries=st.integers(1, 10),
    flip_p=st.floats(0, 1), jitter_p=st.floats(0, 1), gray_p=st.floats(0, 1), blur_p=st.floats(0, 1),
    strength=st.floats(0, 1.25),
    blur_sigma=_range(1e-3, 5.0),
)
cases = st.tuples(augment_configs, st.integers(1, 4), st.integers(4, 40), st.integers(4, 40),
                  st.integers(0, 2**32 - 1))


def _valid(cfg: AugmentConfig) -> bool:
    try:
        cfg.validate()
        return True
    except ConfigError:
        return False


@settings(max_examples=200, deadline=None)
@given(cases)
def test_sampler_gives_valid_parameters_for_any_allowed_config(case):
    cfg, n, H, W, seed = case
    if not _valid(cfg):
        return
    p = sample_view_params(view_rng(seed, 0, 0), cfg, n, (H, W))
    p.validate((H, W))  # boxes inside the image, permutations, sigma > 0
    s = cfg.strength
    for name in ("brightness", "contrast", "saturation"):
        v = getattr(p, name)
        assert np.all((1 - 0.8 * s - 1e-12 <= v) & (v <= 1 + 0.8 * s + 1e-12)), name
        assert np.all(v >= 0), name  # strength <= 1.25 keeps the factors non-negative
    assert np.all(np.abs(p.hue) <= 0.2 * s + 1e-12)
    assert np.all((cfg.blur_sigma[0] <= p.blur_sigma) & (p.blur_sigma <= cfg.blur_sigma[1]))
    p1, p2 = sample_pair(cfg, n, (H, W), seed, 1, 2)
    assert len(p1) == len(p2) == n
    p1.validate((H, W))
    p2.validate((H, W))


def _check_views(api, case):
    cfg, n, H, W, seed = case
    if not _valid(cfg):
        return
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    # extremes too: an all-black and an all-white image (grey mean 0 / 1, hue undefined)
    images[0] = 0
    if n > 1:
        images[1] = 255
    p = sample_view_params(view_rng(seed, 0, 0), cfg, n, (H, W))
    x = np.asarray(api.augment(images, p, cfg, "float32"))
    S = cfg.image_size
    assert x.shape == (n, S, S, 3)
    assert np.isfinite(x).all()
    assert x.min() >= 0.0 and x.max() <= 1.0, (x.min(), x.max())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
def test_torch_augment_outputs_finite_views_in_unit_range(case):
    from simclr_xb.backend import get_backend
    _check_views(get_backend("torch"), case)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
def test_mlx_augment_outputs_finite_views_in_unit_range(case):
    pytest.importorskip("mlx.core", reason="MLX is not installed")
    from simclr_xb.backend import get_backend
    _check_views(get_backend("mlx"), case)


def test_extreme_aspect_ratio_range_gives_a_non_empty_fallback_crop():
    cfg = AugmentConfig(image_size=8, crop_ratio=(20.0, 20.0))
    cfg.validate()  # allowed by the config
    p = sample_view_params(view_rng(0, 0, 0), cfg, 3, (8, 8))
    p.validate((8, 8))
