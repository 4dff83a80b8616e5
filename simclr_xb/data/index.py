"""An index of an image folder: path, label and (H, W) per file, read from the headers only.

Layouts of ``folder:ROOT`` (:func:`split_dirs`):

* ImageNet: ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` (or ``ROOT/test/...``); the
  ``val`` (else ``test``) folder is the evaluation split, called ``test`` here;
* flat: ``ROOT/<class>/*``, a single (train) split.

Classes are the class folders holding at least one image, over all splits (so labels agree
between splits), sorted; files are sorted within a class.

Building the index opens every file with Pillow to read its size from the header (no pixel
is decoded). The result is cached in ``<cache>/index/<hash of the split folder>.npz``
(``<cache>`` = ``$SIMCLR_XB_INDEX_CACHE``, else ``$XDG_CACHE_HOME/simclr_xb`` or
``~/.cache/simclr_xb``: never inside the user's data, which may be read-only) with a
fingerprint of every file's relative path, size and mtime; a later build reads the sizes of
unchanged files from the cache and the headers of new or changed files only.

Decompression bombs: every image's pixel count (H x W from the header, cached or not) is
checked against :func:`simclr_xb.inputs.image_pixel_limit` (Pillow's ``Image.MAX_IMAGE_PIXELS``
at 1x, lowered to the memory budget) BEFORE any pixel is decoded; an image over it is refused
naming the file and its size, or with ``skip_bad_images`` left out with one warning naming the
files. (Pillow itself only warns from 1x and refuses from 2x.)
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .common import DataError, cache_dir

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
INDEX_FORMAT = 1
EVAL_SPLIT_DIRS = ("val", "test")


@dataclass
class ImageIndex:
    """Files of one split. ``files``: paths relative to ``root`` (or tar member names) as a
    bytes array (``os.fsencode``: 1 byte per character, so the index that every worker
    process receives stays small; :meth:`name` decodes one); ``labels`` int64 (N,); ``hw``
    int64 (N, 2) = (H, W); ``classes``: names by label.
    For tar shards (:mod:`.shards`) ``shard`` (N,) int64 names ``shards[shard[i]]`` and
    ``offset`` / ``length`` (N,) int64 locate the image bytes inside it."""

    root: str
    files: np.ndarray
    labels: np.ndarray
    hw: np.ndarray
    classes: list[str]
    split: str = "train"
    kind: str = "folder"  # "folder" | "tar"
    shards: list[str] = field(default_factory=list)
    shard: np.ndarray | None = None
    offset: np.ndarray | None = None
    length: np.ndarray | None = None
    skipped: list[str] = field(default_factory=list)
    too_large: list[str] = field(default_factory=list)  # those of ``skipped`` over the pixel limit
    build_s: float = 0.0  # seconds spent reading headers (0 when fully cached)
    headers_read: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: np.ndarray) -> ImageIndex:
        idx = np.asarray(idx, dtype=np.int64)
        pick = (lambda a: None if a is None else a[idx])
        return ImageIndex(self.root, self.files[idx], self.labels[idx], self.hw[idx], list(self.classes),
                          self.split, self.kind, list(self.shards), pick(self.shard), pick(self.offset),
                          pick(self.length))

    def name(self, i: int) -> str:
        """File ``i``'s relative path (or tar member name)."""
        return os.fsdecode(self.files[i])

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.name(i)) if self.kind == "folder" else \
            f"{self.shards[int(self.shard[i])]}:{self.name(i)}"


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in EXTENSIONS


def split_dirs(root: Path) -> dict[str, Path]:
    """{"train": folder[, "test": folder]}: ROOT/train (+ ROOT/val or ROOT/test), else ROOT."""
    if (root / "train").is_dir():
        out = {"train": root / "train"}
        for d in EVAL_SPLIT_DIRS:
            if (root / d).is_dir():
                out["test"] = root / d
                break
        return out
    return {"train": root}


def _class_files(folder: Path) -> dict[str, list[os.DirEntry]]:
    out = {}
    with os.scandir(folder) as it:
        dirs = sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)
    for d in dirs:
        with os.scandir(d.path) as it:
            out[d.name] = sorted((e for e in it if e.is_file() and _is_image_name(e.name)),
                                 key=lambda e: e.name)
    return out


def index_cache_dir() -> Path:
    env = os.environ.get("SIMCLR_XB_INDEX_CACHE")
    return Path(env) if env else cache_dir() / "index"


