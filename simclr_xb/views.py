"""Pictures of the augmented views: what the encoder sees at a training step (``simclr-xb views``).

For training step ``step`` of a one-process run of the config (its batch: the loader's seeded
order, :meth:`simclr_xb.data.BatchLoader.indices`; its view parameters:
:func:`simclr_xb.augment.sample_pair` with the run's seed, epoch, step and batch size), the first
``n`` images of the batch are drawn beside their two views, each view computed by the backend's
``api.augment`` (the code ``Trainer.train_step`` runs) and shown pixel for pixel (uint8 =
round(255 x), each pixel repeated ``scale`` times), with its sampled parameters in small text:
crop box (top, left, height, width in source pixels), flip, colour jitter (brightness b, contrast
c, saturation s, hue h, and their order), grayscale, blur sigma. With two backends both are
drawn side by side and each row gives their largest absolute difference over the float views.

:func:`render_views` returns the picture and the position of every tile (what the test reads
back); :func:`write_views` writes the PNG atomically and never over an input. A streamed split
(``folder:``, ``wds:``: images of mixed sizes) is drawn from the training loader itself: the
boxes come from each image's own size, the workers cut and resize them, and the backend's
``augment_cropped`` applies the rest; the first column then shows the workers' cut of view 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .augment import JITTER_OPS, ViewParams, sample_pair

PAD, TEXT_W, HEADER_H, LINE_H = 6, 150, 30, 11


@dataclass
class Tile:
    """Where one view sits in the picture: its top-left corner and the pixel repeat."""
    x: int
    y: int
    side: int   # view side in view pixels (augment.image_size)
    scale: int  # each view pixel is scale x scale picture pixels


@dataclass
class ViewsPicture:
    image: Image.Image
    tiles: dict[tuple[int, str, int], Tile] = field(default_factory=dict)  # (row, backend, view 1|2)
    views: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # backend -> floats
    max_abs_diff: list[float] = field(default_factory=list)  # per row, with two backends
    indices: np.ndarray | None = None  # the images' positions in the split


def to_uint8(views: np.ndarray) -> np.ndarray:
    """Float views in [0, 1] -> the uint8 pixels drawn: round(255 x), clipped."""
    return np.clip(np.rint(np.asarray(views, np.float64) * 255.0), 0, 255).astype(np.uint8)


def describe(p: ViewParams, i: int) -> list[str]:
    """The sampled parameters of view ``i``, as short text lines."""
    t, l, h, w = (int(v) for v in p.crop[i])
    lines = [f"crop t{t} l{l} h{h} w{w}", f"flip {'yes' if p.flip[i] else 'no'}"]
    if p.jitter[i]:
        lines += [f"jitter b{p.brightness[i]:.2f} c{p.contrast[i]:.2f}",
                  f"  s{p.saturation[i]:.2f} h{p.hue[i]:+.3f}",
                  "  order " + ",".join(JITTER_OPS[k][0] for k in p.jitter_order[i])]
    else:
        lines.append("jitter no")
    lines.append(f"gray {'yes' if p.grayscale[i] else 'no'}")
    lines.append(f"blur sigma {p.blur_sigma[i]:.2f}" if p.blur[i] else "blur no")
    return lines


def step_batch(cfg, dataset, n: int, step: int):
    """(image indices, images, p1, p2) of the first ``n`` images of training step ``step``
    (one process), with their two views' parameters."""
    from .data import BatchLoader
    batch = cfg.train.batch_size
    if not 1 <= n <= batch:
        raise ValueError(f"--n {n} is invalid: expected 1 <= n <= train.batch_size ({batch}), the "
                         f"images of one training batch")
    loader = BatchLoader(dataset.images, dataset.labels, batch, seed=cfg.train.seed, num_workers=0)
    spe = loader.steps_per_epoch
    if step < 0:
        raise ValueError(f"--step {step} is invalid: expected a step >= 0")
    epoch = step // spe
    idx = loader.indices(epoch, step % spe)[:n]
    hw = tuple(dataset.images.shape[1:3])
    p1, p2 = sample_pair(cfg.augment, batch, hw, cfg.train.seed, epoch, step, 0)
    return idx, np.asarray(dataset.images[idx]), p1[:n], p2[:n]


