"""The float64 oracle's forward formulas against independent, deliberately naive versions.

NT-Xent against a loop written from the paper's equation 1, a closed form and a grid; each
augmentation op against a per-pixel formula (hue against the standard library's colorsys);
BN, conv and max-pool against loops; network output shapes.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest

from simclr_xb import reference as R
from simclr_xb.augment import identity_params, sample_view_params, view_rng
from simclr_xb.config import AugmentConfig, Config, ModelConfig
from simclr_xb.resnet_spec import feature_dim, init_weights

# --------------------------------------------------------------------------- NT-Xent


def nt_xent_loop(z: np.ndarray, tau: float) -> float:
    """SimCLR eq. 1, literally: for each of the 2N views i with positive j,
    l(i, j) = -log( exp(sim(z_i, z_j)/tau) / sum_{k=1..2N, k != i} exp(sim(z_i, z_k)/tau) ),
    loss = mean over the 2N ordered pairs. Views 0..N-1 are the first view of images 0..N-1,
    views N..2N-1 the second view of the same images."""
    n2 = len(z)
    n = n2 // 2

    def sim(u, v):
        return float(np.dot(u, v) / (math.sqrt(np.dot(u, u)) * math.sqrt(np.dot(v, v))))

    total = 0.0
    for i in range(n2):
        j = i + n if i < n else i - n
        denominator = 0.0
        for k in range(n2):
            if k != i:
                denominator += math.exp(sim(z[i], z[k]) / tau)
        total += -math.log(math.exp(sim(z[i], z[j]) / tau) / denominator)
    return total / n2


def test_nt_xent_against_the_loop():
    z = np.random.default_rng(0).standard_normal((10, 7))
    for tau in (0.1, 0.5):
        assert R.nt_xent(z, tau) == pytest.approx(nt_xent_loop(z, tau), rel=1e-12)


@pytest.mark.parametrize("n", [2, 3, 8])
def test_nt_xent_equal_embeddings_give_log_2n_minus_1(n):
    z = np.tile(np.random.default_rng(n).standard_normal(5), (2 * n, 1))
    z *= np.arange(1, 2 * n + 1)[:, None]  # positive scaling does not change the cosine
    for tau in (0.05, 1.0):
        assert R.nt_xent(z, tau) == pytest.approx(math.log(2 * n - 1), rel=1e-12)


def test_nt_xent_is_low_for_matched_and_high_for_swapped_pairs():
    n = 4
    base = np.eye(8)[:n] * 10
    z = np.concatenate([base, base])  # each positive identical, negatives orthogonal
    good = R.nt_xent(z, 0.1)
    # exp(10) positive vs 2N - 2 = 6 negatives at exp(0): l = log(1 + 6 e^-10).
    assert good == pytest.approx(math.log(1 + 6 * math.exp(-10)), rel=1e-9)
    swapped = np.concatenate([base, base[::-1]])
    assert R.nt_xent(swapped, 0.1) > 5


def test_nt_xent_positive_layout():
    np.testing.assert_array_equal(R.positive_index(6), [3, 4, 5, 0, 1, 2])


GRID = [(n, d, tau) for n in (2, 3, 8) for d in (1, 4, 16) for tau in (0.05, 0.1, 0.5, 1.0)]


@pytest.mark.parametrize("n,d,tau", GRID)
def test_nt_xent_grid_value_and_gradient(n, d, tau):
    rng = np.random.default_rng(n * 100 + d)
    z = rng.standard_normal((2 * n, d))
    assert R.nt_xent(z, tau) == pytest.approx(nt_xent_loop(z, tau), rel=1e-10)
    g = R.nt_xent_grad(z, tau)
    assert g.shape == z.shape
    h = 1e-6
    fd = np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        fd[idx] = (R.nt_xent(zp, tau) - R.nt_xent(zm, tau)) / (2 * h)
    scale = max(np.abs(g).max(), 1e-3)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7 * scale / tau)
    # The loss depends on directions only: the gradient is orthogonal to each z_i.
    np.testing.assert_allclose((g * z).sum(axis=1), 0, atol=1e-12 * np.abs(z).max() / tau)


def test_cross_entropy_formula():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((5, 4)) * 3
    labels = np.array([0, 3, 1, 1, 2])
    want = np.mean([-math.log(math.exp(logits[i, labels[i]]) / sum(math.exp(v) for v in logits[i]))
                    for i in range(5)])
    assert R.cross_entropy(logits, labels) == pytest.approx(want, rel=1e-12)


# --------------------------------------------------------------------------- augmentation ops


def _images(n=3, h=6, w=5, seed=0):
    return np.random.default_rng(seed).random((n, h, w, 3))


def test_to_float():
    u8 = np.array([[[[0, 128, 255]]]], dtype=np.uint8)
    np.testing.assert_array_equal(R.to_float(u8), [[[[0.0, 128 / 255, 1.0]]]])
    assert R.to_float(u8).dtype == np.float64


def test_brightness_contrast_saturation_grayscale_per_pixel():
    x = _images()
    b = np.array([0.5, 1.0, 1.7])
    c = np.array([0.3, 1.2, 1.8])
    t = np.array([0.0, 0.6, 1.9])
    outs = (R.adjust_brightness(x, b), R.adjust_contrast(x, c), R.adjust_saturation(x, t),
            R.grayscale(x, np.array([True, False, True])))
    N, H, W, _ = x.shape
    for n in range(N):
        gray_mean = sum(0.299 * x[n, i, j, 0] + 0.587 * x[n, i, j, 1] + 0.114 * x[n, i, j, 2]
                        for i in range(H) for j in range(W)) / (H * W)
        for i in range(H):
            for j in range(W):
                r, g, bl = x[n, i, j]
                gray = 0.299 * r + 0.587 * g + 0.114 * bl
                for ch, v in enumerate((r, g, bl)):
                    assert outs[0][n, i, j, ch] == pytest.approx(min(max(v * b[n], 0), 1), abs=1e-15)
                    want = c[n] * v + (1 - c[n]) * gray_mean
                    assert outs[1][n, i, j, ch] == pytest.approx(min(max(want, 0), 1), abs=1e-14)
                    want = t[n] * v + (1 - t[n]) * gray
                    assert outs[2][n, i, j, ch] == pytest.approx(min(max(want, 0), 1), abs=1e-14)
                    want = gray if n != 1 else v
                    assert outs[3][n, i, j, ch] == pytest.approx(want, abs=1e-15)


def test_factor_one_is_the_identity():
    x = _images()
    one = np.ones(3)
    for fn in (R.adjust_brightness, R.adjust_contrast, R.adjust_saturation):
        np.testing.assert_allclose(fn(x, one), x, atol=1e-15)
    np.testing.assert_allclose(R.adjust_hue(x, np.zeros(3)), x, atol=1e-14)


def test_hue_against_colorsys():
    x = _images(n=4, h=5, w=5, seed=3)
    x[0, 0, 0] = [0.5, 0.5, 0.5]  # grey: hue undefined, must stay grey
    x[0, 0, 1] = [1.0, 0.0, 0.0]
    x[0, 0, 2] = [0.2, 0.7, 0.7]  # ties in the max
    delta = np.array([0.1, -0.2, 0.5, 0.37])
    out = R.adjust_hue(x, delta)
    for n in range(4):
        for i in range(5):
            for j in range(5):
                h, s, v = colorsys.rgb_to_hsv(*x[n, i, j])
                want = colorsys.hsv_to_rgb((h + delta[n]) % 1.0, s, v)
                np.testing.assert_allclose(out[n, i, j], want, atol=1e-12)
    hue = R.rgb_to_hue(x)
    for idx in np.ndindex(4, 5, 5):
        assert hue[idx] == pytest.approx(colorsys.rgb_to_hsv(*x[idx])[0], abs=1e-12)


def test_hflip():
    x = _images()
    out = R.hflip(x, np.array([True, False, True]))
    np.testing.assert_array_equal(out[0], x[0, :, ::-1])
    np.testing.assert_array_equal(out[1], x[1])
    np.testing.assert_array_equal(out[2, :, 0], x[2, :, -1])


def resized_crop_loop(x, box, size):
    """Bilinear, align_corners=False, per output pixel: the source coordinate of output o is
    (o + 0.5) * L / size - 0.5, clamped to [0, L - 1]; interpolate the two neighbours."""
    top, left, h, w = (int(v) for v in box)
    out = np.zeros((size, size, x.shape[-1]))

    def src(o, L):
        s = min(max((o + 0.5) * L / size - 0.5, 0.0), L - 1.0)
        i0 = int(math.floor(s))
        return i0, min(i0 + 1, L - 1), s - i0

    for oy in range(size):
        y0, y1, fy = src(oy, h)
        for ox in range(size):
            x0, x1, fx = src(ox, w)
            p00, p01 = x[top + y0, left + x0], x[top + y0, left + x1]
            p10, p11 = x[top + y1, left + x0], x[top + y1, left + x1]
            out[oy, ox] = (1 - fy) * ((1 - fx) * p00 + fx * p01) + fy * ((1 - fx) * p10 + fx * p11)
    return out


@pytest.mark.parametrize("size", [4, 7, 16])
def test_resized_crop_against_the_loop(size):
    x = _images(n=3, h=12, w=10, seed=4)
    boxes = np.array([[0, 0, 12, 10], [2, 3, 5, 4], [7, 1, 1, 9]])  # down-, up-sampling, 1 row
    out = R.resized_crop(x, boxes, size)
    assert out.shape == (3, size, size, 3)
    for n in range(3):
        np.testing.assert_allclose(out[n], resized_crop_loop(x[n], boxes[n], size), atol=1e-14)


def test_resized_crop_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    x = _images(n=2, h=11, w=9, seed=5)
    boxes = np.array([[1, 2, 8, 6], [0, 0, 11, 9]])
    for size in (5, 13):
        out = R.resized_crop(x, boxes, size)
        for n, (t, l, h, w) in enumerate(boxes):
            crop = torch.tensor(x[n, t:t + h, l:l + w].transpose(2, 0, 1)[None])
            want = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear",
                                                   align_corners=False, antialias=False)
            np.testing.assert_allclose(out[n], want[0].numpy().transpose(1, 2, 0), atol=1e-14)


def test_resized_crop_of_the_full_box_is_the_identity():
    x = _images(n=2, h=9, w=9)
    np.testing.assert_array_equal(R.resized_crop(x, np.array([[0, 0, 9, 9]] * 2), 9), x)


def _reflect(i, n):
    """Index of reflect padding without repeating the edge (torch 'reflect', numpy 'reflect')."""
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


def test_gaussian_blur_against_direct_2d_convolution():
    x = _images(n=3, h=8, w=7, seed=6)
    sigma = np.array([0.5, 1.3, 2.0])
    k = 5
    out = R.gaussian_blur(x, sigma, np.array([True, True, False]), k)
    r = k // 2
    for n in range(2):
        t = np.arange(-r, r + 1)
        k1 = np.exp(-t ** 2 / (2 * sigma[n] ** 2))
        k1 /= k1.sum()
        k2 = np.outer(k1, k1)
        for i in range(8):
            for j in range(7):
                acc = np.zeros(3)
                for a in range(k):
                    for b in range(k):
                        acc += k2[a, b] * x[n, _reflect(i + a - r, 8), _reflect(j + b - r, 7)]
                np.testing.assert_allclose(out[n, i, j], acc, atol=1e-14)
    np.testing.assert_array_equal(out[2], x[2])  # mask False: untouched


def test_gaussian_kernel():
    k = R.gaussian_kernel1d(np.array([0.1, 1.0, 100.0]), 5)
    np.testing.assert_allclose(k.sum(axis=1), 1)
    np.testing.assert_allclose(k, k[:, ::-1])
    assert k[0, 2] == pytest.approx(1.0)  # tiny sigma: a delta
    np.testing.assert_allclose(k[2], 0.2, atol=1e-4)  # huge sigma: a box
    unit = np.exp(-np.arange(-2, 3) ** 2 / 2)  # sigma = 1
    np.testing.assert_allclose(k[1], unit / unit.sum())


def test_color_jitter_applies_the_ops_in_each_views_order():
    x = _images(n=3, seed=7)
    p = identity_params(3, (6, 5))
    p.jitter[:] = [True, True, False]
    p.brightness[:] = 1.5
    p.contrast[:] = 0.5
    p.saturation[:] = 0.2
    p.hue[:] = 0.3
    p.jitter_order[0] = [3, 0, 2, 1]  # hue, brightness, saturation, contrast
    p.jitter_order[1] = [1, 2, 0, 3]
    out = R.color_jitter(x, p)
    ops = [lambda v: R.adjust_brightness(v, np.array([1.5])), lambda v: R.adjust_contrast(v, np.array([0.5])),
           lambda v: R.adjust_saturation(v, np.array([0.2])), lambda v: R.adjust_hue(v, np.array([0.3]))]
    for n in (0, 1):
        want = x[n:n + 1]
        for o in p.jitter_order[n]:
            want = ops[o](want)
        np.testing.assert_allclose(out[n], want[0], atol=1e-15)
    np.testing.assert_array_equal(out[2], x[2])
    # The order matters (brightness clamps before or after the contrast blend).
    assert not np.allclose(out[0], out[1])


def test_augment_runs_the_pipeline_in_order():
    images = np.random.default_rng(8).integers(0, 256, (4, 20, 24, 3), dtype=np.uint8)
    cfg = AugmentConfig(image_size=20, jitter_p=1.0, gray_p=0.5, blur_p=1.0)
    p = sample_view_params(view_rng(0, 0, 0), cfg, 4, (20, 24))
    x = R.resized_crop(R.to_float(images), p.crop, 20)
    x = R.hflip(x, p.flip)
    x = R.color_jitter(x, p)
    x = R.grayscale(x, p.grayscale)
    x = R.gaussian_blur(x, p.blur_sigma, p.blur, cfg.blur_kernel_size)
    np.testing.assert_array_equal(R.augment(images, p, cfg), x)


# --------------------------------------------------------------------------- layers


def test_batch_norm_train_eval_and_unbiased_running_var():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 3, 2)) * 3 + 1
    weight, bias = np.array([2.0, 0.5]), np.array([0.1, -1.0])
    rm, rv = np.array([0.2, -0.3]), np.array([1.5, 0.7])
    y, m, v = R.batch_norm(x, weight, bias, rm, rv, True, 0.1, 1e-5)
    flat = x.reshape(-1, 2)
    n = len(flat)
    for c in range(2):
        mu = sum(flat[:, c]) / n
        var_b = sum((flat[:, c] - mu) ** 2) / n
        want = (x[..., c] - mu) / math.sqrt(var_b + 1e-5) * weight[c] + bias[c]
        np.testing.assert_allclose(y[..., c], want, rtol=1e-12, atol=1e-12)
        assert m[c] == pytest.approx(0.9 * rm[c] + 0.1 * mu, rel=1e-12)
        assert v[c] == pytest.approx(0.9 * rv[c] + 0.1 * var_b * n / (n - 1), rel=1e-12)  # unbiased
    # Eval: the running statistics normalise and come back unchanged.
    y, m2, v2 = R.batch_norm(x, weight, bias, rm, rv, False, 0.1, 1e-5)
    np.testing.assert_allclose(y, (x - rm) / np.sqrt(rv + 1e-5) * weight + bias, rtol=1e-12)
    assert m2 is rm and v2 is rv
    # No affine parameters.
    y, _, _ = R.batch_norm(x, None, None, rm, rv, True)
    np.testing.assert_allclose(y.reshape(-1, 2).mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(y.reshape(-1, 2).var(axis=0), 1, rtol=1e-5)


def test_batch_norm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    x = rng.standard_normal((5, 4, 4, 3))
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.random(3) + 0.5
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    ty = torch.nn.functional.batch_norm(torch.tensor(x.transpose(0, 3, 1, 2)), trm, trv, torch.tensor(w),
                                        torch.tensor(b), True, 0.1, 1e-5)
    y, m, v = R.batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
    np.testing.assert_allclose(y, ty.numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m, trm.numpy(), rtol=1e-13)
    np.testing.assert_allclose(v, trv.numpy(), rtol=1e-13)


def conv2d_loop(x, w, stride, padding):
    N, H, W, C = x.shape
    O, _, kh, kw = w.shape
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (W + 2 * padding - kw) // stride + 1
    out = np.zeros((N, Ho, Wo, O))
    for n in range(N):
        for a in range(Ho):
            for b in range(Wo):
                for o in range(O):
                    acc = 0.0
                    for c in range(C):
                        for i in range(kh):
                            for j in range(kw):
                                yy, xx = a * stride + i - padding, b * stride + j - padding
                                if 0 <= yy < H and 0 <= xx < W:
                                    acc += x[n, yy, xx, c] * w[o, c, i, j]
                    out[n, a, b, o] = acc
    return out


@pytest.mark.parametrize("stride,padding,k", [(1, 0, 3), (1, 1, 3), (2, 1, 3), (2, 3, 7), (2, 0, 1)])
def test_conv2d_against_the_loop(stride, padding, k):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 7, 6, 3))
    w = rng.standard_normal((2, 3, k, k))
    np.testing.assert_allclose(R.conv2d(x, w, stride, padding), conv2d_loop(x, w, stride, padding),
                               rtol=1e-12, atol=1e-12)


def test_max_pool_against_the_loop():
    x = np.random.default_rng(12).standard_normal((2, 7, 8, 2))
    out = R.max_pool(x)
    assert out.shape == (2, 4, 4, 2)
    for idx in np.ndindex(*out.shape):
        n, a, b, c = idx
        window = [x[n, y, z, c] for y in range(2 * a - 1, 2 * a + 2) for z in range(2 * b - 1, 2 * b + 2)
                  if 0 <= y < 7 and 0 <= z < 8]
        assert out[idx] == max(window)


def test_relu():
    np.testing.assert_array_equal(R.relu(np.array([-1.0, 0.0, 2.0])), [0.0, 0.0, 2.0])


# --------------------------------------------------------------------------- networks


@pytest.mark.parametrize("arch,width,cifar,hw,feat", [
    ("resnet18", 0.125, True, 8, 64), ("resnet18", 0.125, False, 32, 64), ("resnet34", 0.125, False, 16, 64),
    ("resnet50", 0.0625, False, 16, 128), ("resnet50", 0.0625, True, 8, 128)])
def test_encoder_and_head_shapes(arch, width, cifar, hw, feat):
    mcfg = ModelConfig(arch=arch, width=width, cifar_stem=cifar, head_out=24)
    assert feature_dim(mcfg) == feat
    w = init_weights(mcfg, 0)
    x = np.random.default_rng(13).random((4, hw, hw, 3))
    h, z, up = R.forward(x, w, Config(model=mcfg), train=True)
    assert h.shape == (4, feat) and z.shape == (4, 24)
    assert (h >= 0).all() and np.isfinite(z).all()  # h is an average of ReLU outputs
    bn_names = {n.rsplit(".", 1)[0] for n in w if n.endswith("running_mean")}
    assert set(up) == {f"{b}.{k}" for b in bn_names for k in ("running_mean", "running_var",
                                                              "num_batches_tracked")}
    h2, z2, up2 = R.forward(x, w, mcfg, train=False)  # a ModelConfig works as well
    assert up2 == {} and h2.shape == h.shape and z2.shape == z.shape


def test_head_without_bn_and_eval_mode_is_per_sample():
    mcfg = ModelConfig(arch="resnet18", width=0.125, cifar_stem=True, head_bn=False, head_out=8)
    w = init_weights(mcfg, 1)
    for k in w:
        if k.endswith("linear.bias"):
            w[k] = np.full(w[k].shape, 0.1)
    h = np.random.default_rng(14).random((5, 64))
    z, up = R.head(h, w, mcfg, True)
    want = np.maximum(h @ w["head.0.linear.weight"].T + 0.1, 0) @ w["head.1.linear.weight"].T + 0.1
    np.testing.assert_allclose(z, want, rtol=1e-12)
    assert up == {}
    # In eval mode the forward of one image does not depend on the rest of the batch.
    mcfg_bn = ModelConfig(arch="resnet18", width=0.125, cifar_stem=True)
    w = init_weights(mcfg_bn, 2)
    x = np.random.default_rng(15).random((3, 8, 8, 3))
    _, z_all, _ = R.forward(x, w, mcfg_bn, False)
    _, z_one, _ = R.forward(x[1:2], w, mcfg_bn, False)
    np.testing.assert_allclose(z_all[1:2], z_one, rtol=1e-12, atol=1e-15)
