"""The PyTorch backend against the float64 numpy oracle (simclr_xb.reference), component by
component, plus the Trainer's behaviour (learning, state round trip, determinism, precision).

Every numeric test pairs ``reference.f`` with ``api.f`` on identical inputs; the float32
backend receives the inputs rounded to float32 and is compared with the oracle on the
float64 inputs. Tolerances live in TOL below, each with the error measured when it was set
(2 CPU cores, torch 2.13). Sizes are tiny so the file runs in well under a minute.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from simclr_xb import reference as R  # noqa: E402
from simclr_xb.augment import ViewParams, identity_params, sample_pair, sample_view_params  # noqa: E402
from simclr_xb.backend import API_FUNCTIONS, get_backend  # noqa: E402
from simclr_xb.config import AugmentConfig, Config, LossConfig, ModelConfig, OptimConfig, TrainConfig  # noqa: E402
from simclr_xb.resnet_spec import encoder_layout, feature_dim, init_weights, model_specs  # noqa: E402

api = get_backend("torch")
from simclr_xb.backends.torch import augment as taug  # noqa: E402
from simclr_xb.backends.torch.lars import LARS  # noqa: E402
from simclr_xb.backends.torch.step import Trainer  # noqa: E402

# name -> dtype -> max error allowed, as max|ours - ref| / max(1, max|ref|) (absolute for
# values of order 1, relative for large activations).   measured float32 / float64 when set
TOL = {
    "augment": {"float32": 1e-5, "float64": 1e-12},   # 8.6e-7 / 2.9e-15
    "bn": {"float32": 1e-5, "float64": 1e-12},        # 1.0e-6 / 8.9e-16
    "conv": {"float32": 1e-5, "float64": 1e-12},      # 7.0e-7 / 6.7e-16
    "block": {"float32": 1e-5, "float64": 1e-12},     # 2.2e-6 / 6.7e-15
    "head": {"float32": 1e-5, "float64": 1e-12},      # 1.4e-6 / 3.9e-14
    # Whole encoder in train mode: BN over 4 values per channel at layer4's 2x2 maps amplifies
    # float32 rounding (resnet50, ImageNet stem, 64 px); float64 shows the math is the same.
    "encoder": {"float32": 2e-4, "float64": 1e-11},   # 5.6e-5 / 1.7e-12
    "nt_xent": {"float32": 1e-5, "float64": 1e-6},    # 2.2e-7 / 4.9e-16
    "lars": {"float32": 1e-6, "float64": 1e-7},       # 1.6e-7 / 1.1e-16
    "train_step": {"float64": 1e-9},                  # 3.3e-14 (loss, weights, BN buffers, momenta)
}

DTYPES = ("float32", "float64")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def cast(a, dtype):
    a = np.asarray(a)
    return a.astype(dtype) if a.dtype.kind == "f" else a


def cast_weights(w, dtype):
    return {k: cast(v, dtype) for k, v in w.items()}


def max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0


def images_u8(rng, n, h, w, levels=None):
    if levels is not None:
        return rng.choice(np.asarray(levels, np.uint8), size=(n, h, w, 3))
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def floats(rng, n=6, h=12, w=14, levels=None):
    return images_u8(rng, n, h, w, levels) / 255.0


def check(name, dtype, ours, ref):
    err = max_err(ours, ref) / max(1.0, float(np.max(np.abs(ref))) if np.size(ref) else 1.0)
    assert err <= TOL[name][dtype], f"{name} {dtype}: scaled max error {err:.3g} > {TOL[name][dtype]:.1g}"


def test_api_has_every_interface_function():
    missing = [f for f in API_FUNCTIONS if not callable(getattr(api, f, None))]
    assert not missing
    assert api.available() and "cpu" in api.devices() and api.version().startswith("torch")


# =========================================================================== augmentation

AUG = AugmentConfig(image_size=16, strength=1.0, blur_p=0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_to_float(dtype):
    u8 = images_u8(np.random.default_rng(0), 2, 5, 6)
    out = api.to_float(u8, dtype)
    assert out.shape == (2, 5, 6, 3)
    check("augment", dtype, out, R.to_float(u8))


CROP_BOXES = {
    "random": None,
    "edges": np.array([[0, 0, 1, 1], [11, 13, 1, 1], [3, 5, 2, 7], [0, 0, 12, 14], [6, 0, 6, 1],
                       [0, 13, 12, 1]]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("boxes", ["random", "edges"])
@pytest.mark.parametrize("size", [5, 16])  # downsample and upsample
def test_resized_crop(dtype, boxes, size):
    rng = np.random.default_rng(1)
    x = floats(rng)
    crop = CROP_BOXES[boxes]
    if crop is None:
        crop = sample_view_params(rng, AUG, 6, (12, 14)).crop
    out = api.resized_crop(cast(x, dtype), crop, size, dtype)
    assert out.shape == (6, size, size, 3)
    check("augment", dtype, out, R.resized_crop(x, crop, size))


def test_one_pixel_box_is_constant():
    x = floats(np.random.default_rng(2), n=1)
    out = api.resized_crop(x, np.array([[4, 7, 1, 1]]), 6, "float64")
    np.testing.assert_array_equal(out, np.broadcast_to(x[0, 4, 7], (1, 6, 6, 3)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_hflip(dtype):
    x = floats(np.random.default_rng(3))
    flip = np.array([1, 0, 1, 1, 0, 0], bool)
    out = api.hflip(cast(x, dtype), flip, dtype)
    check("augment", dtype, out, R.hflip(x, flip))
    np.testing.assert_array_equal(api.hflip(x, np.zeros(6, bool), "float64"), x)


COLOR_OPS = ["adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue"]


def _factors(op, rng, n=6):
    if op == "adjust_hue":  # extremes, zero, and random shifts
        return np.concatenate([[-0.5, 0.5, 0.0], rng.uniform(-0.5, 0.5, n - 3)])
    return np.concatenate([[0.0, 2.0, 1.0], rng.uniform(0.2, 1.8, n - 3)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", COLOR_OPS)
@pytest.mark.parametrize("levels", [None, (0, 64, 128, 255)], ids=["random", "grey_and_ties"])
def test_color_op(dtype, op, levels):
    rng = np.random.default_rng(4)
    x = floats(rng, levels=levels)
    f = _factors(op, rng)
    out = getattr(api, op)(cast(x, dtype), cast(f, dtype), dtype)
    check("augment", dtype, out, getattr(R, op)(x, f))
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_hue_zero_shift_and_grey_pixels():
    """A zero shift reproduces the image; grey pixels (chroma 0) never change."""
    x = floats(np.random.default_rng(5), levels=(0, 51, 204, 255))
    np.testing.assert_allclose(api.adjust_hue(x, np.zeros(6), "float64"), x, atol=1e-15)
    grey = np.repeat(x[..., :1], 3, axis=-1)
    np.testing.assert_array_equal(api.adjust_hue(grey, np.full(6, 0.3), "float64"), grey)


def _jitter_params(rng, n, jitter=None):
    p = sample_view_params(rng, AugmentConfig(image_size=12, jitter_p=0.8), n, (12, 14))
    if jitter is not None:
        p.jitter = np.asarray(jitter, bool)
    return p


@pytest.mark.parametrize("dtype", DTYPES)
def test_color_jitter(dtype):
    rng = np.random.default_rng(6)
    x = floats(rng, n=12)
    p = _jitter_params(rng, 12, [1] * 10 + [0, 0])
    p.jitter_order[:4] = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]]
    out = api.color_jitter(cast(x, dtype), p, dtype)
    check("augment", dtype, out, R.color_jitter(x, p))
    np.testing.assert_array_equal(out[10:], cast(x, dtype)[10:])  # views without jitter untouched


def test_color_jitter_order_matters():
    """Same factors, two orders: different images (so the per-view order is really applied)."""
    rng = np.random.default_rng(7)
    x = floats(rng, n=2)
    p = _jitter_params(rng, 2, [1, 1])
    p.brightness[:], p.contrast[:], p.saturation[:], p.hue[:] = 1.6, 0.4, 1.7, 0.2
    p.jitter_order[0], p.jitter_order[1] = [0, 1, 2, 3], [3, 2, 1, 0]
    out = api.color_jitter(np.concatenate([x[:1], x[:1]]), p, "float64")
    assert max_err(out[0], out[1]) > 1e-2


def test_color_jitter_all_off_is_identity():
    rng = np.random.default_rng(8)
    x = floats(rng)
    p = _jitter_params(rng, 6, np.zeros(6, bool))
    np.testing.assert_array_equal(api.color_jitter(x, p, "float64"), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grayscale(dtype):
    x = floats(np.random.default_rng(9))
    mask = np.array([1, 0, 1, 0, 0, 1], bool)
    out = api.grayscale(cast(x, dtype), mask, dtype)
    check("augment", dtype, out, R.grayscale(x, mask))
    assert np.all(out[0, ..., 0] == out[0, ..., 2])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_gaussian_blur(dtype, kernel):
    x = floats(np.random.default_rng(10))
    sigma = np.array([0.1, 0.5, 2.0, 10.0, 1.0, 1.3])  # extremes: ~identity and ~box
    mask = np.array([1, 1, 1, 1, 0, 1], bool)
    out = api.gaussian_blur(cast(x, dtype), cast(sigma, dtype), mask, kernel, dtype)
    check("augment", dtype, out, R.gaussian_blur(x, sigma, mask, kernel))
    np.testing.assert_array_equal(out[4], cast(x, dtype)[4])


AUG_CONFIGS = {
    "16px_blur": (AugmentConfig(image_size=16, strength=1.0, blur_p=0.5), (20, 24)),
    "32px_cifar": (AugmentConfig(image_size=32, strength=0.5, blur_p=0.0), (32, 32)),
    "24px_all_on": (AugmentConfig(image_size=24, flip_p=1.0, jitter_p=1.0, gray_p=1.0, blur_p=1.0), (30, 26)),
    "12px_all_off": (AugmentConfig(image_size=12, flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0), (9, 15)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(AUG_CONFIGS))
def test_augment_pipeline(dtype, name):
    cfg, hw = AUG_CONFIGS[name]
    rng = np.random.default_rng(11)
    u8 = images_u8(rng, 8, *hw)
    p = sample_view_params(rng, cfg, 8, hw)
    out = api.augment(u8, p, cfg, dtype)
    assert out.shape == (8, cfg.image_size, cfg.image_size, 3)
    check("augment", dtype, out, R.augment(u8, p, cfg))


@pytest.mark.parametrize("dtype", DTYPES)
def test_augment_in_many_cpu_chunks(monkeypatch, dtype):
    """Chunks of 3 views for crop/jitter/grayscale and blur groups of 2: same numbers."""
    cfg = AugmentConfig(image_size=12, jitter_p=0.9, gray_p=0.4, blur_p=0.6)
    per_view = 3 * 12 * 12 * np.dtype(dtype).itemsize
    monkeypatch.setattr(taug, "CPU_CHUNK_BYTES_SMALL_VIEWS", 3 * per_view)
    monkeypatch.setattr(taug, "CPU_CHUNK_BYTES", 2 * per_view)
    rng = np.random.default_rng(14)
    u8 = images_u8(rng, 11, 15, 13)
    p = sample_view_params(rng, cfg, 11, (15, 13))
    check("augment", dtype, api.augment(u8, p, cfg, dtype), R.augment(u8, p, cfg))


def test_augment_results_never_alias_scratch_buffers():
    rng = np.random.default_rng(15)
    u8 = torch.from_numpy(images_u8(rng, 6, 20, 24))
    p, q = sample_view_params(rng, AUG, 6, (20, 24)), sample_view_params(rng, AUG, 6, (20, 24))
    first = taug.augment(u8, p, AUG)
    kept = first.clone()
    taug.augment(u8, q, AUG)
    taug.adjust_hue(first, np.full(6, 0.25))
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    with pytest.raises(ValueError, match="uint8"):
        taug.augment(u8.float(), p, AUG)


def test_augment_two_views_in_one_call_equals_two_calls():
    """The Trainer augments [view 1; view 2] in one call via ``source``: same numbers."""
    rng = np.random.default_rng(12)
    u8 = torch.from_numpy(images_u8(rng, 4, 20, 24))
    p1, p2 = sample_pair(AUG, 4, (20, 24), seed=0, epoch=0, step=0)
    both = taug.augment(u8, ViewParams.concat([p1, p2]), AUG, source=np.r_[0:4, 0:4])
    sep = torch.cat([taug.augment(u8, p1, AUG), taug.augment(u8, p2, AUG)])
    assert both.shape == (8, 3, 16, 16) and both.dtype == torch.float32
    torch.testing.assert_close(both, sep, rtol=0, atol=0)


def test_identity_view_is_a_plain_resize():
    rng = np.random.default_rng(13)
    u8 = images_u8(rng, 3, 10, 10)
    out = api.augment(u8, identity_params(3, (10, 10)), AugmentConfig(image_size=10), "float64")
    np.testing.assert_allclose(out, u8 / 255.0, atol=1e-15)


# =========================================================================== layers


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape,affine", [((4, 5, 5, 6), "both"), ((8, 6), "both"), ((8, 6), "no_bias"),
                                          ((3, 4, 4, 5), "none")])
def test_batch_norm(dtype, train, shape, affine):
    rng = np.random.default_rng(14)
    c = shape[-1]
    x = rng.normal(0.5, 2.0, shape)
    w = None if affine == "none" else rng.uniform(0.5, 1.5, c)
    b = rng.normal(0, 0.5, c) if affine == "both" else None
    rm, rv = rng.normal(0, 0.3, c), rng.uniform(0.5, 2.0, c)
    args = (x, w, b, rm, rv, train, 0.1, 1e-5)
    ours = api.batch_norm(*[cast(a, dtype) if isinstance(a, np.ndarray) else a for a in args], dtype)
    for o, r in zip(ours, R.batch_norm(*args)):
        check("bn", dtype, o, r)


def test_batch_norm_keeps_unbiased_running_var():
    """running_var moves toward the UNBIASED batch variance (PyTorch's convention)."""
    x = np.random.default_rng(15).normal(size=(3, 2, 2, 4))
    _, m, v = api.batch_norm(x, None, None, np.zeros(4), np.ones(4), True, 0.1, 1e-5, "float64")
    flat = x.reshape(-1, 4)
    np.testing.assert_allclose(v, 0.9 + 0.1 * flat.var(axis=0, ddof=1), rtol=1e-14)
    np.testing.assert_allclose(m, 0.1 * flat.mean(axis=0), rtol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cin,cout,k,stride,pad", [(3, 5, 3, 1, 1), (4, 6, 3, 2, 1), (3, 4, 7, 2, 3),
                                                   (5, 7, 1, 2, 0)])
