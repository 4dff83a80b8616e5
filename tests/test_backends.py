"""Both backends against the float64 numpy oracle (simclr_xb.reference), component by component,
and the Trainer's backend-independent behaviour (canonical state, learning, probe, determinism,
state round trips, errors), through each backend's numpy api (simclr_xb.backend.get_backend).

Every test takes the ``api`` fixture, parametrised over the backends (ids "torch", "mlx"); a
backend that is not installed skips its parameter. Inputs are made in float64, rounded once to
the tested dtype, and the oracle sees the float64 inputs. Every tolerance against the oracle is
``conformance/tolerances.py``'s ``tolerance_for(case, dtype)`` with the rule of the conformance
suite (``|ours - ref| <= atol + rtol * |ref|`` element by element, simclr_xb.conformance.compare);
exactness checks (bitwise identities, closed forms in float64) keep their own atol 0 / 1e-15.
Tests about one framework only (torch.compile, MLX compile, autograd cross-checks, devices,
bfloat16) are in tests/test_torch_backend.py and tests/test_mlx_backend.py.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from simclr_xb import reference as R
from simclr_xb.augment import identity_params, sample_pair, sample_view_params
from simclr_xb.backend import API_FUNCTIONS, BACKENDS, BackendUnavailable, get_backend
from simclr_xb.config import AugmentConfig, Config, LossConfig, ModelConfig, OptimConfig, TrainConfig
from simclr_xb.conformance.compare import compare
from simclr_xb.conformance.tolerances import tolerance_for
from simclr_xb.resnet_spec import encoder_layout, feature_dim, init_weights, model_specs

DTYPES = ("float32", "float64")
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(params=BACKENDS, scope="module")
def api(request):
    try:
        return get_backend(request.param)
    except BackendUnavailable as e:
        pytest.skip(str(e))


def cast(a, dtype):
    a = np.asarray(a)
    return a.astype(dtype) if a.dtype.kind == "f" else a


def cast_weights(w, dtype):
    return {k: cast(v, dtype) for k, v in w.items()}


def max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0


def check(case, dtype, ours, ref, what=""):
    """``ours`` against the oracle at the conformance tolerance of ``case`` in ``dtype``."""
    tol = tolerance_for(case, dtype)
    c = compare(ours, ref, tol)
    assert c.passed, (f"{case} {dtype} {what}: max abs {c.max_abs:.3g} over atol {tol.atol:g} + rtol "
                      f"{tol.rtol:g} |ref| at {c.worst} ({c.detail})")


def check_updates(case, dtype, ours, ref, weights=None):
    """BN updates: the same keys, num_batches_tracked exact (and one more than before)."""
    assert set(ours) == set(ref), sorted(set(ours) ^ set(ref))
    for k in ref:
        if k.endswith("num_batches_tracked"):
            assert int(ours[k]) == int(ref[k]), k
            if weights is not None:
                assert int(ours[k]) == int(weights[k]) + 1, k
        else:
            check(case, dtype, ours[k], ref[k], k)


def images_u8(rng, n, h, w, levels=None):
    if levels is not None:
        return rng.choice(np.asarray(levels, np.uint8), size=(n, h, w, 3))
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def floats(rng, n=6, h=12, w=14, levels=None):
    return images_u8(rng, n, h, w, levels) / 255.0


def test_api_has_every_interface_function(api):
    for name in API_FUNCTIONS + ("available", "version", "devices", "Trainer"):
        assert callable(getattr(api, name, None)), name
    assert api.available() and "cpu" in api.devices()
    assert api.version().startswith(api.__name__.split(".")[-2])


# =========================================================================== augmentation

AUG = AugmentConfig(image_size=16, strength=1.0, blur_p=0.5)


def _check_image(api, case, dtype, out, ref):
    assert out.shape == ref.shape
    if api.__name__ == "simclr_xb.backends.mlx.api":
        assert out.dtype == np.dtype(dtype)  # the torch api widens its outputs to float64
    check(case, dtype, out, ref)
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_to_float(api, dtype):
    u8 = images_u8(np.random.default_rng(0), 2, 5, 6)
    out = api.to_float(u8, dtype)
    _check_image(api, "augment.full.16px", dtype, out, R.to_float(u8))


CROP_BOXES = {
    "random": None,
    "edges": np.array([[0, 0, 1, 1], [11, 13, 1, 1], [3, 5, 2, 7], [0, 0, 12, 14], [6, 0, 6, 1],
                       [0, 13, 12, 1]]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("boxes", ["random", "edges"])
@pytest.mark.parametrize("size", [5, 16, 32])  # downsample, upsample, upsample 2.3x
def test_resized_crop(api, dtype, boxes, size):
    rng = np.random.default_rng(1)
    x = floats(rng)
    crop = CROP_BOXES[boxes]
    if crop is None:
        crop = sample_view_params(rng, AUG, 6, (12, 14)).crop
    out = api.resized_crop(cast(x, dtype), crop, size, dtype)
    assert out.shape == (6, size, size, 3)
    _check_image(api, "augment.resized_crop" + (".edge_boxes" if boxes == "edges" else ""), dtype, out,
                 R.resized_crop(x, crop, size))
    if boxes == "edges":  # a 1-pixel box is that pixel everywhere, bitwise
        for i, (t, left) in ((0, (0, 0)), (1, (11, 13))):
            np.testing.assert_array_equal(out[i], np.broadcast_to(cast(x, dtype)[i, t, left], (size, size, 3)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_whole_image_at_its_own_size_is_the_identity(api, dtype):
    x = cast(floats(np.random.default_rng(2), h=16, w=16), dtype)
    same = api.resized_crop(x, np.tile([[0, 0, 16, 16]], (6, 1)), 16, dtype)
    np.testing.assert_array_equal(same, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["hflip", "grayscale"])
def test_masked_op(api, dtype, op):
    """hflip / grayscale on the views whose mask is set; the others untouched, bitwise."""
    x = floats(np.random.default_rng(3))
    mask = np.array([1, 0, 1, 1, 0, 1], bool)
    out = getattr(api, op)(cast(x, dtype), mask, dtype)
    _check_image(api, f"augment.{op}", dtype, out, getattr(R, op)(x, mask))
    np.testing.assert_array_equal(out[[1, 4]], cast(x, dtype)[[1, 4]])
    np.testing.assert_array_equal(getattr(api, op)(x, np.zeros(6, bool), "float64"), x)
    if op == "grayscale":
        assert np.all(out[0, ..., 0] == out[0, ..., 2]) and np.all(out[0, ..., 0] == out[0, ..., 1])


COLOR_OPS = ["adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue"]


def _factors(op, rng, n=6):
    if op == "adjust_hue":  # extremes, zero, and random shifts
        return np.concatenate([[-0.5, 0.5, 0.0], rng.uniform(-0.5, 0.5, n - 3)])
    return np.concatenate([[0.0, 2.0, 1.0], rng.uniform(0.2, 1.8, n - 3)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", COLOR_OPS)
@pytest.mark.parametrize("levels", [None, (0, 64, 128, 255)], ids=["random", "grey_and_ties"])
def test_color_op(api, dtype, op, levels):
    rng = np.random.default_rng(4)
    x = floats(rng, levels=levels)
    f = _factors(op, rng)
    out = getattr(api, op)(cast(x, dtype), cast(f, dtype), dtype)
    case = f"augment.{op}" + (".grey_and_ties" if op == "adjust_hue" and levels else "")
    _check_image(api, case, dtype, out, getattr(R, op)(x, f))


def test_hue_zero_shift_and_grey_pixels(api):
    """A zero shift reproduces the image; grey pixels (chroma 0) never change."""
    x = floats(np.random.default_rng(5), levels=(0, 51, 204, 255))
    np.testing.assert_allclose(api.adjust_hue(x, np.zeros(6), "float64"), x, atol=1e-15)
    grey = np.repeat(x[..., :1], 3, axis=-1)
    np.testing.assert_array_equal(api.adjust_hue(grey, np.full(6, 0.3), "float64"), grey)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hue_every_tie_pattern(api, dtype):
    """Every tie pattern of the max channel, grey pixels and pure colours; half a turn twice is
    the identity."""
    px = np.array([[0, 0, 0], [1, 1, 1], [.5, .5, .5], [1, 1, 0], [1, 0, 1], [0, 1, 1], [.2, .8, .8],
                   [.8, .8, .2], [.8, .2, .8], [1, 0, 0], [0, 1, 0], [0, 0, 1], [.3, .6, .6]])
    x = cast(np.tile(px[None, :, None, :], (5, 1, 2, 1)), dtype)  # (5, 13, 2, 3)
    delta = cast([0.0, 0.5, -0.5, 0.1, -0.2], dtype)
    out = api.adjust_hue(x, delta, dtype)
    check("augment.adjust_hue.grey_and_ties", dtype, out, R.adjust_hue(cast(x, "float64"), cast(delta, "float64")))
    grey = px.max(1) == px.min(1)
    tol = tolerance_for("augment.adjust_hue.grey_and_ties", dtype)
    np.testing.assert_allclose(out[:, grey], x[:, grey], atol=tol.atol, rtol=tol.rtol)
    np.testing.assert_allclose(out[0], x[0], atol=tol.atol, rtol=tol.rtol)
    back = api.adjust_hue(out[1:2], delta[1:2], dtype)
    # two roundings of the op: twice its tolerance
    np.testing.assert_allclose(back, x[1:2], atol=2 * tol.atol, rtol=2 * tol.rtol)


def _jitter_params(rng, n, jitter=None):
    p = sample_view_params(rng, AugmentConfig(image_size=12, jitter_p=0.8), n, (12, 14))
    if jitter is not None:
        p.jitter = np.asarray(jitter, bool)
    return p


@pytest.mark.parametrize("dtype", DTYPES)
def test_color_jitter(api, dtype):
    rng = np.random.default_rng(6)
    x = floats(rng, n=12)
    p = _jitter_params(rng, 12, [1] * 10 + [0, 0])
    p.jitter_order[:4] = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]]
    out = api.color_jitter(cast(x, dtype), p, dtype)
    _check_image(api, "augment.color_jitter", dtype, out, R.color_jitter(x, p))
    np.testing.assert_array_equal(out[10:], cast(x, dtype)[10:])  # views without jitter untouched
    # reversing every view's order changes the result, and still matches the oracle
    rev = dataclasses.replace(p, jitter_order=p.jitter_order[:, ::-1].copy())
    out_rev = api.color_jitter(cast(x, dtype), rev, dtype)
    assert max_err(out_rev[:10], out[:10]) > 1e-3
    check("augment.color_jitter", dtype, out_rev, R.color_jitter(x, rev))


def test_color_jitter_order_matters(api):
    """Same factors, two orders: different images (so the per-view order is really applied)."""
    rng = np.random.default_rng(7)
    x = floats(rng, n=2)
    p = _jitter_params(rng, 2, [1, 1])
    p.brightness[:], p.contrast[:], p.saturation[:], p.hue[:] = 1.6, 0.4, 1.7, 0.2
    p.jitter_order[0], p.jitter_order[1] = [0, 1, 2, 3], [3, 2, 1, 0]
    out = api.color_jitter(np.concatenate([x[:1], x[:1]]), p, "float64")
    assert max_err(out[0], out[1]) > 1e-2


@pytest.mark.parametrize("dtype", DTYPES)
def test_color_jitter_all_off_is_identity(api, dtype):
    rng = np.random.default_rng(8)
    x = cast(floats(rng), dtype)
    p = _jitter_params(rng, 6, np.zeros(6, bool))
    np.testing.assert_array_equal(api.color_jitter(x, p, dtype), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_gaussian_blur(api, dtype, kernel):
    x = floats(np.random.default_rng(10))
    sigma = np.array([0.1, 0.5, 2.0, 10.0, 1.0, 1.3])  # extremes: ~identity and ~box
    mask = np.array([1, 1, 1, 1, 0, 1], bool)
    out = api.gaussian_blur(cast(x, dtype), cast(sigma, dtype), mask, kernel, dtype)
    _check_image(api, "augment.gaussian_blur.k5", dtype, out, R.gaussian_blur(x, sigma, mask, kernel))
    np.testing.assert_array_equal(out[4], cast(x, dtype)[4])


@pytest.mark.parametrize("dtype", DTYPES)
def test_blur_sigma_extremes(api, dtype):
    x = floats(np.random.default_rng(2), n=4, h=24, w=24)
    xc = cast(x, dtype)
    sigma = np.array([0.1, 2.0, 50.0, 1e-3])
    mask = np.ones(4, bool)
    for k in (3, 23):
        out = api.gaussian_blur(xc, cast(sigma, dtype), mask, k, dtype)
        case = f"augment.gaussian_blur.k{5 if k == 3 else 23}"
        check(case, dtype, out, R.gaussian_blur(x, cast(cast(sigma, dtype), "float64"), mask, k), f"k{k}")
        check(case, dtype, out[3], x[3], "sigma -> 0 is the identity")
    assert out[2].std() < x[2].std() / 3  # huge sigma: a box filter of side k
    np.testing.assert_array_equal(api.gaussian_blur(xc, cast(sigma, dtype), np.zeros(4, bool), 5, dtype), xc)


AUG_CONFIGS = {
    "16px_blur": (AugmentConfig(image_size=16, strength=1.0, blur_p=0.5), (20, 24)),
    "32px_cifar": (AugmentConfig(image_size=32, strength=0.5, blur_p=0.0), (32, 32)),
    "32px_blur_k3": (dataclasses.replace(AUG, image_size=32, blur_p=1.0), (40, 36)),
    "24px_all_on": (AugmentConfig(image_size=24, flip_p=1.0, jitter_p=1.0, gray_p=1.0, blur_p=1.0), (30, 26)),
    "12px_all_off": (AugmentConfig(image_size=12, flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0), (9, 15)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(AUG_CONFIGS))
def test_augment_pipeline(api, dtype, name):
    cfg, hw = AUG_CONFIGS[name]
    rng = np.random.default_rng(11)
    u8 = images_u8(rng, 8, *hw)
    p = sample_view_params(rng, cfg, 8, hw)
    out = api.augment(u8, p, cfg, dtype)
    assert out.shape == (8, cfg.image_size, cfg.image_size, 3)
    _check_image(api, "augment.full.16px", dtype, out, R.augment(u8, p, cfg))


def test_identity_view_is_a_plain_resize(api):
    """The evaluation view at the image's own size is u8 / 255 (bitwise on MLX; torch's
    resize rounds within 1e-15)."""
    u8 = images_u8(np.random.default_rng(13), 3, 10, 10)
    out = api.augment(u8, identity_params(3, (10, 10)), AugmentConfig(image_size=10), "float64")
    np.testing.assert_allclose(out, u8 / 255.0, rtol=0, atol=1e-15)
    if api.__name__ == "simclr_xb.backends.mlx.api":
        np.testing.assert_array_equal(out, u8 / 255.0)


# =========================================================================== layers


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape,affine", [((4, 5, 5, 6), "both"), ((8, 6), "both"), ((8, 6), "no_bias"),
                                          ((3, 4, 4, 5), "none"), ((3, 2, 2, 4), "none")])
def test_batch_norm(api, dtype, train, shape, affine):
    rng = np.random.default_rng(14)
    c = shape[-1]
    x = rng.normal(0.5, 2.0, shape)
    w = None if affine == "none" else rng.uniform(0.5, 1.5, c)
    b = rng.normal(0, 0.5, c) if affine == "both" else None
    rm, rv = rng.normal(0, 0.3, c), rng.uniform(0.5, 2.0, c)
    args = (x, w, b, rm, rv, train, 0.1, 1e-5)
    args = tuple(cast(cast(a, dtype), "float64") if isinstance(a, np.ndarray) else a for a in args)
    ours = api.batch_norm(*[cast(a, dtype) if isinstance(a, np.ndarray) else a for a in args], dtype)
    case = f"bn.{'train' if train else 'eval'}.{'4d' if len(shape) == 4 else '2d_no_beta'}"
    for i, (o, r) in enumerate(zip(ours, R.batch_norm(*args))):
        check(case, dtype, o, r, f"output {i}")
    if train:  # closed form: the UNBIASED batch variance goes into running_var (PyTorch)
        axes = tuple(range(len(shape) - 1))
        check(case, dtype, ours[2], 0.9 * args[4] + 0.1 * args[0].var(axis=axes, ddof=1), "unbiased")
        assert max_err(ours[2], 0.9 * args[4] + 0.1 * args[0].var(axis=axes)) > 1e-3


def test_batch_norm_keeps_unbiased_running_var(api):
    """running_var moves toward the UNBIASED batch variance (PyTorch's convention), float64."""
    x = np.random.default_rng(15).normal(size=(3, 2, 2, 4))
    _, m, v = api.batch_norm(x, None, None, np.zeros(4), np.ones(4), True, 0.1, 1e-5, "float64")
    flat = x.reshape(-1, 4)
    np.testing.assert_allclose(v, 0.9 + 0.1 * flat.var(axis=0, ddof=1), rtol=1e-14)
    np.testing.assert_allclose(m, 0.1 * flat.mean(axis=0), rtol=1e-14)


CONVS = {"3x3s1p1": (3, 5, 3, 1, 1), "3x3s2p1": (4, 6, 3, 2, 1), "7x7s2p3": (3, 4, 7, 2, 3),
         "1x1s2p0": (5, 7, 1, 2, 0), "3x3s1p0": (2, 3, 3, 1, 0)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CONVS))
