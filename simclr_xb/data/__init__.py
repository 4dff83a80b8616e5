"""Data readers: every dataset becomes a :class:`Dataset` of uint8 NHWC images and int64 labels.

One entry point, :func:`load_dataset`, takes a spec (:data:`DATASETS`):

=================  ===========================================================  ==========
spec               source                                                       module
=================  ===========================================================  ==========
shapes             built-in synthetic shapes, 32x32 (``shapes:train=N,test=M,     shapes
                   seed=S`` picks sizes and seed; defaults 10000, 2000, 0)
fashion-mnist      IDX files (also the Debian package's folder)                 idx
mnist              IDX files                                                    idx
cifar10, cifar100  python-pickle batches, read with a restricted unpickler       cifar
folder:PATH        PATH/<class>/<image> or PATH/train/<class>/<image> with      folder,
                   PATH/val (or test)/<class>/<image> as the evaluation split   index
wds:PATH           WebDataset tar shards PATH/train-*.tar, PATH/val-*.tar       shards
hdf5:PATH          /train, /test groups or top-level /images, /labels           hdf5
=================  ===========================================================  ==========

Training, evaluation, fine-tuning and features open data with :func:`open_dataset`:
``folder:`` and ``wds:`` become a :class:`StreamDataset` (an index of path, label and (H, W);
views are cut from the original images by worker processes, :mod:`.stream`), the others a
:class:`Dataset` in memory (an HDF5 image array larger than ``hdf5.HDF5_IN_MEMORY_MAX`` is read
lazily by index). :func:`load_dataset` always decodes into memory (``folder:`` at
``image_size``, default 32), as :func:`pack` needs. A relative ``folder:``/``wds:`` PATH that
does not exist is also looked for under ``root``, ``$SIMCLR_XB_DATA`` and
``~/.cache/simclr_xb`` (so the imagenet preset's ``folder:imagenet`` finds
``$SIMCLR_XB_DATA/imagenet``).

:func:`pack` writes any of them (all the splits it has) into one HDF5 file; :class:`BatchLoader`
serves seeded, sharded, resumable batches. Errors are :class:`DataError` (a ValueError) and
name the file or folder at fault.
"""
from __future__ import annotations

import os

from .cifar import load_cifar
from .common import SPLITS, DataError, Dataset, resize_images
from .folder import load_folder, split_folders
from .hdf5 import PackResult, load_hdf5, pack
from .idx import load_idx_dataset
from .loader import Batch, BatchLoader
from .shapes import DEFAULT_SIZES, SHAPE_CLASSES, make_shapes
from .stream import DataWorkerError, StreamDataset, StreamLoader, ViewBatch

DATASETS = ("shapes", "fashion-mnist", "mnist", "cifar10", "cifar100", "folder:PATH", "wds:PATH", "hdf5:PATH")

__all__ = ["DATASETS", "Batch", "BatchLoader", "DataError", "DataWorkerError", "Dataset", "PackResult",
           "StreamDataset", "StreamLoader", "ViewBatch", "available_splits", "load_dataset", "make_shapes",
           "open_dataset", "pack", "parse_spec"]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"folder:/a/b"`` -> ``("folder", "/a/b")``; ``"cifar10"`` -> ``("cifar10", None)``."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"dataset spec {spec!r} is invalid: expected one of {', '.join(DATASETS)}")
    kind, sep, arg = spec.partition(":")
    if kind in ("folder", "hdf5", "wds"):
        if not arg:
            raise ValueError(f"dataset spec {spec!r} needs a path: {kind}:PATH")
        return kind, os.path.expanduser(arg)
    if kind == "shapes":
        return kind, arg or None
    if kind in DATASETS and not sep:
        return kind, None
    raise ValueError(f"unknown dataset spec {spec!r}: expected one of {', '.join(DATASETS)}")


def _shapes_args(arg: str | None) -> dict[str, int]:
    out = {"train": DEFAULT_SIZES["train"], "test": DEFAULT_SIZES["test"], "seed": 0}
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in out or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"dataset spec shapes:{arg} is invalid: expected shapes:train=N,test=M,seed=S "
                             f"(any subset, integers)")
        out[key] = int(value)
        if out[key] < 0:
            raise ValueError(f"dataset spec shapes:{arg} is invalid: {key} = {out[key]} must be >= 0")
    from ..inputs import check_allocation
    from .shapes import SIZE
    for key in ("train", "test"):  # uint8 images plus the float32 rendering of one chunk
        check_allocation(out[key] * SIZE * SIZE * 3, f"dataset spec shapes:{arg} ({key}={out[key]} images)")
    return out