def test_conv2d(dtype, cin, cout, k, stride, pad):
    rng = np.random.default_rng(16)
    x = rng.normal(size=(2, 9, 9, cin))
    w = rng.normal(0, 1 / math.sqrt(cin * k * k), (cout, cin, k, k))
    check("conv", dtype, api.conv2d(cast(x, dtype), cast(w, dtype), stride, pad, dtype),
          R.conv2d(x, w, stride, pad))


R18 = ModelConfig(arch="resnet18", width=0.125, cifar_stem=True, head_out=16)
R18_IN = dataclasses.replace(R18, cifar_stem=False)
R50 = ModelConfig(arch="resnet50", width=0.125, cifar_stem=False, head_out=16)
R50_C = dataclasses.replace(R50, cifar_stem=True)


def perturbed_weights(cfg, seed=0, num_classes=None):
    """init_weights with non-trivial BN parameters and running statistics."""
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


def check_updates(name, dtype, ours, ref):
    assert set(ours) == set(ref), sorted(set(ours) ^ set(ref))
    for k in ref:
        if k.endswith("num_batches_tracked"):
            assert int(ours[k]) == int(ref[k]), k
        else:
            check(name, dtype, ours[k], ref[k])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("cfg,blocks", [(R18, (0, 2, 7)), (R50, (0, 3, 15))], ids=["resnet18", "resnet50"])