def test_conv2d(api, dtype, name):
    cin, cout, k, stride, pad = CONVS[name]
    rng = np.random.default_rng(16)
    x = cast(rng.normal(size=(2, 9, 9, cin)), dtype)
    w = cast(rng.normal(0, 1 / math.sqrt(cin * k * k), (cout, cin, k, k)), dtype)
    case = f"conv2d.{name}" if name != "3x3s1p0" else "conv2d.3x3s1p1"
    check(case, dtype, api.conv2d(x, w, stride, pad, dtype), R.conv2d(cast(x, "float64"), cast(w, "float64"),
                                                                      stride, pad))


R18 = ModelConfig(arch="resnet18", width=0.125, cifar_stem=True, head_out=16)
R18_IN = dataclasses.replace(R18, cifar_stem=False)
R50 = ModelConfig(arch="resnet50", width=0.125, cifar_stem=False, head_out=16)
R50_C = dataclasses.replace(R50, cifar_stem=True)


def perturbed_weights(cfg, seed=0, num_classes=None):
    """init_weights with non-trivial BN parameters and running statistics (eval mode matters)."""
    rng = np.random.default_rng(seed)
    w = init_weights(cfg, seed, num_classes)
    for s in model_specs(cfg, num_classes):
        if s.kind == "bn.weight":
            w[s.name] = rng.uniform(0.5, 1.5, s.shape)
        elif s.kind in ("bn.bias", "bn.running_mean", "linear.bias"):
            w[s.name] = rng.normal(0, 0.2, s.shape)
        elif s.kind == "bn.running_var":
            w[s.name] = rng.uniform(0.5, 2.0, s.shape)
    return w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("cfg", [R18, R50], ids=["resnet18", "resnet50"])
