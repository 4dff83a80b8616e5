"""The numpy-boundary API of the PyTorch backend (:mod:`simclr_xb.backend` lists it).

Every function takes and returns numpy arrays in the canonical conventions (NHWC images,
OIHW conv weights, canonical parameter names with their ``encoder.``/``head.`` prefixes), so
that a conformance case calls ``reference.f(*args)`` and ``api.f(*args, dtype)`` alike.
``dtype`` ("float32" | "float64") is the compute dtype; float outputs come back as float64
numpy (integer buffers as int64). These are thin wrappers: each builds the SAME module or
calls the SAME function that :class:`Trainer` uses (no second implementation).

Functions run on ``DEVICE``: "cpu" unless the environment variable SIMCLR_XB_TORCH_DEVICE
names another (e.g. "cuda"). Importing this module raises ImportError when torch is missing;
:func:`simclr_xb.backend.get_backend` turns that into BackendUnavailable.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

from simclr_xb.augment import ViewParams
from simclr_xb.config import AugmentConfig, Config, ModelConfig, OptimConfig
from simclr_xb.resnet_spec import BlockSpec
from simclr_xb.state import merge_state, split_state

from . import augment as _aug
from .convert import images_from_torch, images_to_torch, to_numpy, to_tensor, torch_dtype
from .head import ProjectionHead
from .lars import LARS
from .layers import batch_norm as _make_bn
from .layers import conv as _make_conv
from .ntxent import nt_xent as _nt_xent
from .ntxent import nt_xent_chunked as _nt_xent_chunked
from .resnet import ResNet, make_block
from .step import SimCLRModel, Trainer, set_weights

__all__ = [
    "available", "version", "devices", "to_float", "resized_crop", "hflip", "adjust_brightness",
    "adjust_contrast", "adjust_saturation", "adjust_hue", "color_jitter", "grayscale",
    "gaussian_blur", "augment", "augment_cropped", "batch_norm", "conv2d", "block", "encoder", "head", "forward",
    "nt_xent", "nt_xent_grad", "nt_xent_chunked", "nt_xent_chunked_grad", "lars_step", "train_step",
    "Trainer",
]

DEVICE = os.environ.get("SIMCLR_XB_TORCH_DEVICE", "cpu")


def available() -> bool:
    return True


def version() -> str:
    return f"torch {torch.__version__}"


def devices() -> list[str]:
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


# --------------------------------------------------------------------------- helpers


def _img(x, dtype) -> torch.Tensor:
    """float NHWC numpy -> NCHW tensor of the compute dtype on DEVICE."""
    return images_to_torch(np.asarray(x), DEVICE, dtype)


def _out(t: torch.Tensor) -> np.ndarray:
    """NCHW tensor -> float64 NHWC numpy."""
    return images_from_torch(t).astype(np.float64)


def _np(t: torch.Tensor) -> np.ndarray:
    return to_numpy(t, np.float64 if t.is_floating_point() else np.int64)


def _materialise(build: Callable[[], nn.Module], dtype) -> nn.Module:
    """Build a module on the meta device (no init, no RNG) and allocate it on DEVICE."""
    with torch.device("meta"):
        m = build()
    return m.to_empty(device=DEVICE).to(torch_dtype(dtype))


def _run(module: nn.Module, weights: dict, prefix: str, x: torch.Tensor, train: bool):
    """Load ``weights`` under ``prefix`` (the module's place in the canonical tree: "encoder",
    "head", "encoder.layer1.0", "" for the whole model; as the MLX api's ``_run``) into module,
    run it in train/eval mode, and return (output, bn_updates): the new running stats and
    num_batches_tracked in train mode (canonical names, as reference), {} in eval mode."""
    prefix = f"{prefix}." if prefix else ""  # a state_dict key prefix
    set_weights(module, weights, prefix)
    module.train(train)
    with torch.no_grad():
        y = module(x)
    updates = {}
    if train:
        updates = {prefix + n: _np(b) for n, b in module.named_buffers()}
    return y, updates


# --------------------------------------------------------------------------- augmentation


def to_float(images_u8, dtype="float32"):
    return _out(_aug.to_float(images_to_torch(np.asarray(images_u8), DEVICE), dtype))


def resized_crop(x, crop, size, dtype="float32", recipe="torchvision"):
    return _out(_aug.resized_crop(_img(x, dtype), np.asarray(crop), int(size), dtype, recipe=recipe))


def hflip(x, flip, dtype="float32"):
    return _out(_aug.hflip(_img(x, dtype), np.asarray(flip)))


def adjust_brightness(x, factor, dtype="float32"):
    return _out(_aug.adjust_brightness(_img(x, dtype), np.asarray(factor)))


def adjust_contrast(x, factor, dtype="float32", recipe="torchvision"):
    return _out(_aug.adjust_contrast(_img(x, dtype), np.asarray(factor), recipe))


def adjust_saturation(x, factor, dtype="float32", recipe="torchvision"):
    return _out(_aug.adjust_saturation(_img(x, dtype), np.asarray(factor), recipe))


def adjust_hue(x, delta, dtype="float32"):
    return _out(_aug.adjust_hue(_img(x, dtype), np.asarray(delta)))


def color_jitter(x, params: ViewParams, dtype="float32", recipe="torchvision"):
    return _out(_aug.color_jitter(_img(x, dtype), params, recipe))


def grayscale(x, mask, dtype="float32", recipe="torchvision"):
    return _out(_aug.grayscale(_img(x, dtype), np.asarray(mask), recipe))


def gaussian_blur(x, sigma, mask, kernel_size, dtype="float32", recipe="torchvision"):
    return _out(_aug.gaussian_blur(_img(x, dtype), np.asarray(sigma), np.asarray(mask), int(kernel_size),
                                   recipe))


def augment(images_u8, params: ViewParams, cfg: AugmentConfig, dtype="float32"):
    return _out(_aug.augment(np.asarray(images_u8), params, cfg, dtype, device=DEVICE))


def augment_cropped(views_u8, params: ViewParams, cfg: AugmentConfig, dtype="float32"):
    return _out(_aug.augment_cropped(np.asarray(views_u8), params, cfg, dtype, device=DEVICE))


# --------------------------------------------------------------------------- layers


def batch_norm(x, weight, bias, running_mean, running_var, train, momentum=0.1, eps=1e-5,
               dtype="float32"):
    """BatchNorm over every axis but the last (channels-last x, as reference.batch_norm)
    with the model's BN module. Returns (y, new_mean, new_var); weight/bias may be None."""
    x = np.asarray(x)
    c, dims = x.shape[-1], (2 if x.ndim == 4 else 1)
    affine = weight is not None or bias is not None
    no_shift = bias is None and dims == 1
    bn = _materialise(lambda: _make_bn(c, dims, bias=not no_shift, momentum=momentum, eps=eps,
                                       affine=affine), dtype)
    dt = torch_dtype(dtype)
    with torch.no_grad():
        bn.running_mean.copy_(to_tensor(running_mean, DEVICE, dt))
        bn.running_var.copy_(to_tensor(running_var, DEVICE, dt))
        bn.num_batches_tracked.zero_()
        if affine:  # a missing scale is 1 and a missing shift 0: exactly the same numbers
            bn.weight.copy_(to_tensor(weight, DEVICE, dt) if weight is not None else torch.ones(c))
            if bn.bias is not None:
                bn.bias.copy_(to_tensor(bias, DEVICE, dt) if bias is not None else torch.zeros(c))
    bn.train(bool(train))
    xt = to_tensor(x, DEVICE, dt).movedim(-1, 1)
    with torch.no_grad():
        y = bn(xt).movedim(1, -1)
    return _np(y), _np(bn.running_mean), _np(bn.running_var)


def conv2d(x, w, stride=1, padding=0, dtype="float32"):
    """Cross-correlation with the model's conv layer: x NHWC, w OIHW -> NHWC (no bias)."""
    w = np.asarray(w)
    conv = _materialise(lambda: _make_conv(w.shape[1], w.shape[0], w.shape[2], stride, padding), dtype)
    y, _ = _run(conv, {"weight": w}, "", _img(x, dtype), False)
    return _out(y)


def block(x, weights, spec: BlockSpec, train, momentum=0.1, eps=1e-5, dtype="float32"):
    """One residual block (canonical weights under ``spec.prefix``) -> (y NHWC, bn_updates)."""
    mcfg = ModelConfig(bn_momentum=momentum, bn_eps=eps)
    mod = _materialise(lambda: make_block(spec, mcfg), dtype)
    y, up = _run(mod, weights, spec.prefix, _img(x, dtype), bool(train))
    return _out(y), up


def encoder(x, weights, cfg: ModelConfig, train, dtype="float32"):
    """ResNet f: NHWC images -> (h (N, feature_dim), bn_updates)."""
    mod = _materialise(lambda: ResNet(cfg), dtype)
    h, up = _run(mod, weights, "encoder", _img(x, dtype), bool(train))
    return _np(h), up


def head(h, weights, cfg: ModelConfig, train, dtype="float32"):
    """Projection head g: h (N, d) -> (z (N, head_out), bn_updates)."""
    mod = _materialise(lambda: ProjectionHead(cfg), dtype)
    z, up = _run(mod, weights, "head", to_tensor(np.asarray(h), DEVICE, dtype), bool(train))
    return _np(z), up


def forward(x, weights, cfg, train, dtype="float32"):
    """Encoder then head -> (h, z, bn_updates). Entries other than encoder.*/head.* are ignored."""
    mcfg = cfg.model if isinstance(cfg, Config) else cfg
    mod = _materialise(lambda: SimCLRModel(mcfg), dtype)
    w = {k: v for k, v in weights.items() if k.startswith(("encoder.", "head."))}
    (h, z), up = _run(mod, w, "", _img(x, dtype), bool(train))
    return _np(h), _np(z), up


# --------------------------------------------------------------------------- loss


def nt_xent(z, tau, dtype="float32", reduction="mean") -> float:
    with torch.no_grad():
        return float(_nt_xent(to_tensor(np.asarray(z), DEVICE, dtype), tau, reduction))


def nt_xent_grad(z, tau, dtype="float32", reduction="mean"):
    """dL/dz (2N, d) of :func:`nt_xent` by autograd."""
    zt = to_tensor(np.asarray(z), DEVICE, dtype).requires_grad_(True)
    _nt_xent(zt, tau, reduction).backward()
    return _np(zt.grad)


def nt_xent_chunked(z, tau, chunk, dtype="float32", reduction="mean") -> float:
    """:func:`nt_xent` computed ``chunk`` rows at a time (never the 2N x 2N matrix)."""
    with torch.no_grad():
        return float(_nt_xent_chunked(to_tensor(np.asarray(z), DEVICE, dtype), tau, chunk, reduction))


def nt_xent_chunked_grad(z, tau, chunk, dtype="float32", reduction="mean"):
    """dL/dz (2N, d) of :func:`nt_xent_chunked` through its custom backward (blocks recomputed)."""
    zt = to_tensor(np.asarray(z), DEVICE, dtype).requires_grad_(True)
    _nt_xent_chunked(zt, tau, chunk, reduction).backward()
    return _np(zt.grad)


# --------------------------------------------------------------------------- optimiser


def lars_step(params, grads, momenta, lr, cfg: OptimConfig, excluded, dtype="float32"):
    """One step of the backend's LARS optimizer on dicts of arrays -> (params, momenta)."""
    ps = {n: nn.Parameter(to_tensor(np.asarray(w), DEVICE, dtype)) for n, w in params.items()}
    for n, p in ps.items():
        p.grad = to_tensor(np.asarray(grads[n]), DEVICE, dtype)
    opt = LARS(ps.items(), excluded, lr=float(lr), momentum=cfg.momentum,
               weight_decay=cfg.weight_decay, eta=cfg.eta, nesterov=cfg.nesterov)
    opt.set_momentum_buffers({n: to_tensor(np.asarray(momenta[n]), DEVICE, dtype) for n in ps})
    opt.step()
    return ({n: _np(p) for n, p in ps.items()},
            {n: _np(v) for n, v in opt.momentum_buffers().items()})


def train_step(weights, momenta, images_u8, p1, p2, lr, cfg: Config, dtype="float32"):
    """One full SimCLR step without probe through :class:`Trainer` (precision = ``dtype``,
    no compile) -> (loss, weights, momenta), with reference.train_step's conventions: entries
    of ``weights`` outside the model (e.g. a probe) come back unchanged, a missing momentum
    counts as zeros, and momenta of other names are passed through."""
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=dtype, compile=False))
    model = {k: v for k, v in weights.items() if k.startswith(("encoder.", "head."))}
    tr = Trainer(cfg, None, DEVICE, weights=model)
    weights_now, momenta_now = split_state(tr.state_dict())
    momenta_now.update({k: np.asarray(v) for k, v in momenta.items() if k in momenta_now})
    tr.load_state_dict(merge_state(weights_now, momenta_now))
    loss = tr.train_step(images_u8, None, p1, p2, lr)["loss"]
    new = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in tr.state_dict().items()}
    new_w, new_m = split_state(new)
    out_w, out_m = {**weights, **new_w}, {**momenta, **new_m}
    return loss, out_w, out_m
