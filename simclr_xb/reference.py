"""The float64 numpy oracle: every formula the backends implement, written to be read.

Function names and signatures are the ones of the backend interface
(:mod:`simclr_xb.backend`), so a conformance case pairs ``reference.f`` with ``backend.f``.
Conventions, identical in every backend:

* images are NHWC float in [0, 1]; uint8 input is divided by 255; every op clamps to [0, 1];
* conv weights are OIHW (PyTorch), linear weights (out, in); parameters are canonical dicts
  (:mod:`simclr_xb.resnet_spec`);
* BatchNorm normalises with the biased batch variance and stores the UNBIASED one in
  ``running_var`` (PyTorch's convention), ``new = (1 - momentum) * old + momentum * batch``;
* NT-Xent takes z of shape (2N, d) laid out as [view 1 of images 0..N-1; view 2 of the same],
  so the positive of row i is row (i + N) mod 2N.

Speed is not a goal here; the ResNet forward is meant for small sizes.
"""
from __future__ import annotations

import numpy as np

from .augment import BRIGHTNESS, CONTRAST, HUE, SATURATION, ViewParams
from .config import AugmentConfig, Config, ModelConfig, OptimConfig, loss_scale
from .recipe import GRAY_WEIGHTS as RECIPE_GRAY_WEIGHTS
from .recipe import bicubic_taps, check_recipe
from .resnet_spec import BlockSpec, encoder_layout, head_dims, model_specs
from .state import NORM_EPS, PROBE_EPS

# --------------------------------------------------------------------------- augmentation


