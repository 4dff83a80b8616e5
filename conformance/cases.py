"""Named conformance cases: a seeded input maker and the function name shared by the oracle
(:mod:`simclr_xb.reference`) and every backend's ``api`` module.

A case runs the same positional arguments through each implementation and the runner
compares every pair (torch ~ oracle, mlx ~ oracle, torch ~ mlx). Inputs are made in float64
and rounded once to the case's dtype, so every implementation sees the same numbers; the
oracle always computes in float64.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from simclr_xb.augment import identity_params, sample_view_params
from simclr_xb.config import AugmentConfig, Config, LossConfig, ModelConfig, OptimConfig, TrainConfig
from simclr_xb.resnet_spec import encoder_layout, init_weights, model_specs
from simclr_xb.schedules import warmup_cosine

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Case:
    """``make(rng, dtype) -> tuple of positional args``; ``fn``: the shared function name, or a
    callable ``fn(call, *args)`` composing shared functions (``call(name, *args)``)."""

    name: str
    fn: str | Callable
    make: Callable[[np.random.Generator, str], tuple]
    doc: str = ""
    oracle: bool = True  # the float64 oracle takes part
    kind: str = "numeric"  # "numeric" | "crossload" | "core"
    impls: dict = field(default_factory=dict)  # for kind "core": name -> callable(*args)
    dtypes: tuple = DTYPES
    seed: int = 0
    kwargs: dict = field(default_factory=dict)  # keyword arguments for every implementation (recipe=...)


def _cast(a, dtype):
    a = np.asarray(a)
    return a.astype(dtype) if a.dtype.kind == "f" else a


def _images_u8(rng, n=6, h=20, w=24, levels=None):
    if levels is not None:  # few grey levels: ties and grey pixels (hue edge cases)
        return rng.choice(np.asarray(levels, np.uint8), size=(n, h, w, 3))
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


AUG = AugmentConfig(image_size=16, strength=1.0, blur_p=0.5, flip_p=0.5, jitter_p=0.8, gray_p=0.2)


def _params(rng, n, hw, cfg=AUG):
    return sample_view_params(rng, cfg, n, hw)


def _floats(rng, dtype, n=6, h=16, w=16, levels=None):
    return _cast(_images_u8(rng, n, h, w, levels) / 255.0, dtype)


# --------------------------------------------------------------------------- augmentation
def _aug_cases() -> list[Case]:
    cases = []

    def crop(rng, dt):
        x = _floats(rng, dt, h=20, w=24)
        return x, _params(rng, 6, (20, 24)).crop, 16

    def crop_tiny_boxes(rng, dt):
        x = _floats(rng, dt, h=20, w=24)
        boxes = np.array([[0, 0, 1, 1], [19, 23, 1, 1], [3, 5, 2, 7], [0, 0, 20, 24], [10, 0, 10, 1],
                          [5, 6, 15, 18]], np.int64)
        return x, boxes, 16

    cases += [Case("augment.resized_crop", "resized_crop", crop, "bilinear crop+resize, 20x24 -> 16"),
              Case("augment.resized_crop.edge_boxes", "resized_crop", crop_tiny_boxes,
                   "1-pixel, 1-wide, full and corner boxes"),
              Case("augment.hflip", "hflip", lambda r, dt: (_floats(r, dt), _params(r, 6, (16, 16)).flip))]
    for op, field_ in (("adjust_brightness", "brightness"), ("adjust_contrast", "contrast"),
                       ("adjust_saturation", "saturation"), ("adjust_hue", "hue")):
        cases.append(Case(f"augment.{op}", op, lambda r, dt, f=field_: (
            _floats(r, dt), _cast(getattr(_params(r, 6, (16, 16)), f), dt))))
    cases.append(Case("augment.adjust_hue.grey_and_ties", "adjust_hue", lambda r, dt: (
        _floats(r, dt, levels=(0, 64, 128, 255)), _cast(_params(r, 6, (16, 16)).hue, dt)),
        "pixels with equal channels and tied maxima"))
    cases.append(Case("augment.color_jitter", "color_jitter",
                      lambda r, dt: (_floats(r, dt), _params(r, 6, (16, 16))),
                      "four ops in per-view random order, p=0.8"))
    cases.append(Case("augment.grayscale", "grayscale",
                      lambda r, dt: (_floats(r, dt), np.array([1, 0, 1, 0, 1, 1], bool))))

    def blur(rng, dt, size=16, k=5):
        _params(rng, 6, (size, size))  # drawn only to keep the rng where the case's inputs expect it
        sig = np.array([0.1, 0.5, 1.0, 1.5, 2.0, 0.8])
        return _floats(rng, dt, h=size, w=size), _cast(sig, dt), np.array([1, 1, 1, 1, 1, 0], bool), k

    cases.append(Case("augment.gaussian_blur.k5", "gaussian_blur", blur, "sigma 0.1..2, reflect pad"))
    cases.append(Case("augment.gaussian_blur.k23", "gaussian_blur",
                      lambda r, dt: blur(r, dt, size=64, k=23), "the ImageNet kernel side (23)"))

    def full(rng, dt, cfg=AUG, hw=(20, 24), n=6):
        return _images_u8(rng, n, *hw), _params(rng, n, hw, cfg), cfg

    cases.append(Case("augment.full.16px", "augment", full, "the whole pipeline, blur on"))
    cases.append(Case("augment.full.64px_from_96", "augment", lambda r, dt: full(
        r, dt, AugmentConfig(image_size=64, blur_p=0.5), (96, 80), 4), "ImageNet-like pipeline, k=7"))
    cases.append(Case("augment.cropped_views", "augment_cropped", lambda r, dt: (
        _images_u8(r, 6, 16, 16), _params(r, 6, (300, 200)), AUG),
        "views already cut by the data workers (boxes in 300x200 source pixels): flip, jitter, "
        "grayscale, blur"))
    cases.append(Case("augment.identity_view", "augment", lambda r, dt: (
        _images_u8(r, 4, 16, 16), identity_params(4, (16, 16)), AUG), "the evaluation view"))
    return cases


# --------------------------------------------------------------------------- layers
def _bn_args(rng, dt, shape, train, bias=True):
    c = shape[-1]
    x = rng.normal(0.5, 2.0, shape)
    w = rng.uniform(0.5, 1.5, c)
    b = rng.normal(0, 0.5, c) if bias else None
    rm, rv = rng.normal(0, 0.3, c), rng.uniform(0.5, 2.0, c)
    return (_cast(x, dt), _cast(w, dt), None if b is None else _cast(b, dt), _cast(rm, dt),
            _cast(rv, dt), train, 0.1, 1e-5)


def _conv_args(rng, dt, cin, cout, k, stride, pad, hw=9):
    return (_cast(rng.normal(size=(2, hw, hw, cin)), dt),
            _cast(rng.normal(0, 1 / math.sqrt(cin * k * k), (cout, cin, k, k)), dt), stride, pad)


def _perturbed_weights(rng, cfg: ModelConfig, num_classes=None):
    """init_weights with non-trivial BN parameters and running statistics (eval mode matters)."""
    w = init_weights(cfg, seed=int(rng.integers(1 << 30)), num_classes=num_classes)
    for s in model_specs(cfg, num_classes):
        if s.kind == "bn.weight":
            w[s.name] = rng.uniform(0.5, 1.5, s.shape)
        elif s.kind == "bn.bias":
            w[s.name] = rng.normal(0, 0.2, s.shape)
        elif s.kind == "bn.running_mean":
            w[s.name] = rng.normal(0, 0.2, s.shape)
        elif s.kind == "bn.running_var":
            w[s.name] = rng.uniform(0.5, 2.0, s.shape)
        elif s.kind == "linear.bias":
            w[s.name] = rng.normal(0, 0.1, s.shape)
    return w


def _cast_weights(w, dt):
    return {k: _cast(v, dt) for k, v in w.items()}


R18 = ModelConfig(arch="resnet18", width=0.125, cifar_stem=True, head_out=16)
R50 = ModelConfig(arch="resnet50", width=0.125, cifar_stem=False, head_out=16)
R18_NOBN = replace(R18, head_bn=False, head_layers=3, head_hidden=24)


def _layer_cases() -> list[Case]:
    cases = []
    for train in (True, False):
        mode = "train" if train else "eval"
        cases.append(Case(f"bn.{mode}.4d", "batch_norm",
                          lambda r, dt, t=train: _bn_args(r, dt, (4, 5, 5, 6), t)))
        cases.append(Case(f"bn.{mode}.2d_no_beta", "batch_norm",
                          lambda r, dt, t=train: _bn_args(r, dt, (8, 6), t, bias=False)))
    for name, args in (("3x3s1p1", (3, 5, 3, 1, 1)), ("3x3s2p1", (4, 6, 3, 2, 1)),
                       ("7x7s2p3", (3, 4, 7, 2, 3)), ("1x1s2p0", (5, 7, 1, 2, 0))):
        cases.append(Case(f"conv2d.{name}", "conv2d", lambda r, dt, a=args: _conv_args(r, dt, *a)))

    def block_args(rng, dt, cfg, idx, train, hw):
        spec = encoder_layout(cfg).blocks[idx]
        w = _cast_weights(_perturbed_weights(rng, cfg), dt)
        x = _cast(np.maximum(rng.normal(size=(4, hw, hw, spec.in_ch)), 0), dt)
        return x, w, spec, train, cfg.bn_momentum, cfg.bn_eps

    cases += _winograd_cases(block_args)
    for train in (True, False):
        mode = "train" if train else "eval"
        cases.append(Case(f"block.basic.stride2.{mode}", "block",
                          lambda r, dt, t=train: block_args(r, dt, R18, 2, t, 8)))
        cases.append(Case(f"block.bottleneck.stride2.{mode}", "block",
                          lambda r, dt, t=train: block_args(r, dt, R50, 3, t, 8)))
        cases.append(Case(f"encoder.resnet18_cifar.{mode}", "encoder", lambda r, dt, t=train: (
            _floats(r, dt, 4, 16, 16), _cast_weights(_perturbed_weights(r, R18), dt), R18, t)))
        cases.append(Case(f"encoder.resnet50_imagenet_stem.{mode}", "encoder", lambda r, dt, t=train: (
            # 64 px so that layer4 still has 2x2 maps: at 32 px its BN normalises 4 values per
            # channel and float32 rounding is amplified ~1000x (measured 5.8e-3), an input problem.
            _floats(r, dt, 8, 64, 64), _cast_weights(_perturbed_weights(r, R50), dt), R50, t)))

        def head_args(rng, dt, cfg, t):
            from simclr_xb.resnet_spec import feature_dim
            h = np.maximum(rng.normal(size=(8, feature_dim(cfg))), 0)
            return _cast(h, dt), _cast_weights(_perturbed_weights(rng, cfg), dt), cfg, t

        cases.append(Case(f"head.bn.{mode}", "head", lambda r, dt, t=train: head_args(r, dt, R18, t)))
        cases.append(Case(f"head.plain_3layer.{mode}", "head",
                          lambda r, dt, t=train: head_args(r, dt, R18_NOBN, t)))
    return cases


# Shapes at which Metal swaps in a Winograd kernel for 3x3 stride-1 convolutions: MLX's
# mlx/backend/metal/conv.cpp takes winograd_conv_2D_gpu for a 3x3, stride-1, undilated,
# unflipped conv with C % 32 == 0, O % 32 == 0, C + O >= 256 and N*H*W >= 4096 (the input
# pixels). Here C = O = 128 and N*H*W = 4 * 32 * 32 = 4096: just at the threshold. Every other
# case uses width 0.125 (at most 64 channels), which never reaches it.
R18_W05 = replace(R18, width=0.5)  # layer3.1: a basic block 128 -> 128, stride 1


def _winograd_cases(block_args) -> list[Case]:
    def conv(rng, dt):
        x = rng.normal(size=(4, 32, 32, 128))
        w = rng.normal(0, 1 / math.sqrt(128 * 9), (128, 128, 3, 3))
        return _cast(x, dt), _cast(w, dt), 1, 1

    doc = "Winograd-sized: C = O = 128, 3x3 stride 1, N*H*W = 4096"
    cases = [Case("conv2d.winograd.3x3s1p1.c128", "conv2d", conv, doc)]
    for train in (True, False):
        mode = "train" if train else "eval"
        cases.append(Case(f"block.basic.winograd.c128.{mode}", "block",
                          lambda r, dt, t=train: block_args(r, dt, R18_W05, 5, t, 32), doc))
    return cases


# --------------------------------------------------------------------------- loss
NTXENT_GRID = ((2, 8, 0.05), (2, 3, 0.5), (4, 16, 0.1), (8, 128, 0.5), (32, 32, 0.05), (64, 16, 1.0))
# (N, d, tau, chunk): chunks that do not divide 2N (last block shorter), one row per block,
# one block bigger than 2N, and one that divides it.
NTXENT_CHUNKED_GRID = ((3, 8, 0.05, 4), (5, 4, 0.05, 1), (16, 32, 0.05, 5), (33, 16, 0.05, 64),
                       (64, 128, 0.05, 48), (8, 16, 0.05, 100), (32, 32, 0.5, 16))


def _ntxent_cases() -> list[Case]:
    cases = []
    for n, d, tau in NTXENT_GRID:
        def make(rng, dt, n=n, d=d, tau=tau):
            return _cast(rng.normal(size=(2 * n, d)), dt), tau
        tag = f"N{n}.d{d}.tau{tau:g}"
        cases.append(Case(f"nt_xent.value.{tag}", "nt_xent", make))
        cases.append(Case(f"nt_xent.grad.{tag}", "nt_xent_grad", make))
    for n, d, tau, chunk in NTXENT_CHUNKED_GRID:
        def make(rng, dt, n=n, d=d, tau=tau, chunk=chunk):
            return _cast(rng.normal(size=(2 * n, d)), dt), tau, chunk
        tag = f"N{n}.d{d}.tau{tau:g}.chunk{chunk}"
        doc = "chunked vs the EXACT oracle; " + (
            "chunk does not divide 2N" if (2 * n) % chunk else "chunk divides 2N")
        cases.append(Case(f"nt_xent_chunked.value.{tag}", "nt_xent_chunked", make, doc))
        cases.append(Case(f"nt_xent_chunked.grad.{tag}", "nt_xent_chunked_grad", make, doc))
    return cases


# --------------------------------------------------------------------------- optimiser
def _lars_args(rng, dt, nesterov):
    shapes = {"encoder.conv1.weight": (4, 3, 3, 3), "head.0.linear.weight": (5, 4),
              "encoder.bn1.weight": (4,), "encoder.bn1.bias": (4,), "head.0.linear.bias": (5,),
              "zero.weight": (3, 2)}
    params = {k: rng.normal(size=s) for k, s in shapes.items()}
    params["zero.weight"][:] = 0.0  # |w| = 0: trust falls back to 1
    grads = {k: rng.normal(0, 0.1, s) for k, s in shapes.items()}
    momenta = {k: rng.normal(0, 0.01, s) for k, s in shapes.items()}
    excluded = {k: (len(s) == 1) for k, s in shapes.items()}
    cfg = OptimConfig(nesterov=nesterov, weight_decay=1e-4, eta=1e-3, momentum=0.9)
    return (_cast_weights(params, dt), _cast_weights(grads, dt), _cast_weights(momenta, dt), 0.8,
            cfg, excluded)


def _lars_cases() -> list[Case]:
    return [Case("lars.step.classic", "lars_step", lambda r, dt: _lars_args(r, dt, False),
                 "decay + trust ratio; BN/bias excluded; a zero weight"),
            Case("lars.step.nesterov", "lars_step", lambda r, dt: _lars_args(r, dt, True))]


def _schedule_oracle(steps, total, warmup, peak):
    """The schedule written as one vectorised closed form (independent of schedules.py)."""
    s = np.asarray(steps, np.float64)
    warm = peak * s / max(warmup, 1)
    cos = peak * 0.5 * (1 + np.cos(np.pi * np.clip((s - warmup) / max(total - warmup, 1), 0, 1)))
    return np.where(s < warmup, warm, cos)


def _schedule_core(steps, total, warmup, peak):
    return np.array([warmup_cosine(int(s), total, warmup, peak) for s in steps])


SCHEDULE_CASE = Case(
    "schedule.warmup_cosine", "warmup_cosine",
    lambda r, dt: (np.arange(0, 1001), 1000, 100, 1.2),
    "the core's schedule (used by every backend: the loop writes lr into the optimiser every step) "
    "against an independent closed form", kind="core",
    impls={"core": _schedule_core, "reference": _schedule_oracle}, dtypes=("float64",))


# --------------------------------------------------------------------------- training step
TINY = Config(model=R18, augment=AugmentConfig(image_size=16, strength=0.5, blur_p=0.5),
              loss=LossConfig(temperature=0.5), optim=OptimConfig(lr_scaling="sqrt"),
              train=TrainConfig(batch_size=4, precision="float32"))


# The multi-step cases' rates: 1/5 of the single step's. A ReLU input within float32 noise of 0
# (~1e-6; about one per few steps at this size) flips sign between float32 and float64 and
# changes a gradient by a finite amount; BN parameters take that as lr * g (LARS trust 1) and
# every later step amplifies it. At lr 0.1 that took float32 trajectories 5e-3 .. 6e-2 away from
# the oracle in 5 steps; at 0.02 ~2e-4, while a 1% gradient error still moves them 4e-2.
# Measurements: docs/float32.md (scripts/float32_study.py).
MULTI_STEP_LRS = (0.02, 0.016, 0.012, 0.008, 0.004)


def _step_args(rng, dt, k, lrs=(0.1, 0.08, 0.06, 0.04, 0.02)):
    images = _images_u8(rng, 4, 20, 20)
    w = _cast_weights(init_weights(TINY.model, seed=3), dt)
    momenta = {s.name: np.zeros(s.shape, dt) for s in model_specs(TINY.model) if s.trainable}
    views = [(_params(rng, 4, (20, 20), TINY.augment), _params(rng, 4, (20, 20), TINY.augment))
             for _ in range(k)]
    # Moderate rates: in float32 the stem BN's gradient sums 2N*H*W terms that cancel to ~1e-3
    # of their size (~1% relative error, in every implementation), and BN parameters take plain
    # SGD steps (LARS trust 1), so float32 trajectories separate by a factor ~3 per step at
    # lr 0.6. Bugs in momentum or ordering still show plainly in float64 (tolerance 1e-10).
    return w, momenta, images, views, list(lrs[:k]), TINY


def k_train_steps(call, weights, momenta, images, views, lrs, cfg):
    """K consecutive train_step calls, feeding each step's weights into the next."""
    losses = []
    for (p1, p2), lr in zip(views, lrs):
        loss, weights, momenta = call("train_step", weights, momenta, images, p1, p2, lr, cfg)
        losses.append(loss)
    return {"losses": np.array(losses), "weights": weights, "momenta": momenta}


