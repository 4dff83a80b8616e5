"""``shapes``: the built-in synthetic dataset, deterministic from a seed, RGB 32x32.

The CLASS IS THE SHAPE (10 classes, :data:`SHAPE_CLASSES`): circle, ring, square, triangle,
star (5 points), plus, diamond (a rhombus, 0.55:1), crescent, heart, semicircle.

Everything else is a nuisance, drawn independently per image:

* size: outer radius uniform in :data:`RADIUS` = 8-14 px; rotation: uniform over the full turn;
  position: anywhere that keeps the outer radius within 1 px of the frame;
* fill colour: uniform RGB, with a luma at least :data:`MIN_LUMA_GAP` away from the
  background's mean luma (the shape stays visible after a grayscale augmentation);
* background: a linear gradient between two uniform random colours (random direction and
  strength);
* texture, on the background and independently on the shape (amplitude scales
  :data:`BG_TEXTURE`, :data:`FG_TEXTURE`): none, stripes (random period 3-8 px, angle, phase,
  tint), per-pixel grey noise, or smooth colour blotches, one kind each, equally likely;
* sensor noise: Gaussian, sigma uniform in [0, 0.06], over the whole image.

Colour, texture and background carry no information about the label and dominate what a
random convolutional network pools, so a linear probe on random-init features does poorly;
the shape survives SimCLR's crop and colour augmentations, so contrastive training can find
it. Measured with scratch scripts (not tests): narrow ResNet-18 (width 16, CIFAR stem),
linear probe = L-BFGS logistic regression on standardised h, 10000 train / 2000 test images:
raw pixels 10%, random-init encoder 19-20%; SimCLR (batch 256, tau 0.5, colour strength 0.5,
Adam 1e-3) 29% after 195 steps and 35% after 390 steps (10 epochs), still rising; supervised
training of the same encoder reached 83% after about 230 steps (texture-free variant). With
textures at full strength (version 1) the random-init probe fell to 17% but SimCLR gained
only 4 points in 160 steps.
Rendering is vectorised numpy: per-class signed-distance functions (in pixels) give an
antialiased coverage ``clip(0.5 - d, 0, 1)`` with no supersampling.

Determinism: images come in chunks of :data:`CHUNK` whose generator is
``SeedSequence([seed, STREAM_SHAPES, split, chunk])`` (split 0 train, 1 test), so train and
test are disjoint streams from one base seed, and the first ``n`` images of a split do not
depend on how many are asked for (every draw is made for a whole chunk; only the images asked
for are rendered). Labels are a permutation of ``arange(CHUNK) % 10`` per chunk, so classes are
exactly balanced whenever ``n`` is a multiple of 1000.
"""
from __future__ import annotations

import functools

import numpy as np

# Bumped whenever the images for a given (seed, split, n) change. 1: textures at full strength,
# radius 7-14 px (commit 0e46b0b); 2: textures at BG_TEXTURE / FG_TEXTURE, radius 8-14 px.
SHAPES_VERSION = 2
STREAM_SHAPES = 0x5348_4150  # "SHAP"
CHUNK = 1000
SIZE = 32
DEFAULT_SIZES = {"train": 10000, "test": 2000}
MIN_LUMA_GAP = 0.3
RADIUS = (8.0, 14.0)  # outer radius of the shape, px
BG_TEXTURE = 0.5  # texture amplitude scales (background, shape)
FG_TEXTURE = 0.25
SHAPE_CLASSES = ("circle", "ring", "square", "triangle", "star", "plus", "diamond",
                 "crescent", "heart", "semicircle")
_LUMA = np.array([0.299, 0.587, 0.114])
_SPLITS = {"train": 0, "test": 1}


# --- signed distances, in units of the outer radius (negative inside) ---------------------
def _polygon(x: np.ndarray, y: np.ndarray, k: int, phase: float = 0.0) -> np.ndarray:
    """Regular convex k-gon with circumradius 1: the max over its edges' half-plane distances."""
    apothem = np.cos(np.pi / k)
    d = None
    for i in range(k):
        a = phase + 2 * np.pi * (i + 0.5) / k
        e = x * np.cos(a) + y * np.sin(a) - apothem
        d = e if d is None else np.maximum(d, e)
    return d


def _box(x, y, hx, hy):
    qx, qy = np.abs(x) - hx, np.abs(y) - hy
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _disk(x, y, r=1.0, cx=0.0, cy=0.0):
    return np.hypot(x - cx, y - cy) - r


def _rhombus(x, y, a, b):
    # |x|/a + |y|/b <= 1, scaled to a distance along the edge normal.
    n = np.hypot(1 / a, 1 / b)
    return (np.abs(x) / a + np.abs(y) / b - 1) / n


