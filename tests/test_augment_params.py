"""The view-parameter sampler: determinism, ranges, probabilities, crop algorithm, ViewParams."""
from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simclr_xb import reference
from simclr_xb.augment import ViewParams, identity_params, sample_crop_boxes, sample_pair, sample_view_params, view_rng
from simclr_xb.config import AugmentConfig


def _equal(a: ViewParams, b: ViewParams) -> bool:
    return all(np.array_equal(getattr(a, f.name), getattr(b, f.name)) for f in fields(ViewParams))


# --------------------------------------------------------------------------- determinism


def test_same_key_gives_identical_params():
    cfg = AugmentConfig(image_size=32)
    a = sample_pair(cfg, 16, (40, 48), seed=3, epoch=2, step=7, rank=1)
    b = sample_pair(cfg, 16, (40, 48), seed=3, epoch=2, step=7, rank=1)
    assert _equal(a[0], b[0]) and _equal(a[1], b[1])
    assert not _equal(a[0], a[1])  # the two views differ


@pytest.mark.parametrize("change", [dict(seed=4), dict(epoch=3), dict(step=8), dict(rank=0)])
def test_any_other_key_gives_different_params(change):
    cfg = AugmentConfig(image_size=32)
    key = dict(seed=3, epoch=2, step=7, rank=1)
    a, _ = sample_pair(cfg, 16, (40, 48), **key)
    b, _ = sample_pair(cfg, 16, (40, 48), **{**key, **change})
    for name in ("crop", "brightness", "hue", "blur_sigma"):
        assert not np.array_equal(getattr(a, name), getattr(b, name)), name


def test_stream_consumed_depends_on_n_only():
    """Whatever the outcomes, one call draws the same amount: the next draw is unaffected by
    probabilities or crop settings."""
    after = []
    for cfg in (AugmentConfig(), AugmentConfig(flip_p=0.0, blur_p=1.0, crop_scale=(1.0, 1.0),
                                               crop_ratio=(2.0, 3.0))):
        rng = view_rng(0, 0, 0)
        sample_view_params(rng, cfg, 10, (20, 20))
        after.append(rng.random())
    assert after[0] == after[1]


# --------------------------------------------------------------------------- ranges

HW = (40, 56)  # non-square so that the two axes cannot be swapped unnoticed


@pytest.fixture(scope="module")
def many():
    cfg = AugmentConfig(image_size=32, strength=1.0)
    return cfg, sample_view_params(view_rng(0, 0, 0), cfg, 20000, HW)


def test_boxes_inside_image_with_area_and_aspect_in_range_up_to_rounding(many):
    cfg, p = many
    H, W = HW
    top, left, h, w = p.crop.T
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= H).all() and (left + w <= W).all()
    # w = round(sqrt(A r)), h = round(sqrt(A / r)): each side within 0.5 of its real value.
    lo, hi = cfg.crop_scale
    assert ((w + 0.5) * (h + 0.5) >= lo * H * W).all()
    assert ((w - 0.5) * (h - 0.5) <= hi * H * W).all()
    rlo, rhi = cfg.crop_ratio
    assert ((w + 0.5) / (h - 0.5) >= rlo).all() and ((w - 0.5) / (h + 0.5) <= rhi).all()
    # The spread covers the range: small and near-full crops, both orientations.
    frac = h * w / (H * W)
    assert frac.min() < 0.1 and frac.max() > 0.9
    assert (w / h < 0.8).any() and (w / h > 1.25).any()
    # Positions are spread over the valid range, not pinned to a corner.
    assert (top == H - h).any() and (top == 0).any() and (left == W - w).any()


def test_jitter_and_blur_ranges(many):
    cfg, p = many
    s = cfg.strength
    for name in ("brightness", "contrast", "saturation"):
        v = getattr(p, name)
        assert v.min() >= 1 - 0.8 * s and v.max() <= 1 + 0.8 * s
        assert v.min() < 1 - 0.75 * s and v.max() > 1 + 0.75 * s  # fills the range
    assert p.hue.min() >= -0.2 * s and p.hue.max() <= 0.2 * s
    assert p.hue.min() < -0.19 * s and p.hue.max() > 0.19 * s
    assert (np.sort(p.jitter_order, axis=1) == np.arange(4)).all()
    assert len({tuple(r) for r in p.jitter_order}) == 24  # every order occurs
    lo, hi = cfg.blur_sigma
    assert p.blur_sigma.min() >= lo and p.blur_sigma.max() <= hi
    assert p.crop.dtype == np.int64 and p.flip.dtype == bool and p.jitter_order.dtype == np.int64


