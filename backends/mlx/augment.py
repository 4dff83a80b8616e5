"""SimCLR's view pipeline on MLX, batched over views (Chen et al. 2020, appendix A).

Every op applies parameters sampled by :mod:`simclr_xb.augment` (this module never draws)
and mirrors :mod:`simclr_xb.reference` formula for formula and in the same operation order,
so float64 results agree with the oracle to ~1e-15 and float32 ones to ~1e-6.
Images are NHWC float in [0, 1]; every op clamps to [0, 1] as the reference does.

Per-view arithmetic ops (crop, flip, the four jitter ops, grayscale) take per-view parameters
as mx arrays, contain no data-dependent shapes and could be traced by ``mx.compile``.
:func:`color_jitter` and :func:`gaussian_blur` route views on the host: they gather the views
an op applies to (from the numpy :class:`~simclr_xb.augment.ViewParams`), apply it once per
such view, and scatter the results back, so a jittered view costs 4 op evaluations and
unjittered / unblurred views cost none. Shapes of those gathers change from step to step,
which is why the training step runs augmentation eagerly (it is lazily fused into the same
``mx.eval`` as the compiled step; see :mod:`.step`).
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np

from simclr_xb.augment import BRIGHTNESS, CONTRAST, HUE, SATURATION, ViewParams
from simclr_xb.config import AugmentConfig
from simclr_xb.recipe import GRAY_WEIGHTS as RECIPE_GRAY_WEIGHTS
from simclr_xb.recipe import blur_matrices_zero_pad, check_recipe, interpolation_matrix

from .layers import exp


def to_float(images_u8, dtype=mx.float32) -> mx.array:
    """uint8 NHWC -> float NHWC in [0, 1] (x / 255)."""
    x = images_u8 if isinstance(images_u8, mx.array) else mx.array(np.asarray(images_u8))
    return x.astype(dtype) / 255.0


def _clamp(x: mx.array) -> mx.array:
    return mx.clip(x, 0.0, 1.0)


def _per_view(a: mx.array) -> mx.array:
    """(N,) -> (N, 1, 1, 1), to broadcast a per-view parameter over NHWC."""
    return a[:, None, None, None]


# --------------------------------------------------------------------------- geometry


def _bilinear_taps(start: mx.array, length: mx.array, size: int, dtype):
    """Source taps of a 1-D bilinear resize (align_corners=False, no antialias) of the
    intervals [start, start + length) to ``size`` samples: (i0, i1, frac), each (N, size)."""
    o = mx.arange(size, dtype=dtype)[None, :]
    L = length.astype(dtype)[:, None]
    src = mx.minimum(mx.maximum((o + 0.5) * L / size - 0.5, 0.0), L - 1.0)
    i0 = mx.floor(src)
    frac = src - i0
    i1 = mx.minimum(i0 + 1, L - 1)
    s = start.astype(dtype)[:, None]
    return (i0 + s).astype(mx.int32), (i1 + s).astype(mx.int32), frac


def resized_crop(x: mx.array, crop, size: int, recipe: str = "torchvision") -> mx.array:
    """Crop each view to its box (top, left, height, width) and resize to size x size.

    Separable bilinear by gathers (no per-view loop): interpolate along the width at the
    two source columns of each output column, then along the height, which reproduces the
    reference's ``(x[y0,x0](1-fx) + x[y0,x1] fx)(1-fy) + (...)fy`` term for term.
    "tf2": TF's bicubic (:func:`simclr_xb.recipe.bicubic_taps`) as two batched products with
    per-view (size, H) and (size, W) interpolation matrices, rows then columns; not clamped.
    x: (N, H, W, C), crop: (N, 4) int -> (N, size, size, C).
    """
    if check_recipe(recipe) == "tf2":
        return _bicubic_crop(x, np.asarray(crop, dtype=np.int64), size)
    crop = crop if isinstance(crop, mx.array) else mx.array(np.asarray(crop, dtype=np.int32))
    top, left, h, w = (crop[:, k] for k in range(4))
    y0, y1, fy = _bilinear_taps(top, h, size, x.dtype)
    x0, x1, fx = _bilinear_taps(left, w, size, x.dtype)
    fx = fx[:, None, :, None]
    cols = (mx.take_along_axis(x, x0[:, None, :, None], axis=2) * (1 - fx)
            + mx.take_along_axis(x, x1[:, None, :, None], axis=2) * fx)  # (N, H, S, C)
    fy = fy[:, :, None, None]
    top_row = mx.take_along_axis(cols, y0[:, :, None, None], axis=1)
    bottom_row = mx.take_along_axis(cols, y1[:, :, None, None], axis=1)
    return _clamp(top_row * (1 - fy) + bottom_row * fy)


def _bicubic_crop(x: mx.array, crop: np.ndarray, size: int) -> mx.array:
    n, H, W, C = x.shape
    my = mx.array(interpolation_matrix(crop[:, 0], crop[:, 2], size, H), dtype=x.dtype)  # (n, S, H)
    mw = mx.array(interpolation_matrix(crop[:, 1], crop[:, 3], size, W), dtype=x.dtype)  # (n, S, W)
    rows = mx.matmul(my, x.reshape(n, H, W * C)).reshape(n, size, W, C)
    out = mx.matmul(mw, mx.swapaxes(rows, 1, 2).reshape(n, W, size * C))  # (n, S_w, S_h * C)
    return mx.swapaxes(out.reshape(n, size, size, C), 1, 2)


def hflip(x: mx.array, flip: mx.array) -> mx.array:
    """Mirror the width axis of the views where ``flip`` (N,) bool is True."""
    return mx.where(_per_view(flip), x[:, :, ::-1, :], x)


# --------------------------------------------------------------------------- colour


def rgb_to_gray(x: mx.array, recipe: str = "torchvision") -> mx.array:
    """(N, H, W, 3) -> (N, H, W, 1): 0.299 R + 0.587 G + 0.114 B ("tf2": 0.2989 / 0.5870 / 0.1140)."""
    return (x @ mx.array(RECIPE_GRAY_WEIGHTS[check_recipe(recipe)], dtype=x.dtype))[..., None]


def adjust_brightness(x: mx.array, factor: mx.array) -> mx.array:
    """x * b, per view."""
    return _clamp(x * _per_view(factor))


def adjust_contrast(x: mx.array, factor: mx.array, recipe: str = "torchvision") -> mx.array:
    """Blend with the mean of the view's grayscale: c x + (1 - c) mean(gray(x)); "tf2": with
    each channel's own mean (tf.image.adjust_contrast)."""
    if check_recipe(recipe) == "tf2":
        mean = mx.mean(x, axis=(1, 2), keepdims=True)
    else:
        mean = _per_view(mx.mean(rgb_to_gray(x), axis=(1, 2, 3)))
    c = _per_view(factor)
    return _clamp(c * x + (1 - c) * mean)