def test_block(dtype, train, cfg, blocks):
    """First block, a stride-2 downsampling block and the last block of each arch."""
    rng = np.random.default_rng(17)
    w = perturbed_weights(cfg)
    for i in blocks:
        spec = encoder_layout(cfg).blocks[i]
        x = np.maximum(rng.normal(size=(4, 6, 6, spec.in_ch)), 0)
        y, up = api.block(cast(x, dtype), cast_weights(w, dtype), spec, train, 0.1, 1e-5, dtype)
        ry, rup = R.block(x, w, spec, train, 0.1, 1e-5)
        check("block", dtype, y, ry)
        check_updates("block", dtype, up, rup)
        assert bool(up) == train


ENCODERS = {"resnet18_cifar_16px": (R18, 16, 4), "resnet18_imagenet_32px": (R18_IN, 32, 4),
            "resnet50_cifar_16px": (R50_C, 16, 4), "resnet50_imagenet_64px": (R50, 64, 4)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder(dtype, train, name):
    cfg, size, n = ENCODERS[name]
    rng = np.random.default_rng(18)
    x = rng.random((n, size, size, 3))
    w = perturbed_weights(cfg)
    h, up = api.encoder(cast(x, dtype), cast_weights(w, dtype), cfg, train, dtype)
    rh, rup = R.encoder(x, w, cfg, train)
    assert h.shape == (n, feature_dim(cfg))
    check("encoder", dtype, h, rh)
    check_updates("encoder", dtype, up, rup)


HEADS = {"bn_2layer": R18, "bn_3layer": dataclasses.replace(R18, head_layers=3, head_hidden=24),
         "plain_3layer": dataclasses.replace(R18, head_bn=False, head_layers=3, head_hidden=24)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", list(HEADS))
def test_head(dtype, train, name):
    cfg = HEADS[name]
    rng = np.random.default_rng(19)
    h = np.maximum(rng.normal(size=(8, feature_dim(cfg))), 0)
    w = perturbed_weights(cfg)
    z, up = api.head(cast(h, dtype), cast_weights(w, dtype), cfg, train, dtype)
    rz, rup = R.head(h, w, cfg, train)
    check("head", dtype, z, rz)
    check_updates("head", dtype, up, rup)


def test_forward_and_canonical_names():
    rng = np.random.default_rng(20)
    x = rng.random((4, 16, 16, 3))
    w = perturbed_weights(R18, num_classes=3)  # the probe entries are ignored by forward
    h, z, up = api.forward(x, w, R18, True, "float64")
    rh, rz, rup = R.forward(x, w, R18, True)
    check("encoder", "float64", h, rh)
    check("head", "float64", z, rz)
    check_updates("head", "float64", up, rup)


@pytest.mark.parametrize("cfg", [R18, R50, HEADS["plain_3layer"]], ids=["r18", "r50", "plain_head"])
def test_model_state_dict_keys_are_canonical(cfg):
    tr = Trainer(Config(model=cfg, train=TrainConfig(batch_size=2)), num_classes=5, device="cpu")
    specs = model_specs(cfg, 5)
    assert list(tr.model.state_dict()) == [s.name for s in specs]
    state = tr.state_dict()
    want = {s.name for s in specs} | {f"momentum/{s.name}" for s in specs if s.trainable}
    assert set(state) == want
    assert state["encoder.bn1.num_batches_tracked"].dtype == np.int64
    assert state["encoder.conv1.weight"].dtype == np.float32


# =========================================================================== NT-Xent

NTX_GRID = [(1, 4, 0.5), (2, 8, 0.05), (3, 5, 0.1), (8, 16, 0.5), (16, 32, 0.05)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,tau", NTX_GRID)
def test_nt_xent_value_and_grad(dtype, n, d, tau):
    z = np.random.default_rng(21).normal(size=(2 * n, d))
    zc = cast(z, dtype)
    ref_v, ref_g = R.nt_xent(z, tau), R.nt_xent_grad(z, tau)
    v, g = api.nt_xent(zc, tau, dtype), api.nt_xent_grad(zc, tau, dtype)
    tol = TOL["nt_xent"][dtype]
    assert abs(v - ref_v) <= tol * max(1.0, abs(ref_v))
    assert max_err(g, ref_g) <= tol * max(1.0, np.abs(ref_g).max())


@pytest.mark.parametrize("n", [1, 2, 5])
def test_nt_xent_closed_form_all_equal(n):
    z = np.ones((2 * n, 3))
    assert api.nt_xent(z, 0.1, "float64") == pytest.approx(math.log(2 * n - 1), abs=1e-12)


def test_nt_xent_stable_at_low_temperature_float32():
    z = np.random.default_rng(22).normal(size=(16, 64)) * 100
    v = api.nt_xent(z, 0.01, "float32")
    assert math.isfinite(v) and abs(v - R.nt_xent(z, 0.01)) <= 1e-5 * abs(R.nt_xent(z, 0.01))
    assert np.isfinite(api.nt_xent_grad(z, 0.01, "float32")).all()


@pytest.mark.parametrize("tau", [0.0, -0.5, float("nan")])
def test_nt_xent_rejects_bad_temperature(tau):
    with pytest.raises(ValueError, match="tau"):
        api.nt_xent(np.ones((4, 3)), tau, "float32")


def test_nt_xent_rejects_odd_batch():
    with pytest.raises(ValueError, match=r"\(2N, d\)"):
        api.nt_xent(np.ones((5, 3)), 0.1, "float32")


# =========================================================================== LARS


def lars_case(rng):
    shapes = {"encoder.conv1.weight": (4, 3, 3, 3), "head.0.linear.weight": (5, 4),
              "encoder.bn1.weight": (4,), "encoder.bn1.bias": (4,), "head.0.linear.bias": (5,),
              "zero.weight": (3, 2), "zero_grad.weight": (2, 2)}
    params = {k: rng.normal(size=s) for k, s in shapes.items()}
    params["zero.weight"][:] = 0.0  # |w| = 0 -> trust 1
    grads = {k: rng.normal(0, 0.1, s) for k, s in shapes.items()}
    grads["zero_grad.weight"][:] = 0.0  # with wd = 0, |g| = 0 -> trust 1
    momenta = {k: rng.normal(0, 0.01, s) for k, s in shapes.items()}
    excluded = {k: len(s) == 1 for k, s in shapes.items()}
    return params, grads, momenta, excluded


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("wd", [0.0, 1e-4])
def test_lars_step(dtype, nesterov, wd):
    params, grads, momenta, excluded = lars_case(np.random.default_rng(23))
    cfg = OptimConfig(nesterov=nesterov, weight_decay=wd, eta=1e-3, momentum=0.9)
    p, m = api.lars_step(cast_weights(params, dtype), cast_weights(grads, dtype),
                         cast_weights(momenta, dtype), 0.8, cfg, excluded, dtype)
    rp, rm = R.lars_step(params, grads, momenta, 0.8, cfg, excluded)
    for k in params:
        check("lars", dtype, p[k], rp[k])
        check("lars", dtype, m[k], rm[k])
    # excluded params are plain momentum SGD: trust 1, no decay
    want = 0.9 * momenta["encoder.bn1.bias"] + 0.8 * grads["encoder.bn1.bias"]
    np.testing.assert_allclose(m["encoder.bn1.bias"], want, rtol=1e-6 if dtype == "float32" else 1e-14)


def test_lars_skips_params_without_grad_and_names_buffers():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(2, 2))
    opt = LARS([("a", a), ("b", b)], {"a": True, "b": False}, lr=0.1)
    assert set(opt.momentum_buffers()) == {"a", "b"}
    assert all(float(v.abs().sum()) == 0 for v in opt.momentum_buffers().values())
    b.grad = torch.ones(2, 2)
    opt.step()
    assert torch.equal(a.detach(), torch.ones(3))  # no grad: untouched
    assert not torch.equal(b.detach(), torch.ones(2, 2))
    with pytest.raises(ValueError, match="no exclusion flag"):
        LARS([("c", a)], {}, lr=0.1)


# =========================================================================== training step

TINY = Config(model=R18, augment=AugmentConfig(image_size=16, strength=0.5, blur_p=0.5),
              loss=LossConfig(temperature=0.5), optim=OptimConfig(lr_scaling="sqrt"),
              train=TrainConfig(batch_size=4, seed=3, channels_last=False))


def tiny_batch(seed=0, n=4, hw=(20, 20)):
    rng = np.random.default_rng(seed)
    return images_u8(rng, n, *hw), rng.integers(0, 3, n)


def views(cfg, n, hw, step):
    return sample_pair(cfg.augment, n, hw, seed=cfg.train.seed, epoch=0, step=step)


def test_train_step_matches_oracle_float64():
    """api.train_step (through Trainer) vs reference.train_step: loss, weights, BN buffers, momenta."""
    images, _ = tiny_batch()
    w = init_weights(TINY.model, 3, num_classes=3)  # probe entries: passed through unchanged
    rng = np.random.default_rng(3)
    mom = {s.name: rng.normal(0, 0.01, s.shape) for s in model_specs(TINY.model) if s.trainable}
    del mom["encoder.conv1.weight"]  # missing: counts as zeros
    mom["extra"] = np.ones(2)  # not a parameter: passed through
    p1, p2 = views(TINY, 4, (20, 20), 0)
    loss, nw, nm = api.train_step(w, mom, images, p1, p2, 0.6, TINY, "float64")
    rloss, rw, rm = R.train_step(w, mom, images, p1, p2, 0.6, TINY)
    assert abs(loss - rloss) <= TOL["train_step"]["float64"]
    assert set(nw) == set(rw) and set(nm) == set(rm)
    for k in rw:
        assert max_err(nw[k], rw[k]) <= TOL["train_step"]["float64"], k
    for k in rm:
        assert max_err(nm[k], rm[k]) <= TOL["train_step"]["float64"], k


def test_probe_step_matches_oracle_and_leaves_encoder_alone():
    """The probe learns from detached h on [labels; labels] (plain momentum SGD, LARS-excluded);
    its loss changes no encoder/head update."""
    cfg = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, precision="float64"))
    images, labels = tiny_batch()
    p1, p2 = views(cfg, 4, (20, 20), 0)
    with_probe = Trainer(cfg, 3, "cpu")
    rng = np.random.default_rng(0)
    st = with_probe.state_dict()
    st["probe.weight"] = rng.normal(0, 0.5, st["probe.weight"].shape)
    st["probe.bias"] = rng.normal(0, 0.5, st["probe.bias"].shape)
    with_probe.load_state_dict(st)
    no_labels = Trainer(cfg, 3, "cpu")
    no_labels.load_state_dict(st)
    m = with_probe.train_step(images, labels, p1, p2, 0.5)
    m0 = no_labels.train_step(images, None, p1, p2, 0.5)
    assert set(m) == {"loss", "probe_loss", "probe_acc"} and set(m0) == {"loss"}
    assert m["loss"] == m0["loss"]
    a, b = with_probe.state_dict(), no_labels.state_dict()
    for k in a:
        if "probe." not in k:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # oracle for the probe: cross-entropy on h of the training-mode forward of the 2N views
    x = np.concatenate([R.augment(images, p1, cfg.augment), R.augment(images, p2, cfg.augment)])
    h, _, _ = R.forward(x, st, cfg, True)
    h = R.probe_input(h)  # standardised over the batch
    y = np.concatenate([labels, labels])
    logits = h @ st["probe.weight"].T + st["probe.bias"]
    assert m["probe_loss"] == pytest.approx(R.cross_entropy(logits, y), abs=1e-10)
    assert m["probe_acc"] == pytest.approx(np.mean(logits.argmax(1) == y), abs=1e-12)
    pr = np.exp(logits - logits.max(1, keepdims=True))
    pr /= pr.sum(1, keepdims=True)
    pr[np.arange(8), y] -= 1.0
    grads = {"probe.weight": pr.T @ h / 8, "probe.bias": pr.sum(0) / 8}
    zeros = {k: np.zeros_like(v) for k, v in grads.items()}
    rp, rm = R.lars_step({k: st[k] for k in grads}, grads, zeros, 0.5, cfg.optim,
                         {"probe.weight": True, "probe.bias": True})
    for k in grads:
        assert max_err(a[k], rp[k]) <= 1e-10, k
        assert max_err(a[f"momentum/{k}"], rm[k]) <= 1e-10, k


