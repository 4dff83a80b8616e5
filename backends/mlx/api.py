"""The MLX backend at the numpy boundary (interface: :mod:`simclr_xb.backend`).

Every function takes and returns numpy in the canonical conventions (NHWC images, OIHW conv
weights, canonical parameter names, ``dtype`` "float32" | "float64") and calls the SAME MLX
modules and functions the :class:`Trainer` uses, so a conformance case pairs
``reference.f(*args)`` with ``api.f(*args, dtype)``.

Devices: every function (and :class:`Trainer`) takes ``device`` = "cpu", "gpu" or None (the
GPU when MLX has one, else the CPU; :func:`.convert.device_for`). Every computation runs
inside ``convert.on_device(dtype, device)``, i.e. on that device's stream, and float64 always
on the CPU stream (Metal has no float64: "float64 is not supported on the GPU"); asking for
float64 on "gpu" is a ValueError. tests/test_mlx_devices.py checks this statically.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np

from simclr_xb.augment import ViewParams
from simclr_xb.config import AugmentConfig, Config, ModelConfig, OptimConfig
from simclr_xb.resnet_spec import BlockSpec
from simclr_xb.state import merge_state, split_state

from . import augment as aug
from . import convert, layers
from .head import ProjectionHead
from .lars import LARS
from .ntxent import nt_xent as _nt_xent
from .ntxent import nt_xent_chunked as _nt_xent_chunked
from .ntxent import nt_xent_chunked_value_and_grad as _nt_xent_chunked_value_and_grad
from .resnet import ResNet, make_block
from .step import Trainer

__all__ = ["available", "version", "devices", "to_float", "resized_crop", "hflip",
           "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue",
           "color_jitter", "grayscale", "gaussian_blur", "augment", "augment_cropped", "batch_norm", "conv2d",
           "block", "encoder", "head", "forward", "nt_xent", "nt_xent_grad",
           "nt_xent_chunked", "nt_xent_chunked_grad", "lars_step", "train_step", "Trainer"]


def available() -> bool:
    """True when MLX imports and can evaluate an array on this machine."""
    try:
        mx.eval(mx.zeros(1) + 1)
        return True
    except Exception:  # pragma: no cover - a broken install
        return False


def version() -> str:
    return f"mlx {mx.__version__}"


def devices() -> list[str]:
    return ["cpu"] + (["gpu"] if mx.is_available(mx.gpu) else [])


def _np(a: mx.array) -> np.ndarray:
    return convert.to_numpy(a)


def _x(a, dtype: str) -> mx.array:
    return convert.to_mx(np.asarray(a), dtype)


# --------------------------------------------------------------------------- augmentation


def to_float(images_u8, dtype: str = "float32", device: str | None = None) -> np.ndarray:
    with convert.on_device(dtype, device):
        return _np(aug.to_float(np.asarray(images_u8), convert.mx_dtype(dtype)))


def resized_crop(x, crop, size: int, dtype: str = "float32", recipe: str = "torchvision",
                 device: str | None = None) -> np.ndarray:
    with convert.on_device(dtype, device):
        return _np(aug.resized_crop(_x(x, dtype), np.asarray(crop), size, recipe))


def hflip(x, flip, dtype: str = "float32", device: str | None = None) -> np.ndarray:
    with convert.on_device(dtype, device):
        return _np(aug.hflip(_x(x, dtype), mx.array(np.asarray(flip, dtype=bool))))


def _factor_op(fn, x, factor, dtype, *extra, device=None):
    with convert.on_device(dtype, device):
        return _np(fn(_x(x, dtype), _x(factor, dtype), *extra))


def adjust_brightness(x, factor, dtype: str = "float32",
                      device: str | None = None) -> np.ndarray:
    return _factor_op(aug.adjust_brightness, x, factor, dtype, device=device)


def adjust_contrast(x, factor, dtype: str = "float32", recipe: str = "torchvision",
                    device: str | None = None) -> np.ndarray:
    return _factor_op(aug.adjust_contrast, x, factor, dtype, recipe, device=device)


def adjust_saturation(x, factor, dtype: str = "float32", recipe: str = "torchvision",
                      device: str | None = None) -> np.ndarray:
    return _factor_op(aug.adjust_saturation, x, factor, dtype, recipe, device=device)


def adjust_hue(x, delta, dtype: str = "float32", device: str | None = None) -> np.ndarray:
    return _factor_op(aug.adjust_hue, x, delta, dtype, device=device)


def color_jitter(x, params: ViewParams, dtype: str = "float32", recipe: str = "torchvision",
                 device: str | None = None) -> np.ndarray:
    with convert.on_device(dtype, device):
        return _np(aug.color_jitter(_x(x, dtype), params, recipe))


def grayscale(x, mask, dtype: str = "float32", recipe: str = "torchvision",
              device: str | None = None) -> np.ndarray:
    with convert.on_device(dtype, device):
        return _np(aug.grayscale(_x(x, dtype), mx.array(np.asarray(mask, dtype=bool)), recipe))


def gaussian_blur(x, sigma, mask, kernel_size: int, dtype: str = "float32",
                  recipe: str = "torchvision", device: str | None = None) -> np.ndarray:
    with convert.on_device(dtype, device):
        return _np(aug.gaussian_blur(_x(x, dtype), np.asarray(sigma), np.asarray(mask), kernel_size,
                                     recipe))


def augment(images_u8, params: ViewParams, cfg: AugmentConfig, dtype: str = "float32",
            device: str | None = None) -> np.ndarray:
    with convert.on_device(dtype, device):
        return _np(aug.augment(np.asarray(images_u8), params, cfg, convert.mx_dtype(dtype)))


def augment_cropped(views_u8, params: ViewParams, cfg: AugmentConfig, dtype: str = "float32",
                    device: str | None = None) -> np.ndarray:
    with convert.on_device(dtype, device):
        return _np(aug.augment_cropped(np.asarray(views_u8), params, cfg, convert.mx_dtype(dtype)))


# --------------------------------------------------------------------------- layers


def batch_norm(x, weight, bias, running_mean, running_var, train: bool, momentum: float = 0.1,
               eps: float = 1e-5, dtype: str = "float32", device: str | None = None):
    """-> (y, new_mean, new_var) as numpy; ``weight``/``bias`` may be None."""
    with convert.on_device(dtype, device):
        opt = [None if a is None else _x(a, dtype) for a in (weight, bias)]
        y, m, v = layers.batch_norm(_x(x, dtype), opt[0], opt[1], _x(running_mean, dtype),
                                    _x(running_var, dtype), train, momentum, eps)
        return _np(y), _np(m), _np(v)


def conv2d(x, w, stride: int = 1, padding: int = 0, dtype: str = "float32",
           device: str | None = None) -> np.ndarray:
    """x NHWC, w OIHW (canonical) -> NHWC."""
    w_mlx = convert.relayout(np.asarray(w), convert.CANONICAL_CONV, convert.MLX_CONV)
    with convert.on_device(dtype, device):
        return _np(layers.conv2d(_x(x, dtype), _x(np.ascontiguousarray(w_mlx), dtype), stride,
                                 padding))


def _run(module, weights, prefix: str, x, train: bool, dtype: str, device: str | None = None):
    """Load canonical ``weights`` into ``module`` (at ``prefix``), run it on x in the given
    mode -> (out numpy, bn_updates numpy) with the updated BN buffers when training. The torch
    api's ``_run`` takes the same arguments, in the same order, with the same prefixes."""
    with convert.on_device(dtype, device):
        convert.set_canonical(module, weights, dtype, prefix)
        module.train(train)
        out = module(_x(x, dtype))
        mx.eval(out, module.parameters())
        updates = convert.bn_buffers(module, prefix) if train else {}
        return _np(out), updates


