"""MNIST and Fashion-MNIST from IDX files (raw or gzip), validated.

IDX layout (LeCun et al.): a big-endian header ``00 00 <type> <ndim>``, ``ndim`` big-endian
uint32 dimensions, then the data. We read unsigned bytes only (type 0x08): images have magic
0x00000803 (dims N, rows, cols), labels 0x00000801 (dim N). A wrong magic, a file shorter or
longer than its header says, or images and labels of different counts raise
:class:`DataError` naming the file.

File names per split: ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` and
``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte``, each optionally ``.gz``.
Folders searched, in order: ``root`` (and ``root/<name>``), ``$SIMCLR_XB_DATA`` (and its
``<name>`` subfolder), ``~/.cache/simclr_xb/<name>``, and for Fashion-MNIST the Debian package
``dataset-fashion-mnist``'s ``/usr/share/datasets/fashion-mnist``.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from .common import DataError, Dataset, missing_message, search_dirs, to_rgb

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(d) for d in range(10)]
CLASSES = {"fashion-mnist": FASHION_CLASSES, "mnist": MNIST_CLASSES}
SYSTEM_DIRS = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",), "mnist": ()}
PREFIX = {"train": "train", "test": "t10k"}


def file_names(split: str) -> tuple[str, str]:
    """The canonical (gzip) file names of a split's images and labels."""
    p = PREFIX[split]
    return f"{p}-images-idx3-ubyte.gz", f"{p}-labels-idx1-ubyte.gz"


def _read_bytes(path: Path, magic: int) -> bytes:
    """The (inflated) bytes of an IDX file, measured before trusted: the header is read first,
    the size it declares is checked against the memory budget, and at most one byte more than
    it declares is ever read (a small .gz that inflates to gigabytes stops there)."""
    from ..inputs import GZIP_ERRORS, check_allocation
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            src = gzip.GzipFile(fileobj=f) if gz else f
            try:
                head = src.read(header)
                if len(head) < header or int.from_bytes(head[:4], "big") != magic:
                    return head  # read_idx names the short header or the wrong magic
                dims = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
                need = 1
                for d in dims:
                    need *= d  # Python ints: no overflow
                check_allocation(need, f"IDX file {path} (dims {dims})")
                body = src.read(need + 1)
                return head + body
            finally:
                if gz:
                    src.close()
    except GZIP_ERRORS as e:
        raise DataError(f"IDX file {path} is a truncated or corrupt gzip file: {e}") from None
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from None


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read one uint8 IDX file and check its magic number and length -> array of its dims."""
    path = Path(path)
    data = _read_bytes(path, magic)
    if len(data) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(data)} bytes, shorter than the header")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise DataError(f"IDX file {path} has magic number 0x{got:08x}, expected 0x{magic:08x} "
                        f"({'images' if magic == IMAGES_MAGIC else 'labels'})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {path} is truncated: {len(data)} bytes, the header alone is {header}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    want = header + int(np.prod(dims, dtype=object))
    if len(data) != want:
        if len(data) < want:
            raise DataError(f"IDX file {path} is truncated: dims {dims} need {want} bytes, got {len(data)}")
        raise DataError(f"IDX file {path} is longer than its header says: dims {dims} need {want} "
                        f"bytes, got more")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(folder: Path, name: str) -> Path | None:
    """``name`` (a ``.gz`` name) in ``folder``, gzip or raw, with '-' or '.' before ``idx``."""
    stem = name[:-3]
    for cand in (stem, stem.replace("-idx", ".idx")):
        for fn in (cand + ".gz", cand):
            if (folder / fn).is_file():
                return folder / fn
    return None


def locate(name: str, split: str, root: str | os.PathLike | None) -> tuple[Path, Path] | None:
    """The (images, labels) files of ``split`` in the first search folder that has both."""
    img_name, lbl_name = file_names(split)
    for d in search_dirs(name, root, SYSTEM_DIRS[name]):
        img, lbl = _find(d, img_name), _find(d, lbl_name)
        if img is not None and lbl is not None:
            return img, lbl
    return None


def load_idx_pair(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8 and labels (N,) int64 from an IDX pair, counts checked."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"IDX files disagree: {images_path} holds {images.shape[0]} images but "
                        f"{labels_path} holds {labels.shape[0]} labels")
    return to_rgb(images), labels.astype(np.int64)


def load_idx_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None,
                     download: bool = False) -> Dataset:
    """``name`` is ``"mnist"`` or ``"fashion-mnist"``."""
    found = locate(name, split, root)
    if found is None and download:
        from .download import download as fetch
        fetch(name)
        found = locate(name, split, root)
    if found is None:
        dirs = search_dirs(name, root, SYSTEM_DIRS[name])
        raise DataError(missing_message(name, list(file_names(split)), dirs, downloadable=True))
    images, labels = load_idx_pair(*found)
    classes = CLASSES[name]
    if labels.size and labels.max() >= len(classes):
        raise DataError(f"IDX file {found[1]} has label {labels.max()}, expected 0..{len(classes) - 1}")
    return Dataset(images=images, labels=labels, classes=list(classes), name=name, split=split,
                   source=str(found[0].parent))
