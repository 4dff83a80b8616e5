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
does, then moved to the device.

Why it is fast (crop gathers, sorted jitter runs, CPU chunks and scratch buffers, a thread
pool instead of OpenMP per op): the cost model in benchmarks/README.md, "Notes moved from the code".
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from simclr_xb.augment import BRIGHTNESS, CONTRAST, HUE, SATURATION, ViewParams
from simclr_xb.config import AugmentConfig
from simclr_xb.recipe import GRAY_WEIGHTS as RECIPE_GRAY_WEIGHTS
from simclr_xb.recipe import check_recipe, interpolation_matrix

from .convert import images_to_torch, torch_dtype

# Float bytes of one chunk of views on the CPU: about the L2 size, larger for small views
# where the per-chunk Python overhead dominates (measured on 2 cores: 32 px best at 4 MB,
# 224 px at 1-2 MB).
CPU_CHUNK_BYTES = 2 << 20
CPU_CHUNK_BYTES_SMALL_VIEWS = 4 << 20  # views of at most 64 KB (up to ~73 px float32)
SCRATCH_MAX_BYTES = 64 << 20  # larger temporaries are allocated normally, not kept


_WORKSPACE = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable CPU scratch tensor (per thread, grown on demand). Large fresh CPU
    allocations are returned to the OS on free and page-faulted back in on the next call,
    which costs more than the arithmetic; scratch buffers avoid that. Contents are garbage.
    On other devices (which have caching allocators) this is ``torch.empty``."""
    numel = math.prod(shape)
    if device.type != "cpu" or numel * dtype.itemsize > SCRATCH_MAX_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    bufs = _WORKSPACE.__dict__.setdefault("bufs", {})
    buf = bufs.get((name, dtype))
    if buf is None or buf.numel() < numel:
        # A normal tensor even when first asked for under inference_mode (Trainer.encode):
        # an inference tensor could not be written by a later training step.
        with torch.inference_mode(False):
            buf = bufs[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return buf[:numel].view(shape)


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _single_threaded_worker() -> None:
    torch.get_num_threads()  # torch's lazy per-thread init happens here, with the global count
    torch.set_num_threads(1)  # this thread's OpenMP count: its ops never fork a team


def cpu_pool(workers: int) -> ThreadPoolExecutor:
    """A long-lived pool of ``workers`` Python threads whose torch ops run single-threaded.

    Chunks of views are independent, so on the CPU they are spread over these threads
    instead of letting every small op fork an OpenMP team: no barrier per op, so a core
    stolen by another process delays one chunk, not every op (on a loaded 2-core machine
    2 OpenMP threads measured 10-50x slower than 1). torch sets its thread count per
    thread, but ``set_num_threads`` also writes the global default that new threads start
    from, so the caller's count is restored once every worker has started.
    """
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            caller = torch.get_num_threads()
            started = threading.Barrier(workers + 1)
            pool = ThreadPoolExecutor(workers, thread_name_prefix="simclr-augment",
                                      initializer=_single_threaded_worker)
            for _ in range(workers):  # start them all now, each runs the initializer
                pool.submit(started.wait)
            started.wait()
            torch.set_num_threads(caller)
            _POOLS[workers] = pool
        return pool


def _run_chunks(fn, chunks: list, workers: int) -> None:
    """``fn(*chunk)`` for every chunk: in this thread, or spread over :func:`cpu_pool` under
    the caller's grad and inference modes (both are per thread in torch)."""
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            fn(*c)
        return
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def call(*c):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            fn(*c)
    for f in [cpu_pool(workers).submit(call, *c) for c in chunks]:
        f.result()  # re-raises a worker's exception here


def _index(mask: np.ndarray, device) -> tuple[np.ndarray, torch.Tensor]:
    idx = np.flatnonzero(np.asarray(mask, dtype=bool))
    return idx, torch.from_numpy(idx.astype(np.int64)).to(device)


