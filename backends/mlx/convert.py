"""numpy <-> MLX conversion: dtypes, devices, parameter names and the ONE weight-layout function.

Layouts (the only place in the MLX backend that knows both):

* images: NHWC in the canonical convention and in MLX (no conversion);
* conv weights: canonical (PyTorch) ``OIHW`` = (out, in, kh, kw); MLX ``mx.conv2d`` wants
  ``OHWI`` = (out, kh, kw, in). :func:`relayout` converts between them;
* linear weights: (out, in) in both; vectors and scalars: unchanged.

Names: the MLX module tree is built so that its flattened paths ARE the canonical torchvision
names (``encoder.layer1.0.downsample.0.weight``; lists of modules flatten to ``.0``, ``.1``),
with one exception kept in :data:`PATH_RENAMES`: the projection head keeps its layers in a
list attribute ``layers``, so ``head.layers.{i}.*`` (MLX) is ``head.{i}.*`` (canonical).

Dtypes: "float32" (default, any device), "float64" (CPU only: MLX has no float64 on Metal,
so float64 work runs on the ``mx.cpu`` stream) and "bfloat16" (mapped here, but the
training step refuses it; see :mod:`.step`). ``num_batches_tracked`` is always int64.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

DTYPES = {"float32": mx.float32, "float64": mx.float64, "bfloat16": mx.bfloat16}
NP_DTYPES = {"float32": np.float32, "float64": np.float64}

CANONICAL_CONV = "OIHW"  # PyTorch: (out, in, kh, kw)
MLX_CONV = "OHWI"        # mx.conv2d: (out, kh, kw, in)

# (MLX path prefix, canonical name prefix)
PATH_RENAMES = (("head.layers.", "head."),)

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def mx_dtype(dtype: str):
    """"float32" | "float64" | "bfloat16" -> the mx dtype; ValueError naming the argument."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported by the MLX backend: expected one of "
                         f"{sorted(DTYPES)}")
    return DTYPES[dtype]


def device_for(dtype: str, device: str | None = None):
    """The mx device a computation in ``dtype`` runs on.

    ``device`` None picks the GPU (Metal) when MLX has one, else the CPU; float64 always
    runs on the CPU (MLX implements float64, convolutions included, on the CPU only).
    """
    mx_dtype(dtype)
    if device not in (None, "cpu", "gpu"):
        raise ValueError(f"device {device!r} is not an MLX device: expected 'cpu' or 'gpu'")
    if dtype == "float64":
        if device == "gpu":
            raise ValueError("precision float64 runs only on the CPU in MLX (no float64 on the "
                             "GPU): use device='cpu' or precision float32")
        return mx.cpu
    if device == "gpu" and not mx.is_available(mx.gpu):
        raise ValueError("device 'gpu' requested but MLX has no GPU on this machine")
    if device is None:
        return mx.gpu if mx.is_available(mx.gpu) else mx.cpu
    return mx.gpu if device == "gpu" else mx.cpu


def on_device(dtype: str, device: str | None = None):
    """Context manager: run the MLX ops issued inside on the stream of :func:`device_for`."""
    return mx.stream(device_for(dtype, device))


def device_name(dev) -> str:
    """The device as the Trainer reports it ("cpu" | "gpu"); the torch convert has the same name."""
    return "gpu" if dev == mx.gpu else "cpu"


def to_mx(a, dtype: str | None = None) -> mx.array:
    """numpy (or scalar) -> mx.array; floats cast to ``dtype``, integers/bools kept.

    Note: ``mx.array(float64 ndarray)`` silently gives float32, so the dtype is always explicit.
    """
    a = np.asarray(a)
    if dtype is not None and a.dtype.kind == "f":
        return mx.array(a, dtype=mx_dtype(dtype))
    if a.dtype == np.int64:
        return mx.array(a, dtype=mx.int64)
    return mx.array(a)


def to_numpy(a: mx.array, dtype: np.dtype | str | None = None) -> np.ndarray:
    """mx.array -> numpy (a copy; bfloat16 is widened to float32); ``dtype`` casts the result
    (the torch convert's ``to_numpy(t, dtype)``)."""
    if a.dtype == mx.bfloat16:
        a = a.astype(mx.float32)
    return np.array(a, dtype=dtype)