def _cache_path(folder: Path) -> Path:
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:20]
    return index_cache_dir() / f"{key}.npz"


def _load_cache(path: Path) -> dict[tuple[str, int, int], tuple[int, int]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != INDEX_FORMAT:
                return {}
            keys = zip(z["files"].tolist(), z["sizes"].tolist(), z["mtimes"].tolist())
            return {k: (int(h), int(w)) for k, (h, w) in zip(keys, z["hw"].tolist())}
    except (OSError, KeyError, ValueError):
        return {}


def _save_cache(path: Path, files, sizes, mtimes, hw) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        np.savez(tmp, format=INDEX_FORMAT, files=np.asarray(files, dtype=str),
                 sizes=np.asarray(sizes, np.int64), mtimes=np.asarray(mtimes, np.int64),
                 hw=np.asarray(hw, np.int64).reshape(-1, 2))
        os.replace(tmp, path)
    except OSError as e:  # a cache that cannot be written only costs a rebuild next time
        warnings.warn(f"could not write the image index cache {path}: {e}", stacklevel=3)


class TooManyPixels(ValueError):
    """Pillow refused an image at open (more than 2 x Image.MAX_IMAGE_PIXELS); ``pixels`` as
    its message gives them."""

    def __init__(self, pixels: int | None, message: str):
        super().__init__(message)
        self.pixels = pixels


def header_hw(src) -> tuple[int, int]:
    """(H, W) from the header of a file (path) or of its bytes; no pixel is decoded. Pillow's
    DecompressionBombWarning is left to the caller's pixel limit (not repeated), and its error
    becomes :class:`TooManyPixels`."""
    from PIL import Image
    fp = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview)) else os.fspath(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(fp) as im:
                W, H = im.size
        except Image.DecompressionBombError as e:
            raise TooManyPixels(bomb_pixels(e), str(e)) from None
    return int(H), int(W)


def bomb_pixels(e: Exception) -> int | None:
    """The pixel count in Pillow's DecompressionBombError message, None if it has none."""
    m = re.search(r"\((\d+) pixels\)", str(e))
    return int(m.group(1)) if m else None


SKIP_HINT = "(pass skip_bad_images=True, CLI --skip-bad-images, to skip such files)"


def pixel_limit_keep(hw: np.ndarray, name_of, skip_bad_images: bool, where: str,
                     keep: np.ndarray | None = None, big: list[str] | None = None) -> np.ndarray:
    """The rows of ``hw`` (N, 2) within :func:`simclr_xb.inputs.image_pixel_limit` (and in
    ``keep``). An image over it raises DataError naming ``name_of(i)`` and its size; with
    ``skip_bad_images`` it is dropped and, with those in ``big`` (files Pillow refused at open),
    named in one warning."""
    from ..inputs import image_pixel_limit, too_many_pixels
    hw = np.asarray(hw, dtype=np.int64).reshape(-1, 2)
    keep = np.ones(len(hw), dtype=bool) if keep is None else keep.copy()
    big = [] if big is None else big  # extended in place: the caller's list of skipped files
    limit = image_pixel_limit()
    if limit[0] is not None:
        for i in np.flatnonzero(keep & (hw[:, 0] * hw[:, 1] > limit[0])):
            msg = too_many_pixels(name_of(i), int(hw[i, 0]), int(hw[i, 1]), limit=limit)
            if not skip_bad_images:
                raise DataError(f"{msg} {SKIP_HINT}")
            big.append(f"{name_of(i)} ({hw[i, 1]}x{hw[i, 0]})")
            keep[i] = False
    if big:
        shown = ", ".join(big[:3]) + (", ..." if len(big) > 3 else "")
        warnings.warn(f"skipped {len(big)} image(s) over the limit of {limit[0]} pixels ({limit[1]}) "
                      f"in {where}: {shown}", stacklevel=3)
    return keep


def too_many_pixels_error(name: str, e: TooManyPixels, skip_bad_images: bool) -> str:
    """The refusal of an image Pillow would not open; raises DataError unless skipping."""
    from ..inputs import too_many_pixels
    msg = too_many_pixels(name, None, None, e.pixels) if e.pixels else None
    msg = msg or f"image {name} is too large to decode: {e}"
    if not skip_bad_images:
        raise DataError(f"{msg} {SKIP_HINT}")
    return f"{name} ({e.pixels} pixels)"


def build_folder_index(root: str | os.PathLike, split: str = "train", skip_bad_images: bool = False,
                       use_cache: bool = True) -> ImageIndex:
    """Scan ``folder:ROOT``'s ``split`` ("train" or "test") into an :class:`ImageIndex`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    splits = split_dirs(root)
    if split not in splits:
        if splits["train"] == root:
            raise DataError(f"image folder {root} has no train/ and val/ (or test/) subfolders, so it "
                            f"holds a single split (train); split {split!r} is not available")
        raise DataError(f"image folder {root} has a train/ subfolder but no val/ or test/ subfolder")
    per_split = {s: _class_files(f) for s, f in splits.items()}
    classes = sorted({c for d in per_split.values() for c, fs in d.items() if fs})
    folder = splits[split]
    if not classes:
        raise DataError(f"image folder {folder} holds no images: expected "
                        f"{folder}/<class>/<image> with extensions {', '.join(EXTENSIONS)}")
    entries = [(c, e) for c, es in per_split[split].items() if c in classes for e in es]
    if not entries:
        raise DataError(f"image folder {folder} holds no images (split {split!r}): expected "
                        f"{folder}/<class>/<image> with extensions {', '.join(EXTENSIONS)}")
    label_of = {c: i for i, c in enumerate(classes)}
    files, sizes, mtimes, labels = [], [], [], []
    for c, e in entries:
        st = e.stat()
        files.append(f"{c}/{e.name}")
        sizes.append(st.st_size)
        mtimes.append(st.st_mtime_ns)
        labels.append(label_of[c])
    cache_path = _cache_path(folder)
    cached = _load_cache(cache_path) if use_cache else {}
    hw = np.zeros((len(files), 2), dtype=np.int64)
    keep = np.ones(len(files), dtype=bool)
    bad: list[str] = []
    big: list[str] = []
    t0, read = time.perf_counter(), 0
    for i, key in enumerate(zip(files, sizes, mtimes)):
        got = cached.get(key)
        if got is None:
            try:
                got = header_hw(folder / key[0])
                read += 1
            except TooManyPixels as e:
                big.append(too_many_pixels_error(str(folder / key[0]), e, skip_bad_images))
                keep[i] = False
                continue
            except (OSError, ValueError, SyntaxError) as e:
                if not skip_bad_images:
                    raise DataError(f"cannot decode image {folder / key[0]}: {e} (pass "
                                    f"skip_bad_images=True, CLI --skip-bad-images, to skip such files)") from None
                bad.append(str(folder / key[0]))
                keep[i] = False
                continue
        hw[i] = got
    build_s = time.perf_counter() - t0
    if read or len(cached) != int(keep.sum()):
        k = np.flatnonzero(keep)
        _save_cache(cache_path, [files[i] for i in k], [sizes[i] for i in k], [mtimes[i] for i in k], hw[k])
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        warnings.warn(f"skipped {len(bad)} undecodable image(s) in {folder}: {shown}", stacklevel=2)
    keep = pixel_limit_keep(hw, lambda i: str(folder / files[i]), skip_bad_images, str(folder), keep, big)
    k = np.flatnonzero(keep)
    if k.size == 0:
        raise DataError(f"image folder {folder}: none of its {len(files)} images could be read")
    return ImageIndex(root=str(folder), files=np.asarray([os.fsencode(f) for f in files], dtype=bytes)[k],
                      labels=np.asarray(labels, dtype=np.int64)[k], hw=hw[k], classes=classes,
                      split=split, skipped=bad + big, too_large=big, build_s=build_s, headers_read=read)


def size_summary(hw: np.ndarray) -> str:
    """One paragraph: shorter side and aspect (W/H) percentiles, min and max sizes."""
    hw = np.asarray(hw)
    short = hw.min(axis=1)
    aspect = hw[:, 1] / hw[:, 0]
    q = (0, 5, 50, 95, 100)
    s = np.percentile(short, q)
    a = np.percentile(aspect, q)
    return (f"shorter side min/p5/median/p95/max {' / '.join(f'{v:.0f}' for v in s)} px; "
            f"aspect W/H {' / '.join(f'{v:.2f}' for v in a)}; "
            f"decoded size {hw.prod(axis=1).sum() * 3 / 2**30:.2f} GiB as uint8 RGB")
