"""The MLX backend against the float64 numpy oracle (simclr_xb.reference), closed forms, and
the Trainer's behaviour (compiled state, state dicts, determinism).

Each conformance test pairs ``reference.f(*args)`` with ``api.f(*args, dtype=...)``: inputs are
made in float64, rounded once to the tested dtype, and the oracle sees the rounded numbers in
float64. Everything is tiny (width 0.125, <= 32 px, batch 4) because MLX on a Linux CPU is slow.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from simclr_xb import reference as ref  # noqa: E402
from simclr_xb.augment import identity_params, sample_pair, sample_view_params  # noqa: E402
from simclr_xb.backends.mlx import api, convert  # noqa: E402
from simclr_xb.backends.mlx.step import MOMENTUM_PREFIX, SimCLRModel  # noqa: E402
from simclr_xb.config import AugmentConfig, Config, LossConfig, ModelConfig, OptimConfig, TrainConfig  # noqa: E402
from simclr_xb.resnet_spec import encoder_layout, feature_dim, init_weights, model_specs  # noqa: E402

# Max abs error allowed per component: (float32, float64). Measured on mlx 0.32.4 / Linux CPU
# beside each entry; float64 runs the same graph on the CPU stream.
TOL = {
    "augment": (1e-5, 1e-12),      # measured 7.4e-7 / 1.1e-15
    "bn": (1e-5, 1e-12),           # measured 1.3e-6 / 2.2e-16
    "conv": (1e-5, 1e-12),         # measured 2.8e-6 / 8.0e-15
    "block": (1e-5, 1e-12),        # measured 2.6e-6 / 7.1e-15
    # encoder + head, relative to max(1, max |ref|) (h reaches ~13 with perturbed BN weights)
    "encoder.eval": (1e-5, 1e-12),  # measured 2.0e-6 / 2.4e-15
    # train mode: BN over few values per channel in the last stages amplifies rounding (the
    # float64 column shows the implementation itself is exact).
    "encoder.train": (2e-3, 1e-9),  # measured 2.1e-4 (r50 32 px) / 2.9e-12
    "head": (1e-5, 1e-12),         # measured 1.1e-6 / 0
    "ntxent": (1e-5, 1e-12),       # relative; measured 1.3e-7 / 3.2e-16
    "lars": (1e-6, 1e-12),         # measured 2.4e-7 / 0
    "train_step": (None, 1e-9),    # float64 one full step vs reference.train_step: 3.9e-14
}

DTYPES = ("float32", "float64")
NP = {"float32": np.float32, "float64": np.float64}


def tol(name, dtype):
    return TOL[name][DTYPES.index(dtype)]


def cast(a, dtype):
    """Round a float array to ``dtype`` (ints, bools unchanged)."""
    a = np.asarray(a)
    return a.astype(NP[dtype]) if a.dtype.kind == "f" else a


def to64(obj):
    if isinstance(obj, dict):
        return {k: to64(v) for k, v in obj.items()}
    a = np.asarray(obj)
    return a.astype(np.float64) if a.dtype.kind == "f" else obj


def max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


AUG = AugmentConfig(image_size=16, strength=1.0, blur_p=0.5)
R18 = ModelConfig(arch="resnet18", width=0.125, cifar_stem=True, head_out=16)
R18_IN = replace(R18, cifar_stem=False)
R50 = ModelConfig(arch="resnet50", width=0.125, cifar_stem=True, head_out=16)
R50_IN = replace(R50, cifar_stem=False)


def images(rng, n=6, h=20, w=24, levels=None):
    if levels is not None:
        return rng.choice(np.asarray(levels, np.uint8), size=(n, h, w, 3))
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def floats(rng, dtype, n=6, h=16, w=16, levels=None):
    return cast(images(rng, n, h, w, levels) / 255.0, dtype)


def perturbed_weights(cfg: ModelConfig, seed: int, num_classes=None):
    """init_weights with non-trivial BN parameters and running stats (so eval mode matters)."""
    rng = np.random.default_rng(seed)
    w = init_weights(cfg, seed, num_classes)
    for s in model_specs(cfg, num_classes):
        if s.kind == "bn.weight":
            w[s.name] = rng.uniform(0.5, 1.5, s.shape)
        elif s.kind in ("bn.bias", "linear.bias", "bn.running_mean"):
            w[s.name] = rng.normal(0, 0.2, s.shape)
        elif s.kind == "bn.running_var":
            w[s.name] = rng.uniform(0.5, 2.0, s.shape)
    return w


# =========================================================================== augmentation
def _params(rng, n=6, hw=(16, 16)):
    return sample_view_params(rng, AUG, n, hw)


AUG_CASES = {
    # name: (function, args maker(rng, dtype))
    "to_float": ("to_float", lambda r, dt: (images(r),)),
    "resized_crop": ("resized_crop", lambda r, dt: (floats(r, dt, h=20, w=24),
                                                    _params(r, 6, (20, 24)).crop, 16)),
    "resized_crop.upscale": ("resized_crop", lambda r, dt: (floats(r, dt, h=10, w=12),
                                                            _params(r, 6, (10, 12)).crop, 32)),
    "hflip": ("hflip", lambda r, dt: (floats(r, dt), _params(r).flip)),
    "brightness": ("adjust_brightness", lambda r, dt: (floats(r, dt), cast(_params(r).brightness, dt))),
    "contrast": ("adjust_contrast", lambda r, dt: (floats(r, dt), cast(_params(r).contrast, dt))),
    "saturation": ("adjust_saturation", lambda r, dt: (floats(r, dt), cast(_params(r).saturation, dt))),
    "hue": ("adjust_hue", lambda r, dt: (floats(r, dt), cast(_params(r).hue, dt))),
    "color_jitter": ("color_jitter", lambda r, dt: (floats(r, dt), _params(r))),
    "grayscale": ("grayscale", lambda r, dt: (floats(r, dt), np.array([1, 0, 1, 0, 1, 1], bool))),
    "gaussian_blur.k5": ("gaussian_blur", lambda r, dt: (
        floats(r, dt), cast([0.1, 0.5, 1.0, 1.5, 2.0, 0.8], dt), np.array([1, 1, 1, 1, 1, 0], bool), 5)),
    "augment": ("augment", lambda r, dt: (images(r), _params(r, 6, (20, 24)), AUG)),
    "augment.blur_k3_32px": ("augment", lambda r, dt: (
        images(r, 4, 40, 36), sample_view_params(r, replace(AUG, image_size=32, blur_p=1.0), 4, (40, 36)),
        replace(AUG, image_size=32, blur_p=1.0))),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(AUG_CASES))
def test_augment_op_matches_oracle(case, dtype):
    fn, make = AUG_CASES[case]
    args = make(np.random.default_rng(0), dtype)
    out = getattr(api, fn)(*args, dtype=dtype)
    expect = getattr(ref, fn)(*[to64(a) if isinstance(a, np.ndarray) else a for a in args])
    assert out.dtype == NP[dtype] and out.shape == expect.shape
    assert max_err(out, expect) <= tol("augment", dtype), case
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_hue_grey_pixels_and_ties(dtype):
    # every tie pattern of the max channel, grey pixels, and pure colours
    px = np.array([[0, 0, 0], [1, 1, 1], [.5, .5, .5], [1, 1, 0], [1, 0, 1], [0, 1, 1], [.2, .8, .8],
                   [.8, .8, .2], [.8, .2, .8], [1, 0, 0], [0, 1, 0], [0, 0, 1], [.3, .6, .6]])
    x = cast(np.tile(px[None, :, None, :], (5, 1, 2, 1)), dtype)  # (5, 13, 2, 3)
    delta = cast([0.0, 0.5, -0.5, 0.1, -0.2], dtype)
    out = api.adjust_hue(x, delta, dtype=dtype)
    assert max_err(out, ref.adjust_hue(to64(x), to64(delta))) <= tol("augment", dtype)
    grey = (px.max(1) == px.min(1))
    # closed forms: grey pixels never change; delta = 0 is the identity
    np.testing.assert_allclose(out[:, grey], x[:, grey], atol=tol("augment", dtype))
    np.testing.assert_allclose(out[0], x[0], atol=tol("augment", dtype))
    # half a turn twice is the identity
    back = api.adjust_hue(out[1:2], delta[1:2], dtype=dtype)
    np.testing.assert_allclose(back, x[1:2], atol=10 * tol("augment", dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_resized_crop_edge_boxes(dtype):
    rng = np.random.default_rng(1)
    x = floats(rng, dtype, n=6, h=20, w=24)
    boxes = np.array([[0, 0, 1, 1], [19, 23, 1, 1], [3, 5, 2, 7], [0, 0, 20, 24], [10, 0, 10, 1],
                      [5, 6, 15, 18]], np.int64)
    out = api.resized_crop(x, boxes, 16, dtype=dtype)
    assert max_err(out, ref.resized_crop(to64(x), boxes, 16)) <= tol("augment", dtype)
    # a 1-pixel box is that pixel everywhere
    np.testing.assert_array_equal(out[0], np.broadcast_to(x[0, 0, 0], (16, 16, 3)))
    np.testing.assert_array_equal(out[1], np.broadcast_to(x[1, 19, 23], (16, 16, 3)))
    # the whole image at its own size is the identity
    same = api.resized_crop(x[:, :16, :16], np.tile([[0, 0, 16, 16]], (6, 1)), 16, dtype=dtype)
    np.testing.assert_array_equal(same, x[:, :16, :16])


@pytest.mark.parametrize("dtype", DTYPES)
def test_blur_sigma_extremes(dtype):
    rng = np.random.default_rng(2)
    x = floats(rng, dtype, n=4, h=24, w=24)
    sigma = cast([0.1, 2.0, 50.0, 1e-3], dtype)
    mask = np.array([1, 1, 1, 1], bool)
    for k in (3, 23):
        out = api.gaussian_blur(x, sigma, mask, k, dtype=dtype)
        assert max_err(out, ref.gaussian_blur(to64(x), to64(sigma), mask, k)) <= tol("augment", dtype)
        # sigma -> 0 is the identity; huge sigma is a box filter of side k
        np.testing.assert_allclose(out[3], x[3], atol=tol("augment", dtype))
    assert out[2].std() < x[2].std() / 3
    none = api.gaussian_blur(x, sigma, np.zeros(4, bool), 5, dtype=dtype)
    np.testing.assert_array_equal(none, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_color_jitter_on_and_off(dtype):
    rng = np.random.default_rng(3)
    x = floats(rng, dtype)
    p = _params(rng)
    off = replace(p, jitter=np.zeros(6, bool))
    np.testing.assert_array_equal(api.color_jitter(x, off, dtype=dtype), x)  # untouched, bitwise
    on = replace(p, jitter=np.ones(6, bool))
    out = api.color_jitter(x, on, dtype=dtype)
    assert max_err(out, ref.color_jitter(to64(x), on)) <= tol("augment", dtype)
    # order matters: reversing every view's order changes the result
    rev = replace(on, jitter_order=on.jitter_order[:, ::-1].copy())
    assert max_err(api.color_jitter(x, rev, dtype=dtype), out) > 1e-3
    assert max_err(api.color_jitter(x, rev, dtype=dtype),
                   ref.color_jitter(to64(x), rev)) <= tol("augment", dtype)


def test_identity_view_is_resize_only():
    rng = np.random.default_rng(4)
    u8 = images(rng, 3, 16, 16)
    out = api.augment(u8, identity_params(3, (16, 16)), AUG, dtype="float64")
    np.testing.assert_array_equal(out, u8 / 255.0)


# =========================================================================== layers
def bn_args(rng, dtype, shape, bias=True, weight=True):
    c = shape[-1]
    return (cast(rng.normal(0.5, 2.0, shape), dtype),
            cast(rng.uniform(0.5, 1.5, c), dtype) if weight else None,
            cast(rng.normal(0, 0.5, c), dtype) if bias else None,
            cast(rng.normal(0, 0.3, c), dtype), cast(rng.uniform(0.5, 2.0, c), dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape,bias,weight", [((4, 5, 5, 6), True, True), ((8, 6), False, True),
                                               ((3, 2, 2, 4), False, False)])
def test_batch_norm_matches_oracle(shape, bias, weight, train, dtype):
    x, w, b, rm, rv = bn_args(np.random.default_rng(5), dtype, shape, bias, weight)
    out = api.batch_norm(x, w, b, rm, rv, train, 0.1, 1e-5, dtype=dtype)
    expect = ref.batch_norm(*[None if a is None else to64(a) for a in (x, w, b, rm, rv)], train, 0.1, 1e-5)
    for o, e in zip(out, expect):
        assert max_err(o, e) <= tol("bn", dtype)
    if train:  # closed form: the UNBIASED variance goes into running_var (PyTorch)
        axes = tuple(range(len(shape) - 1))
        unbiased = 0.9 * to64(rv) + 0.1 * to64(x).var(axis=axes, ddof=1)
        assert max_err(out[2], unbiased) <= tol("bn", dtype)
        biased = 0.9 * to64(rv) + 0.1 * to64(x).var(axis=axes)
        assert max_err(out[2], biased) > 1e-3


def test_batch_norm_module_agrees_with_torch():
    torch = pytest.importorskip("torch")
    from simclr_xb.backends.mlx.layers import BatchNorm
    rng = np.random.default_rng(6)
    x = rng.normal(1.0, 2.0, (4, 3, 3, 5)).astype(np.float32)
    tb = torch.nn.BatchNorm2d(5)
    mb = BatchNorm(5)
    for _ in range(2):
        tb.train()(torch.from_numpy(x).permute(0, 3, 1, 2))
        mb.train()
        mx.eval(mb(mx.array(x)))
    np.testing.assert_allclose(np.array(mb.running_var), tb.running_var.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.array(mb.running_mean), tb.running_mean.numpy(), atol=1e-6)
    assert int(mb.num_batches_tracked.item()) == int(tb.num_batches_tracked) == 2
    y_t = tb.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    mb.eval()
    np.testing.assert_allclose(np.array(mb(mx.array(x))), y_t, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cin,cout,k,stride,pad", [(3, 5, 3, 1, 1), (4, 6, 3, 2, 1), (3, 4, 7, 2, 3),
                                                   (5, 7, 1, 2, 0), (2, 3, 3, 1, 0)])
def test_conv2d_matches_oracle(cin, cout, k, stride, pad, dtype):
    rng = np.random.default_rng(7)
    x = cast(rng.normal(size=(2, 9, 9, cin)), dtype)
    w = cast(rng.normal(0, 1 / np.sqrt(cin * k * k), (cout, cin, k, k)), dtype)
    out = api.conv2d(x, w, stride, pad, dtype=dtype)
    assert max_err(out, ref.conv2d(to64(x), to64(w), stride, pad)) <= tol("conv", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [R18, R50], ids=["resnet18", "resnet50"])
def test_every_block_matches_oracle(cfg, dtype):
    w = {k: cast(v, dtype) for k, v in perturbed_weights(cfg, 8).items()}
    rng = np.random.default_rng(8)
    for spec in encoder_layout(cfg).blocks:
        x = cast(np.maximum(rng.normal(size=(4, 8, 8, spec.in_ch)), 0), dtype)
        for train in (True, False):
            y, up = api.block(x, w, spec, train, cfg.bn_momentum, cfg.bn_eps, dtype=dtype)
            ry, rup = ref.block(to64(x), to64(w), spec, train, cfg.bn_momentum, cfg.bn_eps)
            assert max_err(y, ry) <= tol("block", dtype), (spec.prefix, train)
            assert set(up) == set(rup)
            for k in up:
                assert max_err(up[k], rup[k]) <= tol("block", dtype), k


ENCODER_CASES = [(R18, 16, 4), (R18_IN, 32, 8), (R50, 16, 4), (R50_IN, 32, 8)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg,px,n", ENCODER_CASES,
                         ids=["r18_cifar16", "r18_imagenet32", "r50_cifar16", "r50_imagenet32"])
def test_forward_matches_oracle(cfg, px, n, dtype):
    w = {k: cast(v, dtype) for k, v in perturbed_weights(cfg, 9).items()}
    x = cast(np.random.default_rng(9).uniform(size=(n, px, px, 3)), dtype)
    for train in (True, False):
        h, z, up = api.forward(x, w, cfg, train, dtype=dtype)
        rh, rz, rup = ref.forward(to64(x), to64(w), cfg, train)
        assert h.shape == (n, feature_dim(cfg)) and z.shape == (n, cfg.head_out)
        assert set(up) == set(rup) and (bool(up) == train)
        t = tol("encoder.train" if train else "encoder.eval", dtype)
        assert max_err(h, rh) <= t * max(1.0, np.abs(rh).max())
        assert max_err(z, rz) <= t * max(1.0, np.abs(rz).max())
        for k in up:
            assert max_err(up[k], rup[k]) <= t * max(1.0, np.abs(rup[k]).max()), k
        assert all(int(up[k]) == int(w[k]) + 1 for k in up if k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [R18, replace(R18, head_bn=False), replace(R18, head_layers=3, head_hidden=24),
                                 replace(R18, head_bn=False, head_layers=1)],
                         ids=["bn2", "plain2", "bn3", "plain1"])
def test_head_matches_oracle(cfg, dtype):
    w = {k: cast(v, dtype) for k, v in perturbed_weights(cfg, 10).items()}
    hin = cast(np.maximum(np.random.default_rng(10).normal(size=(8, feature_dim(cfg))), 0), dtype)
    for train in (True, False):
        z, up = api.head(hin, w, cfg, train, dtype=dtype)
        rz, rup = ref.head(to64(hin), to64(w), cfg, train)
        assert max_err(z, rz) <= tol("head", dtype)
        assert set(up) == set(rup)
    if cfg.head_bn:  # the last BN has a weight but no bias (official code: center=False)
        last = cfg.head_layers - 1
        assert f"head.{last}.bn.weight" in w and f"head.{last}.bn.bias" not in w


# =========================================================================== NT-Xent
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,tau", [(1, 4, 0.5), (2, 8, 0.05), (2, 3, 0.5), (4, 16, 0.1),
                                     (16, 32, 0.05), (8, 128, 1.0)])
def test_nt_xent_value_and_grad(n, d, tau, dtype):
    z = cast(np.random.default_rng(11).normal(size=(2 * n, d)), dtype)
    t = tol("ntxent", dtype)
    val, rval = api.nt_xent(z, tau, dtype=dtype), ref.nt_xent(to64(z), tau)
    assert abs(val - rval) <= t * max(1.0, abs(rval))
    g, rg = api.nt_xent_grad(z, tau, dtype=dtype), ref.nt_xent_grad(to64(z), tau)
    assert g.shape == z.shape and np.isfinite(g).all()
    assert max_err(g, rg) <= t * max(1e-3, np.abs(rg).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 5])
def test_nt_xent_closed_form_all_equal(n, dtype):
    z = np.ones((2 * n, 7), NP[dtype])
    assert abs(api.nt_xent(z, 0.1, dtype=dtype) - np.log(2 * n - 1)) <= 1e-5


def test_nt_xent_rejects_bad_temperature():
    z = np.ones((4, 3), np.float32)
    for tau in (0.0, -0.5):
        with pytest.raises(ValueError, match="tau"):
            api.nt_xent(z, tau)


def test_nt_xent_float32_stable_at_low_temperature():
    # nearly identical embeddings at tau = 0.05: logits ~ 20, float32 must not overflow
    rng = np.random.default_rng(12)
    z = (1 + 1e-3 * rng.normal(size=(8, 16))).astype(np.float32)
    assert np.isfinite(api.nt_xent(z, 0.05)) and np.isfinite(api.nt_xent_grad(z, 0.05)).all()
    assert abs(api.nt_xent(z, 0.05) - ref.nt_xent(z.astype(np.float64), 0.05)) < 1e-4


# =========================================================================== LARS
def lars_args(dtype, nesterov):
    rng = np.random.default_rng(13)
    shapes = {"encoder.conv1.weight": (4, 3, 3, 3), "head.0.linear.weight": (5, 4),
              "encoder.bn1.weight": (4,), "encoder.bn1.bias": (4,), "head.0.linear.bias": (5,),
              "zero.weight": (3, 2), "zero_grad.weight": (2, 2)}
    params = {k: rng.normal(size=s) for k, s in shapes.items()}
    params["zero.weight"][:] = 0.0  # |w| = 0 -> trust 1
    grads = {k: rng.normal(0, 0.1, s) for k, s in shapes.items()}
    params["zero_grad.weight"][:] = 0.0
    grads["zero_grad.weight"][:] = 0.0  # |g| = 0 after decay -> trust 1, no NaN
    momenta = {k: rng.normal(0, 0.01, s) for k, s in shapes.items()}
    excluded = {k: len(s) == 1 for k, s in shapes.items()}
    cfg = OptimConfig(nesterov=nesterov, weight_decay=1e-4, eta=1e-3, momentum=0.9)
    c = lambda d: {k: cast(v, dtype) for k, v in d.items()}  # noqa: E731
    return c(params), c(grads), c(momenta), 0.8, cfg, excluded


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_step_matches_oracle(nesterov, dtype):
    args = lars_args(dtype, nesterov)
    p, m = api.lars_step(*args, dtype=dtype)
    rp, rm = ref.lars_step(*[to64(a) if isinstance(a, dict) and k < 3 else a
                             for k, a in enumerate(args)])
    for k in rp:
        assert np.isfinite(p[k]).all()
        assert max_err(p[k], rp[k]) <= tol("lars", dtype), k
        assert max_err(m[k], rm[k]) <= tol("lars", dtype), k
    # exclusion matters: the same step with nothing excluded differs on the BN weight
    none = {k: False for k in args[5]}
    p2, _ = api.lars_step(*args[:5], none, dtype=dtype)
    assert max_err(p2["encoder.bn1.weight"], p["encoder.bn1.weight"]) > 1e-4


def test_trainer_lars_exclusion_follows_param_kinds():
    t = api.Trainer(tiny_cfg(), num_classes=3)
    from mlx.utils import tree_flatten
    flags = {convert.to_canonical_name(k): v for k, v in tree_flatten(t.optimizer.excluded)}
    specs = {s.name: s for s in model_specs(t.cfg.model, 3) if s.trainable}
    assert set(flags) == set(specs)
    assert all(flags[n] == s.lars_excluded for n, s in specs.items())
    assert flags["encoder.bn1.weight"] and flags["probe.weight"] and flags["head.0.bn.bias"]
    assert not flags["encoder.conv1.weight"] and not flags["head.1.linear.weight"]


# =========================================================================== names & layout
@pytest.mark.parametrize("cfg", [R18, R50_IN, replace(R18, head_bn=False, head_layers=3)],
                         ids=["r18", "r50_in", "r18_plain3"])
def test_module_tree_is_canonical(cfg):
    from mlx.utils import tree_flatten
    m = SimCLRModel(cfg, num_classes=5)
    names = [convert.to_canonical_name(p) for p, _ in tree_flatten(m.parameters())]
    specs = model_specs(cfg, 5)
    assert sorted(names) == sorted(s.name for s in specs)
    for s in specs:
        assert convert.to_canonical_name(convert.to_mlx_path(s.name)) == s.name
    w = np.arange(2 * 3 * 5 * 7).reshape(2, 3, 5, 7)
    assert convert.relayout(w, "OIHW", "OHWI").shape == (2, 5, 7, 3)
    np.testing.assert_array_equal(convert.relayout(convert.relayout(w, "OIHW", "OHWI"), "OHWI", "OIHW"), w)


# =========================================================================== Trainer
def tiny_cfg(precision="float32", compile=False, seed=0):
    return Config(model=R18, augment=AugmentConfig(image_size=16, strength=0.5, blur_p=0.5),
                  loss=LossConfig(temperature=0.5), optim=OptimConfig(eta=0.02),
                  train=TrainConfig(batch_size=4, seed=seed, precision=precision, compile=compile))


def batch(seed=0, n=4, hw=(20, 20), step=0, cfg=None):
    cfg = cfg or tiny_cfg()
    rng = np.random.default_rng(seed)
    p1, p2 = sample_pair(cfg.augment, n, hw, seed, 0, step)
    return images(rng, n, *hw), np.arange(n) % 3, p1, p2


def test_trainer_starts_from_canonical_init():
    cfg = tiny_cfg()
    sd = api.Trainer(cfg, num_classes=3).state_dict()
    init = init_weights(cfg.model, cfg.train.seed, 3)
    specs = model_specs(cfg.model, 3)
    assert set(sd) == {s.name for s in specs} | {MOMENTUM_PREFIX + s.name for s in specs if s.trainable}
    for k, v in init.items():
        want = v.astype(np.float32) if v.dtype.kind == "f" else v
        assert sd[k].dtype == want.dtype and sd[k].shape == want.shape, k  # OIHW convs
        np.testing.assert_array_equal(sd[k], want)
    assert all(not sd[k].any() for k in sd if k.startswith(MOMENTUM_PREFIX))


def test_one_train_step_matches_oracle_float64():
    cfg = tiny_cfg("float64")
    u8, _, p1, p2 = batch()
    w = init_weights(cfg.model, 3)
    mom = {s.name: np.zeros(s.shape) for s in model_specs(cfg.model) if s.trainable}
    loss, nw, nm = api.train_step(w, mom, u8, p1, p2, 0.6, cfg, dtype="float64")
    rloss, rw, rm = ref.train_step(w, mom, u8, p1, p2, 0.6, cfg)
    assert abs(loss - rloss) <= tol("train_step", "float64")
    assert set(nw) == set(rw) and set(nm) == set(rm)
    assert max(max_err(nw[k], rw[k]) for k in rw) <= tol("train_step", "float64")
    assert max(max_err(nm[k], rm[k]) for k in rm) <= tol("train_step", "float64")
    assert nw["encoder.conv1.weight"].dtype == np.float64


def test_training_decreases_the_loss():
    t = api.Trainer(tiny_cfg(), num_classes=3)
    u8, y, p1, p2 = batch()
    out = [t.train_step(u8, y, p1, p2, 0.5) for _ in range(20)]
    losses = [o["loss"] for o in out]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * losses[0], losses
    assert set(out[0]) == {"loss", "probe_loss", "probe_acc"}
    assert out[-1]["probe_loss"] < out[0]["probe_loss"] and 0 <= out[-1]["probe_acc"] <= 1


def test_without_labels_the_probe_is_untouched():
    t = api.Trainer(tiny_cfg(), num_classes=3)
    u8, _, p1, p2 = batch()
    before = t.state_dict()
    out = t.train_step(u8, None, p1, p2, 0.5)
    assert set(out) == {"loss"}
    after = t.state_dict()
    for k in ("probe.weight", "probe.bias", "momentum/probe.weight"):
        np.testing.assert_array_equal(after[k], before[k])
    assert max_err(after["encoder.conv1.weight"], before["encoder.conv1.weight"]) > 0


def test_probe_never_moves_the_encoder():
    """The probe sees stop_gradient(h): with or without labels, encoder and head get the
    same update (only probe.* differ)."""
    u8, y, p1, p2 = batch()
    a, b = api.Trainer(tiny_cfg(), num_classes=3), api.Trainer(tiny_cfg(), num_classes=3)
    la = a.train_step(u8, y, p1, p2, 0.5)
    lb = b.train_step(u8, None, p1, p2, 0.5)
    assert la["loss"] == lb["loss"] and la["probe_loss"] > 0
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if "probe." not in k:
            assert max_err(sa[k], sb[k]) <= 1e-7, k
    assert max_err(sa["probe.weight"], sb["probe.weight"]) > 0


def test_determinism_same_seed_same_losses():
    u8, y, p1, p2 = batch()
    runs = []
    for _ in range(2):
        t = api.Trainer(tiny_cfg(seed=5), num_classes=3)
        runs.append([t.train_step(u8, y, p1, p2, lr)["loss"] for lr in (0.5, 0.4, 0.3)])
    assert runs[0] == runs[1]
    other = api.Trainer(tiny_cfg(seed=6), num_classes=3).train_step(u8, y, p1, p2, 0.5)["loss"]
    assert other != runs[0][0]


@pytest.fixture(scope="module")
def compiled_and_eager():
    """Three steps with the compiled step and the same three eagerly (lr changes every step).
    The first compiled call JIT-builds C++ kernels on Linux (tens of seconds on a cold cache)."""
    u8, y, p1, p2 = batch()
    out = {}
    for compiled in (True, False):
        t = api.Trainer(tiny_cfg(compile=compiled), num_classes=3)
        states, losses = [t.state_dict()], []
        for lr in (0.5, 0.4, 0.3):
            losses.append(t.train_step(u8, y, p1, p2, lr))
            states.append(t.state_dict())
        out[compiled] = (t, states, losses)
    return out


def test_running_stats_update_across_compiled_steps(compiled_and_eager):
    t, states, _ = compiled_and_eager[True]
    assert t.compiled and t.traces == 1  # traced once although lr changed every step
    bn = ["encoder.bn1", "encoder.layer4.1.bn2", "encoder.layer2.0.downsample.1", "head.1.bn"]
    for i in range(1, 4):
        for p in bn:
            assert int(states[i][f"{p}.num_batches_tracked"]) == i, p
            assert max_err(states[i][f"{p}.running_mean"], states[i - 1][f"{p}.running_mean"]) > 0, p
            assert max_err(states[i][f"{p}.running_var"], states[i - 1][f"{p}.running_var"]) > 0, p
        assert max_err(states[i]["momentum/encoder.conv1.weight"],
                       states[i - 1]["momentum/encoder.conv1.weight"]) > 0


def test_compiled_step_equals_eager_step(compiled_and_eager):
    _, s_c, l_c = compiled_and_eager[True]
    _, s_e, l_e = compiled_and_eager[False]
    for a, b in zip(l_c, l_e):
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(b[k])), k
    for k in s_e[1]:  # after one step: float32 rounding only
        assert max_err(s_c[1][k], s_e[1][k]) <= 1e-4 * max(1.0, np.abs(s_e[1][k]).max()), k


def test_first_step_running_stats_match_oracle_forward():
    """After one step, BN buffers are the oracle's train-mode forward over the 2N views."""
    cfg = tiny_cfg("float64")
    t = api.Trainer(cfg)
    u8, _, p1, p2 = batch()
    w0 = t.state_dict()
    t.train_step(u8, None, p1, p2, 0.5)
    x = np.concatenate([ref.augment(u8, p1, cfg.augment), ref.augment(u8, p2, cfg.augment)])
    _, _, rup = ref.forward(x, {k: v for k, v in w0.items() if "/" not in k}, cfg.model, True)
    sd = t.state_dict()
    assert max(max_err(sd[k], rup[k]) for k in rup) <= 1e-10