# --------------------------------------------------------------------------- layout


def relayout(w, src: str, dst: str):
    """Permute a conv weight between layouts spelled as letters (``"OIHW"``, ``"OHWI"``).

    Works on numpy and mx arrays; non-4-D arrays (linear weights, BN vectors, scalars) are
    returned unchanged, so the function can be applied to every canonical entry.
    """
    if w.ndim != 4 or src == dst:
        return w
    perm = tuple(src.index(c) for c in dst)
    return w.transpose(perm) if isinstance(w, np.ndarray) else mx.transpose(w, perm)


def to_canonical_name(path: str) -> str:
    """MLX parameter path -> canonical name (``head.layers.0.bn.weight`` -> ``head.0.bn.weight``)."""
    for mlx_prefix, canon in PATH_RENAMES:
        if path.startswith(mlx_prefix):
            return canon + path[len(mlx_prefix):]
    return path


def to_mlx_path(name: str) -> str:
    """Canonical name -> MLX parameter path (inverse of :func:`to_canonical_name`)."""
    for mlx_prefix, canon in PATH_RENAMES:
        if name.startswith(canon):
            return mlx_prefix + name[len(canon):]
    return name


def _join(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if prefix else path


def get_canonical(module, prefix: str = "") -> dict[str, np.ndarray]:
    """Every array of ``module`` (parameters and BN buffers) as canonical numpy, OIHW convs.

    ``prefix`` is the module's place in the canonical tree (``"encoder"``, ``"head"``,
    ``"encoder.layer1.0"`` for a block, ``""`` for the whole SimCLR model).
    """
    out = {}
    for path, a in tree_flatten(module.parameters()):
        out[to_canonical_name(_join(prefix, path))] = relayout(to_numpy(a), MLX_CONV, CANONICAL_CONV)
    return out


def set_canonical(module, weights: dict[str, np.ndarray], dtype: str, prefix: str = "") -> None:
    """Load canonical numpy ``weights`` into ``module`` in place (every array of the module).

    Raises ValueError naming the entry when one is missing or has the wrong shape. Entries of
    ``weights`` outside the module are ignored (callers pass the whole model's dict).
    """
    updates, problems = [], []
    for path, cur in tree_flatten(module.parameters()):
        name = to_canonical_name(_join(prefix, path))
        if name not in weights:
            problems.append(f"{name} is missing")
            continue
        w = np.asarray(weights[name])
        want = relayout(np.empty(cur.shape, dtype=np.uint8), MLX_CONV, CANONICAL_CONV).shape
        if w.shape != tuple(want):
            problems.append(f"{name} has shape {w.shape}, model expects {tuple(want)}")
            continue
        a = relayout(w, CANONICAL_CONV, MLX_CONV)
        if path.endswith("num_batches_tracked"):
            updates.append((path, mx.array(np.asarray(a, dtype=np.int64), dtype=mx.int64)))
        else:
            updates.append((path, to_mx(np.ascontiguousarray(a), dtype)))
    if problems:
        raise ValueError("weights do not match the MLX model: " + "; ".join(problems[:8]))
    module.update(tree_unflatten(updates))


def bn_buffers(module, prefix: str = "") -> dict[str, np.ndarray]:
    """The BN buffers (running_mean, running_var, num_batches_tracked) of ``module``, canonical."""
    return {k: v for k, v in get_canonical(module, prefix).items() if k.endswith(BUFFER_SUFFIXES)}


def tree_from_canonical(values: dict[str, object]) -> dict:
    """A tree in the MLX model's structure from ``{canonical name: leaf}`` (e.g. LARS flags)."""
    return tree_unflatten([(to_mlx_path(k), v) for k, v in values.items()])


__all__ = ["DTYPES", "CANONICAL_CONV", "MLX_CONV", "mx_dtype", "device_for", "on_device",
           "device_name", "to_mx", "to_numpy", "relayout", "to_canonical_name", "to_mlx_path",
           "get_canonical", "set_canonical", "bn_buffers", "tree_from_canonical"]