def block(x, weights, spec: BlockSpec, train: bool, momentum: float = 0.1, eps: float = 1e-5,
          dtype: str = "float32", device: str | None = None):
    """One residual block -> (y, bn_updates)."""
    mcfg = ModelConfig(bn_momentum=momentum, bn_eps=eps)
    return _run(make_block(spec, mcfg), weights, spec.prefix, x, train, dtype, device)


def encoder(x, weights, cfg: ModelConfig, train: bool, dtype: str = "float32",
            device: str | None = None):
    """ResNet trunk -> (h (N, d), bn_updates)."""
    return _run(ResNet(cfg), weights, "encoder", x, train, dtype, device)


def head(h, weights, cfg: ModelConfig, train: bool, dtype: str = "float32",
         device: str | None = None):
    """Projection head -> (z (N, head_out), bn_updates)."""
    return _run(ProjectionHead(cfg), weights, "head", h, train, dtype, device)


def forward(x, weights, cfg: Config | ModelConfig, train: bool, dtype: str = "float32",
            device: str | None = None):
    """Encoder then head -> (h, z, bn_updates)."""
    mcfg = cfg.model if isinstance(cfg, Config) else cfg
    h, up = encoder(x, weights, mcfg, train, dtype, device)
    z, up2 = head(h, weights, mcfg, train, dtype, device)
    up.update(up2)
    return h, z, up


