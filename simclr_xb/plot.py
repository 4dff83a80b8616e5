"""Small PNG line charts drawn with Pillow (the project has no plotting dependency).

``line_chart`` draws one or more series on shared axes with ticks, labels and a legend;
``training_plot`` stacks loss, probe and kNN-monitor accuracy from a run's metrics.jsonl into one
image.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75)]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.3g}"


def line_chart(series: dict[str, tuple], title: str, xlabel: str, ylabel: str,
               size=(640, 300)) -> Image.Image:
    """``series``: name -> (xs, ys). Non-finite points are skipped."""
    W, H = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 60, 20, 28, 40
    xs_all = np.concatenate([np.asarray(x, float) for x, _ in series.values()] or [np.zeros(1)])
    ys_all = np.concatenate([np.asarray(y, float) for _, y in series.values()] or [np.zeros(1)])
    ok = np.isfinite(ys_all)
    x0, x1 = (float(xs_all.min()), float(xs_all.max())) if xs_all.size else (0.0, 1.0)
    y0, y1 = (float(ys_all[ok].min()), float(ys_all[ok].max())) if ok.any() else (0.0, 1.0)
    if x1 <= x0:
        x1 = x0 + 1
    if y1 <= y0:
        y1 = y0 + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (W - left - right),
                H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom))

    d.rectangle([left, top, W - right, H - bottom], outline=(0, 0, 0))
    for t in _nice_ticks(x0, x1):
        X, _ = px(t, y0)
        d.line([X, H - bottom, X, H - bottom + 4], fill=(0, 0, 0))
        d.text((X - 10, H - bottom + 6), _fmt(t), fill=(0, 0, 0), font=font)
    for t in _nice_ticks(y0, y1):
        _, Y = px(x0, t)
        d.line([left - 4, Y, left, Y], fill=(0, 0, 0))
        d.line([left, Y, W - right, Y], fill=(230, 230, 230))
        d.text((4, Y - 5), _fmt(t), fill=(0, 0, 0), font=font)
    d.text((left, 8), title, fill=(0, 0, 0), font=font)
    d.text(((W - len(xlabel) * 6) // 2, H - 16), xlabel, fill=(0, 0, 0), font=font)
    d.text((4, top - 14), ylabel, fill=(0, 0, 0), font=font)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        pts = [px(float(x), float(y)) for x, y in zip(xs, ys) if math.isfinite(float(y))]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
        if len(pts) <= 40:  # a sparse series (e.g. the kNN monitor's checks): mark each point
            for X, Y in pts:
                d.ellipse([X - 3, Y - 3, X + 3, Y + 3], fill=color)
        label = f"-- {name}"
        at = (W - right - 8 - 6 * len(label), top + 6 + 12 * i)
        d.rectangle(d.textbbox(at, label, font=font), fill="white")  # legible over the curves
        d.text(at, label, fill=color, font=font)
    return img


def stack(images: list[Image.Image]) -> Image.Image:
    W = max(i.width for i in images)
    out = Image.new("RGB", (W, sum(i.height for i in images)), "white")
    y = 0
    for i in images:
        out.paste(i, (0, y))
        y += i.height
    return out


def training_plot(records: list[dict], path: str | Path) -> Path:
    """Loss (and lr), online-probe accuracy and the kNN monitor's top-1 against step, from
    metrics records."""
    steps = [r["step"] for r in records]
    panels = [line_chart({"NT-Xent loss": (steps, [r.get("loss", float("nan")) for r in records])},
                         "pre-training loss", "step", "loss")]
    acc = {}
    if any("probe_acc" in r for r in records):
        acc["online probe top-1 (train views)"] = (steps, [100 * r.get("probe_acc", float("nan"))
                                                          for r in records])
    knn = [r for r in records if "knn_top1" in r]  # the kNN monitor's checks (simclr_xb/monitor.py)
    if knn:
        acc["kNN top-1 (test split)"] = ([r["step"] for r in knn], [r["knn_top1"] for r in knn])
    if acc:
        panels.append(line_chart(acc, "online linear probe and kNN monitor" if knn else
                                 "online linear probe", "step", "%"))
    panels.append(line_chart({"lr": (steps, [r.get("lr", float("nan")) for r in records])},
                             "learning rate", "step", "lr", size=(640, 160)))
    path = Path(path)
    stack(panels).save(path)
    return path