def test_training_reduces_loss_on_a_fixed_batch():
    images, labels = tiny_batch(1, n=8, hw=(16, 16))
    cfg = dataclasses.replace(TINY, augment=AugmentConfig(image_size=16, crop_scale=(0.6, 1.0),
                                                          strength=0.3, blur_p=0.0))
    tr = Trainer(cfg, 3, "cpu")
    p1, p2 = views(cfg, 8, (16, 16), 0)  # fixed views: the loss must go down
    losses = [tr.train_step(images, labels, p1, p2, 0.5)["loss"] for _ in range(20)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_state_dict_round_trip_is_exact_and_resumes_identically():
    images, labels = tiny_batch()
    a = Trainer(TINY, 3, "cpu")
    for s in range(2):
        a.train_step(images, labels, *views(TINY, 4, (20, 20), s), 0.4)
    state = a.state_dict()
    frozen = {k: v.copy() for k, v in state.items()}
    a.train_step(images, labels, *views(TINY, 4, (20, 20), 5), 0.4)
    for k, v in state.items():  # state_dict() returns copies, never views of live tensors
        np.testing.assert_array_equal(v, frozen[k], err_msg=k)
    a.load_state_dict(state)
    assert any(np.abs(v).sum() > 0 for k, v in state.items() if k.startswith("momentum/"))
    b = Trainer(dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, seed=99)), 3, "cpu")
    b.load_state_dict(state)
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
        assert v.dtype == state[k].dtype, k
    p1, p2 = views(TINY, 4, (20, 20), 2)
    assert a.train_step(images, labels, p1, p2, 0.3) == b.train_step(images, labels, p1, p2, 0.3)


