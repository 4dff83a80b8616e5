"""``shapes``: the built-in synthetic dataset, deterministic from a seed, RGB 32x32.

The CLASS IS THE SHAPE (10 classes, :data:`SHAPE_CLASSES`): circle, ring, square, triangle,
star (5 points), plus, diamond (a rhombus, 0.55:1), crescent, heart, semicircle.

Everything else is a nuisance, drawn independently per image:

* size: the shape's outer radius is 7-14 px (a little less for the bulky square/diamond/heart,
  so that classes do not differ by area); rotation: uniform over the full turn;
  position: anywhere that keeps the outer radius within 1 px of the frame;
* fill colour: uniform RGB, with a luma at least :data:`MIN_LUMA_GAP` away from the
  background's mean luma (the shape stays visible after a grayscale augmentation);
* background: a linear gradient between two random colours (random direction and strength);
* texture on the background and, independently, on the shape: none, stripes (random period,
  angle, phase, colour, amplitude), per-pixel noise, or smooth colour blotches;
* sensor noise: Gaussian with a random sigma over the whole image.

Colour, texture and background carry no information about the label, and they dominate the
statistics that a random convolutional network pools, so a linear probe on random-init
features does poorly; the shape survives SimCLR's crop/colour augmentations, so contrastive
training can find it. Rendering is vectorised numpy: per-class signed-distance functions
(in pixels) give an antialiased coverage ``clip(0.5 - d, 0, 1)`` with no supersampling.

Determinism: images come in chunks of :data:`CHUNK` whose generator is
``SeedSequence([seed, STREAM_SHAPES, split, chunk])`` (split 0 train, 1 test), so train and
test are disjoint streams from one base seed, and the first ``n`` images of a split do not
depend on how many are asked for. Labels are a permutation of ``arange(CHUNK) % 10`` per chunk,
so classes are exactly balanced whenever ``n`` is a multiple of 1000.
"""
from __future__ import annotations

import numpy as np

SHAPES_VERSION = 1
STREAM_SHAPES = 0x5348_4150  # "SHAP"
CHUNK = 1000
SIZE = 32
DEFAULT_SIZES = {"train": 10000, "test": 2000}
MIN_LUMA_GAP = 0.3
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
    c = np.arange(SIZE, dtype=np.float64) + 0.5
    return np.meshgrid(c, c, indexing="xy")  # X[i, j] = column j, Y[i, j] = row i