def test_state_dict_round_trip_is_exact():
    u8, y, p1, p2 = batch()
    a = api.Trainer(tiny_cfg(), num_classes=3)
    a.train_step(u8, y, p1, p2, 0.5)
    sd = a.state_dict()
    b = api.Trainer(tiny_cfg(seed=9), num_classes=3)
    b.load_state_dict(sd)
    sd2 = b.state_dict()
    assert set(sd2) == set(sd)
    for k in sd:
        assert sd2[k].dtype == sd[k].dtype and sd2[k].shape == sd[k].shape, k
        np.testing.assert_array_equal(sd2[k], sd[k], err_msg=k)
    assert sd["encoder.bn1.num_batches_tracked"].dtype == np.int64
    assert sd["encoder.conv1.weight"].shape == (8, 3, 3, 3)  # OIHW
    # and the two continue identically
    assert a.train_step(u8, y, p1, p2, 0.4) == b.train_step(u8, y, p1, p2, 0.4)


def test_load_state_dict_rejects_other_architecture():
    t = api.Trainer(tiny_cfg(), num_classes=3)
    other = api.Trainer(replace(tiny_cfg(), model=R50), num_classes=3).state_dict()
    with pytest.raises(ValueError, match="state_dict do not match the model"):
        t.load_state_dict(other)
    sd = t.state_dict()
    sd["encoder.conv1.weight"] = np.zeros((8, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"encoder.conv1.weight has shape \(8, 3, 5, 5\), model "
                                         r"expects \(8, 3, 3, 3\)"):
        t.load_state_dict(sd)
    sd = t.state_dict()
    del sd["momentum/head.0.linear.weight"]
    with pytest.raises(ValueError, match="momenta .*missing 1 entries .*head.0.linear.weight"):
        t.load_state_dict(sd)
    with pytest.raises(ValueError, match="images_u8 must have dtype uint8"):
        t.train_step(np.zeros((4, 16, 16, 3)), None, *batch()[2:], 0.1)


def test_load_weights_without_momenta_resets_them():
    u8, y, p1, p2 = batch()
    t = api.Trainer(tiny_cfg(), num_classes=3)
    t.train_step(u8, y, p1, p2, 0.5)
    sd = t.state_dict()
    assert np.abs(sd["momentum/encoder.conv1.weight"]).max() > 0
    t.load_state_dict({k: v for k, v in sd.items() if not k.startswith(MOMENTUM_PREFIX)})
    sd2 = t.state_dict()
    assert all(not sd2[k].any() for k in sd2 if k.startswith(MOMENTUM_PREFIX))
    np.testing.assert_array_equal(sd2["encoder.conv1.weight"], sd["encoder.conv1.weight"])


def test_encode_is_eval_mode_identity_view():
    t = api.Trainer(tiny_cfg(), num_classes=3)
    u8, y, p1, p2 = batch(hw=(16, 16))
    t.train_step(u8, y, p1, p2, 0.5)  # non-trivial running stats
    h = t.encode(u8, batch_size=3)
    assert h.shape == (4, feature_dim(R18)) and h.dtype == np.float32
    w = {k: v for k, v in t.state_dict().items() if "/" not in k}
    eh, up = api.encoder(u8 / 255.0, w, R18, False, dtype="float32")
    assert up == {}
    np.testing.assert_allclose(h, eh, atol=1e-5)
    # another batch size changes the BLAS blocking, so the sums round differently: entries
    # up to ~5 differ by a few float32 ulps (measured 1.9e-6 with OpenBLAS preloaded)
    np.testing.assert_allclose(t.encode(u8, batch_size=256), h, rtol=1e-6, atol=1e-6)
    assert t.state_dict()["encoder.bn1.num_batches_tracked"] == 1  # encode did not train


def test_precision_and_device_errors():
    with pytest.raises(ValueError, match="float64 runs only on the CPU"):
        api.Trainer(tiny_cfg("float64"), device="gpu")
    with pytest.raises(TypeError, match="DistContext"):
        api.Trainer(tiny_cfg(), dist=object())
    t = api.Trainer(tiny_cfg("float64"))
    assert t.device == "cpu"
    assert t.state_dict()["encoder.conv1.weight"].dtype == np.float64


def test_api_surface():
    from simclr_xb.backend import API_FUNCTIONS
    for name in API_FUNCTIONS + ("available", "version", "devices", "Trainer"):
        assert callable(getattr(api, name)), name
    assert api.available() and "cpu" in api.devices() and api.version().startswith("mlx")


# --------------------------------------------------------------------------- loss.chunk


@pytest.mark.parametrize("n,d,tau,chunk", [(5, 6, 0.5, 3), (4, 8, 0.05, 1), (3, 4, 0.2, 6)])
def test_eager_chunked_equals_custom_vjp_and_exact(n, d, tau, chunk):
    """nt_xent_chunked_value_and_grad (eager, what the trainer uses) == mx.value_and_grad of
    the custom-vjp nt_xent_chunked == the exact loss, float64."""
    from simclr_xb.backends.mlx.ntxent import nt_xent, nt_xent_chunked, nt_xent_chunked_value_and_grad
    z = mx.array(np.random.default_rng(n * 10 + d).normal(size=(2 * n, d)), dtype=mx.float64)
    with mx.stream(mx.cpu):
        le, ge = nt_xent_chunked_value_and_grad(z, tau, chunk)
        lc, gc = mx.value_and_grad(lambda t: nt_xent_chunked(t, tau, chunk))(z)
        lx, gx = mx.value_and_grad(lambda t: nt_xent(t, tau))(z)
        ge, gc, gx = (np.array(g) for g in (ge, gc, gx))
        for l_, g_ in ((lc, gc), (lx, gx)):
            assert abs(le.item() - l_.item()) <= 1e-12 * abs(l_.item())
            np.testing.assert_allclose(ge, g_, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="chunk"):
        nt_xent_chunked_value_and_grad(z, tau, 0)


def _peak(fn) -> int:
    """Bytes allocated by ``fn`` at its peak, above what was alive before (earlier tests' arrays)."""
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    fn()
    return mx.get_peak_memory() - base


def test_eager_chunked_peak_memory_is_linear():
    """Memory is an allocation count, not a timing: the eager chunked loss + gradient never
    holds more than one (chunk, 2N) block, so at N = 512 its peak is a small fraction of the
    exact loss's and doubling N doubles it (measured, mlx 0.32.4: 0.93 MB vs 19.8 MB exact,
    ratio 0.047; N = 1024: 1.87 MB, 2.00x)."""
    from simclr_xb.backends.mlx.ntxent import nt_xent, nt_xent_chunked_value_and_grad

    def z_of(n):
        z = mx.array(np.random.default_rng(0).normal(size=(2 * n, 32)).astype(np.float32))
        mx.eval(z)
        return z

    def exact(z):
        mx.eval(*mx.value_and_grad(lambda t: nt_xent(t, 0.5))(z))

    with mx.stream(mx.cpu):
        z1, z2 = z_of(512), z_of(1024)
        p_exact = _peak(lambda: exact(z1))
        p1 = _peak(lambda: nt_xent_chunked_value_and_grad(z1, 0.5, 64))
        p2 = _peak(lambda: nt_xent_chunked_value_and_grad(z2, 0.5, 64))
    assert p1 < 0.25 * p_exact, (p1, p_exact)
    assert p2 < 3.0 * p1, (p1, p2)  # linear (quadratic would be 4x)


@pytest.mark.parametrize("labels", [True, False], ids=["probe", "no-labels"])
def test_chunked_step_equals_exact_step_float64(labels):
    """loss.chunk: the loss gradient taken outside the transform, then the vjp of z (one more
    forward, BN buffers restored after it) gives the exact step's loss, probe metrics, weights,
    momenta and BN buffers (updated once: num_batches_tracked 1)."""
    u8, y, p1, p2 = batch()
    cfg = tiny_cfg("float64")
    cfg_c = replace(cfg, loss=replace(cfg.loss, chunk=3))
    a, b = api.Trainer(cfg, num_classes=3), api.Trainer(cfg_c, num_classes=3)
    la = a.train_step(u8, y if labels else None, p1, p2, 0.5)
    lb = b.train_step(u8, y if labels else None, p1, p2, 0.5)
    assert set(la) == set(lb)
    for k in la:
        assert abs(la[k] - lb[k]) <= 1e-12 * max(1.0, abs(la[k])), k
    sa, sb = a.state_dict(), b.state_dict()
    assert int(sb["encoder.bn1.num_batches_tracked"]) == 1
    for k in sa:
        assert max_err(sa[k], sb[k]) <= 1e-11 * max(1.0, np.abs(sa[k]).max()), k


def test_chunked_extra_forward_failure_leaves_the_bn_buffers(monkeypatch):
    """If the extra forward of loss.chunk fails (e.g. out of memory), the BN buffers it replaced
    are put back: the trainer stays usable and its state is what it was."""
    cfg = tiny_cfg()
    t = api.Trainer(replace(cfg, loss=replace(cfg.loss, chunk=3)), num_classes=3)
    u8, y, p1, p2 = batch()
    t.train_step(u8, y, p1, p2, 0.5)
    before = t.state_dict()

    def out_of_memory(*a, **k):
        raise MemoryError("simulated")
    monkeypatch.setattr(mx, "eval", out_of_memory)
    with pytest.raises(MemoryError):
        t.train_step(u8, y, p1, p2, 0.5)
    monkeypatch.undo()
    after = t.state_dict()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert "loss" in t.train_step(u8, y, p1, p2, 0.5)
    assert int(t.state_dict()["encoder.bn1.num_batches_tracked"]) == 2