def _star(x, y, points=5, inner=0.45):
    """Union of the triangles (tip, centre-side inner vertices): min of convex pieces."""
    d = None
    for i in range(points):
        t = 2 * np.pi * i / points + np.pi / 2
        tip = np.array([np.cos(t), np.sin(t)])
        l = inner * np.array([np.cos(t - np.pi / points), np.sin(t - np.pi / points)])
        r = inner * np.array([np.cos(t + np.pi / points), np.sin(t + np.pi / points)])
        piece = _convex(x, y, [tip, r, np.zeros(2), l])
        d = piece if d is None else np.minimum(d, piece)
    return d


def _convex(x, y, verts):
    """Convex polygon from counter-clockwise vertices (list of 2-vectors)."""
    d = None
    for p, q in zip(verts, verts[1:] + verts[:1]):
        e = q - p
        nx, ny = e[1], -e[0]
        norm = np.hypot(nx, ny)
        h = ((x - p[0]) * nx + (y - p[1]) * ny) / norm
        d = h if d is None else np.maximum(d, h)
    return d


def _heart(x, y, h=0.72):
    """A diamond (half-diagonal h) with disks on its two upper sides: the classic heart."""
    y = y - 0.1 * h  # centre the bounding box (tip at -h, lobes up to about 1.2 h)
    lobe = h / np.sqrt(2)
    body = _rhombus(x, y, h, h)
    left = _disk(x, y, lobe, -h / 2, h / 2)
    right = _disk(x, y, lobe, h / 2, h / 2)
    return np.minimum(body, np.minimum(left, right))