def _texture(rng: np.random.Generator, n: int, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """(n, S, S, 3) additive texture in about [-0.5, 0.5]: none, stripes, noise or blotches."""
    kind = rng.integers(0, 4, n)
    amp = rng.uniform(0.15, 0.45, (n, 1, 1, 1))
    angle = rng.uniform(0, np.pi, n)
    period = rng.uniform(3.0, 8.0, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    tint = rng.uniform(-1, 1, (n, 1, 1, 3))
    noise = rng.standard_normal((n, SIZE, SIZE, 1)) * rng.uniform(0.3, 0.8, (n, 1, 1, 1))
    coarse = rng.uniform(-1, 1, (n, 5, 5, 3))
    u = X[None] * np.cos(angle)[:, None, None] + Y[None] * np.sin(angle)[:, None, None]
    stripes = np.sin(2 * np.pi * u / period[:, None, None] + phase[:, None, None])[..., None] * tint
    # Blotches: bilinear upsampling of a 5x5 random field.
    t = (np.arange(SIZE) + 0.5) / SIZE * 4
    i0 = np.minimum(t.astype(int), 3)
    f = (t - i0)[None, :, None]
    rows = coarse[:, i0] * (1 - f[..., None]) + coarse[:, i0 + 1] * f[..., None]
    f2 = (t - i0)[None, None, :, None]
    blot = rows[:, :, i0] * (1 - f2) + rows[:, :, i0 + 1] * f2
    out = np.zeros((n, SIZE, SIZE, 3))
    out = np.where((kind == 1)[:, None, None, None], stripes, out)
    out = np.where((kind == 2)[:, None, None, None], noise, out)
    out = np.where((kind == 3)[:, None, None, None], blot, out)
    return amp * out


def _chunk(seed: int, split: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed), STREAM_SHAPES, split, index])))
    n = CHUNK
    X, Y = _grid()
    labels = rng.permutation(np.arange(n) % len(SHAPE_CLASSES)).astype(np.int64)
    radius = rng.uniform(7.0, 14.0, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    margin = radius - 1.0
    cx = margin + rng.random(n) * (SIZE - 2 * margin)
    cy = margin + rng.random(n) * (SIZE - 2 * margin)
    # Background gradient between two colours.
    c0 = rng.random((n, 3))
    c1 = rng.random((n, 3))
    g_angle = rng.uniform(0, 2 * np.pi, n)
    g_strength = rng.uniform(0, 1.5, n)
    fill = rng.random((n, 3))
    bg_tex = _texture(rng, n, X, Y)
    fg_tex = _texture(rng, n, X, Y)
    sigma = rng.uniform(0.0, 0.06, (n, 1, 1, 1))
    sensor = rng.standard_normal((n, SIZE, SIZE, 3))

    # Fill colour far enough (in luma) from the background's mean: redraw, then push.
    bg_luma = 0.5 * (c0 + c1) @ _LUMA
    for _ in range(8):
        bad = np.abs(fill @ _LUMA - bg_luma) < MIN_LUMA_GAP
        if not bad.any():
            break
        fill[bad] = rng.random((int(bad.sum()), 3))
    gap = fill @ _LUMA - bg_luma
    bad = np.abs(gap) < MIN_LUMA_GAP
    fill[bad] = np.where((bg_luma[bad] < 0.5)[:, None], 1.0, 0.0)

    t = ((X[None] - SIZE / 2) * np.cos(g_angle)[:, None, None]
         + (Y[None] - SIZE / 2) * np.sin(g_angle)[:, None, None]) / SIZE
    t = np.clip(0.5 + g_strength[:, None, None] * t, 0, 1)[..., None]
    bg = c0[:, None, None] * (1 - t) + c1[:, None, None] * t + bg_tex
    fg = fill[:, None, None] + fg_tex

    # Shape-local coordinates in units of the radius: rotate by -angle about the centre.
    dx = (X[None] - cx[:, None, None]) / radius[:, None, None]
    dy = (Y[None] - cy[:, None, None]) / radius[:, None, None]
    ca, sa = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    lx, ly = ca * dx + sa * dy, -sa * dx + ca * dy
    dist = np.empty((n, SIZE, SIZE))
    for k, name in enumerate(SHAPE_CLASSES):
        m = labels == k
        dist[m] = _sdf(name, lx[m], ly[m]) * radius[m, None, None]
    alpha = np.clip(0.5 - dist, 0.0, 1.0)[..., None]
    img = bg * (1 - alpha) + fg * alpha + sigma * sensor
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8), labels


def make_shapes(n: int | None = None, split: str = "train", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (default :data:`DEFAULT_SIZES`) of ``split`` -> (uint8 (n, 32, 32, 3), int64 (n,))."""
    if split not in _SPLITS:
        raise ValueError(f"shapes split {split!r} is unknown: expected one of {sorted(_SPLITS)}")
    n = DEFAULT_SIZES[split] if n is None else int(n)
    if n < 0:
        raise ValueError(f"shapes: n = {n} must be >= 0")
    chunks = [_chunk(seed, _SPLITS[split], i) for i in range(-(-n // CHUNK))]
    if not chunks:
        return np.zeros((0, SIZE, SIZE, 3), np.uint8), np.zeros(0, np.int64)
    images = np.concatenate([c[0] for c in chunks])[:n]
    labels = np.concatenate([c[1] for c in chunks])[:n]
    return images, labels