def test_every_block(api, dtype, train, cfg):
    rng = np.random.default_rng(17)
    w = cast_weights(cast_weights(perturbed_weights(cfg), dtype), "float64")
    kind = "basic" if cfg.arch == "resnet18" else "bottleneck"
    case = f"block.{kind}.stride2.{'train' if train else 'eval'}"
    for spec in encoder_layout(cfg).blocks:
        x = cast(cast(np.maximum(rng.normal(size=(4, 8, 8, spec.in_ch)), 0), dtype), "float64")
        y, up = api.block(cast(x, dtype), cast_weights(w, dtype), spec, train, 0.1, 1e-5, dtype)
        ry, rup = R.block(x, w, spec, train, 0.1, 1e-5)
        check(case, dtype, y, ry, spec.prefix)
        check_updates(case, dtype, up, rup, w)
        assert bool(up) == train


ENCODERS = {"resnet18_cifar_16px": (R18, 16, 4), "resnet18_imagenet_32px": (R18_IN, 32, 8),
            "resnet50_cifar_16px": (R50_C, 16, 4), "resnet50_imagenet_64px": (R50, 64, 4)}
ENCODER_CASE = {"resnet18_cifar_16px": "encoder.resnet18_cifar",
                "resnet18_imagenet_32px": "encoder.resnet18_imagenet_stem",
                "resnet50_cifar_16px": "encoder.resnet50_cifar",
                "resnet50_imagenet_64px": "encoder.resnet50_imagenet_stem"}


