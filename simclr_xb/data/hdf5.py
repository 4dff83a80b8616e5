"""HDF5 datasets: read them (validated) and :func:`pack` any dataset spec into one file.

Layout read (and written by :func:`pack`)::

    /train/images   uint8 (N, H, W, 3) or (N, H, W) grey      /train/labels  integer (N,)
    /test/images    ...                                        /test/labels   ...
    attrs: classes  (JSON list of names, or an array of strings; on the root or the group)

A file may instead hold ``/images`` and ``/labels`` at the top level: that is its train split,
and asking for ``test`` is an error that says so. Without a ``classes`` attribute the names are
``"0" .. str(max label)``. Files written by :func:`pack` also carry ``format``
(:data:`FORMAT`), ``format_version``, ``source`` (the spec packed) and ``image_shape``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .common import SPLITS, DataError, Dataset, to_rgb

FORMAT = "simclr-xb-dataset"
FORMAT_VERSION = 1


def _classes_attr(attrs, where: str) -> list[str] | None:
    if "classes" not in attrs:
        return None
    value = attrs["classes"]
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{where}: attribute 'classes' is not a JSON list of names") from None
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.atleast_1d(value)]


def file_splits(f: h5py.File) -> dict[str, str]:
    """{split: group path} present in an open file: ``/train``, ``/test`` or the root as train."""
    groups = {s: f"/{s}" for s in SPLITS if s in f and isinstance(f[s], h5py.Group)}
    if groups:
        return groups
    if "images" in f or "labels" in f:
        return {"train": "/"}
    return {}


MAX_UNNAMED_CLASSES = 100_000  # labels without a 'classes' attribute: names "0".."max label"


def _array(f: h5py.File, path: str, file: Path) -> np.ndarray:
    if path not in f:
        raise DataError(f"HDF5 file {file} has no dataset {path}")
    ds = f[path]
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"HDF5 file {file}: {path} is a group, expected a dataset")
    _measure(ds, path, file)
    return ds[()]


def _measure(ds, path: str, file: Path) -> None:
    """Shape and dtype from the dataset's header, checked before a byte is read: images uint8
    (N, H, W[, 1 or 3]) with H, W >= 1, labels integers (N,), the size within the memory budget."""
    from ..inputs import InputTooLarge, check_allocation
    try:
        _measure_checked(ds, path, file, check_allocation)
    except InputTooLarge as e:
        raise DataError(str(e)) from None


def _measure_checked(ds, path: str, file: Path, check_allocation) -> None:
    shape, dtype = tuple(int(d) for d in ds.shape), ds.dtype
    if path.endswith("images"):
        ok = dtype == np.uint8 and (len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3)))
        if not ok or any(d < 1 for d in shape[1:3]):
            raise DataError(f"HDF5 file {file}: dataset {path} is {dtype} {shape}, expected uint8 "
                            f"(N, H, W, 3) or (N, H, W) with H, W >= 1")
        # grey images are repeated to 3 channels: count the RGB copy too
        extra = 3 * int(np.prod(shape[:3], dtype=object)) if len(shape) == 3 or shape[-1] == 1 else 0
        check_allocation(int(np.prod(shape, dtype=object)) + extra, f"HDF5 file {file} dataset {path} {shape}")
    else:
        if len(shape) != 1 or dtype.kind not in "iu":
            raise DataError(f"HDF5 file {file}: dataset {path} is {dtype} {shape}, expected integers (N,)")
        check_allocation(shape[0] * 8 * 2, f"HDF5 file {file} dataset {path} {shape}")


# Image arrays larger than this are read lazily, by index (HDF5 chunks), never whole.
HDF5_IN_MEMORY_MAX = int(os.environ.get("SIMCLR_XB_HDF5_IN_MEMORY_MAX", 2 << 30))


class LazyH5Images:
    """An HDF5 image dataset read by index: ``a[idx]`` (int array, slice or int) reads only
    those images (sorted, unique, then put back in the requested order) and returns uint8
    NHWC RGB. Opens the file on first use in each process; ``shape``/``dtype`` as numpy's."""

    lazy = True

    def __init__(self, path: Path, dataset: str, shape: tuple, dtype):
        self.path, self.dataset = Path(path), dataset
        self.shape = tuple(shape[:3]) + (3,)
        self.dtype = np.dtype(dtype)
        self.ndim = 4
        self._f = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self):
        return {**self.__dict__, "_f": None}

    def _ds(self):
        if self._f is None:
            self._f = h5py.File(self.path, "r")
        return self._f[self.dataset]

    def __getitem__(self, index) -> np.ndarray:
        ds = self._ds()
        if isinstance(index, (slice, int, np.integer)):
            return np.ascontiguousarray(to_rgb(np.atleast_1d(ds[index]) if not isinstance(index, slice)
                                               else ds[index]))
        idx = np.asarray(index, dtype=np.int64)
        uniq, inv = np.unique(idx, return_inverse=True)
        try:
            got = ds[uniq] if uniq.size else np.zeros((0,) + ds.shape[1:], ds.dtype)
        except (OSError, ValueError) as e:
            raise DataError(f"HDF5 file {self.path}: cannot read images of {self.dataset}: {e}") from None
        return np.ascontiguousarray(to_rgb(got[inv.reshape(-1)]))