def _sdf(cls: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if cls == "circle":
        return _disk(x, y, 0.85)
    if cls == "ring":
        return np.abs(_disk(x, y, 0.78)) - 0.22
    if cls == "square":
        return _box(x, y, 0.68, 0.68)
    if cls == "triangle":
        return _polygon(x, y, 3, phase=np.pi / 2)
    if cls == "star":
        return _star(x, y)
    if cls == "plus":
        return np.minimum(_box(x, y, 0.95, 0.27), _box(x, y, 0.27, 0.95))
    if cls == "diamond":
        return _rhombus(x, y, 0.55, 1.0)
    if cls == "crescent":
        return np.maximum(_disk(x, y, 0.9), -_disk(x, y, 0.72, 0.5, 0.0))
    if cls == "heart":
        return _heart(x, y)
    if cls == "semicircle":
        return np.maximum(_disk(x, y + 0.3, 0.95), -(y + 0.3))
    raise KeyError(cls)


# --- nuisances ------------------------------------------------------------------------------
def _grid() -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(SIZE, dtype=np.float32) + 0.5
    return np.meshgrid(c, c, indexing="xy")  # X[i, j] = column j, Y[i, j] = row i


def _upsample(coarse: np.ndarray) -> np.ndarray:
    """Bilinear upsampling of (n, 5, 5, 3) fields to (n, S, S, 3)."""
    t = (np.arange(SIZE, dtype=np.float32) + 0.5) / SIZE * (coarse.shape[1] - 1)
    i0 = np.minimum(t.astype(int), coarse.shape[1] - 2)
    f = (t - i0)[None, :, None, None]
    rows = coarse[:, i0] * (1 - f) + coarse[:, i0 + 1] * f
    f = (t - i0)[None, None, :, None]
    return rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f


def _texture(rng: np.random.Generator, n: int, m: int, X: np.ndarray, Y: np.ndarray,
             scale: float) -> np.ndarray:
    """(m, S, S, 3) additive texture of the first m of n images, one kind per image: none,
    stripes, noise or blotches. Every parameter is drawn for all n images (so the stream does
    not depend on m or on the kinds); each kind is then rendered only for its images.
    """
    kind = rng.integers(0, 4, n)
    amp = (scale * rng.uniform(0.15, 0.45, n)).astype(np.float32)[:, None, None, None]
    angle = rng.uniform(0, np.pi, n)
    period = rng.uniform(3.0, 8.0, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    tint = rng.uniform(-1, 1, (n, 1, 1, 3)).astype(np.float32)
    noise = rng.standard_normal((n, SIZE, SIZE, 1), dtype=np.float32)
    noise *= rng.uniform(0.3, 0.8, (n, 1, 1, 1)).astype(np.float32)
    coarse = rng.uniform(-1, 1, (n, 5, 5, 3)).astype(np.float32)
    kind, amp, angle, period, phase, tint, noise, coarse = (
        a[:m] for a in (kind, amp, angle, period, phase, tint, noise, coarse))
    out = np.zeros((m, SIZE, SIZE, 3), np.float32)
    sel = kind == 1
    u = (X[None] * np.cos(angle[sel])[:, None, None].astype(np.float32)
         + Y[None] * np.sin(angle[sel])[:, None, None].astype(np.float32))
    out[sel] = np.sin(2 * np.pi * u / period[sel, None, None] + phase[sel, None, None])[..., None] * tint[sel]
    sel = kind == 2
    out[sel] = noise[sel]
    sel = kind == 3
    out[sel] = _upsample(coarse[sel])
    out *= amp
    return out


def _chunk(seed: int, split: int, index: int, m: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """The first ``m`` images of chunk ``index``: every draw is made for the whole chunk."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed), STREAM_SHAPES, split, index])))
    n = CHUNK
    X, Y = _grid()
    labels = rng.permutation(np.arange(n) % len(SHAPE_CLASSES)).astype(np.int64)
    radius = rng.uniform(*RADIUS, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    margin = radius - 1.0
    cx = margin + rng.random(n) * (SIZE - 2 * margin)
    cy = margin + rng.random(n) * (SIZE - 2 * margin)
    c0, c1, fill = rng.random((n, 3)), rng.random((n, 3)), rng.random((n, 3))
    g_angle = rng.uniform(0, 2 * np.pi, n)
    g_strength = rng.uniform(0, 1.5, n)
    bg_tex = _texture(rng, n, m, X, Y, BG_TEXTURE)
    fg_tex = _texture(rng, n, m, X, Y, FG_TEXTURE)
    sigma = rng.uniform(0.0, 0.06, (n, 1, 1, 1)).astype(np.float32)
    sensor = rng.standard_normal((n, SIZE, SIZE, 3), dtype=np.float32)

    # Fill colour far enough (in luma) from the background's mean: redraw, then push.
    bg_luma = 0.5 * (c0 + c1) @ _LUMA
    for _ in range(8):
        bad = np.abs(fill @ _LUMA - bg_luma) < MIN_LUMA_GAP
        if not bad.any():
            break
        fill[bad] = rng.random((int(bad.sum()), 3))
    bad = np.abs(fill @ _LUMA - bg_luma) < MIN_LUMA_GAP
    fill[bad] = np.where((bg_luma[bad] < 0.5)[:, None], 1.0, 0.0)
    labels, radius, angle, cx, cy, c0, c1, fill, g_angle, g_strength, sigma, sensor = (
        a[:m] for a in (labels, radius, angle, cx, cy, c0, c1, fill, g_angle, g_strength, sigma, sensor))

    # Background: linear gradient c0 -> c1 along g_angle, plus texture; shape: fill + texture.
    ga = g_angle[:, None, None].astype(np.float32)
    t = ((X[None] - SIZE / 2) * np.cos(ga) + (Y[None] - SIZE / 2) * np.sin(ga)) / SIZE
    t = np.clip(0.5 + g_strength[:, None, None].astype(np.float32) * t, 0, 1)[..., None]
    c0, c1, fill = (c.astype(np.float32)[:, None, None] for c in (c0, c1, fill))
    bg = c0 + (c1 - c0) * t + bg_tex
    fg = fill + fg_tex

    # Shape-local coordinates in units of the radius: rotate by -angle about the centre.
    r = radius[:, None, None].astype(np.float32)
    dx = (X[None] - cx[:, None, None].astype(np.float32)) / r
    dy = (Y[None] - cy[:, None, None].astype(np.float32)) / r
    ca, sa = np.cos(angle)[:, None, None].astype(np.float32), np.sin(angle)[:, None, None].astype(np.float32)
    lx, ly = ca * dx + sa * dy, ca * dy - sa * dx
    dist = np.empty((m, SIZE, SIZE), np.float32)
    for k, name in enumerate(SHAPE_CLASSES):
        sel = labels == k
        dist[sel] = _sdf(name, lx[sel], ly[sel]) * r[sel]
    alpha = np.clip(0.5 - dist, 0.0, 1.0)[..., None]
    img = bg + (fg - bg) * alpha + sigma * sensor
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), labels


@functools.lru_cache(maxsize=4)
def _cached(n: int, split: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    chunks = [_chunk(seed, split, i, min(CHUNK, n - i * CHUNK)) for i in range(-(-n // CHUNK))]
    images = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros((0, SIZE, SIZE, 3), np.uint8)
    labels = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros(0, np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def make_shapes(n: int | None = None, split: str = "train", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (default :data:`DEFAULT_SIZES`) of ``split`` -> (uint8 (n, 32, 32, 3), int64 (n,)).

    The last few results are kept in memory (train then test, or a second load, is free);
    the caller gets its own writable copies.
    """
    if split not in _SPLITS:
        raise ValueError(f"shapes split {split!r} is unknown: expected one of {sorted(_SPLITS)}")
    n = DEFAULT_SIZES[split] if n is None else int(n)
    if n < 0:
        raise ValueError(f"shapes: n = {n} must be >= 0")
    images, labels = _cached(n, _SPLITS[split], int(seed))
    return images.copy(), labels.copy()