def to_float(images_u8: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float64 NHWC in [0, 1]."""
    return np.asarray(images_u8, dtype=np.float64) / 255.0


def _clamp(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0)


def _bilinear_taps(start: np.ndarray, length: np.ndarray, size: int):
    """Source taps of a 1-D bilinear resize (align_corners=False, no antialias) of the
    intervals [start, start + length) to ``size`` samples: (i0, i1, frac), each (N, size)."""
    o = np.arange(size, dtype=np.float64)[None, :]
    L = length.astype(np.float64)[:, None]
    src = np.clip((o + 0.5) * L / size - 0.5, 0.0, L - 1.0)
    i0 = np.floor(src)
    frac = src - i0
    i1 = np.minimum(i0 + 1, L - 1)
    s = start[:, None]
    return (i0 + s).astype(np.int64), (i1 + s).astype(np.int64), frac


def resized_crop(x: np.ndarray, crop: np.ndarray, size: int, recipe: str = "torchvision") -> np.ndarray:
    """Crop each image to its box (top, left, height, width) and resize to size x size.

    "torchvision": bilinear with half-pixel centres (``align_corners=False``), source
    coordinates clamped to the box, no antialiasing: out[y, x] interpolates the box at
    ``((y + 0.5) * h / size - 0.5, (x + 0.5) * w / size - 0.5)``; clamped to [0, 1].
    "tf2": tf.image.resize BICUBIC of the cropped box (:func:`simclr_xb.recipe.bicubic_taps`,
    separable: rows then columns), NOT clamped (data_util.py clips later).
    x: (N, H, W, C) -> (N, size, size, C).
    """
    if check_recipe(recipe) == "tf2":
        return _bicubic_crop(x, crop, size)
    top, left, h, w = (crop[:, k] for k in range(4))
    y0, y1, fy = _bilinear_taps(top, h, size)
    x0, x1, fx = _bilinear_taps(left, w, size)
    n = np.arange(x.shape[0])[:, None, None]
    fy = fy[:, :, None, None]
    fx = fx[:, None, :, None]

    def at(ys, xs):
        return x[n, ys[:, :, None], xs[:, None, :]]

    top_row = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom_row = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return _clamp(top_row * (1 - fy) + bottom_row * fy)


def _bicubic_crop(x: np.ndarray, crop: np.ndarray, size: int) -> np.ndarray:
    """TF bicubic crop-and-resize: out = sum_ij wy_i wx_j x[y_i, x_j] over 4 x 4 taps."""
    iy, wy = bicubic_taps(crop[:, 0], crop[:, 2], size)  # (N, S, 4)
    ix, wx = bicubic_taps(crop[:, 1], crop[:, 3], size)
    n = np.arange(x.shape[0])[:, None, None]
    out = np.zeros((x.shape[0], size, size, x.shape[3]))
    for i in range(4):
        for j in range(4):
            v = x[n, iy[:, :, i][:, :, None], ix[:, :, j][:, None, :]]  # (N, S, S, C)
            out += (wy[:, :, i][:, :, None] * wx[:, :, j][:, None, :])[..., None] * v
    return out


def hflip(x: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Mirror the width axis of the images where ``flip`` (N,) is True."""
    return np.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


def rgb_to_gray(x: np.ndarray, recipe: str = "torchvision") -> np.ndarray:
    """(N, H, W, 3) -> (N, H, W, 1): 0.299 R + 0.587 G + 0.114 B ("tf2": tf.image.rgb_to_grayscale's
    0.2989 / 0.5870 / 0.1140)."""
    return (x @ np.asarray(RECIPE_GRAY_WEIGHTS[check_recipe(recipe)]))[..., None]


def adjust_brightness(x: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """x * b, per image."""
    return _clamp(x * factor[:, None, None, None])


def adjust_contrast(x: np.ndarray, factor: np.ndarray, recipe: str = "torchvision") -> np.ndarray:
    """Blend with the mean of the image's grayscale: c x + (1 - c) mean(gray(x)); "tf2"
    (tf.image.adjust_contrast): with each channel's own mean over the image,
    (x - mean_c) c + mean_c. Clamped."""
    if check_recipe(recipe) == "tf2":
        mean = x.mean(axis=(1, 2), keepdims=True)
    else:
        mean = rgb_to_gray(x).mean(axis=(1, 2, 3))[:, None, None, None]
    c = factor[:, None, None, None]
    return _clamp(c * x + (1 - c) * mean)


def adjust_saturation(x: np.ndarray, factor: np.ndarray, recipe: str = "torchvision") -> np.ndarray:
    """Blend with the image's grayscale: t x + (1 - t) gray(x). "tf2"
    (tf.image.adjust_saturation): in HSV, S <- clip(S t, 0, 1) with H and V kept, i.e. the
    chroma C = V - min becomes V clip(S t) = min(V, C t) for t >= 0. Clamped."""
    if check_recipe(recipe) == "tf2":
        v = x.max(axis=-1)
        c = v - x.min(axis=-1)
        s = np.where(v > 0, c / np.where(v > 0, v, 1.0), 0.0)
        c_new = v * np.clip(s * factor[:, None, None], 0.0, 1.0)
        return _clamp(hsv_channels(v, c_new, rgb_to_hue(x)))
    t = factor[:, None, None, None]
    return _clamp(t * x + (1 - t) * rgb_to_gray(x))


def rgb_to_hue(x: np.ndarray) -> np.ndarray:
    """Hue in [0, 1) of the HSV model (0 where the chroma is 0). (N, H, W, 3) -> (N, H, W)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(axis=-1)
    c = v - x.min(axis=-1)
    safe = np.where(c > 0, c, 1.0)
    h6 = np.where(v == r, np.mod((g - b) / safe, 6.0),
                  np.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return np.where(c > 0, h6 / 6.0, 0.0)


def hsv_channels(v: np.ndarray, c: np.ndarray, hue: np.ndarray) -> np.ndarray:
    """RGB from value V, chroma C and hue (turns): channel n in (R=5, G=3, B=1) is
    V - C * clip(min(k, 4 - k), 0, 1) with k = (n + 6 hue) mod 6. Same as HSV -> RGB."""
    out = []
    for n in (5.0, 3.0, 1.0):
        k = np.mod(n + 6.0 * hue, 6.0)
        out.append(v - c * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return np.stack(out, axis=-1)


def adjust_hue(x: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Rotate the HSV hue by ``delta`` turns, keeping value and saturation (torchvision's
    adjust_hue, written without the round trip: V and chroma are invariant under the shift)."""
    v = x.max(axis=-1)
    c = v - x.min(axis=-1)
    hue = np.mod(rgb_to_hue(x) + delta[:, None, None], 1.0)
    return _clamp(hsv_channels(v, c, hue))


def color_jitter(x: np.ndarray, params: ViewParams, recipe: str = "torchvision") -> np.ndarray:
    """The four jitter ops in each view's own order, on the views where ``params.jitter``."""
    check_recipe(recipe)
    ops = {BRIGHTNESS: (adjust_brightness, params.brightness),
           CONTRAST: (lambda a, f: adjust_contrast(a, f, recipe), params.contrast),
           SATURATION: (lambda a, f: adjust_saturation(a, f, recipe), params.saturation),
           HUE: (adjust_hue, params.hue)}
    out = x.copy()
    for i in np.flatnonzero(params.jitter):
        xi = x[i:i + 1]
        for op in params.jitter_order[i]:
            fn, factors = ops[int(op)]
            xi = fn(xi, factors[i:i + 1])
        out[i] = xi[0]
    return out


def grayscale(x: np.ndarray, mask: np.ndarray, recipe: str = "torchvision") -> np.ndarray:
    """Replace the views where ``mask`` with their grayscale, repeated over 3 channels."""
    return np.where(mask[:, None, None, None], np.repeat(rgb_to_gray(x, recipe), 3, axis=-1), x)


def gaussian_kernel1d(sigma: np.ndarray, kernel_size: int) -> np.ndarray:
    """(N,) sigmas -> (N, k) normalised kernels exp(-t^2 / (2 sigma^2)), t = -r..r."""
    r = kernel_size // 2
    t = np.arange(-r, r + 1, dtype=np.float64)[None, :]
    k = np.exp(-(t ** 2) / (2.0 * sigma[:, None] ** 2))
    return k / k.sum(axis=1, keepdims=True)


def gaussian_blur(x: np.ndarray, sigma: np.ndarray, mask: np.ndarray, kernel_size: int,
                  recipe: str = "torchvision") -> np.ndarray:
    """Separable Gaussian blur on the views where ``mask``: reflect padding (as torchvision),
    or zero padding for "tf2" (data_util.py: depthwise conv2d, padding 'SAME'), clamped."""
    r = kernel_size // 2
    k = gaussian_kernel1d(sigma, kernel_size)
    H, W = x.shape[1:3]
    pad = "constant" if check_recipe(recipe) == "tf2" else "reflect"
    p = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode=pad)
    rows = sum(k[:, j, None, None, None] * p[:, :, j:j + W, :] for j in range(kernel_size))
    out = sum(k[:, j, None, None, None] * rows[:, j:j + H, :, :] for j in range(kernel_size))
    return np.where(mask[:, None, None, None], _clamp(out), x)


def augment(images_u8: np.ndarray, params: ViewParams, cfg: AugmentConfig) -> np.ndarray:
    """The whole view pipeline: uint8 (N, H, W, 3) -> float (N, S, S, 3), S = cfg.image_size.

    crop+resize -> flip -> colour jitter -> grayscale -> blur (SimCLR appendix A order), each
    op as ``cfg.recipe`` says; "tf2" clamps once after grayscale (its resize is not clamped;
    data_util.preprocess_for_train clips at the end).
    """
    recipe = cfg.recipe
    x = resized_crop(to_float(images_u8), params.crop, cfg.image_size, recipe)
    x = hflip(x, params.flip)
    x = color_jitter(x, params, recipe)
    x = grayscale(x, params.grayscale, recipe)
    if recipe == "tf2":
        x = _clamp(x)
    return gaussian_blur(x, params.blur_sigma, params.blur, cfg.blur_kernel_size, recipe)


# --------------------------------------------------------------------------- layers


def batch_norm(x, weight, bias, running_mean, running_var, train: bool, momentum: float = 0.1,
               eps: float = 1e-5):
    """BatchNorm over every axis but the last (channels-last). Returns (y, new_mean, new_var).

    train: y = (x - mean_B) / sqrt(var_B + eps) * weight + bias with the biased batch
    variance; running stats move by ``momentum`` toward (mean_B, var_B * n / (n - 1)).
    eval: normalise with the running stats, which are returned unchanged.
    ``weight``/``bias`` may be None (no scale / no shift).
    """
    axes = tuple(range(x.ndim - 1))
    if train:
        n = x.size // x.shape[-1]
        mean = x.mean(axis=axes)
        var = x.var(axis=axes)
        unbiased = var * n / max(n - 1, 1)
        new_mean = (1 - momentum) * running_mean + momentum * mean
        new_var = (1 - momentum) * running_var + momentum * unbiased
    else:
        mean, var = running_mean, running_var
        new_mean, new_var = running_mean, running_var
    y = (x - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y, new_mean, new_var


def conv2d(x: np.ndarray, w: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Cross-correlation, x NHWC, w OIHW -> NHWC (no bias)."""
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))
    win = win[:, ::stride, ::stride]  # (N, Ho, Wo, C, kh, kw)
    return np.einsum("nhwcij,ocij->nhwo", win, w, optimize=True)


def max_pool(x: np.ndarray, kernel: int = 3, stride: int = 2, padding: int = 1) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, (kernel, kernel), axis=(1, 2))
    return win[:, ::stride, ::stride].max(axis=(-2, -1))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _bn_named(x, weights, prefix, train, momentum, eps, updates):
    """Apply the BN stored under ``prefix`` and record its new buffers in ``updates``."""
    y, m, v = batch_norm(x, weights.get(f"{prefix}.weight"), weights.get(f"{prefix}.bias"),
                         weights[f"{prefix}.running_mean"], weights[f"{prefix}.running_var"],
                         train, momentum, eps)
    if train:
        updates[f"{prefix}.running_mean"] = m
        updates[f"{prefix}.running_var"] = v
        updates[f"{prefix}.num_batches_tracked"] = np.asarray(
            weights[f"{prefix}.num_batches_tracked"]) + 1
    return y


def block(x, weights, spec: BlockSpec, train: bool, momentum: float = 0.1, eps: float = 1e-5):
    """One residual block (basic or bottleneck, torchvision v1.5). Returns (y, bn_updates)."""
    p, up = spec.prefix, {}

    def bn(t, name):
        return _bn_named(t, weights, f"{p}.{name}", train, momentum, eps, up)

    if spec.kind == "basic":
        out = relu(bn(conv2d(x, weights[f"{p}.conv1.weight"], spec.stride, 1), "bn1"))
        out = bn(conv2d(out, weights[f"{p}.conv2.weight"], 1, 1), "bn2")
    else:
        out = relu(bn(conv2d(x, weights[f"{p}.conv1.weight"]), "bn1"))
        out = relu(bn(conv2d(out, weights[f"{p}.conv2.weight"], spec.stride, 1), "bn2"))
        out = bn(conv2d(out, weights[f"{p}.conv3.weight"]), "bn3")
    if spec.downsample:
        short = bn(conv2d(x, weights[f"{p}.downsample.0.weight"], spec.stride, 0), "downsample.1")
    else:
        short = x
    return relu(out + short), up


def encoder(x, weights, cfg: ModelConfig, train: bool):
    """ResNet trunk f: NHWC images -> h (N, feature_dim) after global average pooling.
    Returns (h, bn_updates)."""
    lay = encoder_layout(cfg)
    up: dict[str, np.ndarray] = {}
    out = conv2d(x, weights["encoder.conv1.weight"], lay.stem_stride, lay.stem_pad)
    out = relu(_bn_named(out, weights, "encoder.bn1", train, cfg.bn_momentum, cfg.bn_eps, up))
    if lay.maxpool:
        out = max_pool(out)
    for b in lay.blocks:
        out, u = block(out, weights, b, train, cfg.bn_momentum, cfg.bn_eps)
        up.update(u)
    return out.mean(axis=(1, 2)), up


def head(h, weights, cfg: ModelConfig, train: bool):
    """Projection head g: h (N, d) -> z (N, head_out). Returns (z, bn_updates)."""
    up: dict[str, np.ndarray] = {}
    n_layers = len(head_dims(cfg))
    out = h
    for i in range(n_layers):
        out = out @ weights[f"head.{i}.linear.weight"].T
        if cfg.head_bn:
            out = _bn_named(out, weights, f"head.{i}.bn", train, cfg.bn_momentum, cfg.bn_eps, up)
        else:
            out = out + weights[f"head.{i}.linear.bias"]
        if i < n_layers - 1:
            out = relu(out)
    return out, up


# --------------------------------------------------------------------------- loss


def positive_index(n2: int) -> np.ndarray:
    """Index of each row's positive in the [view1; view2] layout."""
    return (np.arange(n2) + n2 // 2) % n2


# Smallest norm a projection is divided by (tf.math.l2_normalize's and F.normalize's epsilon).


def _safe_norm(z: np.ndarray) -> np.ndarray:
    """(2N, 1): max(|z_i|, NORM_EPS), computed as sqrt(max(|z_i|^2, NORM_EPS^2))."""
    return np.sqrt(np.maximum((z * z).sum(axis=1, keepdims=True), NORM_EPS ** 2))


def nt_xent(z: np.ndarray, tau: float, reduction: str = "mean") -> float:
    """NT-Xent (SimCLR eq. 1), mean over the 2N ordered positive pairs.

    ``reduction`` "tf2" returns the official objective.py's value instead: the two directions'
    losses summed per image and averaged over the N images, exactly 2x the mean
    (:func:`simclr_xb.config.loss_scale`).

    l(i, j) = -log( exp(sim(z_i, z_j)/tau) / sum_{k != i} exp(sim(z_i, z_k)/tau) ),
    sim(u, v) = u.v / (|u| |v|). z: (2N, d), positive of i is (i + N) mod 2N.
    (The official tf2 code returns 2x this value: it sums both directions and divides by N.)
    Rows are normalised as z / max(|z|, NORM_EPS) (as tf.math.l2_normalize and
    torch.nn.functional.normalize do), so an all-zero row gives a finite loss, not NaN.
    """
    u = z / _safe_norm(z)
    s = u @ u.T / tau
    np.fill_diagonal(s, -np.inf)
    m = s.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
    pos = s[np.arange(len(z)), positive_index(len(z))]
    return float(loss_scale(reduction) * np.mean(lse - pos))


def nt_xent_grad(z: np.ndarray, tau: float, reduction: str = "mean") -> np.ndarray:
    """Analytic dL/dz of :func:`nt_xent`, (2N, d).

    With u = z/|z|, s = u u^T / tau, P = softmax over k != i, Y = one-hot positives:
    G = (P - Y) / 2N, dL/du = (G + G^T) u / tau, dL/dz_i = (I - u_i u_i^T) dL/du_i / |z_i|;
    for a row with |z_i| < NORM_EPS (u_i = z_i / NORM_EPS) it is dL/du_i / NORM_EPS.
    ``reduction`` "tf2" doubles it (G = (P - Y) / N).
    """
    n2 = len(z)
    norm = _safe_norm(z)
    u = z / norm
    s = u @ u.T / tau
    np.fill_diagonal(s, -np.inf)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(n2), positive_index(n2)] -= 1.0
    g = p * (loss_scale(reduction) / n2)
    du = (g + g.T) @ u / tau
    radial = np.where(norm > NORM_EPS, (u * du).sum(axis=1, keepdims=True), 0.0)
    return (du - u * radial) / norm


def nt_xent_chunked(z: np.ndarray, tau: float, chunk: int, reduction: str = "mean") -> float:
    """The oracle of the backends' chunked NT-Xent: the EXACT :func:`nt_xent`. Chunking only
    changes the summation order and the memory, never the value; ``chunk`` is ignored here."""
    return nt_xent(z, tau, reduction)


def nt_xent_chunked_grad(z: np.ndarray, tau: float, chunk: int, reduction: str = "mean") -> np.ndarray:
    """The oracle of the chunked NT-Xent's gradient: the exact :func:`nt_xent_grad`."""
    return nt_xent_grad(z, tau, reduction)


def probe_input(h: np.ndarray) -> np.ndarray:
    """The online probe's input: h (B, d) standardised per feature over the batch,
    (h - E[h]) / sqrt(E[h^2] - E[h]^2 + 1e-5), no parameters. The backends take the moments
    over the global batch in data-parallel runs."""
    mean = h.mean(axis=0, keepdims=True)
    var = np.maximum((h * h).mean(axis=0, keepdims=True) - mean ** 2, 0.0)
    return (h - mean) / np.sqrt(var + PROBE_EPS)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy (the online probe's loss)."""
    m = logits.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    return float(np.mean(lse - logits[np.arange(len(labels)), labels]))


# --------------------------------------------------------------------------- optimiser


def lars_step(params: dict, grads: dict, momenta: dict, lr: float, cfg: OptimConfig,
              excluded: dict[str, bool]):
    """One LARS step (official SimCLR code, classic momentum). Returns (params, momenta).

    g <- g + wd w                               (unless excluded)
    trust = eta |w| / |g| if |w| > 0 and |g| > 0 (unless excluded) else 1
    v <- m v + lr trust g
    w <- w - v              (Nesterov: w <- w - (m v + lr trust g))
    Excluded (BN parameters, biases, probe): no decay and trust = 1.
    """
    new_p, new_v = {}, {}
    for name, w in params.items():
        g = grads[name]
        trust = 1.0
        if not excluded[name]:
            g = g + cfg.weight_decay * w
            wn, gn = np.linalg.norm(w), np.linalg.norm(g)
            if wn > 0 and gn > 0:
                trust = cfg.eta * wn / gn
        v = cfg.momentum * momenta[name] + lr * trust * g
        update = cfg.momentum * v + lr * trust * g if cfg.nesterov else v
        new_p[name] = w - update
        new_v[name] = v
    return new_p, new_v


# --------------------------------------------------------------------------- a whole forward


def forward(x, weights, cfg: Config | ModelConfig, train: bool):
    """Encoder then head: images NHWC -> (h, z, bn_updates)."""
    mcfg = cfg.model if isinstance(cfg, Config) else cfg
    h, up = encoder(x, weights, mcfg, train)
    z, up2 = head(h, weights, mcfg, train)
    up.update(up2)
    return h, z, up


# --------------------------------------------------------------------------- backward and training step
#
# Reverse mode for the SimCLR network, written by hand so that it can be read next to the
# forward above. Every ``*_backward`` takes the upstream gradient ``dy`` (same shape as the
# forward's output) and the forward's inputs, and returns the gradients of the inputs and
# parameters. Only training mode is differentiated (BN statistics of the batch).
#
# The network-level functions keep the forward's intermediates in a ``tape``: a plain dict
# keyed by canonical prefixes (``tape["encoder.layer1.0.bn2"] = (conv input, conv output)``),
# filled by ``*_train_forward`` and read back in reverse by ``*_backward``.


def relu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dL/dx of relu(x). ``x`` may be the relu's input or its output: the mask x > 0 is the
    same. The derivative at exactly 0 is taken as 0 (PyTorch's convention)."""
    return dy * (x > 0)


def conv2d_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, stride: int = 1,
                    padding: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dw) of :func:`conv2d`. dy (N, Ho, Wo, O), x (N, H, W, C) NHWC, w (O, C, kh, kw).

    y[n, a, b, o] = sum_{c,i,j} xp[n, a*stride + i, b*stride + j, c] w[o, c, i, j], so
    dw[o, c, i, j] = sum_{n,a,b} dy[n, a, b, o] xp[n, a*stride + i, b*stride + j, c] and
    dxp[n, a*stride + i, b*stride + j, c] += sum_o dy[n, a, b, o] w[o, c, i, j];
    dx is dxp without its padding.
    """
    kh, kw = w.shape[2:]
    N, H, W, _ = x.shape
    Ho, Wo = dy.shape[1:3]
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))
    win = win[:, ::stride, ::stride][:, :Ho, :Wo]  # (N, Ho, Wo, C, kh, kw)
    dw = np.einsum("nhwcij,nhwo->ocij", win, dy, optimize=True)
    dxp = np.zeros_like(xp)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i, i + stride * (Ho - 1) + 1, stride)
            cols = slice(j, j + stride * (Wo - 1) + 1, stride)
            dxp[:, rows, cols, :] += dy @ w[:, :, i, j]
    return dxp[:, padding:padding + H, padding:padding + W, :], dw


def batch_norm_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray | None,
                        eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dweight, dbias) of :func:`batch_norm` in training mode (channels last).

    With xhat = (x - mean_B) / sqrt(var_B + eps) over the n = x.size / C values of a channel
    and g = dy * weight (g = dy when there is no weight):
    dbias = sum dy, dweight = sum dy * xhat,
    dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var_B + eps).
    The running statistics do not depend on the loss and have no gradient.
    """
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    inv_std = 1.0 / np.sqrt(x.var(axis=axes) + eps)
    xhat = (x - mean) * inv_std
    dbias = dy.sum(axis=axes)
    dweight = (dy * xhat).sum(axis=axes)
    g = dy * weight if weight is not None else dy
    dx = (g - g.mean(axis=axes) - xhat * (g * xhat).mean(axis=axes)) * inv_std
    return dx, dweight, dbias


def max_pool_backward(dy: np.ndarray, x: np.ndarray, kernel: int = 3, stride: int = 2,
                      padding: int = 1) -> np.ndarray:
    """dx of :func:`max_pool`: each output's gradient goes to its window's argmax.

    Ties go to the FIRST maximum in row-major order of the window, which is what PyTorch's
    max_pool2d does (its kernels keep a running max with ``val > max``; the test suite checks
    this against torch autograd). With float activations ties are rare except among the
    zeros after a ReLU, whose gradient the ReLU discards anyway.
    """
    N, H, W, C = x.shape
    Ho, Wo = dy.shape[1:3]
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(xp, (kernel, kernel), axis=(1, 2))
    win = win[:, ::stride, ::stride][:, :Ho, :Wo]  # (N, Ho, Wo, C, k, k)
    arg = win.reshape(N, Ho, Wo, C, kernel * kernel).argmax(axis=-1)  # first max wins
    dxp = np.zeros_like(xp)
    for i in range(kernel):
        for j in range(kernel):
            rows = slice(i, i + stride * (Ho - 1) + 1, stride)
            cols = slice(j, j + stride * (Wo - 1) + 1, stride)
            dxp[:, rows, cols, :] += dy * (arg == i * kernel + j)
    return dxp[:, padding:padding + H, padding:padding + W, :]


def global_avg_pool_backward(dy: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """dx of ``x.mean(axis=(1, 2))``: dy (N, C) spread evenly over the H x W positions."""
    H, W = hw
    return np.broadcast_to(dy[:, None, None, :] / (H * W), (dy.shape[0], H, W, dy.shape[1])).copy()


def linear_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray):
    """(dx, dw, db) of y = x w^T + b. dy (N, out), x (N, in), w (out, in)."""
    return dy @ w, dy.T @ x, dy.sum(axis=0)


def _conv_bn_train_forward(x, weights, conv: str, bn: str, stride: int, padding: int,
                           mcfg: ModelConfig, up: dict, tape: dict):
    """conv -> BN (train); remembers (conv input, conv output) in ``tape[bn]``."""
    c = conv2d(x, weights[f"{conv}.weight"], stride, padding)
    tape[bn] = (x, c)
    return _bn_named(c, weights, bn, True, mcfg.bn_momentum, mcfg.bn_eps, up)


def _conv_bn_backward(dy, weights, conv: str, bn: str, stride: int, padding: int, eps: float,
                      tape: dict, grads: dict):
    """Backward of :func:`_conv_bn_train_forward`; writes the conv and BN grads, returns dx."""
    x, c = tape[bn]
    dc, grads[f"{bn}.weight"], dbias = batch_norm_backward(dy, c, weights.get(f"{bn}.weight"), eps)
    if f"{bn}.bias" in weights:
        grads[f"{bn}.bias"] = dbias
    dx, grads[f"{conv}.weight"] = conv2d_backward(dc, x, weights[f"{conv}.weight"], stride, padding)
    return dx


def _block_layers(spec: BlockSpec) -> list[tuple[str, str, int, int]]:
    """The main path of a block as (conv, bn, stride, padding); a ReLU follows all but the last."""
    p = spec.prefix
    if spec.kind == "basic":
        return [(f"{p}.conv1", f"{p}.bn1", spec.stride, 1), (f"{p}.conv2", f"{p}.bn2", 1, 1)]
    return [(f"{p}.conv1", f"{p}.bn1", 1, 0), (f"{p}.conv2", f"{p}.bn2", spec.stride, 1),
            (f"{p}.conv3", f"{p}.bn3", 1, 0)]


def block_train_forward(x, weights, spec: BlockSpec, mcfg: ModelConfig, up: dict, tape: dict):
    """:func:`block` in training mode, recording what :func:`block_backward` needs."""
    layers = _block_layers(spec)
    out = x
    for k, (conv, bn, stride, padding) in enumerate(layers):
        out = _conv_bn_train_forward(out, weights, conv, bn, stride, padding, mcfg, up, tape)
        if k < len(layers) - 1:
            out = relu(out)
    if spec.downsample:
        short = _conv_bn_train_forward(x, weights, f"{spec.prefix}.downsample.0",
                                       f"{spec.prefix}.downsample.1", spec.stride, 0, mcfg, up, tape)
    else:
        short = x
    tape[spec.prefix] = out + short  # input of the block's last ReLU
    return relu(tape[spec.prefix])


def block_backward(dy, weights, spec: BlockSpec, eps: float, tape: dict, grads: dict):
    """dx of one residual block; the block's parameter grads go into ``grads``."""
    d_sum = relu_backward(dy, tape[spec.prefix])  # reaches both the main path and the shortcut
    layers = _block_layers(spec)
    d = d_sum
    for k in reversed(range(len(layers))):
        conv, bn, stride, padding = layers[k]
        d = _conv_bn_backward(d, weights, conv, bn, stride, padding, eps, tape, grads)
        if k > 0:
            d = relu_backward(d, tape[bn][0])  # this conv's input is relu(previous BN)
    if spec.downsample:
        d_short = _conv_bn_backward(d_sum, weights, f"{spec.prefix}.downsample.0",
                                    f"{spec.prefix}.downsample.1", spec.stride, 0, eps, tape, grads)
    else:
        d_short = d_sum
    return d + d_short


def encoder_train_forward(x, weights, cfg: ModelConfig, tape: dict):
    """:func:`encoder` in training mode with a tape. Returns (h, bn_updates)."""
    lay = encoder_layout(cfg)
    up: dict[str, np.ndarray] = {}
    out = relu(_conv_bn_train_forward(x, weights, "encoder.conv1", "encoder.bn1", lay.stem_stride,
                                      lay.stem_pad, cfg, up, tape))
    tape["encoder.stem"] = out  # stem output after its ReLU (the max-pool's input)
    if lay.maxpool:
        out = max_pool(out)
    for b in lay.blocks:
        out = block_train_forward(out, weights, b, cfg, up, tape)
    tape["encoder.pool"] = out.shape[1:3]
    return out.mean(axis=(1, 2)), up


def encoder_backward(dh, weights, cfg: ModelConfig, tape: dict, grads: dict) -> np.ndarray:
    """Backward of :func:`encoder_train_forward`: fills ``grads``, returns dL/dx (images)."""
    lay = encoder_layout(cfg)
    d = global_avg_pool_backward(dh, tape["encoder.pool"])
    for b in reversed(lay.blocks):
        d = block_backward(d, weights, b, cfg.bn_eps, tape, grads)
    if lay.maxpool:
        d = max_pool_backward(d, tape["encoder.stem"])
    d = relu_backward(d, tape["encoder.stem"])
    return _conv_bn_backward(d, weights, "encoder.conv1", "encoder.bn1", lay.stem_stride,
                             lay.stem_pad, cfg.bn_eps, tape, grads)


def head_train_forward(h, weights, cfg: ModelConfig, tape: dict):
    """:func:`head` in training mode with a tape. Returns (z, bn_updates)."""
    up: dict[str, np.ndarray] = {}
    n_layers = len(head_dims(cfg))
    out = h
    for i in range(n_layers):
        tape[f"head.{i}.in"] = out  # for i > 0 this is relu(previous layer)
        out = out @ weights[f"head.{i}.linear.weight"].T
        if cfg.head_bn:
            tape[f"head.{i}.bn"] = out
            out = _bn_named(out, weights, f"head.{i}.bn", True, cfg.bn_momentum, cfg.bn_eps, up)
        else:
            out = out + weights[f"head.{i}.linear.bias"]
        if i < n_layers - 1:
            out = relu(out)
    return out, up


def head_backward(dz, weights, cfg: ModelConfig, tape: dict, grads: dict) -> np.ndarray:
    """Backward of :func:`head_train_forward`: fills ``grads``, returns dL/dh."""
    n_layers = len(head_dims(cfg))
    d = dz
    for i in reversed(range(n_layers)):
        if i < n_layers - 1:
            d = relu_backward(d, tape[f"head.{i + 1}.in"])
        if cfg.head_bn:
            bn = f"head.{i}.bn"
            d, grads[f"{bn}.weight"], dbias = batch_norm_backward(
                d, tape[bn], weights.get(f"{bn}.weight"), cfg.bn_eps)
            if f"{bn}.bias" in weights:  # the last layer's BN has no beta
                grads[f"{bn}.bias"] = dbias
        else:
            grads[f"head.{i}.linear.bias"] = d.sum(axis=0)
        d, grads[f"head.{i}.linear.weight"], _ = linear_backward(
            d, tape[f"head.{i}.in"], weights[f"head.{i}.linear.weight"])
    return d


def loss_and_grads(weights, x, cfg: Config):
    """NT-Xent of one training-mode forward of the 2N views and its gradients.

    x: (2N, S, S, 3) NHWC, [view 1 of images 0..N-1; view 2 of the same] (BN statistics are
    taken over all 2N). Returns (loss, grads, bn_updates): ``grads`` maps the canonical name
    of every trainable entry of encoder + head to dL/dw (same shape); ``bn_updates`` holds the
    new running_mean, running_var and num_batches_tracked of every BN. No probe.
    """
    mcfg = cfg.model
    tape: dict = {}
    h, up = encoder_train_forward(x, weights, mcfg, tape)
    z, up_head = head_train_forward(h, weights, mcfg, tape)
    up.update(up_head)
    loss = nt_xent(z, cfg.loss.temperature, cfg.loss.reduction)
    grads: dict[str, np.ndarray] = {}
    dh = head_backward(nt_xent_grad(z, cfg.loss.temperature, cfg.loss.reduction), weights, mcfg, tape,
                       grads)
    encoder_backward(dh, weights, mcfg, tape, grads)
    return loss, grads, up


def train_step(weights, momenta, images_u8, p1: ViewParams, p2: ViewParams, lr: float, cfg: Config):
    """One SimCLR step: augment both views, forward, NT-Xent, backward, LARS (no probe).

    x = [augment(images, p1); augment(images, p2)]; the trainable entries of
    ``model_specs(cfg.model)`` move by :func:`lars_step` (exclusions by kind, from the spec);
    BN buffers take their training-mode updates (num_batches_tracked + 1); any other entry of
    ``weights`` (e.g. a probe) is returned unchanged. ``momenta`` missing an entry counts as
    zeros; entries of ``momenta`` that are not trainable parameters are passed through.
    Returns (loss, new_weights, new_momenta).
    """
    x = np.concatenate([augment(images_u8, p1, cfg.augment), augment(images_u8, p2, cfg.augment)])
    loss, grads, bn_updates = loss_and_grads(weights, x, cfg)
    specs = [s for s in model_specs(cfg.model) if s.trainable]
    params = {s.name: np.asarray(weights[s.name], dtype=np.float64) for s in specs}
    excluded = {s.name: s.lars_excluded for s in specs}
    mom = {s.name: np.asarray(momenta[s.name], dtype=np.float64) if s.name in momenta
           else np.zeros(s.shape) for s in specs}
    new_params, new_mom = lars_step(params, grads, mom, lr, cfg.optim, excluded)
    new_weights = dict(weights)
    new_weights.update(new_params)
    new_weights.update(bn_updates)
    return loss, new_weights, {**momenta, **new_mom}


# --------------------------------------------------------------------------- large-image crop


def augment_cropped(views_u8: np.ndarray, params: ViewParams, cfg: AugmentConfig) -> np.ndarray:
    """The pipeline after the crop, for views (N, S, S, 3) the data workers already cut and
    resized: :func:`augment` with every box the whole S x S view (resizing to the same size is
    the identity), i.e. flip -> jitter -> grayscale -> blur from ``params``."""
    import dataclasses
    S = cfg.image_size
    whole = np.tile(np.array([[0, 0, S, S]], np.int64), (len(params), 1))
    return augment(views_u8, dataclasses.replace(params, crop=whole), cfg)


def _resample_filter(name: str):
    """Pillow's separable filters as (function, support): the triangle ("bilinear") and the
    Keys cubic with a = -0.5 ("bicubic"), both in units of output pixels before scaling."""
    if name == "bilinear":
        return (lambda t: np.maximum(0.0, 1.0 - np.abs(t))), 1.0
    if name == "bicubic":
        a = -0.5

        def cubic(t):
            t = np.abs(t)
            return np.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                            np.where(t < 2, (((t - 5) * t + 8) * t - 4) * a, 0.0))
        return cubic, 2.0
    raise ValueError(f"resample filter {name!r} is invalid: expected 'bilinear' or 'bicubic'")


def resample_matrix(in_size: int, start: float, length: float, size: int,
                    filter: str = "bilinear") -> np.ndarray:
    """(size, in_size) float64: the 1-D antialiased resize of the interval [start, start +
    length) of a line of ``in_size`` pixels to ``size`` samples (Pillow's ``resize`` with a
    ``box``): scale = length / size, the filter is widened by max(scale, 1) when shrinking,
    output o is centred at start + (o + 0.5) scale, pixel x at x + 0.5, taps limited to
    [int(centre - support + 0.5), int(centre + support + 0.5)) within the line, and each row
    normalised to sum 1."""
    fn, support = _resample_filter(filter)
    scale = length / size
    fscale = max(scale, 1.0)
    support = support * fscale
    m = np.zeros((size, in_size))
    for o in range(size):
        centre = start + (o + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        x = np.arange(lo, hi, dtype=np.float64)
        w = fn((x - centre + 0.5) / fscale)
        s = w.sum()
        m[o, lo:hi] = w / s if s != 0 else 0.0
    return m


def crop_resize_antialias(image_u8: np.ndarray, boxes: np.ndarray, size: int,
                          filter: str = "bilinear") -> np.ndarray:
    """The large-image view crop: box ``(top, left, height, width)`` of ONE decoded image
    (H, W, 3) uint8, cut out and resized to (size, size) as an image of its own with an
    antialiased separable filter (:func:`resample_matrix` over the box alone: the taps stop
    at the box's edges; rows then columns, in float64, no rounding in between)
    -> (K, size, size, 3) float64 in [0, 1] for K boxes.

    Crop, then resize, is what torchvision's ``RandomResizedCrop`` does (``F.resized_crop`` on
    a PIL image or a tensor) and what the official tf2 code does (``crop_to_bounding_box``,
    then ``tf.image.resize``). This defines what the data workers
    (:mod:`simclr_xb.data.decode`) compute for images read from files: their 8-bit resamplers
    round to uint8 (and JPEG draft mode decodes at a reduced DCT scale), which the
    conformance cases ``data.decode_crop_resize*`` bound."""
    img = np.asarray(image_u8, dtype=np.float64) / 255.0
    out = np.empty((len(boxes), size, size, img.shape[2]))
    for k, (top, left, h, w) in enumerate(np.asarray(boxes, dtype=np.int64)):
        crop = img[top:top + h, left:left + w]
        my = resample_matrix(int(h), 0.0, float(h), size, filter)
        mx_ = resample_matrix(int(w), 0.0, float(w), size, filter)
        rows = (my @ crop.reshape(int(h), -1)).reshape(size, int(w), -1)  # (size, w, 3)
        out[k] = np.einsum("px,oxc->opc", mx_, rows)
    return _clamp(out)
