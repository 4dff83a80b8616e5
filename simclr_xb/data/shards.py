"""WebDataset tar shards, written by ``simclr-xb data pack --format wds`` and read by index.

Layout (the WebDataset convention, as open_clip and timm read it): a shard is a plain POSIX
tar; one sample = the members sharing a basename (the name up to its first dot), e.g.
``000123.jpg`` + ``000123.cls`` (the class index as decimal text). ``wds:DIR`` reads
``DIR/train-*.tar`` (or every ``DIR/*.tar`` when no split prefix is used) as the train split and
``DIR/val-*.tar`` or ``DIR/test-*.tar`` as the evaluation split, shards in name order, members
in tar order. ``DIR/classes.json`` (written by the packer) names the classes; without it they
are ``"0" .. str(max label)``.

Random access: the index records each image member's shard, data offset and length (read
from the tar headers, :mod:`tarfile`), so a worker reads sample i with one ``pread`` and the
project's seeded permutation, rank slicing and exact mid-epoch resume work as for folders.
Compressed shards (``.tar.gz``) cannot be read by index and are refused.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np

from .common import DataError
from .index import (
    EXTENSIONS,
    ImageIndex,
    TooManyPixels,
    header_hw,
    index_cache_dir,
    pixel_limit_keep,
    too_many_pixels_error,
)

SPLIT_PREFIXES = {"train": ("train",), "test": ("val", "test")}
LABEL_EXT = "cls"


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's sample key and extension: ``a/b/000123.seg.png`` -> (``a/b/000123``, ``seg.png``)."""
    head, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def shard_files(root: Path) -> dict[str, list[Path]]:
    """{split: sorted shard paths} of a shard folder."""
    if not root.is_dir():
        raise DataError(f"shard folder {root} does not exist or is not a folder")
    tars = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(".tar"))
    out: dict[str, list[Path]] = {}
    for split, prefixes in SPLIT_PREFIXES.items():
        for pre in prefixes:
            got = [p for p in tars if p.name.startswith(pre + "-") or p.name.startswith(pre + "_")]
            if got:
                out[split] = got
                break
    if not out and tars:
        out["train"] = tars
    if not out:
        compressed = [p.name for p in root.iterdir() if p.name.endswith((".tar.gz", ".tgz"))]
        extra = f" (compressed shards {compressed[:2]} cannot be read by index: repack them uncompressed)" \
            if compressed else ""
        raise DataError(f"shard folder {root} holds no .tar shards{extra}")
    return out


def _scan_shard(path: Path, skip_bad_images: bool, bad: list[str], big: list[str] | None = None):
    """-> lists of (key, offset, length, hw) for image members and {key: label}."""
    big = bad if big is None else big
    images, labels = [], {}
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = _split_key(m.name)
                if ext == LABEL_EXT:
                    text = tf.extractfile(m).read().decode("ascii", "replace").strip()
                    if not text.lstrip("-").isdigit():
                        raise DataError(f"shard {path}: {m.name} holds {text[:20]!r}, expected a class index")
                    labels[key] = int(text)
                elif "." + ext.rsplit(".", 1)[-1] in EXTENSIONS:
                    raw.seek(m.offset_data)
                    data = raw.read(m.size)
                    try:
                        h, w = header_hw(data)
                    except TooManyPixels as e:
                        big.append(too_many_pixels_error(f"{path}:{m.name}", e, skip_bad_images))
                        continue
                    except (OSError, ValueError, SyntaxError) as e:
                        if not skip_bad_images:
                            raise DataError(f"cannot decode image {path}:{m.name}: {e} (pass "
                                            f"--skip-bad-images to skip such files)") from None
                        bad.append(f"{path}:{m.name}")
                        continue
                    images.append((key, m.name, m.offset_data, m.size, (h, w)))
    except tarfile.TarError as e:
        raise DataError(f"shard {path} is not a readable tar file: {e}") from None
    return images, labels


def _within_pixel_limit(root, split, shards, skip_bad_images, big, files, *arrays):
    """The index arrays (files first, then the others of the same length) without the images
    over :func:`simclr_xb.inputs.image_pixel_limit` (refused, or skipped into ``big``)."""
    hw = arrays[1]
    keep = pixel_limit_keep(hw, lambda i: f"{shards[int(arrays[2][i])]}:{os.fsdecode(files[i])}",
                            skip_bad_images, str(root), big=big)
    if keep.all():
        return (files, *arrays)
    if not keep.any():
        raise DataError(f"shard folder {root}: the {split} shards hold no image within the pixel limit")
    return tuple(a[keep] for a in (files, *arrays))