def test_load_state_dict_without_momenta_resets_them():
    a = Trainer(TINY, None, "cpu")
    images, _ = tiny_batch()
    a.train_step(images, None, *views(TINY, 4, (20, 20), 0), 0.4)
    weights = {k: v for k, v in a.state_dict().items() if not k.startswith("momentum/")}
    a.load_state_dict(weights)
    assert all(np.all(v == 0) for k, v in a.state_dict().items() if k.startswith("momentum/"))


def test_load_state_dict_rejects_wrong_architecture():
    small = Trainer(TINY, None, "cpu").state_dict()
    wider = Trainer(dataclasses.replace(TINY, model=dataclasses.replace(R18, width=0.25)), None, "cpu")
    with pytest.raises(ValueError, match=r"encoder\.layer1\.0\.conv1\.weight has shape \(8, 8, 3, 3\), "
                                         r"model expects \(16, 16, 3, 3\)"):
        wider.load_state_dict(small)
    deeper = Trainer(dataclasses.replace(TINY, model=dataclasses.replace(R18, arch="resnet34")), None, "cpu")
    with pytest.raises(ValueError, match=r"missing .*encoder\.layer1\.2"):
        deeper.load_state_dict(small)
    bad_mom = dict(small)
    bad_mom["momentum/encoder.conv1.weight"] = np.zeros((1, 2))
    with pytest.raises(ValueError, match=r"momentum/encoder\.conv1\.weight has shape \(1, 2\)"):
        Trainer(TINY, None, "cpu").load_state_dict(bad_mom)