def stream_step_batch(cfg, dataset, n: int, step: int):
    """A streamed (folder:/wds:) split: (image indices, the workers' two cuts (n, S, S, 3) each,
    p1, p2) of the first ``n`` images of training step ``step``, from the training loader
    itself (boxes drawn from each image's own size, cut and resized by the workers)."""
    from .train import stream_train_loader
    batch = cfg.train.batch_size
    if not 1 <= n <= batch:
        raise ValueError(f"--n {n} is invalid: expected 1 <= n <= train.batch_size ({batch}), the "
                         f"images of one training batch")
    if step < 0:
        raise ValueError(f"--step {step} is invalid: expected a step >= 0")
    loader = stream_train_loader(cfg, dataset, batch, 0, 1)
    try:
        spe = loader.steps_per_epoch
        b = next(iter(loader.epoch(step // spe, start_step=step % spe)))
    finally:
        loader.close()
    B = len(b.indices)
    return b.indices[:n], (b.views[:n], b.views[B:B + n]), b.params[0][:n], b.params[1][:n]


def compute_views(cfg, backends, images_u8, p1: ViewParams, p2: ViewParams, cuts=None) -> dict:
    """{backend: (views 1, views 2)} as float arrays: ``api.augment`` of the images, or, for a
    streamed split, ``api.augment_cropped`` of the workers' ``cuts`` (what training runs)."""
    from .backend import get_backend
    dtype = "float64" if cfg.train.precision == "float64" else "float32"
    views = {}
    for b in backends:
        api = get_backend(b)
        if cuts is None:
            views[b] = tuple(np.asarray(api.augment(images_u8, p, cfg.augment, dtype)) for p in (p1, p2))
        else:
            views[b] = tuple(np.asarray(api.augment_cropped(c, p, cfg.augment, dtype))
                             for c, p in zip(cuts, (p1, p2)))
    return views


def render_views(cfg, images_u8: np.ndarray, p1: ViewParams, p2: ViewParams, backends=("torch",),
                 title: str = "", labels: list[str] | None = None, views: dict | None = None,
                 first_column: str = "image") -> ViewsPicture:
    """The picture of ``images_u8`` (uint8 NHWC, drawn in the first column) and their views
    under ``p1``/``p2`` (``views``: :func:`compute_views`, else computed here from the images)."""
    n = len(images_u8)
    S = cfg.augment.image_size
    scale = max(1, 96 // S)
    side = S * scale
    if views is None:
        views = compute_views(cfg, backends, images_u8, p1, p2)
    text_lines = 8
    row_h = max(side + LINE_H + 2, text_lines * LINE_H) + PAD  # the view, the image's label
    cols = [first_column] + [f"{b} view {v}" for v in (1, 2) for b in backends]
    W = PAD + side + PAD + 2 * (len(backends) * (side + PAD) + TEXT_W)
    H = HEADER_H + n * row_h + PAD
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((PAD, 4), title, fill=(0, 0, 0), font=font)
    pic = ViewsPicture(image=img, views=views)
    for r in range(n):
        y = HEADER_H + r * row_h
        src = Image.fromarray(images_u8[r]).resize((side, side), Image.NEAREST)
        img.paste(src, (PAD, y))
        if labels:
            d.text((PAD, y + side + 1), labels[r][:16], fill=(90, 90, 90), font=font)
        x = PAD + side + PAD
        for v, p in ((1, p1), (2, p2)):
            for b in backends:
                tile = to_uint8(views[b][v - 1][r]).repeat(scale, axis=0).repeat(scale, axis=1)
                img.paste(Image.fromarray(tile), (x, y))
                pic.tiles[(r, b, v)] = Tile(x=x, y=y, side=S, scale=scale)
                if r == 0:
                    d.text((x, HEADER_H - 12), f"{b} view {v}", fill=(0, 0, 0), font=font)
                x += side + PAD
            lines = describe(p, r)
            if len(backends) == 2 and v == 2:
                diff = max(float(np.max(np.abs(views[backends[0]][k][r] - views[backends[1]][k][r])))
                           for k in (0, 1))
                pic.max_abs_diff.append(diff)
                lines.append(f"max|{backends[0]}-{backends[1]}| {diff:.1e}")
            for j, line in enumerate(lines):
                d.text((x, y + j * LINE_H), line, fill=(0, 0, 0), font=font)
            x += TEXT_W
    d.text((PAD, HEADER_H - 12), cols[0], fill=(0, 0, 0), font=font)
    return pic


def check_output_path(out: str | Path, inputs: list[str | Path]) -> Path:
    """``out`` as a Path, or ValueError when it is not a .png file path or would overwrite or
    land inside an input (a config file, a dataset file or an image-folder dataset)."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out} must name a .png file")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: expected a .png file path")
    target = out.resolve()
    for src in inputs:
        if src is None:
            continue
        s = Path(src).expanduser().resolve()
        if target == s:
            raise ValueError(f"--out {out} is an input of this command ({src}): choose another path")
        if s.is_dir() and s in target.parents:
            raise ValueError(f"--out {out} is inside the dataset folder {src} (it would become one of "
                             f"its images): choose a path outside it")
    return out


def write_views(pic: ViewsPicture, out: str | Path) -> Path:
    from .checkpoint import atomic_write
    return atomic_write(out, lambda tmp: pic.image.save(tmp, format="PNG"), error=OSError,
                        label="views picture ")


def views_command(cfg, out: str | Path, n: int = 8, step: int = 0, backends=("torch",),
                  split: str = "train", inputs=(), log=print) -> ViewsPicture:
    """What ``simclr-xb views`` runs: check ``out``, load the split, render, write."""
    from .data import open_dataset, parse_spec
    kind, arg = parse_spec(cfg.data.name)
    out = check_output_path(out, [*inputs, arg if kind in ("folder", "hdf5", "wds") else None])
    if not backends or len(backends) > 2 or len(set(backends)) != len(backends):
        raise ValueError(f"--backends {','.join(backends)} is invalid: expected one or two of torch, mlx")
    ds = open_dataset(cfg.data.name, split, root=cfg.data.root, skip_bad_images=cfg.data.skip_bad_images)
    if getattr(ds, "is_stream", False):  # images of mixed sizes: the workers cut the views
        idx, cuts, p1, p2 = stream_step_batch(cfg, ds, n, step)
        images, first = cuts[0], "workers' cut 1"
        views = compute_views(cfg, tuple(backends), None, p1, p2, cuts=cuts)
    else:
        idx, images, p1, p2 = step_batch(cfg, ds, n, step)
        views, first = None, "image"
    a = cfg.augment
    title = (f"simclr-xb views: {cfg.data.name} ({split}), step {step}, seed {cfg.train.seed}, "
             f"batch {cfg.train.batch_size} | size {a.image_size}, crop {a.crop_scale[0]:g}-"
             f"{a.crop_scale[1]:g}, strength {a.strength:g}, blur p {a.blur_p:g}"
             + (f", recipe {a.recipe}" if hasattr(a, "recipe") else ""))
    pic = render_views(cfg, images, p1, p2, tuple(backends), title=title, views=views,
                       labels=[f"#{int(i)} {ds.classes[int(ds.labels[i])]}" for i in idx],
                       first_column=first)
    pic.indices = idx
    write_views(pic, out)
    return pic
