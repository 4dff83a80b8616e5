"""Image folders: ``PATH/<class>/<image>``, decoded with Pillow into one uint8 array.

Splits: if ``PATH/train`` (and optionally ``PATH/test``) exist, each is a split folder of
class subfolders; otherwise ``PATH`` itself is the train split and asking for ``test`` is an
error that says so. Classes are the subfolder names (over both splits, so labels agree
between them) that hold at least one image, sorted; files are read in sorted order.

Images (``.png .jpg .jpeg .bmp .gif .webp``, any case; the first frame of an animation) are
converted to RGB by :func:`simclr_xb.data.pixels.to_rgb_uint8` (grey repeated, 16-bit scaled
to 8-bit, alpha composited on black, unconvertible modes refused naming the file), resized so the shorter side is
``image_size`` (Pillow bilinear, antialiased when shrinking), then centre-cropped to
``image_size`` x ``image_size``. Default ``image_size``: :data:`DEFAULT_IMAGE_SIZE` = 32, the
size of the project's tiny preset and of CIFAR.

An image Pillow cannot decode raises :class:`DataError` naming the file; with
``skip_bad_images=True`` it is skipped instead, one ``UserWarning`` gives the count and the
first few paths, and the count is kept in ``Dataset.skipped``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .common import DataError, Dataset, fit_square
from .pixels import to_rgb_uint8

DEFAULT_IMAGE_SIZE = 32
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in EXTENSIONS


def split_folders(path: Path) -> dict[str, Path]:
    """{"train": folder, "test": folder} if PATH/train exists (the evaluation split is PATH/val,
    else PATH/test: ImageNet's layout), else {"train": PATH}."""
    from .index import split_dirs
    return split_dirs(path)


def _class_dirs(folder: Path) -> dict[str, list[Path]]:
    out = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[d.name] = sorted(p for p in d.iterdir() if _is_image(p))
    return out


def decode_image(path: Path, size: int) -> np.ndarray:
    """One file -> uint8 (size, size, 3): RGB, shorter side resized to ``size``, centre crop."""
    with Image.open(path) as im:
        im.seek(0)
        im.load()
        rgb = to_rgb_uint8(im, str(path))
    return np.asarray(fit_square(Image.fromarray(rgb), size), dtype=np.uint8)


def load_folder(path: str | os.PathLike, split: str = "train", image_size: int | None = None,
                skip_bad_images: bool = False, name: str | None = None) -> Dataset:
    path = Path(path)
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    if size < 1:
        raise DataError(f"image_size must be >= 1, got {image_size}")
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist or is not a folder")
    splits = split_folders(path)
    if split not in splits:
        if "train" in splits and splits["train"] == path:
            raise DataError(f"image folder {path} has no train/ and test/ subfolders, so it holds a "
                            f"single split (train); split {split!r} is not available")
        raise DataError(f"image folder {path} has a train/ subfolder but no {split}/ subfolder")
    per_split = {s: _class_dirs(f) for s, f in splits.items()}
    classes = sorted({c for d in per_split.values() for c, files in d.items() if files})
    if not classes:
        raise DataError(f"image folder {splits[split]} holds no images: expected "
                        f"{splits[split]}/<class>/<image> with extensions {', '.join(EXTENSIONS)}")
    files = [(f, classes.index(c)) for c, fs in per_split[split].items() if c in classes for f in fs]
    if not files:
        raise DataError(f"image folder {splits[split]} holds no images (split {split!r}): expected "
                        f"{splits[split]}/<class>/<image> with extensions {', '.join(EXTENSIONS)}")
    images, labels, bad = [], [], []
    for f, label in files:
        try:
            images.append(decode_image(f, size))
        except DataError:  # to_rgb_uint8's refusal already names the file
            if not skip_bad_images:
                raise
            bad.append(f)
            continue
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            if not skip_bad_images:
                raise DataError(f"cannot decode image {f}: {e} (pass skip_bad_images=True, CLI "
                                f"--skip-bad-images, to skip such files)") from None
            bad.append(f)
            continue
        labels.append(label)
    if bad:
        shown = ", ".join(str(b) for b in bad[:3]) + (", ..." if len(bad) > 3 else "")
        warnings.warn(f"skipped {len(bad)} undecodable image(s) in {splits[split]}: {shown}", stacklevel=2)
    if not images:
        raise DataError(f"image folder {splits[split]}: none of its {len(files)} images could be decoded")
    return Dataset(images=np.stack(images), labels=np.asarray(labels, dtype=np.int64), classes=classes,
                   name=name or f"folder:{path}", split=split, source=str(splits[split]), skipped=len(bad))