def _three_losses(seed_torch: int | None = None):
    if seed_torch is not None:
        torch.manual_seed(seed_torch)
    tr = Trainer(TINY, 3, "cpu")
    images, labels = tiny_batch()
    out = []
    for s in range(3):
        if seed_torch is not None:
            torch.manual_seed(seed_torch + s)
        out.append(tr.train_step(images, labels, *views(TINY, 4, (20, 20), s), 0.4))
    return out, tr.state_dict()


def test_determinism_and_no_torch_randomness():
    """Same seed -> identical metrics and weights; torch's global RNG plays no part and is not
    consumed."""
    rng_before = torch.get_rng_state()
    a, sa = _three_losses()
    assert torch.equal(torch.get_rng_state(), rng_before)
    b, sb = _three_losses(seed_torch=123)
    c, _ = _three_losses(seed_torch=7)
    assert a == b == c
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_bfloat16_precision_runs_in_bf16():
    images, labels = tiny_batch()
    p1, p2 = views(TINY, 4, (20, 20), 0)
    f32 = Trainer(TINY, 3, "cpu").train_step(images, labels, p1, p2, 0.4)
    bf = Trainer(dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, precision="bfloat16")),
                 3, "cpu")
    m = bf.train_step(images, labels, p1, p2, 0.4)
    assert all(math.isfinite(v) for v in m.values())
    assert m["loss"] != f32["loss"] and abs(m["loss"] - f32["loss"]) < 0.1  # autocast really ran
    assert bf.state_dict()["encoder.conv1.weight"].dtype == np.float32  # master weights float32