def build_shard_index(root: str | os.PathLike, split: str = "train", skip_bad_images: bool = False,
                      use_cache: bool = True) -> ImageIndex:
    """Index the ``split`` shards of ``wds:ROOT`` (cached like folder indexes, keyed by every
    shard's path, size and mtime)."""
    root = Path(root)
    splits = shard_files(root)
    if split not in splits:
        raise DataError(f"shard folder {root} has no {split!r} shards: it holds "
                        f"{', '.join(sorted(splits))} (names train-*.tar, val-*.tar or test-*.tar)")
    shards = splits[split]
    h = hashlib.sha1()
    for p in shards:
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    cache = index_cache_dir() / f"wds-{h.hexdigest()[:20]}.npz"
    classes_file = root / "classes.json"
    t0 = time.perf_counter()
    from_cache = use_cache and cache.is_file()
    if from_cache:
        with np.load(cache, allow_pickle=False) as z:
            files, labels, hw = z["files"], z["labels"], z["hw"]
            shard, offset, length = z["shard"], z["offset"], z["length"]
        bad: list[str] = []
    big: list[str] = []
    if not from_cache:
        bad = []
        rows = []
        for si, p in enumerate(shards):
            images, lab = _scan_shard(p, skip_bad_images, bad, big)
            for key, name, off, size, hw_ in images:
                if key not in lab:
                    raise DataError(f"shard {p}: sample {key} has an image but no {key}.{LABEL_EXT} label")
                rows.append((name, lab[key], hw_, si, off, size))
        if not rows:
            raise DataError(f"shard folder {root}: the {split} shards hold no images")
        files = np.asarray([os.fsencode(r[0]) for r in rows], dtype=bytes)
        labels = np.asarray([r[1] for r in rows], dtype=np.int64)
        hw = np.asarray([r[2] for r in rows], dtype=np.int64)
        shard = np.asarray([r[3] for r in rows], dtype=np.int64)
        offset = np.asarray([r[4] for r in rows], dtype=np.int64)
        length = np.asarray([r[5] for r in rows], dtype=np.int64)
        if use_cache and not bad and not big:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}.npz")
                np.savez(tmp, files=files, labels=labels, hw=hw, shard=shard, offset=offset, length=length)
                os.replace(tmp, cache)
            except OSError as e:
                warnings.warn(f"could not write the shard index cache {cache}: {e}", stacklevel=2)
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {root}: {', '.join(bad[:3])}", stacklevel=2)
    files, labels, hw, shard, offset, length = _within_pixel_limit(
        root, split, shards, skip_bad_images, big, files, labels, hw, shard, offset, length)
    if classes_file.is_file():
        classes = [str(c) for c in json.loads(classes_file.read_text())]
    else:
        classes = [str(i) for i in range(int(labels.max()) + 1)]
    if labels.min() < 0 or labels.max() >= len(classes):
        raise DataError(f"shard folder {root}: labels span [{labels.min()}, {labels.max()}] but "
                        f"{len(classes)} classes are named")
    return ImageIndex(root=str(root), files=files, labels=labels, hw=hw, classes=classes, split=split,
                      kind="tar", shards=[str(p) for p in shards], shard=shard, offset=offset,
                      length=length, skipped=bad + big, too_large=big, build_s=time.perf_counter() - t0,
                      headers_read=0 if from_cache else len(files))


def write_shards(index_by_split: dict[str, ImageIndex], out_dir: str | os.PathLike,
                 shard_size: int = 1000, overwrite: bool = False) -> dict[str, list[str]]:
    """Write each split's images (their original file bytes, not re-encoded) and labels as
    WebDataset shards ``OUT/<split>-000000.tar`` ... of ``shard_size`` samples, plus
    ``OUT/classes.json``. Sample keys are the 0-based position in the index (``%09d``), so
    shard order = index order and a seeded run reads the same images in the same order as
    from the folder. Each shard is written to a temporary name and renamed when complete."""
    from .stream import read_bytes

    out = Path(out_dir)
    if shard_size < 1:
        raise DataError(f"shard_size must be >= 1, got {shard_size}")
    existing = sorted(out.glob("*.tar")) if out.is_dir() else []
    if existing and not overwrite:
        raise DataError(f"{out} already holds shards ({existing[0].name}, ...); pass --force to replace them")
    out.mkdir(parents=True, exist_ok=True)
    for p in existing:
        p.unlink()
    written: dict[str, list[str]] = {}
    classes = None
    for split, idx in index_by_split.items():
        classes = idx.classes
        name = "train" if split == "train" else "val"
        written[split] = []
        for s, a in enumerate(range(0, len(idx), shard_size)):
            path = out / f"{name}-{s:06d}.tar"
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
                for i in range(a, min(a + shard_size, len(idx))):
                    data = read_bytes(idx, i)
                    ext = os.path.splitext(idx.name(i))[1].lower() or ".jpg"
                    for member, payload in ((f"{i:09d}{ext}", data),
                                            (f"{i:09d}.{LABEL_EXT}", str(int(idx.labels[i])).encode())):
                        info = tarfile.TarInfo(member)
                        info.size, info.mtime, info.mode = len(payload), 0, 0o644
                        tf.addfile(info, io.BytesIO(payload))
            os.replace(tmp, path)
            written[split].append(str(path))
    (out / "classes.json").write_text(json.dumps(list(classes or [])))
    return written
