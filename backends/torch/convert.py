"""Conversions between the canonical numpy conventions and PyTorch tensors, in one place.

Layouts:

* images: canonical (numpy, at the backend interface) is **NHWC** ``(N, H, W, C)``; inside
  this backend images are **NCHW** ``(N, C, H, W)`` (optionally stored channels_last in
  memory, which does not change the logical layout). :func:`images_to_torch` and
  :func:`images_from_torch` are the only functions that move the channel axis.
* conv weights: canonical is **OIHW** ``(out, in, kh, kw)``, which is PyTorch's own layout,
  and linear weights are ``(out, in)`` in both. So canonical weights map onto a module's
  ``state_dict()`` by name alone: the module attribute names are chosen so that the keys ARE
  the canonical names (:mod:`simclr_xb.resnet_spec`), and no transpose is ever needed.

dtypes: the backend interface names dtypes by string, "float32" | "float64" | "bfloat16".
"""
from __future__ import annotations

import numpy as np
import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """"float32" | "float64" | "bfloat16" (or a torch.dtype) -> torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not supported: expected one of {sorted(DTYPES)}") from None


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """An explicit device, else "cuda" when available, else "cpu"."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def device_name(dev: torch.device) -> str:
    """The device as the Trainer reports it ("cpu", "cuda:0"); MLX's convert has the same name."""
    return str(dev)


def to_tensor(a, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None) -> torch.Tensor:
    """numpy array (or scalar, or tensor) -> tensor on ``device``; ``dtype`` None keeps the
    array's own dtype (uint8 stays uint8, int64 stays int64)."""
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    if dtype is None:
        return t.to(device)
    return t.to(device=device, dtype=torch_dtype(dtype))


def to_numpy(t: torch.Tensor, dtype: np.dtype | str | None = None) -> np.ndarray:
    """tensor -> numpy (detached, on the host), always a copy that shares no memory with the
    tensor (a CPU tensor's ``.numpy()`` would alias it). bfloat16, which numpy lacks, becomes
    float32; ``dtype`` casts the result."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return np.array(t.cpu().numpy(), dtype=dtype, copy=True, order="C")


def images_to_torch(x, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """Canonical NHWC images (N, H, W, C) -> contiguous NCHW tensor (N, C, H, W), written into
    ``out`` when given (a contiguous (N, C, H, W) tensor of the target dtype and device)."""
    t = to_tensor(x, device, dtype)
    if t.ndim != 4:
        raise ValueError(f"images must be 4-D NHWC (N, H, W, C), got shape {tuple(t.shape)}")
    if out is None:
        out = torch.empty((t.shape[0], t.shape[3], t.shape[1], t.shape[2]), dtype=t.dtype, device=t.device)
    out.permute(0, 2, 3, 1).copy_(t)  # writing through the permuted view is the fast direction
    return out


def images_from_torch(x: torch.Tensor) -> np.ndarray:
    """NCHW tensor (N, C, H, W) -> canonical NHWC numpy array (N, H, W, C)."""
    if x.ndim != 4:
        raise ValueError(f"images must be 4-D NCHW (N, C, H, W), got shape {tuple(x.shape)}")
    return to_numpy(x.permute(0, 2, 3, 1))


def weights_to_numpy(state: dict[str, torch.Tensor], float_dtype=np.float32) -> dict[str, np.ndarray]:
    """A module ``state_dict()`` (keys = canonical names) -> canonical numpy dict. Floating
    entries are cast to ``float_dtype``; integer buffers (num_batches_tracked) become int64."""
    out = {}
    for name, t in state.items():
        if t.is_floating_point():
            out[name] = to_numpy(t, float_dtype)
        else:
            out[name] = to_numpy(t, np.int64)
    return out


def weights_to_torch(weights: dict[str, np.ndarray],
                     like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical numpy dict -> tensors with the dtype and device of ``like`` (a state_dict)."""
    out = {}
    for name, a in weights.items():
        ref = like[name]
        out[name] = to_tensor(np.asarray(a), ref.device, ref.dtype).reshape(ref.shape)
    return out
