"""``bench data``: the streaming image path against the usual per-image one, on one generated
JPEG folder (ImageNet-like sizes: shorter side mostly 300-500 px, some up to 2000, aspect
W/H 0.5-2, JPEG quality 75-95; content :func:`simclr_xb.conformance.cases.photo_like`).

Rows:

* ``index``: the folder index build rate (headers read per second, no cache);
* ``cpu_per_pair`` at each view size: CPU-milliseconds per image pair (two views) that the
  CPUs spend, measured with ``time.process_time`` in one process on one thread, for
  - ``ours``: the workers' decode (once) + crop + resize of both views
    (:func:`simclr_xb.data.stream.decode_batch`, JPEG draft mode where the boxes allow) plus
    the torch backend's batched flip/jitter/grayscale/blur of the views
    (``augment_cropped``, 1 thread);
  - ``usual-full``: decode + the whole per-view SimCLR transform on the CPU for each view, as
    torchvision's ImageFolder + transforms do (:mod:`.pillow_pipeline`, Pillow ops);
  - ``usual-crop-flip``: decode + RandomResizedCrop + flip per view only.
  Both sides get the same images (read into the page cache first) and the same view
  parameters; the sides are timed round-robin ``repeats`` times (median). The usual path's
  DataLoader IPC and collation are not counted (they would add to its cost).
* ``loader_cpu_per_pair`` at each view size: whole data loaders measured the same way on
  both sides (:mod:`.data_loaders`): user + sys CPU of the main process and of the worker
  processes. ``steady_cpu_ms_per_pair``: the second epoch of a loader whose workers persist
  (``RUSAGE_SELF`` + ``/proc/<pid>/stat`` of the live workers), no start-up in it;
  ``cpu_ms_per_pair``: one fresh loader, its workers joined (``RUSAGE_CHILDREN``), start-up
  included; ``marginal_cpu_ms_per_pair``: the difference of a long and a short such pass.
  - ``ours``: :class:`~simclr_xb.data.StreamLoader`, 2 spawned workers, decode + crop +
    resize (the backend's flip/jitter/blur is ``ours_backend_ms`` above);
  - ``torchvision-full`` / ``torchvision-crop-flip`` (only with ``--torchvision-python`` or
    $SIMCLR_XB_TORCHVISION_PYTHON): ImageFolder + the two-view transform on 2 DataLoader
    workers (:mod:`.tv_baseline`, run by that interpreter on the same files);
  ``loader_ratio``: torchvision / ours steady CPU-ms per pair of this run. The targets use
  these ratios when the torchvision rows ran, else the Pillow stand-in of ``cpu_per_pair``
  (the target names say which; ``settings.targets_from``);
* ``e2e``: training images/s of ResNet-50 x0.25 at 224 px from the folder (the StreamLoader's
  2 workers share the cores with the step) against the same step on batches in memory and on
  views already made (:mod:`.data_e2e`);
* ``workers``: wall-clock pairs/s of :class:`~simclr_xb.data.StreamLoader` with 1 and 2 worker
  processes (decode only; they share the cores with everything else on the machine);
* ``memory``: bytes of index per image, and the shared-memory ring (independent of N).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .common import Report, Target

TARGETS = {"vs_usual_full_224": 2.5, "vs_crop_flip_224": 1.0, "vs_crop_flip_small": 1.6}
# The loader rows (.data_loaders): worker processes, pairs of the long and the short pass, batch.
LOADER_WORKERS = 2
LOADER_PAIRS = {"full": 512, "tiny": 16}
LOADER_SHORT = {"full": 128, "tiny": 8}
LOADER_BATCH = {"full": 32, "tiny": 4}


def imagenet_like_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 2) (H, W): shorter side lognormal around 400 px (mostly 300-500, clipped to
    [120, 2000], 3% drawn up to 2000), aspect W/H log-uniform in [0.5, 2] with most near 4:3."""
    short = np.clip(rng.lognormal(np.log(400), 0.18, n), 120, 2000)
    big = rng.random(n) < 0.03
    short[big] = rng.uniform(600, 2000, big.sum())
    aspect = np.where(rng.random(n) < 0.7, rng.choice([4 / 3, 3 / 4, 1.0, 1.5], n),
                      np.exp(rng.uniform(np.log(0.5), np.log(2.0), n)))
    h = np.where(aspect >= 1, short, short / aspect)
    w = np.where(aspect >= 1, short * aspect, short)
    return np.stack([h, w], axis=1).round().astype(np.int64)