def _per_view(values, x: torch.Tensor) -> torch.Tensor:
    """(n,) host or device values -> (n, 1, 1, 1) tensor in x's dtype and device."""
    t = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    return t.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def to_float(images_u8: torch.Tensor, dtype: str | torch.dtype = "float32") -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [0, 1]: x / 255."""
    return images_u8.to(torch_dtype(dtype)) / 255.0


# --------------------------------------------------------------------------- crop and flip


def bilinear_taps(start: np.ndarray, length: np.ndarray, size: int):
    """Taps of a 1-D bilinear resize (align_corners=False, no antialias) of the intervals
    [start, start + length) to ``size`` samples: (i0, i1, frac), each (N, size), host arrays
    computed exactly as ``reference._bilinear_taps``: the source coordinate of output o is
    clamp((o + 0.5) * length / size - 0.5, 0, length - 1)."""
    o = np.arange(size, dtype=np.float64)[None, :]
    L = np.asarray(length, dtype=np.float64)[:, None]
    src = np.clip((o + 0.5) * L / size - 0.5, 0.0, L - 1.0)
    i0 = np.floor(src)
    frac = src - i0
    i1 = np.minimum(i0 + 1, L - 1)
    s = np.asarray(start)[:, None]
    return (i0 + s).astype(np.int64), (i1 + s).astype(np.int64), frac


def resized_crop(x: torch.Tensor, crop: np.ndarray, size: int, dtype: str | torch.dtype = "float32",
                 flip: np.ndarray | None = None, source: np.ndarray | None = None,
                 out: torch.Tensor | None = None, recipe: str = "torchvision") -> torch.Tensor:
    """Crop view n's box ``crop[n] = (top, left, height, width)`` of image ``source[n]`` and
    resize it to (size, size), bilinear with half-pixel centres; optionally mirror it.

    x: (B, C, H, W) uint8 (read as x / 255) or float source images; crop: (N, 4) int;
    flip: (N,) bool or None; source: (N,) int index into B or None (view n reads image n);
    out: optional (N, C, size, size) tensor to write into. Returns (N, C, size, size) of
    ``dtype``, clamped to [0, 1].

    Rows y0/y1 of each box are gathered (index_select over the flattened (B*C*H, W) source,
    before any float cast), blended with (1 - fy, fy), then columns x0/x1 are gathered and
    blended with (1 - fx, fx). Mirroring the output equals reversing the column taps, so the
    flip costs nothing. "tf2": TF's bicubic (:func:`_bicubic_crop`), not clamped.
    """
    if check_recipe(recipe) == "tf2":
        return _bicubic_crop(x, crop, size, dtype, flip, source, out)
    B, C, H, W = x.shape
    crop = np.asarray(crop)
    N = crop.shape[0]
    src = np.arange(N) if source is None else np.asarray(source, dtype=np.int64)
    dt = torch_dtype(dtype)
    dev = x.device
    y0, y1, fy = bilinear_taps(crop[:, 0], crop[:, 2], size)
    x0, x1, fx = bilinear_taps(crop[:, 1], crop[:, 3], size)
    if flip is not None and np.any(flip):
        f = np.asarray(flip, dtype=bool)
        x0[f], x1[f], fx[f] = x0[f, ::-1], x1[f, ::-1], fx[f, ::-1]
    scale = 1.0 if x.is_floating_point() else 1.0 / 255.0
    plane = ((src * C)[:, None] + np.arange(C)[None, :]) * H  # (N, C): first row of each plane
    rows = torch.from_numpy(np.stack([plane[:, :, None] + y0[:, None, :],
                                      plane[:, :, None] + y1[:, None, :]]).reshape(2, -1)).to(dev)
    cols = torch.from_numpy(np.stack([x0, x1])).to(dev).view(2, N, 1, 1, size).expand(2, N, C, size, size)
    w = torch.from_numpy(np.stack([(1.0 - fy) * scale, fy * scale, 1.0 - fx, fx])).to(dev, dt)
    flat = x.reshape(B * C * H, W)
    picked = torch.index_select(flat, 0, rows.view(-1),
                                out=_scratch("rows", (2 * N * C * size, W), x.dtype, dev))
    r = _scratch("rows_f", (2, N, C, size, W), dt, dev)
    r.view(-1, W).copy_(picked)  # the float cast happens here, on the picked rows only
    r, r1 = r[0].mul_(w[0].view(N, 1, size, 1)), r[1]
    r.addcmul_(r1, w[1].view(N, 1, size, 1))  # rows blended: (1 - fy) row0 + fy row1
    if out is None:
        out = torch.empty((N, C, size, size), dtype=dt, device=dev)
    g = torch.gather(r, 3, cols[0], out=_scratch("cols", (N, C, size, size), dt, dev))
    torch.mul(g, w[2].view(N, 1, 1, size), out=out)
    out.addcmul_(torch.gather(r, 3, cols[1], out=g), w[3].view(N, 1, 1, size))
    return out.clamp_(0.0, 1.0)


def _bicubic_crop(x: torch.Tensor, crop: np.ndarray, size: int, dtype, flip, source, out) -> torch.Tensor:
    """TF bicubic crop-and-resize (half-pixel, Keys a = -0.5, table weights, renormalised edge
    taps: :func:`simclr_xb.recipe.bicubic_taps`) as out[n, c] = My[n] @ X[source[n], c] @ Mx[n]^T
    with per-view (size, H) and (size, W) interpolation matrices built on the host (zero
    outside the box); the flip reverses the rows of Mx. Not clamped (data_util.py clips later)."""
    B, C, H, W = x.shape
    crop = np.asarray(crop)
    src = np.arange(crop.shape[0]) if source is None else np.asarray(source, dtype=np.int64)
    dt = torch_dtype(dtype)
    my = interpolation_matrix(crop[:, 0], crop[:, 2], size, H)
    mx_ = interpolation_matrix(crop[:, 1], crop[:, 3], size, W)
    if flip is not None and np.any(flip):
        f = np.asarray(flip, dtype=bool)
        mx_[f] = mx_[f, ::-1]
    scale = 1.0 if x.is_floating_point() else 1.0 / 255.0
    my_t = torch.from_numpy(my * scale).to(x.device, dt)[:, None]  # (N, 1, S, H)
    mx_t = torch.from_numpy(np.ascontiguousarray(mx_.transpose(0, 2, 1))).to(x.device, dt)[:, None]
    xs = x.index_select(0, torch.from_numpy(src).to(x.device)).to(dt)  # (N, C, H, W)
    res = torch.matmul(torch.matmul(my_t, xs), mx_t)  # (N, C, S, S)
    if out is None:
        return res
    return out.copy_(res)


def hflip(x: torch.Tensor, flip: np.ndarray) -> torch.Tensor:
    """Mirror the width axis of the views where ``flip`` (N,) is True. (N, C, H, W)."""
    idx, idx_t = _index(flip, x.device)
    if idx.size == 0:
        return x.clone()
    return x.index_copy(0, idx_t, x.index_select(0, idx_t).flip(-1))


# --------------------------------------------------------------------------- colour
# The ``_op_`` forms work in place on a tensor the caller owns (color_jitter_ hands them
# contiguous slices of its own copy of the jittered views); the public forms copy first.
# Temporaries go to per-thread scratch buffers (out=...): on the CPU an op writing into an
# existing buffer is several times faster than one allocating its result.


def rgb_to_gray(x: torch.Tensor, out: torch.Tensor | None = None, recipe: str = "torchvision") -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W): 0.299 R + 0.587 G + 0.114 B (into ``out`` if given);
    "tf2": 0.2989 / 0.5870 / 0.1140 (tf.image.rgb_to_grayscale)."""
    wts = RECIPE_GRAY_WEIGHTS[check_recipe(recipe)]
    g = torch.mul(x[:, 0:1], wts[0], out=out)
    return g.add_(x[:, 1:2], alpha=wts[1]).add_(x[:, 2:3], alpha=wts[2])