def adjust_saturation(x: mx.array, factor: mx.array, recipe: str = "torchvision") -> mx.array:
    """Blend with the view's grayscale: t x + (1 - t) gray(x); "tf2" (tf.image.adjust_saturation):
    HSV S <- clip(S t, 0, 1), H and V kept, as the oracle."""
    if check_recipe(recipe) == "tf2":
        v = mx.max(x, axis=-1)
        c = v - mx.min(x, axis=-1)
        pos = v > 0
        s = mx.where(pos, c / mx.where(pos, v, 1.0), 0.0)
        c_new = v * mx.clip(s * factor[:, None, None], 0.0, 1.0)
        return _clamp(hsv_channels(v, c_new, rgb_to_hue(x)))
    t = _per_view(factor)
    return _clamp(t * x + (1 - t) * rgb_to_gray(x))


def rgb_to_hue(x: mx.array) -> mx.array:
    """HSV hue in [0, 1), 0 where the chroma is 0, branch-free. (N, H, W, 3) -> (N, H, W).

    Ties follow the reference (and torchvision): the max channel is tested R, then G, then B.
    """
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = mx.max(x, axis=-1)
    c = v - mx.min(x, axis=-1)
    safe = mx.where(c > 0, c, 1.0)
    h6 = mx.where(v == r, mx.remainder((g - b) / safe, 6.0),
                  mx.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return mx.where(c > 0, h6 / 6.0, 0.0)


def hsv_channels(v: mx.array, c: mx.array, hue: mx.array) -> mx.array:
    """RGB from value V, chroma C and hue (turns): channel n in (R=5, G=3, B=1) is
    V - C * clip(min(k, 4 - k), 0, 1) with k = (n + 6 hue) mod 6 (HSV -> RGB, branch-free)."""
    out = []
    for n in (5.0, 3.0, 1.0):
        k = mx.remainder(n + 6.0 * hue, 6.0)
        out.append(v - c * mx.clip(mx.minimum(k, 4.0 - k), 0.0, 1.0))
    return mx.stack(out, axis=-1)


def adjust_hue(x: mx.array, delta: mx.array) -> mx.array:
    """Rotate the HSV hue by ``delta`` (N,) turns keeping V and chroma (torchvision's adjust_hue
    without the round trip)."""
    v = mx.max(x, axis=-1)
    c = v - mx.min(x, axis=-1)
    hue = mx.remainder(rgb_to_hue(x) + delta[:, None, None], 1.0)
    return _clamp(hsv_channels(v, c, hue))


JITTER_FNS = {BRIGHTNESS: adjust_brightness, CONTRAST: adjust_contrast,
              SATURATION: adjust_saturation, HUE: adjust_hue}


def _scatter_back(x: mx.array, idx: np.ndarray, y: mx.array) -> mx.array:
    """x with rows ``idx`` replaced by ``y`` (concatenate, then one gather by the inverse order)."""
    rest = np.setdiff1d(np.arange(x.shape[0]), idx)
    if rest.size == 0:
        parts, order = [y], idx
    else:
        parts, order = [y, mx.take(x, mx.array(rest), axis=0)], np.concatenate([idx, rest])
    return mx.take(mx.concatenate(parts, axis=0), mx.array(np.argsort(order)), axis=0)


def color_jitter(x: mx.array, params: ViewParams, recipe: str = "torchvision") -> mx.array:
    """The four jitter ops in each view's own order (``params.jitter_order``), on the views
    where ``params.jitter``; the others are returned untouched.

    For each of the 4 positions, the jittered views are grouped by the op they have there;
    each group is gathered, transformed by its op with its own factors, and the groups are
    reassembled in view order: 4 op evaluations per jittered view in total.
    """
    jit = np.flatnonzero(np.asarray(params.jitter, dtype=bool))
    if jit.size == 0:
        return x
    order = np.asarray(params.jitter_order)[jit]
    factors = {BRIGHTNESS: params.brightness, CONTRAST: params.contrast,
               SATURATION: params.saturation, HUE: params.hue}
    factors = {k: mx.array(np.asarray(v)[jit], dtype=x.dtype) for k, v in factors.items()}
    xj = mx.take(x, mx.array(jit), axis=0)
    fns = dict(JITTER_FNS)
    if check_recipe(recipe) == "tf2":
        fns[CONTRAST] = lambda a, f: adjust_contrast(a, f, recipe)
        fns[SATURATION] = lambda a, f: adjust_saturation(a, f, recipe)
    for pos in range(4):
        parts, rows = [], []
        for op, fn in fns.items():
            sel = np.flatnonzero(order[:, pos] == op)
            if sel.size:
                s = mx.array(sel)
                parts.append(fn(mx.take(xj, s, axis=0), mx.take(factors[op], s, axis=0)))
                rows.append(sel)
        if len(parts) == 1:
            xj = parts[0]
        else:
            inv = np.argsort(np.concatenate(rows))
            xj = mx.take(mx.concatenate(parts, axis=0), mx.array(inv), axis=0)
    return _scatter_back(x, jit, xj)


def grayscale(x: mx.array, mask: mx.array, recipe: str = "torchvision") -> mx.array:
    """Replace the views where ``mask`` (N,) with their grayscale, repeated over 3 channels."""
    return mx.where(_per_view(mask), mx.broadcast_to(rgb_to_gray(x, recipe), x.shape), x)


# --------------------------------------------------------------------------- blur


def gaussian_kernel1d(sigma: mx.array, kernel_size: int) -> mx.array:
    """(N,) sigmas -> (N, k) normalised kernels exp(-t^2 / (2 sigma^2)), t = -r..r."""
    r = kernel_size // 2
    t = mx.arange(-r, r + 1, dtype=sigma.dtype)[None, :]
    k = exp(-(t ** 2) / (2.0 * sigma[:, None] ** 2))
    return k / mx.sum(k, axis=1, keepdims=True)


def blur_matrices(sigma: np.ndarray, length: int, kernel_size: int, recipe: str = "torchvision") -> np.ndarray:
    """(n,) sigmas -> (n, length, length) float64: the 1-D Gaussian blur with reflect padding
    (as torchvision) as a matrix, out = M @ line. Row o holds k[j] at column reflect(o + j - r),
    so a reflected pixel's two taps are summed into one coefficient (same sum, another
    rounding). The kernel is the oracle's (reference.gaussian_kernel1d, float64). "tf2":
    zero padding ('SAME'), taps outside the line dropped."""
    r = kernel_size // 2
    if check_recipe(recipe) == "tf2":
        t = np.arange(-r, r + 1, dtype=np.float64)[None, :]
        k = np.exp(-(t ** 2) / (2.0 * np.asarray(sigma, np.float64)[:, None] ** 2))
        return blur_matrices_zero_pad(k / k.sum(axis=1, keepdims=True), length)
    if r >= length:
        raise ValueError(f"gaussian_blur kernel_size {kernel_size} needs images larger than {r} "
                         f"pixels for reflect padding, got {length}")
    t = np.arange(-r, r + 1, dtype=np.float64)[None, :]
    k = np.exp(-(t ** 2) / (2.0 * np.asarray(sigma, np.float64)[:, None] ** 2))
    k /= k.sum(axis=1, keepdims=True)  # (n, kernel_size)
    return _reflect_matrices(k, length)


def _reflect_matrices(k: np.ndarray, length: int) -> np.ndarray:
    """(n, kernel_size) kernels -> (n, length, length) reflect-padded blur matrices."""
    n, kernel_size = k.shape
    r = kernel_size // 2
    src = np.arange(length)[:, None] + np.arange(-r, r + 1)[None, :]  # (length, kernel_size)
    src = np.where(src < 0, -src, np.where(src > length - 1, 2 * (length - 1) - src, src))
    m = np.zeros((n, length, length))
    rows = np.broadcast_to(np.arange(length)[:, None], src.shape)
    for j in range(kernel_size):  # += per tap: reflected taps land on the same column
        np.add.at(m, (slice(None), rows[:, j], src[:, j]), k[:, j, None])
    return m


_TAPS: dict = {}


def blur_taps(length: int, kernel_size: int, recipe: str, dtype) -> mx.array:
    """(kernel_size, length * length) 0/1 matrix T with blur_matrix(k) = (k @ T).reshape(length,
    length) for any kernel k: row j is the matrix of the kernel that is 1 at tap j (a tap that
    reflects onto another lands in its own row). Built once per
    (length, kernel_size, recipe, dtype) and kept (at 224 px and 23 taps: 1.2 M entries), so a
    step builds its per-view matrices on the device with one (n, k) @ (k, L*L) product instead
    of ~100 MB of float64 on the host."""
    key = (length, kernel_size, check_recipe(recipe), str(dtype))
    if key not in _TAPS:
        if len(_TAPS) >= 32:
            _TAPS.clear()
        eye = np.eye(kernel_size)
        t = (blur_matrices_zero_pad(eye, length) if key[2] == "tf2"
             else _reflect_matrices(eye, length))
        _TAPS[key] = mx.array(t.reshape(kernel_size, length * length), dtype=dtype)
    return _TAPS[key]


def device_blur_matrices(sigma: np.ndarray, length: int, kernel_size: int, recipe: str,
                         dtype) -> mx.array:
    """:func:`blur_matrices` built on the device: the (n, kernel_size) kernels (from the
    sigmas, in float64 on the host: n * kernel_size numbers) times the cached taps. Equal to
    blur_matrices exactly in float64 (each entry sums the same one or two kernel values) and
    to float32 rounding in float32 (a reflected entry adds two rounded values instead of
    rounding their float64 sum)."""
    r = kernel_size // 2
    if check_recipe(recipe) != "tf2" and r >= length:
        raise ValueError(f"gaussian_blur kernel_size {kernel_size} needs images larger than {r} "
                         f"pixels for reflect padding, got {length}")
    t = np.arange(-r, r + 1, dtype=np.float64)[None, :]
    k = np.exp(-(t ** 2) / (2.0 * np.asarray(sigma, np.float64)[:, None] ** 2))
    k = mx.array(k / k.sum(axis=1, keepdims=True), dtype=dtype)
    return mx.matmul(k, blur_taps(length, kernel_size, recipe, dtype)).reshape(-1, length, length)


def _blur(x: mx.array, sigma: np.ndarray, kernel_size: int, recipe: str = "torchvision") -> mx.array:
    """Separable Gaussian blur of every view (reflect padding, as torchvision), clamped.

    Each pass is one batched matrix product with a per-view banded (L, L) matrix
    (:func:`blur_matrices`, built on the device by :func:`device_blur_matrices` from cached
    taps) instead of ``kernel_size`` shifted multiply-adds: for the
    ImageNet kernel (23 taps at 224 px) that is ~10x faster on MLX's CPU backend (BLAS).
    Rows (along W) first, then columns (along H), as the oracle.
    """
    n, H, W, C = x.shape
    mw = device_blur_matrices(sigma, W, kernel_size, recipe, x.dtype)  # (n, W, W)
    mh = mw if H == W else device_blur_matrices(sigma, H, kernel_size, recipe, x.dtype)
    rows = mx.matmul(mw, mx.swapaxes(x, 1, 2).reshape(n, W, H * C))  # blur along W
    rows = mx.swapaxes(rows.reshape(n, W, H, C), 1, 2)
    out = mx.matmul(mh, rows.reshape(n, H, W * C)).reshape(n, H, W, C)  # along H
    return _clamp(out)


def gaussian_blur(x: mx.array, sigma, mask, kernel_size: int, recipe: str = "torchvision") -> mx.array:
    """Blur the views where ``mask`` (numpy (N,) bool) with their own sigma; others untouched
    (reflect padding, or zeros for "tf2")."""
    idx = np.flatnonzero(np.asarray(mask, dtype=bool))
    if idx.size == 0 or kernel_size <= 1:
        return x
    s = np.asarray(sigma, dtype=np.float64)[idx]
    return _scatter_back(x, idx, _blur(mx.take(x, mx.array(idx), axis=0), s, kernel_size, recipe))


# --------------------------------------------------------------------------- pipeline


def augment(images_u8, params: ViewParams, cfg: AugmentConfig, dtype=mx.float32) -> mx.array:
    """The whole view pipeline: uint8 (N, H, W, 3) -> float (N, S, S, 3), S = cfg.image_size.

    crop+resize -> flip -> colour jitter -> grayscale -> blur (SimCLR appendix A order, as
    :func:`simclr_xb.reference.augment`), each op as ``cfg.recipe`` says ("tf2" clamps once
    after grayscale: its resize is not clamped).
    """
    recipe = cfg.recipe
    x = resized_crop(to_float(images_u8, dtype), params.crop, cfg.image_size, recipe)
    x = hflip(x, mx.array(np.asarray(params.flip, dtype=bool)))
    x = color_jitter(x, params, recipe)
    x = grayscale(x, mx.array(np.asarray(params.grayscale, dtype=bool)), recipe)
    if recipe == "tf2":
        x = _clamp(x)
    return gaussian_blur(x, params.blur_sigma, params.blur, cfg.blur_kernel_size, recipe)


def full_boxes(params: ViewParams, size: int) -> ViewParams:
    """``params`` with every crop box replaced by the whole (size x size) view."""
    import dataclasses
    return dataclasses.replace(params, crop=np.tile(np.array([[0, 0, size, size]], np.int64), (len(params), 1)))


def augment_cropped(views_u8, params: ViewParams, cfg: AugmentConfig, dtype=mx.float32) -> mx.array:
    """The view pipeline after the crop: uint8 views (N, S, S, 3) that the data workers already
    cut from the original images and resized to S = cfg.image_size (simclr_xb.data.stream)
    -> float (N, S, S, 3): flip, colour jitter, grayscale and blur from ``params`` (the same
    sampled parameters; ``params.crop`` is the box in source pixels, already applied).

    This is :func:`augment` with each box replaced by the whole S x S view: a resize to the
    same size samples every pixel at its own centre with weight 0 on the neighbour (an exact
    copy)."""
    S = cfg.image_size
    shape = tuple(views_u8.shape)
    if len(shape) != 4 or shape[1:3] != (S, S) or shape[0] != len(params):
        raise ValueError(f"augment_cropped expects {len(params)} uint8 views ({len(params)}, {S}, {S}, 3), "
                         f"got shape {shape}")
    return augment(views_u8, full_boxes(params, S), cfg, dtype)
