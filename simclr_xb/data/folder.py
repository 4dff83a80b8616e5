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

An image whose header declares more pixels than :func:`simclr_xb.inputs.image_pixel_limit`
(Pillow's ``Image.MAX_IMAGE_PIXELS`` at 1x, lowered to the memory budget) is refused naming
the file and its size before any pixel is decoded (:class:`ImageTooLarge`); with
``skip_bad_images=True`` it is skipped, named in one warning.
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


class ImageTooLarge(DataError):
    """An image's header declares more pixels than the limit; ``entry`` names it and its size."""

    def __init__(self, message: str, entry: str):
        super().__init__(message)
        self.entry = entry


def decode_image(path: Path, size: int, limit: tuple[int | None, str] | None = None) -> np.ndarray:
    """One file -> uint8 (size, size, 3): RGB, shorter side resized to ``size``, centre crop.
    Its header's size is checked against ``limit`` (default :func:`image_pixel_limit`) before
    any pixel is decoded (:class:`ImageTooLarge`)."""
    from ..inputs import too_many_pixels
    from .index import SKIP_HINT, TooManyPixels, bomb_pixels
    with warnings.catch_warnings():  # the limit below replaces Pillow's warning at 1x
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as e:  # Pillow's own refusal at 2x
            n = bomb_pixels(e)
            msg = (too_many_pixels(str(path), None, None, n, limit) if n else None) or \
                f"image {path} is too large to decode: {e}"
            raise ImageTooLarge(f"{msg} {SKIP_HINT}", f"{path} ({n} pixels)") from TooManyPixels(n, str(e))
    with im:
        W, H = im.size
        msg = too_many_pixels(str(path), H, W, limit=limit)
        if msg:
            raise ImageTooLarge(f"{msg} {SKIP_HINT}", f"{path} ({W}x{H})")
        im.seek(0)
        im.load()
        rgb = to_rgb_uint8(im, str(path))
    return np.asarray(fit_square(Image.fromarray(rgb), size), dtype=np.uint8)


def _decode_all(files, size: int, skip_bad_images: bool, folder: Path) -> tuple[list, list, int]:
    """(images, labels, number skipped) of ``files`` [(path, label)], with one warning for the
    undecodable files and one for those over the pixel limit when skipping."""
    from ..inputs import image_pixel_limit
    limit = image_pixel_limit()
    images, labels, bad, big = [], [], [], []
    for f, label in files:
        try:
            images.append(decode_image(f, size, limit))
        except ImageTooLarge as e:
            if not skip_bad_images:
                raise
            big.append(e.entry)
            continue
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
        warnings.warn(f"skipped {len(bad)} undecodable image(s) in {folder}: {shown}", stacklevel=3)
    if big:
        shown = ", ".join(big[:3]) + (", ..." if len(big) > 3 else "")
        warnings.warn(f"skipped {len(big)} image(s) over the limit of {limit[0]} pixels ({limit[1]}) in "
                      f"{folder}: {shown}", stacklevel=3)
    return images, labels, len(bad) + len(big)


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
    images, labels, skipped = _decode_all(files, size, skip_bad_images, splits[split])
    if not images:
        raise DataError(f"image folder {splits[split]}: none of its {len(files)} images could be decoded")
    return Dataset(images=np.stack(images), labels=np.asarray(labels, dtype=np.int64), classes=classes,
                   name=name or f"folder:{path}", split=split, source=str(splits[split]), skipped=skipped)