def _step_cases() -> list[Case]:
    return [Case("train_step.1", k_train_steps, lambda r, dt: _step_args(r, dt, 1),
                 "augment both views, one forward over 2N, NT-Xent, backward, LARS"),
            Case("train_step.5", k_train_steps, lambda r, dt: _step_args(r, dt, 5, MULTI_STEP_LRS),
                 "five consecutive steps from identical weights and view parameters (lr 0.02 .. 0.004)"),
            Case("train_step.1.chunked_loss", k_train_steps, _chunked_step_args,
                 "loss.chunk = 3 (blocks of 3 rows of the 8 views) against the exact oracle step")]


def _chunked_step_args(rng, dt):
    w, momenta, images, views, lrs, cfg = _step_args(rng, dt, 1)
    return w, momenta, images, views, lrs, replace(cfg, loss=replace(cfg.loss, chunk=3))


CROSSLOAD_CASE = Case("checkpoint.crossload", "crossload", lambda r, dt: (TINY,),
                      "Trainer state -> HDF5 -> the other backend -> state: bit-exact",
                      kind="crossload", dtypes=("float32",))


# --------------------------------------------------------------------------- tf2 recipe
AUG_TF2 = replace(AUG, recipe="tf2", crop_tries=100)


def _recipe_cases() -> list[Case]:
    """augment.recipe = "tf2" ops and loss.reduction = "tf2" (the official tf2 code)."""
    tf2 = {"recipe": "tf2"}

    def crop(rng, dt, size=16, hw=(20, 24)):
        return _floats(rng, dt, h=hw[0], w=hw[1]), _params(rng, 6, hw, AUG_TF2).crop, size

    def edge_boxes(rng, dt):
        x = _floats(rng, dt, h=20, w=24)
        boxes = np.array([[0, 0, 1, 1], [19, 23, 1, 1], [3, 5, 2, 7], [0, 0, 20, 24], [10, 0, 10, 1],
                          [5, 6, 15, 18]], np.int64)
        return x, boxes, 16

    def overshoot(rng, dt):  # bicubic output is not clamped: the jitter ops see values past [0, 1]
        return _cast(rng.uniform(-0.1, 1.1, size=(6, 16, 16, 3)), dt), _cast(rng.uniform(0.2, 1.8, 6), dt)

    def factor(rng, dt, field_):
        return _floats(rng, dt), _cast(getattr(_params(rng, 6, (16, 16), AUG_TF2), field_), dt)

    def blur(rng, dt, size=16, k=5):
        sig = np.array([0.1, 0.5, 1.0, 1.5, 2.0, 0.8])
        return _floats(rng, dt, h=size, w=size), _cast(sig, dt), np.array([1, 1, 1, 1, 1, 0], bool), k

    def full(rng, dt, cfg=AUG_TF2, hw=(20, 24), n=6):
        return _images_u8(rng, n, *hw), _params(rng, n, hw, cfg), cfg

    cases = [
        Case("augment.tf2.resized_crop", "resized_crop", crop, "TF bicubic crop+resize, 20x24 -> 16",
             kwargs=tf2),
        Case("augment.tf2.resized_crop.upsample", "resized_crop", lambda r, dt: crop(r, dt, 32),
             "boxes up to 20x24 -> 32 (taps beyond the box dropped, renormalised)", kwargs=tf2),
        Case("augment.tf2.resized_crop.edge_boxes", "resized_crop", edge_boxes,
             "1-pixel, 1-wide, full and corner boxes", kwargs=tf2),
        Case("augment.tf2.adjust_contrast", "adjust_contrast", lambda r, dt: factor(r, dt, "contrast"),
             "per-channel mean", kwargs=tf2),
        Case("augment.tf2.adjust_saturation", "adjust_saturation", lambda r, dt: factor(r, dt, "saturation"),
             "HSV S * t clipped", kwargs=tf2),
        Case("augment.tf2.adjust_saturation.overshoot", "adjust_saturation", overshoot,
             "inputs in [-0.1, 1.1] (unclamped bicubic output)", kwargs=tf2),
        Case("augment.tf2.adjust_contrast.overshoot", "adjust_contrast", overshoot,
             "inputs in [-0.1, 1.1] (unclamped bicubic output)", kwargs=tf2),
        Case("augment.tf2.color_jitter", "color_jitter", lambda r, dt: (_floats(r, dt), _params(r, 6, (16, 16))),
             "four tf2 ops in per-view random order", kwargs=tf2),
        Case("augment.tf2.grayscale", "grayscale",
             lambda r, dt: (_floats(r, dt), np.array([1, 0, 1, 0, 1, 1], bool)), "0.2989/0.5870/0.1140",
             kwargs=tf2),
        Case("augment.tf2.gaussian_blur.k5", "gaussian_blur", blur, "zero ('SAME') padding", kwargs=tf2),
        Case("augment.tf2.gaussian_blur.k23", "gaussian_blur", lambda r, dt: blur(r, dt, size=64, k=23),
             "the ImageNet kernel side, zero padding", kwargs=tf2),
        Case("augment.tf2.full.16px", "augment", full, "the whole tf2 pipeline, blur on"),
        Case("augment.tf2.full.64px_from_96", "augment", lambda r, dt: full(
            r, dt, replace(AUG_TF2, image_size=64), (96, 80), 4), "ImageNet-like tf2 pipeline, k=7"),
    ]
    red = {"reduction": "tf2"}
    for tag, n, d, tau in (("n8_d16_tau0.5", 8, 16, 0.5), ("n32_d128_tau0.1", 32, 128, 0.1)):
        def make(rng, dt, n=n, d=d, tau=tau):
            return _cast(rng.normal(size=(2 * n, d)), dt), tau
        cases += [Case(f"nt_xent.tf2.value.{tag}", "nt_xent", make, "2x eq. 1 (objective.py)", kwargs=red),
                  Case(f"nt_xent.tf2.grad.{tag}", "nt_xent_grad", make, kwargs=red)]

        def make_chunked(rng, dt, n=n, d=d, tau=tau):
            return _cast(rng.normal(size=(2 * n, d)), dt), tau, 5
        cases += [Case(f"nt_xent_chunked.tf2.value.{tag}", "nt_xent_chunked", make_chunked, kwargs=red),
                  Case(f"nt_xent_chunked.tf2.grad.{tag}", "nt_xent_chunked_grad", make_chunked, kwargs=red)]

    def step_tf2(rng, dt):
        cfg = replace(TINY, augment=replace(TINY.augment, recipe="tf2", crop_tries=100),
                      loss=replace(TINY.loss, reduction="tf2"),
                      model=replace(TINY.model, zero_init_residual=True, init="tf"))
        images = _images_u8(rng, 4, 20, 20)
        w = _cast_weights(init_weights(cfg.model, seed=3), dt)
        momenta = {s.name: np.zeros(s.shape, dt) for s in model_specs(cfg.model) if s.trainable}
        views = [(_params(rng, 4, (20, 20), cfg.augment), _params(rng, 4, (20, 20), cfg.augment))]
        return w, momenta, images, views, [0.1], cfg

    cases.append(Case("train_step.1.tf2", k_train_steps, step_tf2,
                      "tf2 recipe + reduction, zero-init residual, TF init: one full step"))
    return cases


