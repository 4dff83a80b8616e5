"""Augmentation benchmark: views/s of the batched backend pipelines against the usual
per-image Pillow pipeline in a multi-worker torch DataLoader, at 32 px and 224 px.

Both sides make the two SimCLR views of every image of the same uint8 sources with the SAME
view parameters (:func:`simclr_xb.augment.sample_pair`) and deliver float32 NCHW tensors in
[0, 1], one batch of ``batch`` images (2 x batch views) at a time:

* ``pillow-dataloader``: a ``torch.utils.data.Dataset`` whose ``__getitem__`` runs
  :func:`.pillow_pipeline.pil_view` twice and converts each view as torchvision's ToTensor
  does; a ``DataLoader`` with ``workers`` processes (default: one per core), persistent
  workers, default collate. This is what most public SimCLR code does.
* ``torch-batched``: ``backends/torch/augment.augment`` on each batch of uint8 images,
  all views in one call (writing into one reused buffer, as the Trainer does), with the
  process's torch threads (CPU chunks of views spread over that many worker threads);
* ``mlx-batched``: ``backends/mlx/augment.augment`` per batch, evaluated.

Settings follow SimCLR: 32 px from 32 px sources with strength 0.5 and no blur (CIFAR),
224 px from 256 px sources with strength 1.0 and blur p = 0.5 (ImageNet; sources already
decoded: JPEG decoding is left out of both sides). Rates are views/s over one pass through
``images`` images (2 views each), median of ``repeats`` passes; the ratios compare rows
measured in the same run.
"""
from __future__ import annotations

import os

import numpy as np

from simclr_xb.augment import ViewParams, sample_pair
from simclr_xb.config import AugmentConfig

from .common import Report, Target, installed, measure, rate

# name -> (output size, source size, strength, blur_p, images per pass, batch)
SETTINGS = {
    "full": {"32px": (32, 32, 0.5, 0.0, 8192, 256), "224px_blur": (224, 256, 1.0, 0.5, 512, 64)},
    "tiny": {"32px": (32, 32, 0.5, 0.0, 32, 8), "224px_blur": (64, 72, 1.0, 0.5, 8, 4)},
}
TARGETS = {"32px": 5.0, "224px_blur": 1.5}