def resolve_path(kind: str, arg: str, root: str | os.PathLike | None = None) -> str:
    """A ``folder:``/``wds:`` path as given if it exists; a relative one is also looked for
    under root, $SIMCLR_XB_DATA and ~/.cache/simclr_xb (:func:`common.search_dirs`)."""
    from pathlib import Path

    from .common import search_dirs
    p = Path(arg)
    if p.exists() or p.is_absolute():
        return arg
    tried = [Path(d) / arg for d in search_dirs("", root) if str(d) not in ("", ".")]
    for t in tried:
        if t.exists():
            return str(t)
    what = "image folder" if kind == "folder" else "shard folder"
    raise DataError(f"{what} {arg} does not exist (also looked in {', '.join(str(t) for t in tried)}): "
                    f"pass --data {kind}:/path/to/it or set $SIMCLR_XB_DATA")


def open_dataset(spec: str, split: str = "train", root: str | os.PathLike | None = None,
                 skip_bad_images: bool = False, download: bool = False):
    """The dataset for training and evaluation: a :class:`StreamDataset` for ``folder:`` and
    ``wds:`` (index only; see :mod:`.stream`), else :func:`load_dataset`'s in-memory Dataset."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is invalid: expected one of {SPLITS}")
    kind, arg = parse_spec(spec)
    if kind == "folder":
        from .index import build_folder_index
        idx = build_folder_index(resolve_path(kind, arg, root), split, skip_bad_images=skip_bad_images)
    elif kind == "wds":
        from .shards import build_shard_index
        idx = build_shard_index(resolve_path(kind, arg, root), split, skip_bad_images=skip_bad_images)
    else:
        return load_dataset(spec, split, root=root, download=download, skip_bad_images=skip_bad_images)
    return StreamDataset(idx, name=spec, split=split)


def available_splits(spec: str, root: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The splits ``spec`` provides: both for the built-in datasets, what is on disk otherwise."""
    kind, arg = parse_spec(spec)
    if kind == "folder":
        from pathlib import Path
        arg = resolve_path(kind, arg, root)
        if not Path(arg).is_dir():
            raise DataError(f"image folder {arg} does not exist or is not a folder")
        return tuple(split_folders(Path(arg)))
    if kind == "wds":
        from pathlib import Path

        from .shards import shard_files
        return tuple(s for s in SPLITS if s in shard_files(Path(resolve_path(kind, arg, root))))
    if kind == "hdf5":
        import h5py

        from .hdf5 import file_splits
        try:
            with h5py.File(arg, "r") as f:
                return tuple(file_splits(f))
        except OSError as e:
            raise DataError(f"HDF5 file {arg} cannot be opened: {e}") from None
    return SPLITS


def load_dataset(spec: str, split: str = "train", root: str | os.PathLike | None = None,
                 download: bool = False, skip_bad_images: bool = False,
                 image_size: int | None = None) -> Dataset:
    """Load one split of the dataset named by ``spec`` (see :data:`DATASETS`).

    root: folder to look in first (the readers also search ``$SIMCLR_XB_DATA`` and
        ``~/.cache/simclr_xb/<name>``); download: fetch missing CIFAR / (Fashion-)MNIST files;
    skip_bad_images: folder only, skip undecodable files with a warning;
    image_size: resize (shorter side, then centre crop) to this square size; for ``folder:``
        None means 32, for the others None keeps the native size.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is invalid: expected one of {SPLITS}")
    kind, arg = parse_spec(spec)
    if image_size is not None and int(image_size) < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if kind == "wds":
        raise DataError(f"dataset spec {spec!r}: tar shards are read by index (open_dataset), not "
                        f"decoded into memory")
    if kind == "folder":
        arg = resolve_path(kind, arg, root)
        return load_folder(arg, split, image_size=image_size, skip_bad_images=skip_bad_images, name=spec)
    if kind == "hdf5":
        ds = load_hdf5(arg, split, name=spec)
    elif kind == "shapes":
        a = _shapes_args(arg)
        images, labels = make_shapes(a[split], split, a["seed"])
        ds = Dataset(images=images, labels=labels, classes=list(SHAPE_CLASSES), name=spec, split=split)
    elif kind in ("mnist", "fashion-mnist"):
        ds = load_idx_dataset(kind, split, root, download)
    else:
        ds = load_cifar(kind, split, root, download)
    if image_size is not None:
        ds.images = resize_images(ds.images, int(image_size))
    return ds