def encoder_inputs(name, dtype, seed, num_classes=None):
    """(cfg, n, x, weights) of ENCODERS[name], rounded to ``dtype`` and held in float64."""
    cfg, size, n = ENCODERS[name]
    x = cast(cast(np.random.default_rng(seed).random((n, size, size, 3)), dtype), "float64")
    return cfg, n, x, cast_weights(cast_weights(perturbed_weights(cfg, num_classes=num_classes), dtype), "float64")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder(api, dtype, train, name):
    cfg, n, x, w = encoder_inputs(name, dtype, 18)
    h, up = api.encoder(cast(x, dtype), cast_weights(w, dtype), cfg, train, dtype)
    rh, rup = R.encoder(x, w, cfg, train)
    assert h.shape == (n, feature_dim(cfg)) and bool(up) == train
    case = f"{ENCODER_CASE[name]}.{'train' if train else 'eval'}"
    check(case, dtype, h, rh, "h")
    check_updates(case, dtype, up, rup, w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", list(ENCODERS))
def test_forward(api, dtype, train, name):
    """encoder + head in one call; the probe entries of the weights are ignored."""
    cfg, n, x, w = encoder_inputs(name, dtype, 20, num_classes=3)
    h, z, up = api.forward(cast(x, dtype), cast_weights(w, dtype), cfg, train, dtype)
    rh, rz, rup = R.forward(x, w, cfg, train)
    assert h.shape == (n, feature_dim(cfg)) and z.shape == (n, cfg.head_out)
    mode = "train" if train else "eval"
    case = f"{ENCODER_CASE[name]}.{mode}"
    check(case, dtype, h, rh, "h")
    # z carries the encoder's float32 error through the head: its own entry when training
    check(f"forward.{ENCODER_CASE[name].split('.')[1]}.{mode}" if train else f"head.bn.{mode}", dtype, z, rz, "z")
    check_updates(case, dtype, up, rup, w)


HEADS = {"bn_2layer": R18, "bn_3layer": dataclasses.replace(R18, head_layers=3, head_hidden=24),
         "plain_3layer": dataclasses.replace(R18, head_bn=False, head_layers=3, head_hidden=24),
         "plain_2layer": dataclasses.replace(R18, head_bn=False),
         "plain_1layer": dataclasses.replace(R18, head_bn=False, head_layers=1)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", list(HEADS))
def test_head(api, dtype, train, name):
    cfg = HEADS[name]
    rng = np.random.default_rng(19)
    h = cast(cast(np.maximum(rng.normal(size=(8, feature_dim(cfg))), 0), dtype), "float64")
    w = cast_weights(cast_weights(perturbed_weights(cfg), dtype), "float64")
    z, up = api.head(cast(h, dtype), cast_weights(w, dtype), cfg, train, dtype)
    rz, rup = R.head(h, w, cfg, train)
    case = f"head.{'bn' if cfg.head_bn else 'plain_3layer'}.{'train' if train else 'eval'}"
    check(case, dtype, z, rz, "z")
    check_updates(case, dtype, up, rup, w)
    if cfg.head_bn:  # the last BN has a weight but no bias (official code: center=False)
        last = cfg.head_layers - 1
        assert f"head.{last}.bn.weight" in w and f"head.{last}.bn.bias" not in w


# =========================================================================== NT-Xent

NTX_GRID = [(1, 4, 0.5), (2, 8, 0.05), (2, 3, 0.5), (3, 5, 0.1), (4, 16, 0.1), (8, 16, 0.5),
            (8, 128, 1.0), (16, 32, 0.05)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,tau", NTX_GRID)
def test_nt_xent_value_and_grad(api, dtype, n, d, tau):
    z = cast(np.random.default_rng(21).normal(size=(2 * n, d)), dtype)
    z64 = cast(z, "float64")
    v, g = api.nt_xent(z, tau, dtype), api.nt_xent_grad(z, tau, dtype)
    assert g.shape == z.shape and np.isfinite(g).all()
    check("nt_xent.value.N2.d8.tau0.05", dtype, v, R.nt_xent(z64, tau), "value")
    check("nt_xent.grad.N2.d8.tau0.05", dtype, g, R.nt_xent_grad(z64, tau), "grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 5])
def test_nt_xent_closed_form_all_equal(api, dtype, n):
    """All embeddings equal: every logit is 1/tau, the loss is log(2N - 1)."""
    z = np.ones((2 * n, 7), dtype)
    v = api.nt_xent(z, 0.1, dtype)
    if dtype == "float64":
        assert v == pytest.approx(math.log(2 * n - 1), abs=1e-12)
    else:
        check("nt_xent.value.N2.d8.tau0.05", dtype, v, math.log(2 * n - 1))


def test_nt_xent_stable_at_low_temperature_float32(api):
    # large embeddings at tau = 0.01 and nearly identical ones at tau = 0.05: logits up to 100
    # and ~20, which float32 must not overflow
    rng = np.random.default_rng(22)
    for z, tau in ((rng.normal(size=(16, 64)) * 100, 0.01), (1 + 1e-3 * rng.normal(size=(8, 16)), 0.05)):
        z = z.astype(np.float32)
        v, g = api.nt_xent(z, tau, "float32"), api.nt_xent_grad(z, tau, "float32")
        assert math.isfinite(v) and np.isfinite(g).all()
        check("nt_xent.value.N2.d8.tau0.05", "float32", v, R.nt_xent(z.astype(np.float64), tau), f"tau {tau}")


@pytest.mark.parametrize("tau", [0.0, -0.5, float("nan")])
def test_nt_xent_rejects_bad_temperature(api, tau):
    with pytest.raises(ValueError, match="tau"):
        api.nt_xent(np.ones((4, 3), np.float32), tau, "float32")


def test_nt_xent_rejects_odd_batch(api):
    with pytest.raises(ValueError, match=r"\(2N, d\)"):
        api.nt_xent(np.ones((5, 3), np.float32), 0.1, "float32")


# =========================================================================== LARS


def lars_case(rng):
    shapes = {"encoder.conv1.weight": (4, 3, 3, 3), "head.0.linear.weight": (5, 4),
              "encoder.bn1.weight": (4,), "encoder.bn1.bias": (4,), "head.0.linear.bias": (5,),
              "zero.weight": (3, 2), "zero_grad.weight": (2, 2), "zero_both.weight": (2, 3)}
    params = {k: rng.normal(size=s) for k, s in shapes.items()}
    params["zero.weight"][:] = 0.0  # |w| = 0 -> trust 1
    params["zero_both.weight"][:] = 0.0
    grads = {k: rng.normal(0, 0.1, s) for k, s in shapes.items()}
    grads["zero_grad.weight"][:] = 0.0  # with wd = 0, |g| = 0 -> trust 1
    grads["zero_both.weight"][:] = 0.0  # |g| = 0 after decay too: trust 1, no NaN
    momenta = {k: rng.normal(0, 0.01, s) for k, s in shapes.items()}
    excluded = {k: len(s) == 1 for k, s in shapes.items()}
    return params, grads, momenta, excluded


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("wd", [0.0, 1e-4])
def test_lars_step(api, dtype, nesterov, wd):
    params, grads, momenta, excluded = lars_case(np.random.default_rng(23))
    # the oracle sees the inputs the backend sees: rounded to dtype, in float64
    params, grads, momenta = (cast_weights(cast_weights(d, dtype), "float64") for d in (params, grads, momenta))
    cfg = OptimConfig(nesterov=nesterov, weight_decay=wd, eta=1e-3, momentum=0.9)
    p, m = api.lars_step(cast_weights(params, dtype), cast_weights(grads, dtype),
                         cast_weights(momenta, dtype), 0.8, cfg, excluded, dtype)
    rp, rm = R.lars_step(params, grads, momenta, 0.8, cfg, excluded)
    case = f"lars.step.{'nesterov' if nesterov else 'classic'}"
    for k in params:
        assert np.isfinite(p[k]).all(), k
        check(case, dtype, p[k], rp[k], k)
        check(case, dtype, m[k], rm[k], f"momentum {k}")
    # excluded params are plain momentum SGD: trust 1, no decay
    want = 0.9 * momenta["encoder.bn1.bias"] + 0.8 * grads["encoder.bn1.bias"]
    check(case, dtype, m["encoder.bn1.bias"], want, "excluded: plain momentum")
    # exclusion matters: the same step with nothing excluded differs on the BN weight
    p2, _ = api.lars_step(cast_weights(params, dtype), cast_weights(grads, dtype), cast_weights(momenta, dtype),
                          0.8, cfg, {k: False for k in excluded}, dtype)
    assert max_err(p2["encoder.bn1.weight"], p["encoder.bn1.weight"]) > 1e-4


# =========================================================================== Trainer

TINY = Config(model=R18, augment=AugmentConfig(image_size=16, strength=0.5, blur_p=0.5),
              loss=LossConfig(temperature=0.5), optim=OptimConfig(lr_scaling="sqrt"),
              train=TrainConfig(batch_size=4, seed=3, channels_last=False))


def tiny(precision="float32", seed=3, **model):
    return dataclasses.replace(TINY, model=dataclasses.replace(R18, **model),
                               train=dataclasses.replace(TINY.train, precision=precision, seed=seed))


def tiny_batch(seed=0, n=4, hw=(20, 20)):
    rng = np.random.default_rng(seed)
    return images_u8(rng, n, *hw), rng.integers(0, 3, n)


def views(cfg, n, hw, step):
    return sample_pair(cfg.augment, n, hw, seed=cfg.train.seed, epoch=0, step=step)


def trainer(api, cfg=TINY, num_classes=3):
    return api.Trainer(cfg, num_classes, "cpu")


MOM = "momentum/"


@pytest.mark.parametrize("cfg", [R18, R50, HEADS["plain_3layer"]], ids=["r18", "r50", "plain_head"])
def test_state_dict_keys_are_canonical(api, cfg):
    state = api.Trainer(Config(model=cfg, train=TrainConfig(batch_size=2)), 5, "cpu").state_dict()
    specs = model_specs(cfg, 5)
    assert set(state) == {s.name for s in specs} | {MOM + s.name for s in specs if s.trainable}
    assert state["encoder.bn1.num_batches_tracked"].dtype == np.int64
    assert state["encoder.conv1.weight"].dtype == np.float32


def test_trainer_starts_from_canonical_init(api):
    sd = trainer(api).state_dict()
    for k, v in init_weights(TINY.model, TINY.train.seed, 3).items():
        want = v.astype(np.float32) if v.dtype.kind == "f" else v
        assert sd[k].dtype == want.dtype and sd[k].shape == want.shape, k  # OIHW convs
        np.testing.assert_array_equal(sd[k], want, err_msg=k)
    assert all(not sd[k].any() for k in sd if k.startswith(MOM))


def test_zero_init_residual_comes_from_the_canonical_init(api):
    st = trainer(api, tiny(zero_init_residual=True), None).state_dict()
    assert np.all(st["encoder.layer1.0.bn2.weight"] == 0) and np.all(st["encoder.layer4.1.bn2.weight"] == 0)
    assert np.all(st["encoder.layer1.0.bn1.weight"] == 1)


def test_float64_precision_state_is_float64(api):
    tr = trainer(api, tiny("float64"), None)
    assert tr.device == "cpu"
    st = tr.state_dict()
    assert st["encoder.conv1.weight"].dtype == np.float64
    assert st[MOM + "head.0.linear.weight"].dtype == np.float64
    np.testing.assert_array_equal(st["encoder.conv1.weight"], init_weights(TINY.model, 3)["encoder.conv1.weight"])


def test_train_step_matches_oracle_float64(api):
    """api.train_step vs reference.train_step: loss, weights, BN buffers, momenta."""
    images, _ = tiny_batch()
    w = init_weights(TINY.model, 3)  # torch also passes probe entries through (tests/test_torch_backend.py)
    rng = np.random.default_rng(3)
    mom = {s.name: rng.normal(0, 0.01, s.shape) for s in model_specs(TINY.model) if s.trainable}
    # (torch alone also takes a missing momentum as zeros and passes extra keys through: MLX
    # refuses both; tests/test_torch_backend.py)
    p1, p2 = views(TINY, 4, (20, 20), 0)
    loss, nw, nm = api.train_step(w, mom, images, p1, p2, 0.6, TINY, "float64")
    rloss, rw, rm = R.train_step(w, mom, images, p1, p2, 0.6, TINY)
    check("train_step.1", "float64", loss, rloss, "loss")
    assert set(nw) == set(rw) and set(nm) == set(rm)
    check("train_step.1", "float64", nw, rw, "weights")
    check("train_step.1", "float64", nm, rm, "momenta")
    assert nw["encoder.conv1.weight"].dtype == np.float64


def test_first_step_running_stats_match_oracle_forward(api):
    """After one step, the BN buffers are the oracle's train-mode forward over the 2N views."""
    cfg = tiny("float64")
    t = trainer(api, cfg, None)
    u8, _ = tiny_batch()
    p1, p2 = views(cfg, 4, (20, 20), 0)
    w0 = t.state_dict()
    t.train_step(u8, None, p1, p2, 0.5)
    x = np.concatenate([R.augment(u8, p1, cfg.augment), R.augment(u8, p2, cfg.augment)])
    _, _, rup = R.forward(x, {k: v for k, v in w0.items() if "/" not in k}, cfg.model, True)
    sd = t.state_dict()
    check_updates("train_step.1", "float64", {k: sd[k] for k in rup}, rup, w0)


def test_training_reduces_loss_on_a_fixed_batch(api):
    images, labels = tiny_batch(1, n=8, hw=(16, 16))
    cfg = dataclasses.replace(TINY, augment=AugmentConfig(image_size=16, crop_scale=(0.6, 1.0),
                                                          strength=0.3, blur_p=0.0))
    tr = trainer(api, cfg)
    p1, p2 = views(cfg, 8, (16, 16), 0)  # fixed views: the loss must go down
    out = [tr.train_step(images, labels, p1, p2, 0.5) for _ in range(20)]
    losses = [o["loss"] for o in out]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert np.mean(losses[-5:]) < 0.7 * losses[0], losses
    assert set(out[0]) == {"loss", "probe_loss", "probe_acc"}
    assert out[-1]["probe_loss"] < out[0]["probe_loss"] and 0 <= out[-1]["probe_acc"] <= 1


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_probe_step_matches_oracle_and_leaves_encoder_alone(api, precision):
    """The probe learns from detached h on [labels; labels] (plain momentum SGD, LARS-excluded);
    its loss changes no encoder/head update (bitwise, in both precisions)."""
    cfg = tiny(precision)
    images, labels = tiny_batch()
    p1, p2 = views(cfg, 4, (20, 20), 0)
    with_probe = trainer(api, cfg)
    rng = np.random.default_rng(0)
    st = with_probe.state_dict()
    st["probe.weight"] = rng.normal(0, 0.5, st["probe.weight"].shape)
    st["probe.bias"] = rng.normal(0, 0.5, st["probe.bias"].shape)
    with_probe.load_state_dict(st)
    no_labels = trainer(api, cfg)
    no_labels.load_state_dict(st)
    m = with_probe.train_step(images, labels, p1, p2, 0.5)
    m0 = no_labels.train_step(images, None, p1, p2, 0.5)
    assert set(m) == {"loss", "probe_loss", "probe_acc"} and set(m0) == {"loss"}
    assert m["loss"] == m0["loss"] and m["probe_loss"] > 0
    a, b = with_probe.state_dict(), no_labels.state_dict()
    for k in a:
        if "probe." not in k:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for k in ("probe.weight", "probe.bias", MOM + "probe.weight"):  # without labels: untouched
        np.testing.assert_array_equal(b[k], st[k].astype(b[k].dtype), err_msg=k)
    assert max_err(b["encoder.conv1.weight"], st["encoder.conv1.weight"]) > 0
    if precision != "float64":
        return
    # oracle for the probe: cross-entropy on h of the training-mode forward of the 2N views
    x = np.concatenate([R.augment(images, p1, cfg.augment), R.augment(images, p2, cfg.augment)])
    h, _, _ = R.forward(x, st, cfg, True)
    h = R.probe_input(h)  # standardised over the batch
    y = np.concatenate([labels, labels])
    logits = h @ st["probe.weight"].T + st["probe.bias"]
    check("probe.step", "float64", m["probe_loss"], R.cross_entropy(logits, y), "probe_loss")
    assert m["probe_acc"] == pytest.approx(np.mean(logits.argmax(1) == y), abs=1e-12)
    pr = np.exp(logits - logits.max(1, keepdims=True))
    pr /= pr.sum(1, keepdims=True)
    pr[np.arange(8), y] -= 1.0
    grads = {"probe.weight": pr.T @ h / 8, "probe.bias": pr.sum(0) / 8}
    zeros = {k: np.zeros_like(v) for k, v in grads.items()}
    rp, rm = R.lars_step({k: st[k] for k in grads}, grads, zeros, 0.5, cfg.optim,
                         {"probe.weight": True, "probe.bias": True})
    for k in grads:
        check("probe.step", "float64", a[k], rp[k], k)
        check("probe.step", "float64", a[MOM + k], rm[k], MOM + k)


def _three_steps(api, seed):
    cfg = tiny(seed=seed)
    tr = trainer(api, cfg)
    images, labels = tiny_batch()
    out = [tr.train_step(images, labels, *views(TINY, 4, (20, 20), s), lr) for s, lr in enumerate((0.5, 0.4, 0.3))]
    return out, tr.state_dict()


def test_determinism_same_seed_same_run(api):
    """Same seed -> identical metrics and state; another seed -> another initialisation."""
    a, sa = _three_steps(api, 5)
    b, sb = _three_steps(api, 5)
    assert a == b
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    c, _ = _three_steps(api, 6)
    assert c[0]["loss"] != a[0]["loss"]


def test_state_dict_round_trip_is_exact_and_resumes_identically(api):
    images, labels = tiny_batch()
    a = trainer(api)
    for s in range(2):
        a.train_step(images, labels, *views(TINY, 4, (20, 20), s), 0.4)
    state = a.state_dict()
    frozen = {k: v.copy() for k, v in state.items()}
    a.train_step(images, labels, *views(TINY, 4, (20, 20), 5), 0.4)
    for k, v in state.items():  # state_dict() returns copies, never views of live arrays
        np.testing.assert_array_equal(v, frozen[k], err_msg=k)
    a.load_state_dict(state)
    assert any(np.abs(v).sum() > 0 for k, v in state.items() if k.startswith(MOM))
    assert state["encoder.bn1.num_batches_tracked"].dtype == np.int64
    assert state["encoder.conv1.weight"].shape == (8, 3, 3, 3)  # OIHW
    b = trainer(api, tiny(seed=99))
    b.load_state_dict(state)
    sb = b.state_dict()
    assert set(sb) == set(state)
    for k, v in sb.items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
        assert v.dtype == state[k].dtype and v.shape == state[k].shape, k
    p1, p2 = views(TINY, 4, (20, 20), 2)
    assert a.train_step(images, labels, p1, p2, 0.3) == b.train_step(images, labels, p1, p2, 0.3)


def test_load_state_dict_without_momenta_resets_them(api):
    a = trainer(api, TINY, None)
    images, _ = tiny_batch()
    a.train_step(images, None, *views(TINY, 4, (20, 20), 0), 0.4)
    sd = a.state_dict()
    assert np.abs(sd[MOM + "encoder.conv1.weight"]).max() > 0
    a.load_state_dict({k: v for k, v in sd.items() if not k.startswith(MOM)})
    sd2 = a.state_dict()
    assert all(not sd2[k].any() for k in sd2 if k.startswith(MOM))
    np.testing.assert_array_equal(sd2["encoder.conv1.weight"], sd["encoder.conv1.weight"])


def test_load_state_dict_rejects_wrong_architecture(api):
    small = trainer(api, TINY, None).state_dict()
    with pytest.raises(ValueError, match=r"encoder\.layer1\.0\.conv1\.weight has shape \(8, 8, 3, 3\), "
                                         r"model expects \(16, 16, 3, 3\)"):
        trainer(api, tiny(width=0.25), None).load_state_dict(small)
    with pytest.raises(ValueError, match=r"missing .*encoder\.layer1\.2"):
        trainer(api, tiny(arch="resnet34"), None).load_state_dict(small)
    with pytest.raises(ValueError, match="state_dict do not match the model"):
        trainer(api, TINY, None).load_state_dict(trainer(api, dataclasses.replace(TINY, model=R50), None).state_dict())
    bad = dict(small)
    bad["encoder.conv1.weight"] = np.zeros((8, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"encoder\.conv1\.weight has shape \(8, 3, 5, 5\), model "
                                         r"expects \(8, 3, 3, 3\)"):
        trainer(api, TINY, None).load_state_dict(bad)
    bad = dict(small)
    bad[MOM + "encoder.conv1.weight"] = np.zeros((1, 2))
    # torch names the key ("momentum/encoder..."), MLX the set ("momenta ...: encoder...")
    with pytest.raises(ValueError, match=r"moment(um/|a .*: )encoder\.conv1\.weight has shape \(1, 2\)"):
        trainer(api, TINY, None).load_state_dict(bad)
    bad = dict(small)
    del bad[MOM + "head.0.linear.weight"]
    with pytest.raises(ValueError, match=r"momenta .*missing 1 entries .*head\.0\.linear\.weight"):
        trainer(api, TINY, None).load_state_dict(bad)


def test_encode_is_eval_mode_identity_view(api):
    tr = trainer(api)
    images, labels = tiny_batch(n=5)
    tr.train_step(images[:4], labels[:4], *views(TINY, 4, (20, 20), 0), 0.4)  # move BN stats
    before = tr.state_dict()
    h = tr.encode(images, batch_size=2)
    assert h.shape == (5, feature_dim(R18)) and h.dtype == np.float32
    for k, v in tr.state_dict().items():  # eval mode: no BN buffer moved
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert int(tr.state_dict()["encoder.bn1.num_batches_tracked"]) == 1  # encode did not train
    x = R.augment(images, identity_params(5, (20, 20)), TINY.augment)
    rh, _ = R.encoder(x, {k: v.astype(np.float64) for k, v in before.items()}, R18, False)
    check("encoder.resnet18_cifar.eval", "float32", h, rh, "encode")
    # another batch size changes the BLAS blocking / conv algorithm, so the sums round
    # differently: a few float32 ulps of entries up to ~5 (MLX: 1.9e-6 at an entry of 0.39)
    np.testing.assert_allclose(tr.encode(images, batch_size=256), h, rtol=1e-6, atol=1e-5)


def test_train_step_rejects_bad_inputs(api):
    tr = trainer(api)
    images, labels = tiny_batch()
    p1, p2 = views(TINY, 4, (20, 20), 0)
    with pytest.raises(ValueError, match="images_u8 must have dtype uint8"):
        tr.train_step(images.astype(np.float32), labels, p1, p2, 0.1)
    with pytest.raises(ValueError, match="p2 has 3 views for 4 images"):
        tr.train_step(images, labels, p1, p2[:3], 0.1)
    with pytest.raises(ValueError, match="labels"):
        tr.train_step(images, labels[:2], p1, p2, 0.1)
    with pytest.raises(TypeError, match="DistContext"):
        api.Trainer(TINY, 3, "cpu", dist=object())


def test_chunked_loss_step_equals_exact_step_float64(api):
    """loss.chunk gives the exact step's loss, probe metrics, weights, momenta and BN buffers
    (updated once: num_batches_tracked 1), with and without labels."""
    cfg = tiny("float64")
    cfg_c = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, chunk=3))
    u8, y = tiny_batch()
    p1, p2 = views(cfg, 4, (20, 20), 0)
    for labels in (y, None):
        a, b = trainer(api, cfg), trainer(api, cfg_c)
        la, lb = a.train_step(u8, labels, p1, p2, 0.5), b.train_step(u8, labels, p1, p2, 0.5)
        check("train_step.1.chunked_loss", "float64", lb, la, "metrics")
        sb = b.state_dict()
        assert int(sb["encoder.bn1.num_batches_tracked"]) == 1
        check("train_step.1.chunked_loss", "float64", sb, a.state_dict(), "state")


def test_train_step_after_encode(api):
    """Regression (torch): scratch buffers first allocated under inference mode (encode) must
    stay writable by a later training step."""
    cfg = tiny(seed=11)
    t = trainer(api, cfg, 10)
    images = np.random.default_rng(5).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    t.encode(images)
    p1, p2 = sample_pair(cfg.augment, 4, (16, 16), 11, 0, 0)
    assert np.isfinite(t.train_step(images, np.arange(4), p1, p2, 0.1)["loss"])


# =========================================================================== teeth
# The entries this file added to conformance/tolerances.py must catch a small real bug: the
# oracle with a 1% error in encoder.bn1.weight (or in the probe's gradient), compared with the
# correct oracle, must FAIL each of them by at least 5x (the bar of tests/test_conformance.py).


def _off(w, key="encoder.bn1.weight"):
    return {**w, key: w[key] * 1.01}


def _encoder_pair(name, train=True):
    cfg, _, x, w = encoder_inputs(name, "float64", 18)
    return R.encoder(x, _off(w), cfg, train)[0], R.encoder(x, w, cfg, train)[0]


def _forward_pair(name):
    cfg, _, x, w = encoder_inputs(name, "float64", 20, num_classes=3)
    return R.forward(x, _off(w), cfg, True)[1], R.forward(x, w, cfg, True)[1]


def _probe_pair():
    rng = np.random.default_rng(0)
    st = {"probe.weight": rng.normal(0, 0.5, (3, 64)), "probe.bias": rng.normal(0, 0.5, 3)}
    g = {k: rng.normal(0, 0.05, v.shape) for k, v in st.items()}
    zeros = {k: np.zeros_like(v) for k, v in st.items()}
    ex = {k: True for k in st}
    return (R.lars_step(st, _off(g, "probe.weight"), zeros, 0.5, TINY.optim, ex)[0],
            R.lars_step(st, g, zeros, 0.5, TINY.optim, ex)[0])


TEETH = {"encoder.resnet18_imagenet_stem.train": ("float32", lambda: _encoder_pair("resnet18_imagenet_32px")),
         "encoder.resnet50_cifar.train": ("float32", lambda: _encoder_pair("resnet50_cifar_16px")),
         "encoder.resnet50_cifar.eval": ("float32", lambda: _encoder_pair("resnet50_cifar_16px", False)),
         **{f"forward.{ENCODER_CASE[name].split('.')[1]}.train": ("float32", lambda n=name: _forward_pair(n))
            for name in ENCODERS},
         "probe.step": ("float64", _probe_pair)}


@pytest.mark.parametrize("case", list(TEETH))
def test_added_tolerances_catch_a_one_percent_bug(case):
    dtype, pair = TEETH[case]
    tol = tolerance_for(case, dtype)
    assert tol.reason != "default" and "measured" in tol.reason, case
    bad, good = pair()
    c = compare(bad, good, tol)
    assert not c.passed and c.max_abs > 5 * tol.atol, (case, c.max_abs, tol.atol)