def test_float64_precision_state_is_float64():
    tr = Trainer(dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, precision="float64")),
                 None, "cpu")
    st = tr.state_dict()
    assert st["encoder.conv1.weight"].dtype == np.float64
    assert st["momentum/head.0.linear.weight"].dtype == np.float64
    np.testing.assert_array_equal(st["encoder.conv1.weight"], init_weights(TINY.model, 3)["encoder.conv1.weight"])


def test_channels_last_matches_default_layout():
    images, labels = tiny_batch()
    p1, p2 = views(TINY, 4, (20, 20), 0)
    cl = Trainer(dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, channels_last=True)),
                 3, "cpu")
    assert cl.model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    init = init_weights(TINY.model, 3, 3)
    for k in ("encoder.conv1.weight", "encoder.layer2.0.downsample.0.weight"):  # OIHW, not OHWI
        np.testing.assert_array_equal(cl.state_dict()[k], init[k].astype(np.float32))
    a = cl.train_step(images, labels, p1, p2, 0.4)
    b = Trainer(TINY, 3, "cpu").train_step(images, labels, p1, p2, 0.4)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken_compile(model, *a, **k):
        def run(x):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    images, labels = tiny_batch()
    p1, p2 = views(TINY, 4, (20, 20), 0)
    tr = Trainer(dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, compile=True)), 3, "cpu")
    with pytest.warns(UserWarning, match="torch.compile failed"):
        m = tr.train_step(images, labels, p1, p2, 0.4)
    assert m == Trainer(TINY, 3, "cpu").train_step(images, labels, p1, p2, 0.4)