def source_images(n: int, side: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 RGB sources: the built-in shapes (32 px), resized for larger sides."""
    from simclr_xb.data import make_shapes
    imgs, _ = make_shapes(n, "train", seed)
    if side == imgs.shape[1]:
        return imgs
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.BICUBIC)) for im in imgs])


def view_params(cfg: AugmentConfig, n: int, side: int, batch: int) -> list[tuple[ViewParams, ViewParams]]:
    return [sample_pair(cfg, min(batch, n - a), (side, side), seed=0, epoch=0, step=i)
            for i, a in enumerate(range(0, n, batch))]


class PillowViewDataset:
    """Two Pillow views of image i per item, as float32 CHW tensors (torchvision's ToTensor)."""

    def __init__(self, images: np.ndarray, params: list[tuple[ViewParams, ViewParams]], batch: int,
                 size: int):
        self.images, self.params, self.batch, self.size = images, params, batch, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        from .pillow_pipeline import pil_view
        img = Image.fromarray(self.images[i])
        p1, p2 = self.params[i // self.batch]
        j = i % self.batch
        out = []
        for p in (p1, p2):
            v = np.array(pil_view(img, p, j, self.size))  # a writable copy, as ToTensor
            out.append(torch.from_numpy(v).permute(2, 0, 1).contiguous().float().div(255.0))
        return out[0], out[1]


def pillow_loader(images, params, batch: int, size: int, workers: int):
    import torch.utils.data as tud
    ds = PillowViewDataset(images, params, batch, size)
    return tud.DataLoader(ds, batch_size=batch, shuffle=False, num_workers=workers,
                          persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None)


def _torch_pass(images, params, cfg: AugmentConfig, batch: int):
    import torch

    from simclr_xb.backends.torch.augment import augment
    S = cfg.image_size
    buf = torch.empty((2 * batch, 3, S, S))
    src = np.concatenate([np.arange(batch), np.arange(batch)])

    def run():
        for i, (p1, p2) in enumerate(params):
            chunk = images[i * batch:(i + 1) * batch]
            m = len(chunk)
            out = buf if m == batch else torch.empty((2 * m, 3, S, S))
            augment(chunk, ViewParams.concat([p1, p2]), cfg, "float32",
                    source=src if m == batch else np.concatenate([np.arange(m)] * 2), out=out)
    return run


def _mlx_pass(images, params, cfg: AugmentConfig, batch: int, device: str = "cpu"):
    import mlx.core as mx

    from simclr_xb.backends.mlx.augment import augment
    from simclr_xb.backends.mlx.convert import device_for
    dev = device_for("float32", device)

    def run():
        with mx.stream(dev):
            for i, (p1, p2) in enumerate(params):
                chunk = images[i * batch:(i + 1) * batch]
                both = np.concatenate([chunk, chunk])
                mx.eval(augment(both, ViewParams.concat([p1, p2]), cfg))
    return run


def run(size: str = "full", repeats: int | None = None, workers: int | None = None,
        backends: tuple[str, ...] = ("torch", "mlx"), settings: tuple[str, ...] | None = None,
        device: str = "cpu", log=print, **_) -> Report:
    """``device``: the MLX pipeline's device ("cpu" | "gpu"); torch and Pillow run on the CPU."""
    import torch

    repeats = repeats or (2 if size == "tiny" else 5)
    workers = os.cpu_count() if workers is None else workers
    rows, targets, skipped = [], [], {}
    for name, (S, side, strength, blur_p, n, batch) in SETTINGS[size].items():
        if settings and name not in settings:
            continue
        cfg = AugmentConfig(image_size=S, strength=strength, blur_p=blur_p)
        cfg.validate()
        images = source_images(n, side)
        params = view_params(cfg, n, side, batch)
        views = 2 * n
        common = {"setting": name, "size": S, "source": side, "blur_p": blur_p, "strength": strength,
                  "images": n, "views": views, "batch": batch}
        loader = pillow_loader(images, params, batch, S, workers)
        t = measure(lambda loader=loader: [None for _ in loader], repeats=repeats, warmup=1)
        loader = None  # ends the DataLoader and its workers
        rows.append({**common, "pipeline": "pillow-dataloader", "workers": workers, "threads": 1,
                     **t.to_dict(), **rate(views, t)})
        log(f"augment {name}: pillow-dataloader ({workers} workers) {views / t.median:9.0f} views/s")
        base = views / t.median
        for backend in installed(backends, skipped):
            if backend == "torch":
                variants = sorted({1, torch.get_num_threads()}, reverse=True)
                for threads in variants:
                    prev = torch.get_num_threads()
                    torch.set_num_threads(threads)
                    try:
                        t = measure(_torch_pass(images, params, cfg, batch), repeats=repeats, warmup=1)
                    finally:
                        torch.set_num_threads(prev)
                    r = {**common, "pipeline": "torch-batched", "threads": threads, **t.to_dict(),
                         **rate(views, t), "vs_pillow_dataloader": views / t.median / base}
                    rows.append(r)
                    log(f"augment {name}: torch-batched ({threads} threads) {views / t.median:9.0f} views/s "
                        f"= {r['vs_pillow_dataloader']:.2f}x pillow")
                best = max((r for r in rows if r["setting"] == name and r["pipeline"] == "torch-batched"),
                           key=lambda r: r["per_s"])
                targets.append(Target(f"torch-batched / pillow-dataloader views/s at {name}",
                                      best["vs_pillow_dataloader"], TARGETS[name],
                                      note=f"torch {best['threads']} thread(s) vs {workers} Pillow workers, "
                                           "same run, same cores"))
            else:
                t = measure(_mlx_pass(images, params, cfg, batch, device), repeats=repeats, warmup=1)
                r = {**common, "pipeline": "mlx-batched", "threads": None, **t.to_dict(), **rate(views, t),
                     "vs_pillow_dataloader": views / t.median / base}
                rows.append(r)
                log(f"augment {name}: mlx-batched {views / t.median:9.0f} views/s = "
                    f"{r['vs_pillow_dataloader']:.2f}x pillow")
    settings_out = {"size": size, "repeats": repeats, "workers": workers, "backends": list(backends),
                    "settings": {k: dict(zip(("size", "source", "strength", "blur_p", "images", "batch"), v))
                                 for k, v in SETTINGS[size].items()},
                    "unit": "augmented views per second (2 views per image), float32 NCHW delivered",
                    "torch_threads": torch.get_num_threads(), "skipped": skipped,
                    "device": {"torch": "cpu", "pillow": "cpu", "mlx": device}}
    return Report("augment", settings_out, rows, targets)