def make_jpeg_folder(root: Path, n: int, classes: int = 10, seed: int = 0) -> Path:
    """ROOT/train/<class>/*.jpg with :func:`imagenet_like_sizes`; kept if already complete."""
    from PIL import Image

    from simclr_xb.conformance.cases import photo_like
    marker = root / f".complete-{n}-{seed}"
    if marker.exists():
        return root
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(imagenet_like_sizes(rng, n)):
        d = root / "train" / f"c{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        small = Image.fromarray(photo_like(rng, max(8, h // 4), max(8, w // 4)))
        img = np.asarray(small.resize((int(w), int(h)), Image.BILINEAR)).astype(np.int16)
        img = np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)  # fine texture
        Image.fromarray(img).save(d / f"{i:06d}.jpg", quality=int(rng.integers(75, 96)))
    marker.write_text("")
    return root


def _loader_rows(ds, root: Path, size: str, tv_python: str | None, resize: str, log) -> list[dict]:
    """The ``loader_cpu_per_pair`` rows (:mod:`.data_loaders`): ours, and torchvision's two
    modes when ``tv_python`` is given, on the same files at each view size."""
    from simclr_xb.data.stream import source_of

    from . import data_loaders
    batch = LOADER_BATCH[size]
    pairs = min(LOADER_PAIRS[size], len(ds) // batch * batch)  # fewer on a small --files
    short = min(LOADER_SHORT[size], pairs // 4 // batch * batch) or batch
    if pairs < 2 * batch:
        raise ValueError(f"bench data: the loader rows need >= {2 * batch} files, the folder has {len(ds)}")
    idx = np.sort(np.random.default_rng(2).choice(len(ds), pairs, replace=False))
    for i in idx:  # in the page cache before any loader runs
        with open(source_of(ds.index, int(i)), "rb") as f:
            f.read()
    files = data_loaders.split_relative(ds, idx, str(root))
    out = []
    for S in (224, 96, 32):
        out.append(data_loaders.ours(ds, idx, S, LOADER_WORKERS, batch, short, resize))
        if tv_python:
            out += [data_loaders.torchvision(tv_python, str(root), files, S, mode, LOADER_WORKERS, batch, short)
                    for mode in data_loaders.TV_MODES]
        for r in out[-3 if tv_python else -1:]:
            log(f"data loader {S} px {r['side']:22s}: {r['steady_cpu_ms_per_pair']:.2f} CPU-ms/pair steady "
                f"({r['marginal_cpu_ms_per_pair']:.2f} marginal, {r['cpu_ms_per_pair']:.2f} with worker start-up), "
                f"{r['pairs_per_s']:.0f} pairs/s, "
                f"{LOADER_WORKERS} workers")
    return out


def _targets(in_process: dict, ratios: dict, real: bool) -> list[Target]:
    """The TARGETS from the real torchvision loader rows of this run when they ran (``real``),
    else from the in-process Pillow stand-in rows; each target's name says which."""
    note = ("ours: the workers' decode + crop + resize; the flip/jitter/grayscale/blur run batched "
            "on the training device (ours_backend_ms of the cpu_per_pair rows")
    if real:
        note += "). Real torchvision: ImageFolder + DataLoader, 2 workers each side, steady CPU-ms per " \
                "pair (main + workers, the second epoch of persistent workers), loader_ratio rows"
        value = {S: (r.get("vs_torchvision_full"), r.get("vs_torchvision_crop_flip")) for S, r in ratios.items()}
        full, crop = "torchvision full", "torchvision crop+flip"
    else:
        note += "; on a CPU-only machine add it: see vs_*_cpu_only). Pillow stand-in, in-process, 1 thread, " \
                "no DataLoader IPC or ToTensor (leaner than torchvision): cpu_per_pair rows"
        value = {S: (r["vs_usual_full"], r["vs_crop_flip"]) for S, r in in_process.items()}
        full, crop = "usual-full (Pillow stand-in)", "usual-crop-flip (Pillow stand-in)"
    return [Target(f"{full} / ours CPU-ms per pair at 224 px", value[224][0], TARGETS["vs_usual_full_224"],
                   note=note),
            Target(f"{crop} / ours CPU-ms per pair at 224 px", value[224][1], TARGETS["vs_crop_flip_224"],
                   note=note)] + \
        [Target(f"{crop} / ours CPU-ms per pair at {S} px", value[S][1], TARGETS["vs_crop_flip_small"], note=note)
         for S in (96, 32)]


def _cpu(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def run(size: str = "full", log=print, work_dir: str | None = None, n_files: int | None = None,
        repeats: int | None = None, torchvision_python: str | None = None, end_to_end: bool = True,
        **_) -> Report:
    """``torchvision_python``: an interpreter with torchvision for the real baseline's rows
    (else $SIMCLR_XB_TORCHVISION_PYTHON, else none: the targets then use the Pillow stand-in)."""
    import torch
    from PIL import Image

    from simclr_xb.augment import sample_pair
    from simclr_xb.backends.torch.augment import augment_cropped
    from simclr_xb.config import AugmentConfig
    from simclr_xb.data import StreamLoader, open_dataset
    from simclr_xb.data.decode import resolve_resize
    from simclr_xb.data.index import build_folder_index
    from simclr_xb.data.stream import DecodeSpec, decode_batch, source_of

    from . import data_e2e, data_loaders
    from .pillow_pipeline import pil_view
    tv_python = data_loaders.interpreter(torchvision_python)  # a bad path fails before any work
    n = n_files or (20000 if size == "full" else 120)
    pairs = 256 if size == "full" else 16
    repeats = repeats or (3 if size == "full" else 1)
    root = make_jpeg_folder(Path(work_dir or f"runs/bench-data-{n}"), n)
    t0 = time.perf_counter()
    ix = build_folder_index(root, "train", use_cache=False)
    build_s = time.perf_counter() - t0
    rows = [{"bench": "index", "files": len(ix), "seconds": build_s, "files_per_s": len(ix) / build_s}]
    log(f"data index: {len(ix)} files in {build_s:.2f} s = {len(ix) / build_s:.0f} files/s")
    ds = open_dataset(f"folder:{root}")
    pairs = min(pairs, len(ds))  # a small --files
    idx = np.random.default_rng(1).choice(len(ds), pairs, replace=False)
    for i in idx:  # the files in the page cache before any side is timed
        with open(source_of(ds.index, int(i)), "rb") as f:
            f.read()
    resize = resolve_resize("auto")  # the workers' resizer, as data.resize = auto picks it in training
    threads0 = torch.get_num_threads()
    torch.set_num_threads(1)
    targets, in_process = [], {}
    for S in (224, 96, 32):
        cfg = AugmentConfig(image_size=S, blur_p=0.5 if S >= 96 else 0.0)
        p1, p2 = sample_pair(cfg, pairs, ds.hw[idx], 0, 0, 0)
        views = np.empty((2, pairs, S, S, 3), np.uint8)
        boxes = np.stack([p1.crop, p2.crop])
        from simclr_xb.augment import ViewParams
        both = ViewParams.concat([p1, p2])
        flat = views.reshape(2 * pairs, S, S, 3)
        augment_cropped(flat[:8], both[:8], cfg)  # warm up

        def usual(full: bool, p1=p1, p2=p2, S=S):  # this size's views (bound: the loop moves on)
            for j, i in enumerate(idx):
                with Image.open(source_of(ds.index, int(i))) as im:
                    im = im.convert("RGB")
                    for p in (p1, p2):
                        if full:
                            pil_view(im, p, j, S)
                        else:
                            top, left, h, w = (int(v) for v in p.crop[j])
                            v = im.resize((S, S), Image.BILINEAR, box=(left, top, left + w, top + h))
                            if p.flip[j]:
                                v.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        sides = {"decode": lambda boxes=boxes, S=S, views=views: decode_batch(ds.index, idx, boxes,
                                                                             DecodeSpec(size=S, resize=resize),
                                                                             views),
                 "backend": lambda flat=flat, both=both, cfg=cfg: augment_cropped(flat, both, cfg),
                 "full": lambda: usual(True), "crop": lambda: usual(False)}
        if resize != "pillow":  # the workers' other resizer, for comparison
            sides["decode_pillow"] = lambda boxes=boxes, S=S, views=views: decode_batch(
                ds.index, idx, boxes, DecodeSpec(size=S, resize="pillow"), views)
        runs = {k: [] for k in sides}
        for _ in range(repeats):  # round-robin: every side sees the same background load
            for k, fn in sides.items():
                runs[k].append(_cpu(fn))
        decode, backend, full, crop = (float(np.median(runs[k])) for k in ("decode", "backend", "full", "crop"))
        ms = {k: 1000 * v / pairs for k, v in
              {"ours": decode + backend, "ours_decode": decode, "ours_backend": backend,
               "usual-full": full, "usual-crop-flip": crop,
               **({"ours_decode_pillow": float(np.median(runs["decode_pillow"]))} if "decode_pillow" in runs
                  else {})}.items()}
        rows.append({"bench": "cpu_per_pair", "size": S, "pairs": pairs, "resize": resize,
                     **{f"{k}_ms": v for k, v in ms.items()},
                     "vs_usual_full": ms["usual-full"] / ms["ours_decode"],
                     "vs_crop_flip": ms["usual-crop-flip"] / ms["ours_decode"],
                     "vs_usual_full_cpu_only": ms["usual-full"] / ms["ours"],
                     "vs_crop_flip_cpu_only": ms["usual-crop-flip"] / ms["ours"]})
        log(f"data {S} px: CPU-ms/pair ours {ms['ours']:.2f} (decode+crop {ms['ours_decode']:.2f}, backend "
            f"{ms['ours_backend']:.2f}), usual full {ms['usual-full']:.2f}, usual crop+flip "
            f"{ms['usual-crop-flip']:.2f}")
        in_process[S] = rows[-1]
    loader_rows = _loader_rows(ds, root, size, tv_python, resize, log)
    rows += [{"bench": "loader_cpu_per_pair", **r} for r in loader_rows]
    ratios = {S: data_loaders.ratio_row(S, loader_rows) for S in (224, 96, 32)}
    rows += list(ratios.values())
    targets = _targets(in_process, ratios, tv_python is not None)
    S, B = 224, (32 if size == "full" else 4)
    cfg = AugmentConfig(image_size=S)
    mk = (lambda e, s, i, hw: list(sample_pair(cfg, len(i), hw, 0, e, s, 0)))
    sub = ds.subset(np.arange(min(len(ds), 8 * B if size == "full" else 4 * B)))
    for i in range(len(sub)):  # in the page cache first: else the first (1-worker) run pays the disk
        with open(source_of(sub.index, i), "rb") as f:
            f.read()
    for nw in (1, 2):
        with StreamLoader(sub, B, mk, S, num_workers=nw) as L:
            it = L.epoch(0)
            next(it)  # workers started and warm
            t0 = time.perf_counter()
            k = sum(1 for _ in it)
            wall = time.perf_counter() - t0
        rows.append({"bench": "workers", "workers": nw, "size": S, "pairs_per_s": k * B / wall})
        log(f"data workers {nw}: {k * B / wall:.0f} pairs/s at {S} px")
    w1, w2 = (r["pairs_per_s"] for r in rows if r["bench"] == "workers")
    rows.append({"bench": "workers", "scaling_1_to_2": w2 / w1})
    if end_to_end:
        rows += data_e2e.rows(ds, size, log, threads=threads0)
    per_image = sum(a.nbytes for a in (ds.index.files, ds.index.labels, ds.index.hw)) / len(ds)
    rows.append({"bench": "memory", "index_bytes_per_image": per_image,
                 "ring_bytes": 2 * 256 * 2 * 224 * 224 * 3, "note": "ring: prefetch 2 batches of 256 "
                 "pairs at 224 px, whatever the dataset size and the number of workers"})
    return Report(suite="data", settings={"files": n, "pairs": pairs, "repeats": repeats, "threads": 1,
                                          "own_threads": 3,
                                          "loader": {"workers": LOADER_WORKERS, "pairs_at_most": LOADER_PAIRS[size],
                                                     "short_pairs_at_most": LOADER_SHORT[size],
                                                     "batch_size": LOADER_BATCH[size]},
                                          "torchvision_python": tv_python, "resize": resize,
                                          "targets_from": "torchvision" if tv_python else "pillow-stand-in",
                                          "folder": str(root),
                                          "cpus": os.cpu_count()}, rows=rows, targets=targets)