def test_encode_is_eval_mode_identity_view():
    tr = Trainer(TINY, 3, "cpu")
    images, labels = tiny_batch(n=5)
    tr.train_step(images[:4], labels[:4], *views(TINY, 4, (20, 20), 0), 0.4)  # move BN stats
    before = tr.state_dict()
    h = tr.encode(images, batch_size=2)
    assert h.shape == (5, feature_dim(R18)) and h.dtype == np.float32
    assert tr.model.training
    for k, v in tr.state_dict().items():  # eval mode: no BN buffer moved
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    x = R.augment(images, identity_params(5, (20, 20)), TINY.augment)
    rh, _ = R.encoder(x, {k: v.astype(np.float64) for k, v in before.items()}, R18, False)
    assert max_err(h, rh) <= 1e-5
    np.testing.assert_allclose(tr.encode(images, batch_size=256), h, atol=1e-5)  # conv algo varies with batch


def test_train_step_rejects_bad_inputs():
    tr = Trainer(TINY, 3, "cpu")
    images, labels = tiny_batch()
    p1, p2 = views(TINY, 4, (20, 20), 0)
    with pytest.raises(ValueError, match="uint8"):
        tr.train_step(images.astype(np.float32), labels, p1, p2, 0.1)
    with pytest.raises(ValueError, match="p2 has 3 views for 4 images"):
        tr.train_step(images, labels, p1, p2[:3], 0.1)
    with pytest.raises(ValueError, match="labels"):
        tr.train_step(images, labels[:2], p1, p2, 0.1)
    with pytest.raises(TypeError, match="DistContext"):
        Trainer(TINY, 3, "cpu", dist=object())


def test_zero_init_residual_comes_from_the_canonical_init():
    cfg = dataclasses.replace(TINY, model=dataclasses.replace(R18, zero_init_residual=True))
    st = Trainer(cfg, None, "cpu").state_dict()
    assert np.all(st["encoder.layer1.0.bn2.weight"] == 0) and np.all(st["encoder.layer4.1.bn2.weight"] == 0)
    assert np.all(st["encoder.layer1.0.bn1.weight"] == 1)


def test_train_step_after_encode_in_the_same_thread():
    """Regression: scratch buffers first allocated under inference_mode (encode) must stay
    writable by a later training step ("Inplace update to inference tensor" before the fix)."""
    from simclr_xb.config import preset
    cfg = preset("tiny").with_overrides(["model.width=0.125", "augment.image_size=16",
                                         "train.batch_size=4", "train.seed=11"])
    t = Trainer(cfg, 10, device="cpu")
    images = np.random.default_rng(5).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    t.encode(images)
    p1, p2 = sample_pair(cfg.augment, 4, (16, 16), 11, 0, 0)
    assert np.isfinite(t.train_step(images, np.arange(4), p1, p2, 0.1)["loss"])