# --------------------------------------------------------------------------- loss


def nt_xent(z, tau: float, dtype: str = "float32", reduction: str = "mean",
            device: str | None = None) -> float:
    with convert.on_device(dtype, device):
        return _nt_xent(_x(z, dtype), tau, reduction).item()


def nt_xent_grad(z, tau: float, dtype: str = "float32", reduction: str = "mean",
                 device: str | None = None) -> np.ndarray:
    """dL/dz (2N, d) by autodiff of the same :func:`.ntxent.nt_xent`."""
    with convert.on_device(dtype, device):
        return _np(mx.grad(lambda t: _nt_xent(t, tau, reduction))(_x(z, dtype)))


def nt_xent_chunked(z, tau: float, chunk: int, dtype: str = "float32", reduction: str = "mean",
                    device: str | None = None) -> float:
    """:func:`nt_xent` computed ``chunk`` rows at a time (never the 2N x 2N matrix)."""
    with convert.on_device(dtype, device):
        return _nt_xent_chunked(_x(z, dtype), tau, chunk, reduction).item()


def nt_xent_chunked_grad(z, tau: float, chunk: int, dtype: str = "float32",
                         reduction: str = "mean", device: str | None = None) -> np.ndarray:
    """dL/dz (2N, d) of :func:`nt_xent_chunked` as the trainer takes it: eagerly, block by
    block (:func:`.ntxent.nt_xent_chunked_value_and_grad`; the custom-vjp form gives the same
    numbers, tests/test_mlx_backend.py)."""
    with convert.on_device(dtype, device):
        return _np(_nt_xent_chunked_value_and_grad(_x(z, dtype), tau, chunk, reduction)[1])


# --------------------------------------------------------------------------- optimiser


def lars_step(params: dict, grads: dict, momenta: dict, lr: float, cfg: OptimConfig,
              excluded: dict[str, bool], dtype: str = "float32", device: str | None = None):
    """One LARS step on canonical dicts -> (params, momenta) as numpy (layouts unchanged:
    the update is elementwise plus whole-tensor norms, so OIHW needs no conversion)."""
    with convert.on_device(dtype, device):
        # A flat {name: array} dict is a valid MLX tree (names with dots are plain keys).
        opt = LARS.from_config(cfg, {k: bool(excluded[k]) for k in params},
                               convert.mx_dtype(dtype))
        p = {k: _x(v, dtype) for k, v in params.items()}
        opt.init(p)
        opt.set_momenta({k: _x(momenta[k], dtype) for k in params})
        opt.learning_rate = lr
        new_p = opt.apply_gradients({k: _x(grads[k], dtype) for k in params}, p)
        mx.eval(new_p, opt.state)
        return ({k: _np(v) for k, v in new_p.items()},
                {k: _np(v) for k, v in opt.momenta().items()})


# --------------------------------------------------------------------------- a whole step


def train_step(weights, momenta, images_u8, p1: ViewParams, p2: ViewParams, lr: float,
               cfg: Config, dtype: str = "float32", device: str | None = None):
    """One full SimCLR step (no probe) through :class:`Trainer` -> (loss, weights, momenta)."""
    t = Trainer(Trainer.with_precision(cfg, dtype), num_classes=None, device=device)
    state = merge_state(weights, momenta)
    t.load_state_dict(state)
    loss = t.train_step(images_u8, None, p1, p2, lr)["loss"]
    sd = t.state_dict()
    new_w, new_m = split_state(sd)
    return loss, new_w, new_m

