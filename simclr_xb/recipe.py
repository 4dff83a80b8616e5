"""What differs between the two augmentation recipes, as host-side data shared by the oracle
and both backends (numpy only, no randomness).

``augment.recipe`` (see :data:`simclr_xb.config.RECIPES`):

================  =========================================  ==========================================
op                "torchvision"                               "tf2" (google-research/simclr tf2/data_util.py)
================  =========================================  ==========================================
crop sampler      RandomResizedCrop (augment.sample_crop_boxes)  sample_distorted_bounding_box (..._tf2)
resize            bilinear, half-pixel, clamped               TF bicubic (:func:`bicubic_taps`), NOT clamped
contrast          blend with the mean of the grey image       blend with the PER-CHANNEL mean
saturation        blend with the grey image                   HSV: S * t clipped to [0, 1], V and H kept
grayscale         0.299 / 0.587 / 0.114                       0.2989 / 0.5870 / 0.1140 (rgb_to_grayscale)
blur padding      reflect                                     zeros ('SAME' depthwise convolution)
clamp             after every op                              after each jitter op, then once after
                                                              grayscale (preprocess_for_train), blur
================  =========================================  ==========================================

Brightness (x * b), hue (rotation of H) and flip are the same maths in both.
"""
from __future__ import annotations

import numpy as np

GRAY_WEIGHTS = {"torchvision": (0.299, 0.587, 0.114), "tf2": (0.2989, 0.5870, 0.1140)}

# tf.image.resize(..., BICUBIC) with antialias=False (the default, and what data_util.py
# uses) runs the ResizeBicubic kernel with half_pixel_centers=True: Keys' cubic with a = -0.5,
# its weights read from a table of 1024 steps per pixel
# (tensorflow/core/kernels/image/resize_bicubic_op.cc).
KEYS_A = -0.5
TABLE_SIZE = 1024


def check_recipe(recipe: str) -> str:
    if recipe not in GRAY_WEIGHTS:
        raise ValueError(f"augment recipe must be one of {tuple(GRAY_WEIGHTS)}, got {recipe!r}")
    return recipe


def keys_cubic(t: np.ndarray, a: float = KEYS_A) -> np.ndarray:
    """Keys (1981) cubic convolution kernel W(t), |t| < 2."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def bicubic_taps(start: np.ndarray, length: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps of TF's 1-D bicubic resize of the intervals [start, start + length) to ``size``
    samples: (index (N, size, 4) int64 into the full axis, weight (N, size, 4) float64).

    As the kernel computes them: scale = float32(length / size); the source coordinate of
    output o is s = (o + 0.5) * scale - 0.5 in float32; i = floor(s); the fraction
    d = s - i is rounded to the table, k = rint(d * 1024); taps i - 1 .. i + 2 get
    W(1 + k/1024), W(k/1024), W(1 - k/1024), W(2 - k/1024); a tap outside the interval gets
    weight 0 and the four are renormalised to sum 1 (no edge replication).
    """
    f32 = np.float32
    L = np.asarray(length, dtype=np.int64)[:, None]
    scale = (L.astype(f32) / f32(size)).astype(f32)
    o = np.arange(size, dtype=f32)[None, :]
    s = ((o + f32(0.5)) * scale - f32(0.5)).astype(f32)
    i = np.floor(s)
    k = np.rint((s - i).astype(f32) * f32(TABLE_SIZE)).astype(np.float64)
    frac = k / TABLE_SIZE
    w = np.stack([keys_cubic(1 + frac), keys_cubic(frac), keys_cubic(1 - frac), keys_cubic(2 - frac)],
                 axis=-1)
    taps = i.astype(np.int64)[..., None] + np.arange(-1, 3)[None, None, :]
    inside = (taps >= 0) & (taps < L[..., None])
    w = np.where(inside, w, 0.0)
    w /= w.sum(axis=-1, keepdims=True)
    idx = np.clip(taps, 0, L[..., None] - 1) + np.asarray(start, dtype=np.int64)[:, None, None]
    return idx, w


def interpolation_matrix(start: np.ndarray, length: np.ndarray, size: int, full: int) -> np.ndarray:
    """(N, size, full) float64: the bicubic resize of :func:`bicubic_taps` as a matrix over
    the whole source axis of length ``full`` (zero outside the box), out = M @ line."""
    idx, w = bicubic_taps(start, length, size)
    n = idx.shape[0]
    m = np.zeros((n, size, full))
    rows = np.arange(size)[None, :, None]
    np.add.at(m, (np.arange(n)[:, None, None], np.broadcast_to(rows, idx.shape), idx), w)
    return m


def blur_matrices_zero_pad(kernels: np.ndarray, length: int) -> np.ndarray:
    """(n, k) normalised 1-D kernels -> (n, length, length): the 'SAME' convolution with
    zero padding as a matrix (out[o] = sum_j k[j] line[o + j - r], taps outside dropped)."""
    n, ks = kernels.shape
    r = ks // 2
    m = np.zeros((n, length, length))
    o = np.arange(length)
    for j in range(ks):
        src = o + j - r
        ok = (src >= 0) & (src < length)
        m[:, o[ok], src[ok]] += kernels[:, j, None]
    return m