def load_hdf5(path: str | os.PathLike, split: str = "train", name: str | None = None,
              max_in_memory: int | None = None) -> Dataset:
    """One split of an HDF5 file; an image array over ``max_in_memory`` bytes (default
    :data:`HDF5_IN_MEMORY_MAX`) stays on disk as a :class:`LazyH5Images`."""
    path = Path(path)
    limit = HDF5_IN_MEMORY_MAX if max_in_memory is None else int(max_in_memory)
    if not path.is_file():
        raise DataError(f"HDF5 file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            splits = file_splits(f)
            if not splits:
                raise DataError(f"HDF5 file {path} has neither /train, /test groups nor top-level "
                                f"/images and /labels datasets (found: {sorted(f.keys())})")
            if split not in splits:
                top = " (top-level /images and /labels are the train split)" if splits.get("train") == "/" else ""
                raise DataError(f"HDF5 file {path} has no split {split!r}: it holds "
                                f"{', '.join(sorted(splits))}" + top)
            g = splits[split].rstrip("/")
            img_path, lbl_path = f"{g}/images", f"{g}/labels"
            if img_path in f and isinstance(f[img_path], h5py.Dataset) and f[img_path].nbytes > limit:
                d = f[img_path]
                _measure_checked(d, img_path, path, lambda *_: None)  # shape only: read lazily
                images = LazyH5Images(path, img_path, d.shape, d.dtype)
                images_dtype, images_shape = d.dtype, d.shape
            else:
                images = _array(f, img_path, path)
                images_dtype, images_shape = images.dtype, images.shape
            labels = _array(f, lbl_path, path)
            classes = _classes_attr(f[splits[split]].attrs, f"HDF5 file {path} group {splits[split]}") \
                or _classes_attr(f.attrs, f"HDF5 file {path}")
    except DataError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise DataError(f"HDF5 file {path} is unreadable (truncated or not HDF5?): {e}") from None
    nd = len(images_shape)
    if images_dtype != np.uint8 or not (nd == 3 or (nd == 4 and images_shape[-1] in (1, 3))):
        raise DataError(f"HDF5 file {path}: dataset {img_path} is {images_dtype} {images_shape}, expected "
                        f"uint8 (N, H, W, 3) or (N, H, W)")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"HDF5 file {path}: dataset {lbl_path} is {labels.dtype} {labels.shape}, "
                        f"expected integers (N,)")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"HDF5 file {path}: {img_path} holds {images.shape[0]} images but {lbl_path} "
                        f"holds {labels.shape[0]} labels")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"HDF5 file {path}: dataset {lbl_path} has negative labels")
    if classes is None:
        if labels.size and int(labels.max()) >= MAX_UNNAMED_CLASSES:
            raise DataError(f"HDF5 file {path}: dataset {lbl_path} has label {int(labels.max())} and the "
                            f"file has no 'classes' attribute: without one at most "
                            f"{MAX_UNNAMED_CLASSES} classes are taken (add the class names)")
        classes = [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]
    if labels.size and labels.max() >= len(classes):
        raise DataError(f"HDF5 file {path}: dataset {lbl_path} has label {labels.max()} but the "
                        f"'classes' attribute names only {len(classes)} classes")
    if not getattr(images, "lazy", False):
        images = np.ascontiguousarray(to_rgb(images))
    return Dataset(images=images, labels=labels, classes=classes,
                   name=name or f"hdf5:{path}", split=split, source=str(path))


@dataclass
class PackResult:
    """What :func:`pack` wrote: the file, the images per split, the classes, the image shape."""

    path: Path
    counts: dict[str, int]
    classes: list[str]
    image_shape: tuple[int, int, int]

    def __str__(self) -> str:
        counts = ", ".join(f"{s} {n}" for s, n in self.counts.items())
        h, w, c = self.image_shape
        return f"{self.path}: {counts} images of {h}x{w}x{c}, {len(self.classes)} classes"


def pack(src_spec: str, out_path: str | os.PathLike, root: str | os.PathLike | None = None, *,
         download: bool = False, image_size: int | None = None, skip_bad_images: bool = False,
         compression: str | None = None, overwrite: bool = False) -> PackResult:
    """Convert every split of the dataset ``src_spec`` (any :func:`load_dataset` spec) into one
    HDF5 file at ``out_path`` in the layout above, atomically (temporary file in the same
    folder, fsync, rename). ``compression`` is passed to h5py (e.g. ``"gzip"``); an existing
    ``out_path`` is an error unless ``overwrite``. Returns a :class:`PackResult`.
    """
    from . import available_splits, load_dataset

    out = Path(out_path)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; pass overwrite=True (CLI: --force) to replace it")
    parts = {s: load_dataset(src_spec, s, root=root, download=download, skip_bad_images=skip_bad_images,
                             image_size=image_size) for s in available_splits(src_spec, root)}
    classes = next(iter(parts.values())).classes
    shapes = {d.image_shape for d in parts.values()}
    if len(shapes) != 1 or any(d.classes != classes for d in parts.values()):
        raise DataError(f"{src_spec}: splits disagree on image shape {sorted(shapes)} or classes; "
                        f"cannot pack them into one file")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["source"] = src_spec
            f.attrs["classes"] = json.dumps(classes)
            f.attrs["image_shape"] = np.asarray(next(iter(shapes)), dtype=np.int64)
            for s, d in parts.items():
                g = f.create_group(s)
                chunks = (min(len(d), 256), *d.image_shape) if compression and len(d) else None
                g.create_dataset("images", data=d.images, compression=compression, chunks=chunks)
                g.create_dataset("labels", data=d.labels)
                g.attrs["classes"] = json.dumps(d.classes)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return PackResult(path=out, counts={s: len(d) for s, d in parts.items()}, classes=list(classes),
                      image_shape=next(iter(shapes)))
