"""CIFAR-10 and CIFAR-100 in the "python version" pickle format, read safely.

Layout (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html):

* ``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5`` (train), ``test_batch``,
  ``batches.meta`` (``label_names``); each batch a dict with ``data`` (N, 3072) uint8, rows
  are the R, G, B planes of a 32x32 image one after the other (CHW flattened), and ``labels``.
* ``cifar-100-python/``: ``train``, ``test``, ``meta`` (``fine_label_names``); labels are
  ``fine_labels`` (``coarse_labels`` is ignored).

The official files were written by Python 2's cPickle; we read them with ``encoding="latin1"``
and accept dict keys as str or bytes.

SECURITY: unpickling can run arbitrary code. :class:`SafeUnpickler` resolves only these
globals: ``numpy.core.multiarray._reconstruct`` (also spelled ``numpy._core.multiarray``),
``numpy.ndarray``, ``numpy.dtype`` (what a pickled numpy array needs; ``numpy.core.numeric.
_frombuffer`` at pickle protocol 5), ``_codecs.encode``
(how Python 3 writes bytes at protocol 2) and the builtins ``dict``, ``list``, ``bytes``,
``str``, ``int``. Any other global makes the load fail with :class:`DataError` naming the
file and the refused global; nothing is called before that check.

Folders searched, in order (each directly or in its ``cifar-10-batches-py`` /
``cifar-100-python`` subfolder): ``root`` (and ``root/<name>``), ``$SIMCLR_XB_DATA`` (and
``$SIMCLR_XB_DATA/<name>``), ``~/.cache/simclr_xb/<name>``.
"""
from __future__ import annotations

import builtins
import codecs
import io
import os
import pickle
from pathlib import Path

import numpy as np

from .common import DataError, Dataset, missing_message, search_dirs

LAYOUT = {
    "cifar10": {"folder": "cifar-10-batches-py", "meta": "batches.meta", "names": "label_names",
                "labels": "labels", "num_classes": 10,
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    "cifar100": {"folder": "cifar-100-python", "meta": "meta", "names": "fine_label_names",
                 "labels": "fine_labels", "num_classes": 100, "train": ["train"], "test": ["test"]},
}
_RECONSTRUCT = np.zeros(1).__reduce_ex__(2)[0]  # numpy's _reconstruct, without importing numpy.core
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numpy's _frombuffer (pickle protocol 5)
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
    **{("builtins", n): getattr(builtins, n) for n in ("dict", "list", "bytes", "str", "int")},
    **{("__builtin__", n): getattr(builtins, n) for n in ("dict", "list", "bytes", "str", "int")},
}


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals in ``_ALLOWED`` (see the module docstring)."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def safe_load(path: str | os.PathLike) -> dict:
    """Unpickle one CIFAR file with :class:`SafeUnpickler` -> dict with str keys."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read CIFAR file {path}: {e.strerror or e}") from None
    try:
        obj = SafeUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if "is not allowed" in str(e):
            raise DataError(f"refusing to load CIFAR file {path}: it references {str(e)[7:]} (only "
                            f"plain dicts, lists, bytes and numpy arrays are accepted)") from None
        raise DataError(f"CIFAR file {path} is not a valid pickle (truncated or corrupt?): {e}") from None
    except (EOFError, ValueError, TypeError, IndexError, AttributeError, MemoryError) as e:
        raise DataError(f"CIFAR file {path} is truncated or corrupt: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR file {path} holds a {type(obj).__name__}, expected a dict")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _names(value, path: Path) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise DataError(f"CIFAR meta file {path}: label names must be a list, got {type(value).__name__}")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value]


def read_batch(path: str | os.PathLike, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> images uint8 (N, 32, 32, 3) NHWC and labels int64 (N,), validated."""
    path = Path(path)
    d = safe_load(path)
    for key in ("data", label_key):
        if key not in d:
            raise DataError(f"CIFAR file {path} has no {key!r} entry (keys: {sorted(d)})")
    data = np.asarray(d["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"CIFAR file {path}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    labels = np.asarray(d[label_key])
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"CIFAR file {path}: {label_key!r} must be {data.shape[0]} integers (one per row "
                        f"of 'data'), got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"CIFAR file {path}: {label_key!r} spans [{labels.min()}, {labels.max()}], "
                        f"expected [0, {num_classes - 1}]")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def locate(name: str, root: str | os.PathLike | None) -> Path | None:
    """The first search folder holding the layout's meta file and every batch file."""
    lay = LAYOUT[name]
    needed = [lay["meta"], *lay["train"], *lay["test"]]
    for d in search_dirs(name, root):
        for cand in (d / lay["folder"], d):
            if all((cand / f).is_file() for f in needed):
                return cand
    return None


def load_cifar(name: str, split: str = "train", root: str | os.PathLike | None = None,
               download: bool = False) -> Dataset:
    """``name`` is ``"cifar10"`` or ``"cifar100"``."""
    lay = LAYOUT[name]
    folder = locate(name, root)
    if folder is None and download:
        from .download import download as fetch
        fetch(name)
        folder = locate(name, root)
    if folder is None:
        files = [f"{lay['folder']}/{f}" for f in [lay["meta"], *lay["train"], *lay["test"]]]
        raise DataError(missing_message(name, files, search_dirs(name, root), downloadable=True))
    meta_path = folder / lay["meta"]
    meta = safe_load(meta_path)
    if lay["names"] not in meta:
        raise DataError(f"CIFAR meta file {meta_path} has no {lay['names']!r} entry (keys: {sorted(meta)})")
    classes = _names(meta[lay["names"]], meta_path)
    if len(classes) != lay["num_classes"]:
        raise DataError(f"CIFAR meta file {meta_path} lists {len(classes)} classes, expected "
                        f"{lay['num_classes']}")
    parts = [read_batch(folder / f, lay["labels"], lay["num_classes"]) for f in lay[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return Dataset(images=images, labels=labels, classes=classes, name=name, split=split,
                   source=str(folder))
