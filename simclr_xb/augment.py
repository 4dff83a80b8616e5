"""Augmentation parameters: the ONLY place in simclr_xb where randomness is drawn.

SimCLR's view pipeline (Chen et al. 2020, appendix A; SIMCLR-FACTS.md), per view:

1. random resized crop: area fraction ~ U(scale), aspect ratio log-uniform in ``ratio``,
   up to ``crop_tries`` tries, else a central crop (torchvision's RandomResizedCrop);
   bilinear resize of the box to ``image_size`` (align_corners=False, no antialias);
2. horizontal flip with p = flip_p;
3. colour jitter with p = jitter_p: brightness, contrast, saturation (factors in
   [1 - 0.8 s, 1 + 0.8 s]) and hue (shift in [-0.2 s, 0.2 s] of a turn), in a random order;
4. grayscale with p = gray_p;
5. Gaussian blur with p = blur_p, sigma ~ U(blur_sigma).

:func:`sample_view_params` draws every parameter of N views at once into a
:class:`ViewParams` struct of arrays. Backends and the oracle *apply* these parameters; they
never draw. Every array is drawn with a fixed shape whatever the outcome, so the stream
consumed per call is a function of N alone.

Streams: :func:`view_rng` derives a generator from (seed, epoch, step, rank), so any step of
any rank can be replayed (resume, conformance, distributed tests).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from .config import AugmentConfig

# Indices of the colour-jitter ops in ViewParams.jitter_order.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")

# Stream identifiers mixed into the seed so that different uses never share a stream.
STREAM_VIEWS = 0x5157
STREAM_SHUFFLE = 0x5348
STREAM_INIT = 0x494E
STREAM_MONITOR = 0x4B4E  # the kNN monitor's fixed image subsets (simclr_xb/monitor.py)


@dataclass
class ViewParams:
    """Every random parameter of N views, as a struct of arrays (shapes given per field).

    crop:          (N, 4) int64, box ``(top, left, height, width)`` in source pixels.
    flip:          (N,) bool, horizontal flip.
    jitter:        (N,) bool, colour jitter applied.
    brightness:    (N,) float64, multiplicative factor b.
    contrast:      (N,) float64, blend factor c with the grey mean.
    saturation:    (N,) float64, blend factor t with the grey image.
    hue:           (N,) float64, hue shift d as a fraction of a turn.
    jitter_order:  (N, 4) int64, a permutation of (BRIGHTNESS, CONTRAST, SATURATION, HUE).
    grayscale:     (N,) bool.
    blur:          (N,) bool.
    blur_sigma:    (N,) float64.

    Factors are drawn for every view; they only act where ``jitter`` (or ``blur``) is True.
    """

    crop: np.ndarray
    flip: np.ndarray
    jitter: np.ndarray
    brightness: np.ndarray
    contrast: np.ndarray
    saturation: np.ndarray
    hue: np.ndarray
    jitter_order: np.ndarray
    grayscale: np.ndarray
    blur: np.ndarray
    blur_sigma: np.ndarray

    def __len__(self) -> int:
        return int(self.crop.shape[0])

    def __getitem__(self, index) -> ViewParams:
        """Select views (a slice, index array or mask), keeping the struct-of-arrays form."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1)
        return ViewParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(parts: list[ViewParams]) -> ViewParams:
        return ViewParams(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                             for f in fields(ViewParams)})

    def to_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def from_dict(d: dict[str, np.ndarray]) -> ViewParams:
        return ViewParams(**{f.name: np.asarray(d[f.name]) for f in fields(ViewParams)})

    def validate(self, source_hw) -> None:
        """Raise ValueError naming the field if any parameter is malformed for this source size
        (one (H, W), or per-view (N,) arrays)."""
        n = len(self)
        H, W = (np.asarray(a) for a in source_hw)
        for f in fields(self):
            a = getattr(self, f.name)
            want = (n, 4) if f.name in ("crop", "jitter_order") else (n,)
            if a.shape != want:
                raise ValueError(f"ViewParams.{f.name} has shape {a.shape}, expected {want}")
        top, left, h, w = self.crop.T
        if (h < 1).any() or (w < 1).any() or (top < 0).any() or (left < 0).any() \
                or (top + h > H).any() or (left + w > W).any():
            shown = f"{H}x{W}" if H.ndim == 0 and W.ndim == 0 else "per-view"
            raise ValueError(f"ViewParams.crop has a box outside the {shown} source image")
        if not (np.sort(self.jitter_order, axis=1) == np.arange(4)).all():
            raise ValueError("ViewParams.jitter_order rows must be permutations of 0..3")
        if (self.blur_sigma <= 0).any():
            raise ValueError("ViewParams.blur_sigma must be > 0")