def test_strength_scales_the_ranges():
    cfg = AugmentConfig(strength=0.5)
    p = sample_view_params(view_rng(1, 0, 0), cfg, 5000, (32, 32))
    assert p.brightness.min() >= 0.6 and p.brightness.max() <= 1.4
    assert np.abs(p.hue).max() <= 0.1
    p0 = sample_view_params(view_rng(1, 0, 0), AugmentConfig(strength=0.0), 100, (32, 32))
    assert (p0.brightness == 1).all() and (p0.hue == 0).all()


@pytest.mark.parametrize("name,attr", [("flip_p", "flip"), ("jitter_p", "jitter"),
                                       ("gray_p", "grayscale"), ("blur_p", "blur")])
def test_empirical_probabilities(many, name, attr):
    cfg, p = many
    prob = getattr(cfg, name)
    n = len(p)
    sigma = math.sqrt(prob * (1 - prob) / n)
    assert abs(getattr(p, attr).mean() - prob) < 5 * sigma, (name, getattr(p, attr).mean())


def test_probability_zero_and_one_and_paper_values():
    assert (AugmentConfig().flip_p, AugmentConfig().jitter_p, AugmentConfig().gray_p,
            AugmentConfig().blur_p) == (0.5, 0.8, 0.2, 0.5)
    cfg = AugmentConfig(flip_p=0.0, jitter_p=1.0, gray_p=0.0, blur_p=1.0)
    p = sample_view_params(view_rng(2, 0, 0), cfg, 500, (16, 16))
    assert not p.flip.any() and p.jitter.all() and not p.grayscale.any() and p.blur.all()


# --------------------------------------------------------------------------- crop algorithm


def torchvision_crop(H, W, scale, ratio, area_u, logr_u, u_top, u_left):
    """torchvision.transforms.RandomResizedCrop.get_params, line by line, fed with given
    uniforms instead of torch's generator (randint(0, n) is floor(u * n))."""
    area = H * W
    for t in range(len(area_u)):
        target_area = area * area_u[t]
        aspect_ratio = math.exp(logr_u[t])
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= W and 0 < h <= H:
            i = int(math.floor(u_top * (H - h + 1)))
            j = int(math.floor(u_left * (W - w + 1)))
            return i, j, h, w
    # Fallback to central crop
    in_ratio = float(W) / float(H)
    if in_ratio < min(ratio):
        w = W
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = H
        w = int(round(h * max(ratio)))
    else:  # whole image
        w = W
        h = H
    i = (H - h) // 2
    j = (W - w) // 2
    return i, j, h, w


@pytest.mark.parametrize("hw,scale,ratio", [
    ((32, 32), (0.08, 1.0), (3 / 4, 4 / 3)),
    ((40, 56), (0.08, 1.0), (3 / 4, 4 / 3)),
    ((24, 16), (0.5, 1.0), (0.5, 2.0)),
    ((20, 20), (0.9, 1.0), (1.5, 3.0)),  # most tries fail: many fallbacks
    ((10, 40), (0.6, 1.0), (0.25, 0.8)),  # wide image, tall ratios: fallback clamps the width
    ((30, 36), (1.0, 1.0), (0.5, 3.0)),  # fallback to the whole image
])
def test_crop_boxes_follow_torchvisions_algorithm(hw, scale, ratio):
    n, tries = 400, 10
    boxes = sample_crop_boxes(np.random.default_rng(5), n, hw, scale, ratio, tries)
    # The same uniforms, drawn in the sampler's documented order.
    rng = np.random.default_rng(5)
    area_u = rng.uniform(scale[0], scale[1], size=(n, tries))
    logr_u = rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, tries))
    u_top, u_left = rng.random(n), rng.random(n)
    want = [torchvision_crop(*hw, scale, ratio, area_u[k], logr_u[k], u_top[k], u_left[k]) for k in range(n)]
    np.testing.assert_array_equal(boxes, np.array(want))


def test_impossible_ratio_forces_the_central_crop():
    # Full area with aspect 2..3 never fits a square: every view falls back to the central
    # crop clamped to the lowest ratio: w = 20, h = round(20 / 2) = 10, top = 5.
    boxes = sample_crop_boxes(np.random.default_rng(0), 50, (20, 20), (1.0, 1.0), (2.0, 3.0))
    assert (boxes == [5, 0, 10, 20]).all()
    # Wide image, tall ratios: h = H = 10, w = round(10 * 1.0) = 10, left = (40 - 10) // 2 = 15.
    boxes = sample_crop_boxes(np.random.default_rng(0), 50, (10, 40), (1.0, 1.0), (0.5, 1.0))
    assert (boxes == [0, 15, 10, 10]).all()
    # Ratio range containing the image's own (1.2): the fallback is the whole image. Full area
    # fits a 30x36 image only for aspects in about (1.16, 1.23), so most views fall back.
    boxes = sample_crop_boxes(np.random.default_rng(0), 200, (30, 36), (1.0, 1.0), (0.5, 3.0))
    whole = (boxes == [0, 0, 30, 36]).all(axis=1)
    assert whole.mean() > 0.5
    assert (boxes[~whole, 2] * boxes[~whole, 3] >= 29 * 35).all()  # the rest are near-full boxes


