"""The common result type, the error type and the search path shared by every reader."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ENV_VAR = "SIMCLR_XB_DATA"
SPLITS = ("train", "test")


class DataError(ValueError):
    """A dataset is missing, malformed or inconsistent. The message names the file or folder."""


@dataclass
class Dataset:
    """One split of a dataset, in memory.

    images:  uint8 (N, H, W, 3), NHWC RGB (grey sources are repeated over the 3 channels).
    labels:  int64 (N,), values in [0, len(classes)).
    classes: class names, index = label.
    name:    the spec it was loaded from (e.g. ``"cifar10"``, ``"folder:/data/pets"``).
    split:   ``"train"`` or ``"test"``.
    source:  the file or folder read (None for the built-in ``shapes``).
    skipped: images that could not be decoded and were skipped (``skip_bad_images``).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str
    split: str = "train"
    source: str | None = None
    skipped: int = 0

    def __post_init__(self) -> None:
        check_arrays(self.images, self.labels, self.classes, where=f"dataset {self.name!r} ({self.split})")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def check_arrays(images: np.ndarray, labels: np.ndarray, classes: list[str], where: str) -> None:
    """Raise DataError unless images are uint8 (N, H, W, 3) and labels int64 (N,) in range."""
    if not (isinstance(images, np.ndarray) or getattr(images, "lazy", False)) \
            or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[-1] != 3:
        got = f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
        raise DataError(f"{where}: images must be uint8 (N, H, W, 3), got {got}")
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.ndim != 1:
        got = f"{getattr(labels, 'dtype', type(labels).__name__)} {getattr(labels, 'shape', '')}"
        raise DataError(f"{where}: labels must be int64 (N,), got {got}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"{where}: labels span [{labels.min()}, {labels.max()}], expected "
                        f"[0, {len(classes) - 1}] for {len(classes)} classes")


def to_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, 1) grey -> (N, H, W, 3); (N, H, W, 3) passes through."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim == 4 and images.shape[-1] == 1:
        return np.ascontiguousarray(np.repeat(images, 3, axis=-1))
    return images


def fit_square(im: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bilinear, antialiased when shrinking), then
    centre-crop to ``size`` x ``size``."""
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, size, size, 3) with :func:`fit_square`; a no-op at that size."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((images.shape[0], size, size, 3), dtype=np.uint8)
    for i, a in enumerate(images):
        out[i] = np.asarray(fit_square(Image.fromarray(a), size))
    return out


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/simclr_xb`` or ``~/.cache/simclr_xb``: where downloads go."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "simclr_xb"


def search_dirs(name: str, root: str | os.PathLike | None, extra: tuple[str, ...] = ()) -> list[Path]:
    """Folders to look in for dataset ``name``, in order.

    ``root`` and ``root/name`` if given; ``$SIMCLR_XB_DATA`` and ``$SIMCLR_XB_DATA/name``;
    ``~/.cache/simclr_xb/name``; then ``extra`` (e.g. a system package's folder).
    """
    dirs: list[Path] = []
    if root is not None:
        dirs += [Path(root), Path(root) / name]
    env = os.environ.get(ENV_VAR)
    if env:
        dirs += [Path(env), Path(env) / name]
    dirs.append(cache_dir() / name)
    dirs += [Path(e) for e in extra]
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def missing_message(name: str, files: list[str], dirs: list[Path], downloadable: bool) -> str:
    where = "; ".join(str(d) for d in dirs)  # one line: the CLI prints errors as one line
    msg = (f"dataset {name!r} not found: expected the files {', '.join(files)} in one of the folders "
           f"{where}. Put the files in one of these folders, pass root=..., or set ${ENV_VAR}.")
    if downloadable:
        msg += f" Or pass download=True (CLI: --download) to fetch them into {cache_dir() / name}."
    return msg
