"""The backend interface: what simclr_xb.backends.torch and simclr_xb.backends.mlx implement.

A backend is a package with (at least) the module ``api`` that defines the functions below
with exactly these names and signatures; :mod:`simclr_xb.reference` defines the same names in
float64 numpy. Arrays cross this interface as numpy arrays in the canonical conventions
(NHWC images, OIHW conv weights, canonical parameter names), so conformance cases call
``reference.f(*args)`` and ``backend.f(*args)`` with the same arguments. Inside, each backend
keeps its own layout and converts in one function (``convert.py``).

Module-level functions of ``api`` (``dtype`` is "float32" or "float64"; outputs are numpy):

  available() -> bool; version() -> str; devices() -> list[str]
  to_float(images_u8, dtype)
  resized_crop(x, crop, size, dtype); hflip(x, flip, dtype)
  adjust_brightness(x, factor, dtype); adjust_contrast(x, factor, dtype)
  adjust_saturation(x, factor, dtype); adjust_hue(x, delta, dtype)
  color_jitter(x, params, dtype); grayscale(x, mask, dtype)
  gaussian_blur(x, sigma, mask, kernel_size, dtype)
  augment(images_u8, params, cfg: AugmentConfig, dtype) -> (N, S, S, 3) NHWC
  augment_cropped(views_u8, params, cfg, dtype): the same for views the data workers already
      cut and resized to S (flip, jitter, grayscale, blur)
  batch_norm(x, weight, bias, running_mean, running_var, train, momentum, eps, dtype)
      -> (y, new_mean, new_var)
  conv2d(x, w, stride, padding, dtype)
  block(x, weights, spec: BlockSpec, train, momentum, eps, dtype) -> (y, bn_updates)
  encoder(x, weights, cfg: ModelConfig, train, dtype) -> (h, bn_updates)
  head(h, weights, cfg: ModelConfig, train, dtype) -> (z, bn_updates)
  forward(x, weights, cfg, train, dtype) -> (h, z, bn_updates)
  nt_xent(z, tau, dtype) -> float;   nt_xent_grad(z, tau, dtype) -> (2N, d)
  nt_xent_chunked(z, tau, chunk, dtype) -> float;  nt_xent_chunked_grad(z, tau, chunk, dtype)
      -> (2N, d)                          # same math, (chunk, 2N) blocks: memory linear in N
  lars_step(params, grads, momenta, lr, cfg: OptimConfig, excluded, dtype) -> (params, momenta)
  train_step(weights, momenta, images_u8, p1, p2, lr, cfg: Config, dtype)
      -> (loss, weights, momenta)        # one full SimCLR step, no probe

The MLX api functions also take ``device`` ("cpu" | "gpu" | None = the GPU when there is one)
after these arguments; float64 always runs on MLX's CPU stream. Conformance runs MLX as two
implementations, "mlx-cpu" and "mlx-gpu" (simclr_xb.conformance.runner).

The training loop (:mod:`simclr_xb.train`) uses one more object, ``api.Trainer``, typed as
:class:`Trainer` below:

  Trainer(cfg: Config, num_classes: int | None, device: str | None = None, dist=None, *,
          encode_only=False)
      # dist: a simclr_xb.distributed.DistContext (global BN, global negatives) or None;
      # encode_only: no optimizer (evaluation): encode and the weights only
  .device -> str                                   # e.g. "cpu", "cuda:0", "gpu"
  .train_step(images_u8, labels, p1, p2, lr, *, skip_nonfinite=False, cropped=False, views=None)
      -> dict
      # keys loss[, probe_loss, probe_acc] (floats; probe keys only with a probe and labels);
      # skip_nonfinite: if the loss or a gradient is NaN/Inf, take no step, restore the BN
      # buffers and return {"loss": nan, "skipped": True}
  .train_step_async(...same, keep_before=False) -> pending   # optional (MLX): .result() gives
      # train_step's dict, .discard() undoes the step; the loop then reads each loss one step
      # late (simclr_xb.pipeline)
  .augment_pair(images_u8, p1, p2)                 # [view1; view2] on the device, as the step makes them
  .state_dict() -> dict[str, np.ndarray]           # canonical weights + "momentum/<name>"
  .load_state_dict(state)                          # validates names and shapes
  .encode(images_u8, batch_size) -> np.ndarray     # eval-mode h of the identity view

``train_step`` takes the uint8 images and the two views' sampled parameters; the backend
augments on its device. A backend never draws random numbers.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from .augment import ViewParams
    from .config import Config

BACKENDS = ("torch", "mlx")

API_FUNCTIONS = (
    "to_float", "resized_crop", "hflip", "adjust_brightness", "adjust_contrast",
    "adjust_saturation", "adjust_hue", "color_jitter", "grayscale", "gaussian_blur", "augment",
    "augment_cropped", "batch_norm", "conv2d", "block", "encoder", "head", "forward", "nt_xent", "nt_xent_grad",
    "nt_xent_chunked", "nt_xent_chunked_grad", "lars_step", "train_step",
)


@runtime_checkable
class Trainer(Protocol):
    """What the core needs of a backend's ``api.Trainer`` (the contract in the module docstring;
    ``train_step_async`` is optional and found with ``hasattr``)."""

    cfg: Config

    @property
    def device(self) -> str: ...

    def train_step(self, images_u8: Any, labels: np.ndarray | None, p1: ViewParams, p2: ViewParams,
                   lr: float, *, skip_nonfinite: bool = False, cropped: bool = False,
                   views: Any = None) -> dict[str, float]: ...

    def augment_pair(self, images_u8: Any, p1: ViewParams, p2: ViewParams) -> Any: ...

    def state_dict(self) -> dict[str, np.ndarray]: ...

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...

    def encode(self, images_u8: Any, batch_size: int = 256) -> np.ndarray: ...


class BackendUnavailable(RuntimeError):
    """The backend's framework is not installed (or cannot start) on this machine."""


def get_backend(name: str) -> ModuleType:
    """Import ``simclr_xb.backends.<name>.api`` lazily (torch and mlx are optional extras)."""
    return _import(name, "api")


def _import(name: str, module: str) -> ModuleType:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: expected one of {BACKENDS}")
    try:
        return importlib.import_module(f"simclr_xb.backends.{name}.{module}")
    except ImportError as e:
        extra = "torch" if name == "torch" else "mlx"
        raise BackendUnavailable(
            f"backend {name!r} is not available ({e}); install it with: pip install 'simclr-xb[{extra}]'"
        ) from e


# A backend's modules beside ``api``, each imported only by the feature that needs it.
OPTIONAL_MODULES = ("finetune", "distributed")


def backend_module(name: str, module: str) -> ModuleType:
    """``simclr_xb.backends.<name>.<module>`` for one of :data:`OPTIONAL_MODULES` (fine-tuning's
    ``FinetuneTrainer`` and ``head_features``; data parallel's process group), imported lazily:
    the one place, besides :func:`get_backend`, that names a backend's modules."""
    if module not in OPTIONAL_MODULES:
        raise ValueError(f"unknown backend module {module!r}: expected one of {OPTIONAL_MODULES}")
    return _import(name, module)


def available_backends() -> dict[str, str]:
    """{name: version or the reason it is unavailable}."""
    out = {}
    for name in BACKENDS:
        try:
            api = get_backend(name)
            out[name] = api.version()
        except BackendUnavailable as e:
            out[name] = f"unavailable: {e.__cause__}"
    return out