# --------------------------------------------------------------------------- ViewParams


def test_slicing_indexing_and_concat():
    p = sample_view_params(view_rng(0, 1, 2), AugmentConfig(), 10, (32, 32))
    assert len(p) == 10
    part = p[2:5]
    assert len(part) == 3 and np.array_equal(part.crop, p.crop[2:5])
    one = p[4]
    assert len(one) == 1 and one.hue[0] == p.hue[4] and one.crop.shape == (1, 4)
    mask = p.flip
    assert len(p[mask]) == int(mask.sum())
    assert _equal(p[np.array([1, 0])][1], p[0])
    back = ViewParams.concat([p[:3], p[3:7], p[7:]])
    assert _equal(back, p)
    assert _equal(ViewParams.from_dict(p.to_dict()), p)
    a, b = sample_pair(AugmentConfig(), 5, (32, 32), 0, 0, 0)
    both = sample_view_params(view_rng(0, 0, 0), AugmentConfig(), 10, (32, 32))
    assert _equal(ViewParams.concat([a, b]), both)


def test_validate_errors():
    good = sample_view_params(view_rng(0, 0, 0), AugmentConfig(), 6, (24, 24))
    good.validate((24, 24))
    bad = ViewParams.from_dict({**good.to_dict(), "flip": good.flip[:5]})
    with pytest.raises(ValueError, match=r"ViewParams.flip has shape \(5,\), expected \(6,\)"):
        bad.validate((24, 24))
    crop = good.crop.copy()
    crop[0] = [20, 0, 10, 10]
    with pytest.raises(ValueError, match="outside the 24x24"):
        ViewParams.from_dict({**good.to_dict(), "crop": crop}).validate((24, 24))
    with pytest.raises(ValueError, match="outside"):
        good.validate((8, 8))  # boxes drawn for 24x24 do not fit an 8x8 image
    order = good.jitter_order.copy()
    order[2] = [0, 0, 1, 2]
    with pytest.raises(ValueError, match="permutations"):
        ViewParams.from_dict({**good.to_dict(), "jitter_order": order}).validate((24, 24))
    with pytest.raises(ValueError, match="blur_sigma"):
        ViewParams.from_dict({**good.to_dict(), "blur_sigma": np.zeros(6)}).validate((24, 24))


def test_identity_params_are_an_exact_identity():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    p = identity_params(3, (16, 16))
    p.validate((16, 16))
    out = reference.augment(images, p, AugmentConfig(image_size=16))
    np.testing.assert_array_equal(out, images / 255.0)


# --------------------------------------------------------------------------- property


@st.composite
def image_and_params(draw):
    n = draw(st.integers(1, 3))
    H, W = draw(st.integers(8, 20)), draw(st.integers(8, 20))
    size = draw(st.sampled_from([8, 12, 20, 24]))  # 20 and 24 give a 3-tap blur
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    extreme = draw(st.booleans())  # saturated images and extreme factors
    if extreme:
        images = (images > 127).astype(np.uint8) * 255
    h = rng.integers(1, H + 1, n)
    w = rng.integers(1, W + 1, n)
    top = (rng.random(n) * (H - h + 1)).astype(np.int64)
    left = (rng.random(n) * (W - w + 1)).astype(np.int64)

    def factor():
        return rng.choice([0.0, 2.0], n) if extreme else rng.uniform(0.0, 2.0, n)

    p = ViewParams(crop=np.stack([top, left, h, w], 1).astype(np.int64), flip=rng.random(n) < 0.5,
                   jitter=rng.random(n) < 0.8, brightness=factor(), contrast=factor(),
                   saturation=factor(), hue=rng.uniform(-0.5, 0.5, n),
                   jitter_order=np.argsort(rng.random((n, 4)), axis=1).astype(np.int64),
                   grayscale=rng.random(n) < 0.3, blur=rng.random(n) < 0.7,
                   blur_sigma=rng.uniform(0.1, 2.0, n))
    return images, p, size


@settings(max_examples=100, deadline=None)
@given(image_and_params())
def test_any_valid_params_give_finite_output_in_unit_range(data):
    images, p, size = data
    p.validate(images.shape[1:3])
    out = reference.augment(images, p, AugmentConfig(image_size=size))
    assert out.shape == (len(images), size, size, 3)
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
