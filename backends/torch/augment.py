"""SimCLR view augmentation on the device, batched over views: no per-image Python loop.

Applies the parameters drawn by :func:`simclr_xb.augment.sample_view_params` (this module
never draws random numbers) with the semantics of :mod:`simclr_xb.reference` (the oracle):
crop + bilinear resize (align_corners=False, no antialias) -> horizontal flip -> colour
jitter (brightness, contrast, saturation, hue in each view's own order) -> grayscale ->
Gaussian blur (SimCLR appendix A; SIMCLR-FACTS.md). Pixels are floats in [0, 1] and every
op clamps where the oracle clamps.

Layout: every function here takes and returns NCHW tensors ``(N, C, H, W)``; NHWC <-> NCHW
happens only in :mod:`.convert`. Per-view parameters arrive as numpy arrays (host side):
index sets and interpolation taps are computed on the host in float64 exactly as the oracle
does, then moved to the device once.

Cost model (what makes this fast): the crop gathers the four bilinear corners straight from
the uint8 source (separable: one row gather, then one column gather per corner) and fuses
the flip into the column taps; colour ops touch only the views that have them
(``index_select`` -> op -> ``index_copy_``), so a jittered view costs exactly 4 op
evaluations and a non-jittered one none; grayscale and blur likewise only touch their views;
the blur is separable, as two grouped convolutions with one kernel per view.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from simclr_xb.augment import BRIGHTNESS, CONTRAST, HUE, SATURATION, ViewParams
from simclr_xb.config import AugmentConfig

from .convert import images_to_torch, torch_dtype

GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _index(mask_or_idx: np.ndarray, device) -> tuple[np.ndarray, torch.Tensor]:
    idx = np.flatnonzero(mask_or_idx) if mask_or_idx.dtype == bool else np.asarray(mask_or_idx)
    return idx, torch.from_numpy(idx.astype(np.int64)).to(device)


def _per_view(values, x: torch.Tensor) -> torch.Tensor:
    """(n,) host or device values -> (n, 1, 1, 1) tensor in x's dtype and device."""
    t = torch.as_tensor(values, device=x.device) if not isinstance(values, torch.Tensor) else values
    return t.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def to_float(images_u8: torch.Tensor, dtype: str | torch.dtype = "float32") -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [0, 1]: x / 255."""
    return images_u8.to(torch_dtype(dtype)) / 255.0


# --------------------------------------------------------------------------- crop and flip


def bilinear_taps(start: np.ndarray, length: np.ndarray, size: int):
    """Taps of a 1-D bilinear resize (align_corners=False, no antialias) of the intervals
    [start, start + length) to ``size`` samples: (i0, i1, frac), each (N, size), float64 host
    arrays computed exactly as ``reference._bilinear_taps``: the source coordinate of output
    o is clamp((o + 0.5) * length / size - 0.5, 0, length - 1)."""
    o = np.arange(size, dtype=np.float64)[None, :]
    L = np.asarray(length, dtype=np.float64)[:, None]
    src = np.clip((o + 0.5) * L / size - 0.5, 0.0, L - 1.0)
    i0 = np.floor(src)
    frac = src - i0
    i1 = np.minimum(i0 + 1, L - 1)
    s = np.asarray(start)[:, None]
    return (i0 + s).astype(np.int64), (i1 + s).astype(np.int64), frac


def resized_crop(x: torch.Tensor, crop: np.ndarray, size: int, dtype: str | torch.dtype = "float32",
                 flip: np.ndarray | None = None, source: np.ndarray | None = None) -> torch.Tensor:
    """Crop view n's box ``crop[n] = (top, left, height, width)`` of image ``source[n]`` and
    resize it to (size, size), bilinear with half-pixel centres; optionally mirror it.

    x: (B, C, H, W) uint8 (read as x / 255) or float source images; crop: (N, 4) int;
    flip: (N,) bool or None; source: (N,) int index into B or None (view n reads image n).
    Returns (N, C, size, size) float of ``dtype``, clamped to [0, 1].

    Separable gather: rows y0/y1 of each box are gathered once (index_select over the
    flattened (B*C*H, W) source), then the columns x0/x1 of each of the two row sets (torch.gather
    along W), giving the four corners; the flip reverses the column taps (exactly equal to
    mirroring the output). Integer sources are gathered before the float cast, so only
    N*C*size*size pixels are ever converted.
    """
    B, C, H, W = x.shape
    crop = np.asarray(crop)
    N = crop.shape[0]
    src = np.arange(N) if source is None else np.asarray(source, dtype=np.int64)
    dt = torch_dtype(dtype)
    y0, y1, fy = bilinear_taps(crop[:, 0], crop[:, 2], size)
    x0, x1, fx = bilinear_taps(crop[:, 1], crop[:, 3], size)
    if flip is not None and np.any(flip):
        f = np.asarray(flip, dtype=bool)
        x0[f], x1[f], fx[f] = x0[f, ::-1], x1[f, ::-1], fx[f, ::-1]
    scale = 1.0 / 255.0 if not x.is_floating_point() else 1.0
    # Host-side index arithmetic, one transfer: flat row ids (N, C, S) for both row sets.
    plane = (src[:, None] * C + np.arange(C)[None, :]) * H  # (N, C)
    rows = np.stack([plane[:, :, None] + y0[:, None, :], plane[:, :, None] + y1[:, None, :]])
    dev = x.device
    rows_t = torch.from_numpy(rows.reshape(2, -1)).to(dev)
    cols_t = torch.from_numpy(np.stack([x0, x1])).to(dev)  # (2, N, S)
    w = torch.from_numpy(np.stack([1.0 - fx, fx, (1.0 - fy) * scale, fy * scale])).to(dev, dt)
    wx0, wx1 = w[0].view(N, 1, 1, size), w[1].view(N, 1, 1, size)
    wy0, wy1 = w[2].view(N, 1, size, 1), w[3].view(N, 1, size, 1)

    flat = x.reshape(B * C * H, W)
    out = None
    for r in range(2):  # top row set, then bottom
        R = flat.index_select(0, rows_t[r]).view(N, C, size, W)
        c0 = cols_t[0].view(N, 1, 1, size).expand(N, C, size, size)
        c1 = cols_t[1].view(N, 1, 1, size).expand(N, C, size, size)
        a = torch.gather(R, 3, c0).to(dt).mul_(wx0)
        a.addcmul_(torch.gather(R, 3, c1).to(dt), wx1)  # a*(1-fx) + b*fx
        out = a.mul_(wy0) if r == 0 else out.addcmul_(a, wy1)
    return out.clamp_(0.0, 1.0)


def hflip(x: torch.Tensor, flip: np.ndarray) -> torch.Tensor:
    """Mirror the width axis of the views where ``flip`` (N,) is True. (N, C, H, W)."""
    idx, idx_t = _index(np.asarray(flip, dtype=bool), x.device)
    if idx.size == 0:
        return x.clone()
    return x.index_copy(0, idx_t, x.index_select(0, idx_t).flip(-1))


# --------------------------------------------------------------------------- colour


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W): 0.299 R + 0.587 G + 0.114 B."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return (r * GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2])


def adjust_brightness(x: torch.Tensor, factor) -> torch.Tensor:
    """x * b per view; factor (N,). Clamped."""
    return (x * _per_view(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor) -> torch.Tensor:
    """c x + (1 - c) mean(gray(x)) per view (mean over the whole grey image). Clamped."""
    mean = rgb_to_gray(x).mean(dim=(1, 2, 3), keepdim=True)
    c = _per_view(factor, x)
    return (c * x).add_((1 - c) * mean).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor) -> torch.Tensor:
    """t x + (1 - t) gray(x) per view. Clamped."""
    t = _per_view(factor, x)
    return (t * x).add_((1 - t) * rgb_to_gray(x)).clamp_(0.0, 1.0)


def rgb_to_hue(x: torch.Tensor) -> torch.Tensor:
    """HSV hue in [0, 1) (0 where the chroma is 0), branch-free: (N, 3, H, W) -> (N, H, W).

    h6 = (G - B)/C mod 6 if V == R, (B - R)/C + 2 if V == G, (R - G)/C + 4 otherwise.
    """
    r, g, b = x.unbind(1)
    v = x.amax(dim=1)
    c = v - x.amin(dim=1)
    return _hue_from(r, g, b, v, c)


def _hue_from(r, g, b, v, c):
    pos = c > 0
    safe = torch.where(pos, c, torch.ones_like(c))
    h6 = torch.where(v == r, torch.remainder((g - b) / safe, 6.0),
                     torch.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return torch.where(pos, h6 / 6.0, torch.zeros_like(h6))


def hsv_channels(v: torch.Tensor, c: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """RGB from value V, chroma C and hue (turns), each (N, H, W) -> (N, 3, H, W).
    Channel n in (R=5, G=3, B=1): V - C * clamp(min(k, 4 - k), 0, 1), k = (n + 6 hue) mod 6."""
    h6 = 6.0 * hue
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        out.append(v - c * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(out, dim=1)


def adjust_hue(x: torch.Tensor, delta) -> torch.Tensor:
    """Rotate the HSV hue by ``delta`` (N,) turns keeping V and S (torchvision's adjust_hue)
    without the RGB -> HSV -> RGB round trip: V and chroma are invariant under the shift.
    Clamped."""
    r, g, b = x.unbind(1)
    v = x.amax(dim=1)
    c = v - x.amin(dim=1)
    d = _per_view(delta, x).view(-1, 1, 1)
    hue = torch.remainder(_hue_from(r, g, b, v, c) + d, 1.0)
    return hsv_channels(v, c, hue).clamp_(0.0, 1.0)


_JITTER_FNS = {BRIGHTNESS: adjust_brightness, CONTRAST: adjust_contrast,
               SATURATION: adjust_saturation, HUE: adjust_hue}


def color_jitter_(x: torch.Tensor, params: ViewParams) -> torch.Tensor:
    """In place: the four jitter ops in each view's own order on the views where
    ``params.jitter``; others are untouched. x: (N, 3, H, W).

    For each position p = 0..3 and each op, the views whose op at p is that op are gathered
    (index_select), transformed, and written back (index_copy_): 4 op evaluations per
    jittered view in total, and positions run in order so each view sees its own order.
    """
    jit = np.asarray(params.jitter, dtype=bool)
    if not jit.any():
        return x
    order = np.asarray(params.jitter_order)
    groups = []  # (op, host index)
    for p in range(4):
        for op in (BRIGHTNESS, CONTRAST, SATURATION, HUE):
            sel = np.flatnonzero(jit & (order[:, p] == op))
            if sel.size:
                groups.append((op, sel))
    factors = np.stack([params.brightness, params.contrast, params.saturation, params.hue], axis=1)
    # One transfer for every index set and factor.
    all_idx = torch.from_numpy(np.concatenate([s for _, s in groups]).astype(np.int64)).to(x.device)
    all_f = torch.from_numpy(np.concatenate([factors[s, op] for op, s in groups])).to(x.device, x.dtype)
    start = 0
    for op, sel in groups:
        idx = all_idx[start:start + sel.size]
        f = all_f[start:start + sel.size]
        start += sel.size
        x.index_copy_(0, idx, _JITTER_FNS[op](x.index_select(0, idx), f))
    return x


def color_jitter(x: torch.Tensor, params: ViewParams) -> torch.Tensor:
    """Out-of-place :func:`color_jitter_`."""
    return color_jitter_(x.clone(), params)


def grayscale_(x: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """In place: replace the views where ``mask`` (N,) with their grey image on 3 channels."""
    idx, idx_t = _index(np.asarray(mask, dtype=bool), x.device)
    if idx.size:
        g = rgb_to_gray(x.index_select(0, idx_t))
        x.index_copy_(0, idx_t, g.expand(-1, x.shape[1], -1, -1))
    return x


def grayscale(x: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    return grayscale_(x.clone(), mask)


# --------------------------------------------------------------------------- blur


def gaussian_kernel1d(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(n,) sigmas -> (n, k) normalised kernels exp(-t^2 / (2 sigma^2)), t = -r..r."""
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, device=sigma.device, dtype=sigma.dtype)[None, :]
    k = torch.exp(-(t * t) / (2.0 * sigma[:, None] ** 2))
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur_(x: torch.Tensor, sigma: np.ndarray, mask: np.ndarray, kernel_size: int) -> torch.Tensor:
    """In place: separable Gaussian blur with view n's own sigma, reflect padding (as
    torchvision), on the views where ``mask`` (N,). x: (N, C, H, W); needs kernel_size // 2 < H, W.

    The selected views become one (1, n*C, H, W) image and each pass is a grouped conv with
    one 1-D kernel per (view, channel): rows (1 x k) then columns (k x 1).
    """
    idx, idx_t = _index(np.asarray(mask, dtype=bool), x.device)
    if idx.size == 0 or kernel_size <= 1:
        return x
    n, C, H, W = idx.size, x.shape[1], x.shape[2], x.shape[3]
    r = kernel_size // 2
    if r >= min(H, W):
        raise ValueError(f"gaussian_blur kernel_size {kernel_size} needs images larger than "
                         f"{r} pixels for reflect padding, got {H}x{W}")
    sig = torch.from_numpy(np.asarray(sigma, dtype=np.float64)[idx]).to(x.device, x.dtype)
    k = gaussian_kernel1d(sig, kernel_size).repeat_interleave(C, dim=0)  # (n*C, k)
    xs = x.index_select(0, idx_t).view(1, n * C, H, W)
    xs = F.pad(xs, (r, r, r, r), mode="reflect")
    rows = F.conv2d(xs, k.view(n * C, 1, 1, kernel_size), groups=n * C)  # (1, nC, H+2r, W)
    out = F.conv2d(rows, k.view(n * C, 1, kernel_size, 1), groups=n * C)  # (1, nC, H, W)
    x.index_copy_(0, idx_t, out.view(n, C, H, W).clamp_(0.0, 1.0))
    return x


