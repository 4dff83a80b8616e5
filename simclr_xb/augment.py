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

    def __getitem__(self, index) -> "ViewParams":
        """Select views (a slice, index array or mask), keeping the struct-of-arrays form."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1)
        return ViewParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(parts: "list[ViewParams]") -> "ViewParams":
        return ViewParams(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                             for f in fields(ViewParams)})

    def to_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def from_dict(d: dict[str, np.ndarray]) -> "ViewParams":
        return ViewParams(**{f.name: np.asarray(d[f.name]) for f in fields(ViewParams)})

    def validate(self, source_hw: tuple[int, int]) -> None:
        """Raise ValueError naming the field if any parameter is malformed for this source size."""
        n = len(self)
        H, W = source_hw
        for f in fields(self):
            a = getattr(self, f.name)
            want = (n, 4) if f.name in ("crop", "jitter_order") else (n,)
            if a.shape != want:
                raise ValueError(f"ViewParams.{f.name} has shape {a.shape}, expected {want}")
        top, left, h, w = self.crop.T
        if (h < 1).any() or (w < 1).any() or (top < 0).any() or (left < 0).any() \
                or (top + h > H).any() or (left + w > W).any():
            raise ValueError(f"ViewParams.crop has a box outside the {H}x{W} source image")
        if not (np.sort(self.jitter_order, axis=1) == np.arange(4)).all():
            raise ValueError("ViewParams.jitter_order rows must be permutations of 0..3")
        if (self.blur_sigma <= 0).any():
            raise ValueError("ViewParams.blur_sigma must be > 0")


def view_rng(seed: int, epoch: int, step: int, rank: int = 0) -> np.random.Generator:
    """The generator for the views of one (seed, epoch, step, rank)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed), STREAM_VIEWS, int(epoch), int(step), int(rank)])))


def sample_crop_boxes(rng: np.random.Generator, n: int, hw: tuple[int, int],
                      scale: tuple[float, float], ratio: tuple[float, float],
                      tries: int = 10) -> np.ndarray:
    """torchvision's RandomResizedCrop.get_params, vectorised over N views -> (N, 4) int64.

    Each try: area = H*W*U(scale), log-aspect ~ U(log ratio), w = round(sqrt(area*aspect)),
    h = round(sqrt(area/aspect)); the first try with 0 < w <= W and 0 < h <= H wins and its
    top/left are uniform over the valid positions. If none fits: a central crop clamped to
    the ratio range.
    """
    H, W = hw
    area = H * W * rng.uniform(scale[0], scale[1], size=(n, tries))
    log_r = rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, tries))
    u_top = rng.random(n)
    u_left = rng.random(n)
    aspect = np.exp(log_r)
    w = np.round(np.sqrt(area * aspect)).astype(np.int64)
    h = np.round(np.sqrt(area / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = np.argmax(ok, axis=1)
    found = ok[np.arange(n), first]
    hs = h[np.arange(n), first]
    ws = w[np.arange(n), first]
    # Fallback: central crop (torchvision).
    in_ratio = W / H
    if in_ratio < ratio[0]:
        fw, fh = W, max(1, int(round(W / ratio[0])))
    elif in_ratio > ratio[1]:
        fh, fw = H, max(1, int(round(H * ratio[1])))
    else:
        fw, fh = W, H
    hs = np.where(found, hs, fh)
    ws = np.where(found, ws, fw)
    tops = np.where(found, np.floor(u_top * (H - hs + 1)).astype(np.int64), (H - fh) // 2)
    lefts = np.where(found, np.floor(u_left * (W - ws + 1)).astype(np.int64), (W - fw) // 2)
    tops = np.minimum(tops, H - hs)
    lefts = np.minimum(lefts, W - ws)
    return np.stack([tops, lefts, hs, ws], axis=1).astype(np.int64)


def sample_view_params(rng: np.random.Generator, cfg: AugmentConfig, n: int,
                       hw: tuple[int, int]) -> ViewParams:
    """Draw every parameter of ``n`` views of source images of size ``hw`` = (H, W)."""
    s = cfg.strength
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


def sample_pair(cfg: AugmentConfig, n: int, hw: tuple[int, int], seed: int, epoch: int,
                step: int, rank: int = 0) -> tuple[ViewParams, ViewParams]:
    """The two views (t, t') of a batch of ``n`` images at (seed, epoch, step, rank)."""
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


def sample_subset(seed: int, n: int, k: int, split: str) -> np.ndarray:
    """``min(k, n)`` distinct indices of ``range(n)``, sorted, fixed by (seed, split): the kNN
    monitor's images of one split (all of them, in order, when k >= n)."""
    if k >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed), STREAM_MONITOR, *split.encode()])))
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