def view_rng(seed: int, epoch: int, step: int, rank: int = 0) -> np.random.Generator:
    """The generator for the views of one (seed, epoch, step, rank)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed), STREAM_VIEWS, int(epoch), int(step), int(rank)])))


def sample_crop_boxes(rng: np.random.Generator, n: int, hw,
                      scale: tuple[float, float], ratio: tuple[float, float],
                      tries: int = 10) -> np.ndarray:
    """torchvision's RandomResizedCrop.get_params, vectorised over N views -> (N, 4) int64.

    hw: ``(H, W)`` of the source images, each a scalar (one size for all views) or an (N,)
    array (each view's own source size, e.g. a folder of photos); see :func:`source_hw`.

    Each try: area = H*W*U(scale), log-aspect ~ U(log ratio), w = round(sqrt(area*aspect)),
    h = round(sqrt(area/aspect)); the first try with 0 < w <= W and 0 < h <= H wins and its
    top/left are uniform over the valid positions. If none fits: a central crop clamped to
    the ratio range.
    """
    H, W = source_hw(hw, n)
    area = H[:, None] * W[:, None] * rng.uniform(scale[0], scale[1], size=(n, tries))
    log_r = rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, tries))
    u_top = rng.random(n)
    u_left = rng.random(n)
    aspect = np.exp(log_r)
    w = np.round(np.sqrt(area * aspect)).astype(np.int64)
    h = np.round(np.sqrt(area / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= W[:, None]) & (h > 0) & (h <= H[:, None])
    first = np.argmax(ok, axis=1)
    found = ok[np.arange(n), first]
    hs = h[np.arange(n), first]
    ws = w[np.arange(n), first]
    # Fallback: central crop (torchvision), clamped to the ratio range per view.
    in_ratio = W / H
    narrow, wide = in_ratio < ratio[0], in_ratio > ratio[1]
    fw = np.where(wide, np.maximum(1, np.round(H * ratio[1])).astype(np.int64), W)
    fh = np.where(narrow, np.maximum(1, np.round(W / ratio[0])).astype(np.int64), H)
    hs = np.where(found, hs, fh)
    ws = np.where(found, ws, fw)
    tops = np.where(found, np.floor(u_top * (H - hs + 1)).astype(np.int64), (H - fh) // 2)
    lefts = np.where(found, np.floor(u_left * (W - ws + 1)).astype(np.int64), (W - fw) // 2)
    tops = np.minimum(tops, H - hs)
    lefts = np.minimum(lefts, W - ws)
    return np.stack([tops, lefts, hs, ws], axis=1).astype(np.int64)


def source_hw(hw, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A tuple ``(H, W)`` of scalars or (n,) arrays, or an (n, 2) numpy array of rows (H, W)
    -> two int64 (n,) arrays."""
    if isinstance(hw, np.ndarray) and hw.ndim == 2:
        H, W = hw[:, 0], hw[:, 1]
    else:
        H, W = hw
    H = np.broadcast_to(np.asarray(H, dtype=np.int64), (n,))
    W = np.broadcast_to(np.asarray(W, dtype=np.int64), (n,))
    return H, W


def sample_crop_boxes_tf2(rng: np.random.Generator, n: int, hw, scale: tuple[float, float],
                          ratio: tuple[float, float], tries: int = 100,
                          min_covered: float = 0.1) -> np.ndarray:
    """tf.image.sample_distorted_bounding_box as the official tf2 code calls it (one box of
    the whole image, use_image_if_no_bounding_boxes), vectorised over N views -> (N, 4) int64.

    ``hw`` = (H, W), each a scalar or an (N,) array (one source size per view). The kernel's
    semantics (tensorflow/core/kernels/image/sample_distorted_bounding_box_op.cc), in its
    float32 arithmetic, per attempt: aspect a ~ U(ratio) (uniform, not log-uniform); the
    height range is [rint(sqrt(lo H W / a)), rint(sqrt(hi H W / a))], the top lowered until
    rint(h_max a) <= W and capped at H; h is UNIFORM over the integers of that range (so the
    area is not uniform); w = rint(h a); if w h < lo H W then h + 1, if w h > hi H W then
    h - 1 (w recomputed); the attempt fails if the area is still outside [lo, hi] H W, the box
    does not fit, or it covers less than ``min_covered`` of the image (which is what makes
    the smallest area max(lo, min_covered)). top ~ U{0 .. H - h - 1} (0 if h = H) and left
    likewise: TF's Uniform(H - h) never reaches the last position. The first attempt that
    succeeds wins; if none does, the whole image. rint rounds half to even (lrintf).
    Draws 4 x N x ``tries`` uniforms whatever the outcome.
    """
    f32 = np.float32
    H, W = source_hw(hw, n)
    H, W = H[:, None], W[:, None]
    u_aspect, u_height, u_top, u_left = (rng.random((n, tries)) for _ in range(4))
    a = (u_aspect.astype(f32) * f32(ratio[1] - ratio[0]) + f32(ratio[0])).astype(f32)
    min_area = f32(scale[0]) * W.astype(f32) * H.astype(f32)
    max_area = f32(scale[1]) * W.astype(f32) * H.astype(f32)

    def rint(v):
        return np.rint(v).astype(np.int64)

    h = rint(np.sqrt(min_area / a))
    h_max = rint(np.sqrt(max_area / a))
    too_wide = rint(h_max.astype(f32) * a) > W
    lowered = ((W + 0.5 - 1e-7) / a.astype(np.float64)).astype(np.int64)
    lowered -= rint(lowered.astype(f32) * a) > W
    h_max = np.minimum(np.where(too_wide, lowered, h_max), H)
    h = np.minimum(h, h_max)
    h = h + np.floor(u_height * (h_max - h + 1)).astype(np.int64) * (h < h_max)
    w = rint(h.astype(f32) * a)
    area = (w * h).astype(f32)
    grow = area < min_area
    h = np.where(grow, h + 1, h)
    w = np.where(grow, rint(h.astype(f32) * a), w)
    area = (w * h).astype(f32)
    shrink = area > max_area
    h = np.where(shrink, h - 1, h)
    w = np.where(shrink, rint(h.astype(f32) * a), w)
    area = (w * h).astype(f32)
    ok = (area >= min_area) & (area <= max_area) & (w <= W) & (h <= H) & (w > 0) & (h > 0)
    image_area = (W * H).astype(f32)
    ok &= (area >= 1.0) & (area / image_area >= f32(min_covered))
    top = np.floor(u_top * np.maximum(H - h, 0)).astype(np.int64)
    left = np.floor(u_left * np.maximum(W - w, 0)).astype(np.int64)
    first = np.argmax(ok, axis=1)
    rows = np.arange(n)
    found = ok[rows, first]
    H1, W1 = H[:, 0], W[:, 0]
    box = np.stack([np.where(found, top[rows, first], 0), np.where(found, left[rows, first], 0),
                    np.where(found, h[rows, first], H1), np.where(found, w[rows, first], W1)], axis=1)
    return box.astype(np.int64)


def sample_view_params(rng: np.random.Generator, cfg: AugmentConfig, n: int,
                       hw) -> ViewParams:
    """Draw every parameter of ``n`` views of source images of size ``hw`` = (H, W): scalars,
    or per-view (n,) arrays (see :func:`source_hw`).

    The crop sampler follows ``cfg.recipe``: :func:`sample_crop_boxes` (torchvision) or
    :func:`sample_crop_boxes_tf2` (the official tf2 code); the other draws are the same."""
    s = cfg.strength
    if cfg.recipe == "tf2":
        crop = sample_crop_boxes_tf2(rng, n, hw, cfg.crop_scale, cfg.crop_ratio, cfg.crop_tries,
                                     cfg.crop_min_covered)
    else:
        crop = sample_crop_boxes(rng, n, hw, cfg.crop_scale, cfg.crop_ratio, cfg.crop_tries)
    flip = rng.random(n) < cfg.flip_p
    jitter = rng.random(n) < cfg.jitter_p
    brightness = rng.uniform(1 - 0.8 * s, 1 + 0.8 * s, n)
    contrast = rng.uniform(1 - 0.8 * s, 1 + 0.8 * s, n)
    saturation = rng.uniform(1 - 0.8 * s, 1 + 0.8 * s, n)
    hue = rng.uniform(-0.2 * s, 0.2 * s, n)
    order = np.argsort(rng.random((n, 4)), axis=1).astype(np.int64)
    grayscale = rng.random(n) < cfg.gray_p
    blur = rng.random(n) < cfg.blur_p
    blur_sigma = rng.uniform(cfg.blur_sigma[0], cfg.blur_sigma[1], n)
    return ViewParams(crop=crop, flip=flip, jitter=jitter, brightness=brightness,
                      contrast=contrast, saturation=saturation, hue=hue, jitter_order=order,
                      grayscale=grayscale, blur=blur, blur_sigma=blur_sigma)


def sample_pair(cfg: AugmentConfig, n: int, hw, seed: int, epoch: int,
                step: int, rank: int = 0) -> tuple[ViewParams, ViewParams]:
    """The two views (t, t') of a batch of ``n`` images at (seed, epoch, step, rank).
    ``hw``: one (H, W) for all, or per image (H (n,), W (n,)) / an (n, 2) array."""
    H, W = source_hw(hw, n)
    hw = (np.concatenate([H, H]), np.concatenate([W, W]))
    p = sample_view_params(view_rng(seed, epoch, step, rank), cfg, 2 * n, hw)
    return p[:n], p[n:]


def identity_params(n: int, hw: tuple[int, int]) -> ViewParams:
    """Parameters of the evaluation view: the whole image, resized, no other op."""
    H, W = hw
    z = np.zeros(n, dtype=bool)
    one = np.ones(n)
    return ViewParams(
        crop=np.tile(np.array([[0, 0, H, W]], dtype=np.int64), (n, 1)),
        flip=z, jitter=z.copy(), brightness=one, contrast=one.copy(), saturation=one.copy(),
        hue=np.zeros(n), jitter_order=np.tile(np.arange(4, dtype=np.int64), (n, 1)),
        grayscale=z.copy(), blur=z.copy(), blur_sigma=one.copy())


def center_crop_boxes(hw, n: int | None = None, proportion: float = 0.875) -> np.ndarray:
    """The official evaluation crop (google-research/simclr tf2/data_util.py ``center_crop``
    with a square output): side rint(proportion * min(H, W)), offsets ((H - side + 1) // 2,
    (W - side + 1) // 2) -> (N, 4) int64 boxes (top, left, height, width). ``hw``: as
    :func:`source_hw`; ``n`` defaults to the length of the arrays."""
    if n is None:
        n = hw.shape[0] if isinstance(hw, np.ndarray) and hw.ndim == 2 else max(np.size(hw[0]), np.size(hw[1]))
    H, W = source_hw(hw, n)
    side = np.maximum(1, np.rint(proportion * np.minimum(H, W).astype(np.float64))).astype(np.int64)
    return np.stack([(H - side + 1) // 2, (W - side + 1) // 2, side, side], axis=1).astype(np.int64)


def sample_subset(seed: int, n: int, k: int, split: str) -> np.ndarray:
    """``min(k, n)`` distinct indices of ``range(n)``, sorted, fixed by (seed, split): the kNN
    monitor's images of one split (all of them, in order, when k >= n)."""
    if k >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed), STREAM_MONITOR, *split.encode()])))
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