def gaussian_blur(x: torch.Tensor, sigma: np.ndarray, mask: np.ndarray, kernel_size: int) -> torch.Tensor:
    return gaussian_blur_(x.clone(), sigma, mask, kernel_size)


# --------------------------------------------------------------------------- pipeline


def augment(images_u8, params: ViewParams, cfg: AugmentConfig, dtype: str | torch.dtype = "float32",
            source: np.ndarray | None = None, device: str | torch.device | None = None) -> torch.Tensor:
    """The whole view pipeline: uint8 NHWC images (B, H, W, 3) (tensor or numpy) -> float
    NCHW views (N, 3, S, S) in [0, 1], S = cfg.image_size, on the images' device (or ``device``).

    crop+resize (+ flip, fused) -> colour jitter -> grayscale -> blur (SimCLR appendix A).
    ``source`` (N,) maps view n to image ``source[n]`` (default: view n <- image n), so the two
    views of a batch are made in one call without copying the images.
    """
    if device is None:
        device = images_u8.device if isinstance(images_u8, torch.Tensor) else "cpu"
    src = images_to_torch(images_u8, device)
    x = resized_crop(src, params.crop, cfg.image_size, dtype, flip=params.flip, source=source)
    color_jitter_(x, params)
    grayscale_(x, params.grayscale)
    return gaussian_blur_(x, params.blur_sigma, params.blur, cfg.blur_kernel_size)