# --------------------------------------------------------------------------- data workers
def photo_like(rng, h: int, w: int) -> np.ndarray:
    """uint8 (h, w, 3): smooth colour gradients, a few hard-edged discs and mild noise (a JPEG
    of it has the edges and flat areas of a photograph; pure noise would not)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([128 + 100 * np.sin(x / (w / 3) + c) * np.cos(y / (h / 2) - c) for c in (0.0, 1.0, 2.0)], -1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.25) * min(h, w)
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _jpeg_bytes(img: np.ndarray, quality: int = 90) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _worker_views(data: bytes, boxes, size: int, draft: bool, resample: str = "bilinear",
                  resize: str = "pillow") -> np.ndarray:
    """The data workers' decode + crop + resize (simclr_xb.data.decode.crop_views) -> [0, 1]."""
    from simclr_xb.data.decode import crop_views
    out = np.empty((len(boxes), size, size, 3), np.uint8)
    crop_views(data, boxes, size, out, "case", resample=resample, draft=draft, resize=resize)
    return out / 255.0


def _torch_worker_views(data: bytes, boxes, size: int, draft: bool, resample: str = "bilinear") -> np.ndarray:
    """The same with ``data.resize = torch`` (simclr_xb.backends.torch.resize)."""
    return _worker_views(data, boxes, size, draft, resample, resize="torch")