def _plane(x: torch.Tensor, name: str, channels: int = 1) -> torch.Tensor:
    n, _, H, W = x.shape
    return _scratch(name, (n, channels, H, W), x.dtype, x.device)


def _brightness_(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x <- clamp(b x); b (n, 1, 1, 1)."""
    return x.mul_(b).clamp_(0.0, 1.0)


def _contrast_(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """x <- clamp(c x + (1 - c) mean(gray(x))); c (n, 1, 1, 1)."""
    mean = rgb_to_gray(x, out=_plane(x, "gray")).mean(dim=(1, 2, 3), keepdim=True)
    return x.mul_(c).add_((1 - c) * mean).clamp_(0.0, 1.0)


def _saturation_(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x <- clamp(t x + (1 - t) gray(x)); t (n, 1, 1, 1)."""
    gray = rgb_to_gray(x, out=_plane(x, "gray")).mul_(1 - t)
    return x.mul_(t).add_(gray).clamp_(0.0, 1.0)


def _contrast_tf2_(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """x <- clamp(c x + (1 - c) mean_c(x)) with each channel's own mean (tf.image.adjust_contrast)."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return x.mul_(c).add_((1 - c) * mean).clamp_(0.0, 1.0)


def _saturation_tf2_(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x <- HSV saturation scaled by t (n, 1, 1, 1) and clipped to [0, 1], H and V kept
    (tf.image.adjust_saturation): the chroma C = V S becomes V clip(S t, 0, 1) = min(V, C t)."""
    v, c, h = _hue6(x)
    c = torch.minimum(c.mul_(t), v)
    return _from_hue6_(x, v, c, h)


# Hue (in sixths of a turn) at which each channel (R, G, B) sits at its minimum V - C.
_HUE_MIN_AT = (3.0, 5.0, 1.0)


def _hue_(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """x <- hue of x rotated by d (n, 1, 1, 1) turns, in place and branch-free.

    V = max and C = V - min are invariant under the rotation. The hue in sixths is
    h6 = (G - B)/C if V == R, (B - R)/C + 2 if V == G, (R - G)/C + 4 otherwise (ties to R,
    then G, as reference.rgb_to_hue), computed as the numerators (R - G + 4C), (B - R + 2C),
    (G - B) blended with the 0/1 masks [V == G], [V == R] (lerp: exact for weights 0 and 1)
    and divided by C once; where C = 0 every numerator is 0 and so is the hue.
    h = (h6 + 6 d) mod 6 on one plane. reference.hsv_channels gives channel n the value
    V - C T, T = clamp(min(k, 4 - k), 0, 1), k = (n + h) mod 6, n = 5, 3, 1 for R, G, B;
    T is 1 within 1 of the hue where the channel is at its minimum (3, 5, 1) and 0 beyond 2,
    on the circle, which is T = clamp(||h - centre| - 3| - 1, 0, 1) for h in [0, 6). So
    x = (V + C) - C clamp(||h - centre| - 3|, 1, 2): 8 passes over the 3 channels instead of
    13, and a third fewer passes in all (measured 1.6x faster at 32 px, 1.25x at 224 px).
    Masks come from torch.eq into a float buffer and x mod 6 is x - 6 floor(x / 6): several
    times faster than torch.where / torch.remainder on the CPU.
    """
    v, c, h = _hue6(x)
    h.add_(d, alpha=6.0)
    return _from_hue6_(x, v, c, h)


def _hue6(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(V, C, hue in sixths, not yet reduced mod 6) of x, in scratch planes (see :func:`_hue_`)."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    v = torch.maximum(r, g, out=_plane(x, "hue_v"))
    torch.maximum(v, b, out=v)
    c = torch.minimum(r, g, out=_plane(x, "hue_c"))
    torch.minimum(c, b, out=c)
    torch.sub(v, c, out=c)  # chroma
    m_r = torch.eq(v, r, out=_plane(x, "hue_mr"))
    m_g = torch.eq(v, g, out=_plane(x, "hue_mg"))
    h = torch.sub(r, g, out=_plane(x, "hue_h6")).add_(c, alpha=4.0)  # V == B
    t = torch.sub(b, r, out=_plane(x, "hue_tmp")).add_(c, alpha=2.0)  # V == G
    h.lerp_(t, m_g)
    h.lerp_(torch.sub(g, b, out=t), m_r)  # V == R wins ties
    h.div_(torch.clamp_min(c, torch.finfo(x.dtype).tiny, out=t))  # C = 0: 0 / tiny
    return v, c, h


def _from_hue6_(x: torch.Tensor, v: torch.Tensor, c: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """x <- the RGB of value V, chroma C and hue h (sixths, any real), clamped (see :func:`_hue_`)."""
    t = _plane(x, "hue_tmp")
    h.sub_(torch.mul(h, 1.0 / 6.0, out=t).floor_(), alpha=6.0)  # mod 6, in [0, 6)
    w = torch.add(v, c, out=v)
    centres = torch.tensor(_HUE_MIN_AT, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.sub(h, centres, out=_plane(x, "hue_k", 3)).abs_().sub_(3.0).abs_().clamp_(1.0, 2.0).mul_(c)
    return torch.sub(w, k, out=x).clamp_(0.0, 1.0)  # in [min, max] up to rounding


def adjust_brightness(x: torch.Tensor, factor) -> torch.Tensor:
    """x * b per view; factor (N,). Clamped."""
    return _brightness_(x.clone(), _per_view(factor, x))


def adjust_contrast(x: torch.Tensor, factor, recipe: str = "torchvision") -> torch.Tensor:
    """c x + (1 - c) mean(gray(x)) per view (mean over the whole grey image); "tf2": each
    channel's own mean. Clamped."""
    op = _contrast_tf2_ if check_recipe(recipe) == "tf2" else _contrast_
    return op(x.clone(), _per_view(factor, x))


def adjust_saturation(x: torch.Tensor, factor, recipe: str = "torchvision") -> torch.Tensor:
    """t x + (1 - t) gray(x) per view; "tf2": HSV S * t clipped, H and V kept. Clamped."""
    op = _saturation_tf2_ if check_recipe(recipe) == "tf2" else _saturation_
    return op(x.clone(), _per_view(factor, x))


def adjust_hue(x: torch.Tensor, delta) -> torch.Tensor:
    """Rotate the HSV hue by ``delta`` (N,) turns keeping V and S (torchvision's adjust_hue)
    without the RGB -> HSV -> RGB round trip. Clamped."""
    return _hue_(x.clone(), _per_view(delta, x))


_JITTER_OPS = (_brightness_, _contrast_, _saturation_, _hue_)  # indexed by BRIGHTNESS..HUE
_JITTER_OPS_TF2 = (_brightness_, _contrast_tf2_, _saturation_tf2_, _hue_)  # augment.recipe "tf2"
assert (BRIGHTNESS, CONTRAST, SATURATION, HUE) == (0, 1, 2, 3)


def color_jitter_(x: torch.Tensor, params: ViewParams, recipe: str = "torchvision") -> torch.Tensor:
    """In place: the four jitter ops in each view's own order on the views where
    ``params.jitter``; others are untouched. x: (N, 3, H, W).

    The m jittered views are copied out once, sorted by their op at position 0; each op then
    runs in place on the contiguous run of rows that have it there; before each later
    position the rows are re-sorted (stable) by their op at that position (one index_select);
    finally they are copied back. So a jittered view costs exactly 4 op evaluations and 5
    copies, and positions run in order so each view sees its own order.
    """
    jit = np.flatnonzero(np.asarray(params.jitter, dtype=bool))
    ops_table = _JITTER_OPS_TF2 if check_recipe(recipe) == "tf2" else _JITTER_OPS
    if jit.size == 0:
        return x
    order = np.asarray(params.jitter_order)[jit]  # (m, 4)
    factors = np.stack([params.brightness, params.contrast, params.saturation, params.hue], axis=1)[jit]
    # Host plan: per position, a stable sort of the current rows by op, and op boundaries.
    rows, perms, bounds, f = np.arange(jit.size), [], [], []
    for p in range(4):
        perm = np.argsort(order[rows, p], kind="stable")
        rows = rows[perm]
        ops = order[rows, p]
        perms.append(perm)
        bounds.append(np.searchsorted(ops, np.arange(5)))
        f.append(factors[rows, ops])
    perms[0] = jit[perms[0]]  # the first gather reads x directly
    dev = x.device
    idx = torch.from_numpy(np.concatenate(perms + [jit[rows]]).astype(np.int64)).to(dev)
    fac = torch.from_numpy(np.concatenate(f)).to(dev, x.dtype).view(4, -1, 1, 1, 1)
    m = jit.size
    bufs = [_scratch(f"jitter{i}", (m,) + tuple(x.shape[1:]), x.dtype, dev) for i in range(2)]
    cur = 0
    xj = torch.index_select(x, 0, idx[:m], out=bufs[cur])
    for p in range(4):
        if p and not np.array_equal(perms[p], np.arange(m)):  # ping-pong between the buffers
            cur = 1 - cur
            xj = torch.index_select(xj, 0, idx[p * m:(p + 1) * m], out=bufs[cur])
        for op in range(4):
            a, b = bounds[p][op], bounds[p][op + 1]
            if b > a:
                ops_table[op](xj[a:b], fac[p, a:b])
    return x.index_copy_(0, idx[4 * m:], xj)


def color_jitter(x: torch.Tensor, params: ViewParams, recipe: str = "torchvision") -> torch.Tensor:
    """Out-of-place :func:`color_jitter_`."""
    return color_jitter_(x.clone(), params, recipe)


def grayscale_(x: torch.Tensor, mask: np.ndarray, recipe: str = "torchvision") -> torch.Tensor:
    """In place: replace the views where ``mask`` (N,) with their grey image on 3 channels."""
    idx, idx_t = _index(mask, x.device)
    if idx.size:
        sel = torch.index_select(x, 0, idx_t, out=_scratch("gray_in", (idx.size,) + tuple(x.shape[1:]),
                                                           x.dtype, x.device))
        g = rgb_to_gray(sel, out=_plane(sel, "gray"), recipe=recipe)
        x.index_copy_(0, idx_t, g.expand(-1, x.shape[1], -1, -1))
    return x


def grayscale(x: torch.Tensor, mask: np.ndarray, recipe: str = "torchvision") -> torch.Tensor:
    return grayscale_(x.clone(), mask, recipe)


# --------------------------------------------------------------------------- blur


def gaussian_kernel1d(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(n,) sigmas -> (n, k) normalised kernels exp(-t^2 / (2 sigma^2)), t = -r..r."""
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, device=sigma.device, dtype=sigma.dtype)[None, :]
    k = torch.exp(-(t * t) / (2.0 * sigma[:, None] ** 2))
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur_(x: torch.Tensor, sigma: np.ndarray, mask: np.ndarray, kernel_size: int,
                   workers: int = 1, recipe: str = "torchvision") -> torch.Tensor:
    """In place: separable Gaussian blur with view n's own sigma, reflect padding (as
    torchvision; "tf2": zero padding, the 'SAME' depthwise convolution of data_util.py), on
    the views where ``mask`` (N,). x: (N, C, H, W); reflect needs kernel_size // 2 < H, W.

    A group of selected views becomes one (1, n*C, H, W) image and each pass is a grouped conv
    with one 1-D kernel per (view, channel): rows (1 x k) then columns (k x 1). On the CPU the
    groups hold about CPU_CHUNK_BYTES of views but at least two (oneDNN's grouped conv is
    several times slower per view with a single view), spread over ``workers`` threads.
    """
    idx = np.flatnonzero(np.asarray(mask, dtype=bool))
    if idx.size == 0 or kernel_size <= 1:
        return x
    n_all, C, H, W = idx.size, x.shape[1], x.shape[2], x.shape[3]
    r = kernel_size // 2
    pad_mode = "constant" if check_recipe(recipe) == "tf2" else "reflect"
    if r >= min(H, W) and pad_mode == "reflect":
        raise ValueError(f"gaussian_blur kernel_size {kernel_size} needs images larger than "
                         f"{r} pixels for reflect padding, got {H}x{W}")
    idx_all = torch.from_numpy(idx.astype(np.int64)).to(x.device)
    sig = torch.from_numpy(np.asarray(sigma, dtype=np.float64)[idx]).to(x.device, x.dtype)
    k_all = gaussian_kernel1d(sig, kernel_size).repeat_interleave(C, dim=0)  # (n*C, k)
    step = n_all if x.device.type != "cpu" else max(2, CPU_CHUNK_BYTES // (C * H * W * x.element_size()))

    fmt = torch.channels_last if x.device.type == "cpu" else torch.contiguous_format

    def group(a: int) -> None:
        idx_t = idx_all[a:a + step]
        n = idx_t.numel()
        k = k_all[a * C:(a + n) * C]
        # channels last: oneDNN's depthwise convolution is ~2x faster on it (measured on the CPU)
        xs = x.index_select(0, idx_t).view(1, n * C, H, W).contiguous(memory_format=fmt)
        xs = F.pad(xs, (r, r, r, r), mode=pad_mode)
        rows = F.conv2d(xs, k.view(n * C, 1, 1, kernel_size), groups=n * C)  # (1, nC, H+2r, W)
        out = F.conv2d(rows, k.view(n * C, 1, kernel_size, 1), groups=n * C)  # (1, nC, H, W)
        x.index_copy_(0, idx_t, out.view(1, n, C, H, W)[0].clamp_(0.0, 1.0))

    _run_chunks(group, [(a,) for a in range(0, n_all, step)], workers if x.device.type == "cpu" else 1)
    return x


def gaussian_blur(x: torch.Tensor, sigma: np.ndarray, mask: np.ndarray, kernel_size: int,
                  recipe: str = "torchvision") -> torch.Tensor:
    return gaussian_blur_(x.clone(), sigma, mask, kernel_size, recipe=recipe)


# --------------------------------------------------------------------------- pipeline


def augment(images_u8, params: ViewParams, cfg: AugmentConfig, dtype: str | torch.dtype = "float32",
            source: np.ndarray | None = None, device: str | torch.device | None = None,
            out: torch.Tensor | None = None, workers: int | None = None) -> torch.Tensor:
    """The whole view pipeline: uint8 NHWC images (B, H, W, 3) (tensor or numpy) -> float
    NCHW views (N, 3, S, S) in [0, 1], S = cfg.image_size, on the images' device (or ``device``).

    crop+resize (+ flip, fused) -> colour jitter -> grayscale -> blur (SimCLR appendix A),
    each op as ``cfg.recipe`` says ("tf2" clamps once after grayscale: its resize does not).
    ``source`` (N,) maps view n to image ``source[n]`` (default: view n <- image n), so the two
    views of a batch are made in one call without copying the images. ``out`` (optional) is
    a contiguous (N, 3, S, S) tensor to write into (the Trainer reuses one across steps).
    ``workers``: CPU threads to spread the chunks of views over (default: the caller's torch
    thread count; see :func:`cpu_pool`); ignored on other devices.
    """
    if device is None:
        device = images_u8.device if isinstance(images_u8, torch.Tensor) else "cpu"
    dev = torch.device(device)
    shape, dtype_in = tuple(images_u8.shape), images_u8.dtype
    if len(shape) != 4 or dtype_in not in (np.uint8, torch.uint8):
        raise ValueError(f"augment expects uint8 NHWC images (N, H, W, C), got shape {shape} of {dtype_in}")
    src = images_to_torch(images_u8, dev, out=_scratch("source", (shape[0], shape[3], shape[1], shape[2]),
                                                        torch.uint8, dev))
    dt = torch_dtype(dtype)
    n, S = len(params), cfg.image_size
    source = np.arange(n) if source is None else np.asarray(source, dtype=np.int64)
    if out is None:
        out = torch.empty((n, src.shape[1], S, S), dtype=dt, device=src.device)
    elif tuple(out.shape) != (n, src.shape[1], S, S) or out.dtype != dt or not out.is_contiguous():
        raise ValueError(f"augment out has shape {tuple(out.shape)} and dtype {out.dtype}, expected a "
                         f"contiguous {(n, src.shape[1], S, S)} tensor of {dt}")
    per_view = src.shape[1] * S * S * out.element_size()
    chunk = CPU_CHUNK_BYTES_SMALL_VIEWS if per_view <= 64 << 10 else CPU_CHUNK_BYTES
    cpu = src.device.type == "cpu"
    step = n if not cpu else max(1, chunk // per_view)
    workers = (torch.get_num_threads() if workers is None else int(workers)) if cpu else 1
    if cpu and workers > 1:  # at least one chunk per worker
        step = max(1, min(step, -(-n // workers)))

    recipe = cfg.recipe

    def views(a: int) -> None:  # crop, jitter and grayscale of one cache-sized chunk
        p = params[a:a + step]
        x = resized_crop(src, p.crop, S, dt, flip=p.flip, source=source[a:a + step], out=out[a:a + step],
                         recipe=recipe)
        color_jitter_(x, p, recipe)
        grayscale_(x, p.grayscale, recipe)
        if recipe == "tf2":
            x.clamp_(0.0, 1.0)

    _run_chunks(views, [(a,) for a in range(0, n, step)], workers)
    return gaussian_blur_(out, params.blur_sigma, params.blur, cfg.blur_kernel_size, workers, recipe=recipe)


def full_boxes(params: ViewParams, size: int) -> ViewParams:
    """``params`` with every crop box replaced by the whole (size x size) view."""
    import dataclasses
    return dataclasses.replace(params, crop=np.tile(np.array([[0, 0, size, size]], np.int64), (len(params), 1)))


def augment_cropped(views_u8, params: ViewParams, cfg: AugmentConfig, dtype: str | torch.dtype = "float32",
                    device: str | torch.device | None = None, out: torch.Tensor | None = None,
                    workers: int | None = None) -> torch.Tensor:
    """The view pipeline after the crop: uint8 NHWC views (N, S, S, 3) that the data workers
    already cut from the original images and resized to S = cfg.image_size (simclr_xb.data.stream)
    -> float NCHW (N, 3, S, S): flip, colour jitter, grayscale and blur from ``params`` (the
    same sampled parameters; ``params.crop`` is the box in source pixels, already applied).

    This is :func:`augment` with each box replaced by the whole S x S view: a resize to the
    same size samples every pixel at its own centre with weight 0 on the neighbour, so the
    crop step is an exact copy and the flip stays fused into it."""
    S = cfg.image_size
    shape = tuple(views_u8.shape)
    if len(shape) != 4 or shape[1:3] != (S, S) or shape[0] != len(params):
        raise ValueError(f"augment_cropped expects {len(params)} uint8 views ({len(params)}, {S}, {S}, 3), "
                         f"got shape {shape}")
    return augment(views_u8, full_boxes(params, S), cfg, dtype, device=device, out=out, workers=workers)