def _oracle_views(data: bytes, boxes, size: int, draft: bool, resample: str = "bilinear") -> np.ndarray:
    """The oracle's crop-then-resize of the fully decoded image (no draft mode)."""
    import io

    from PIL import Image

    from simclr_xb import reference
    with Image.open(io.BytesIO(data)) as im:
        img = np.asarray(im.convert("RGB"))
    return reference.crop_resize_antialias(img, boxes, size, resample)


def _decode_args(rng, dt, draft: bool):
    h, w = 600, 800
    data = _jpeg_bytes(photo_like(rng, h, w))
    if draft:  # boxes >= 4 x the view side: libjpeg decodes at 1/4 or 1/8 scale
        boxes = np.array([[0, 0, 600, 800], [50, 100, 400, 300], [10, 20, 300, 520], [200, 300, 256, 260]])
        return data, boxes, 64, True
    crop = sample_view_params(rng, AugmentConfig(image_size=96), 6, (h, w)).crop
    return data, np.concatenate([crop, [[0, 0, 600, 800], [5, 7, 90, 100]]]), 96, False


def _data_cases() -> list[Case]:
    impls = {"core": _worker_views, "reference": _oracle_views}
    torch_impls = {"core": _torch_worker_views, "reference": _oracle_views, "requires": "torch"}
    return [Case("data.decode_crop_resize", None, lambda r, dt: _decode_args(r, dt, False),
                 "workers' JPEG decode + crop + antialiased resize vs the oracle on the decoded image",
                 kind="core", impls=impls, dtypes=("float64",)),
            Case("data.decode_crop_resize.draft", None, lambda r, dt: _decode_args(r, dt, True),
                 "the same with JPEG draft mode (DCT-scaled decode) for boxes >= 4x the view",
                 kind="core", impls=impls, dtypes=("float64",)),
            Case("data.decode_crop_resize.bicubic", None,
                 lambda r, dt: _decode_args(r, dt, False) + ("bicubic",),
                 "the antialiased bicubic resize the workers use for augment.recipe = tf2",
                 kind="core", impls=impls, dtypes=("float64",)),
            Case("data.decode_crop_resize.torch", None, lambda r, dt: _decode_args(r, dt, False),
                 "the workers' decode + crop with torch's uint8 antialiased resize (data.resize = torch)",
                 kind="core", impls=torch_impls, dtypes=("float64",)),
            Case("data.decode_crop_resize.torch.bicubic", None,
                 lambda r, dt: _decode_args(r, dt, False) + ("bicubic",),
                 "the same in bicubic (augment.recipe = tf2, data.resize = torch)",
                 kind="core", impls=torch_impls, dtypes=("float64",))]


def all_cases() -> list[Case]:
    return (_aug_cases() + _layer_cases() + _ntxent_cases() + _lars_cases() + [SCHEDULE_CASE]
            + _step_cases() + [CROSSLOAD_CASE] + _recipe_cases()
            + _data_cases())
