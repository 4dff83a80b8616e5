"""The usual per-image SimCLR augmentation, written with Pillow: the baseline of the
``augment`` and ``train`` benchmarks.

Most public SimCLR code (torchvision transforms in a multi-worker ``DataLoader``) augments
one PIL image at a time: RandomResizedCrop (bilinear) -> RandomHorizontalFlip -> ColorJitter
(brightness, contrast, saturation, hue in a random order) -> RandomGrayscale ->
GaussianBlur -> ToTensor. This module performs the same ops with Pillow directly
(``Image.resize`` with a box, ``ImageEnhance``, ``Image.convert("HSV")``,
``ImageFilter.GaussianBlur``), as torchvision's PIL code path does, with the parameters of
one view taken from :class:`simclr_xb.augment.ViewParams` instead of drawn inside each op,
so the baseline does exactly the work the batched pipelines do on the same views.

It is a timing baseline, not a conformance target: Pillow rounds to uint8 after every op,
its bilinear resize antialiases when it shrinks, its contrast uses the rounded grey mean and
its Gaussian blur is an extended box blur; the outputs agree with the oracle to a few grey
levels (:func:`max_abs_difference` is checked by the smoke test).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from simclr_xb.augment import BRIGHTNESS, CONTRAST, HUE, SATURATION, ViewParams


def _hue(img: Image.Image, delta: float) -> Image.Image:
    """torchvision's PIL adjust_hue: shift the uint8 H channel of HSV by delta turns (mod 256)."""
    h, s, v = img.convert("HSV").split()
    shift = int(round(delta * 255)) % 256
    h = h.point(lambda p: (p + shift) % 256)
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def pil_view(img: Image.Image, params: ViewParams, i: int, size: int) -> Image.Image:
    """View ``i`` of ``params`` applied to one RGB image -> an RGB image of size x size."""
    top, left, h, w = (int(v) for v in params.crop[i])
    out = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if params.flip[i]:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if params.jitter[i]:
        for op in params.jitter_order[i]:
            op = int(op)
            if op == BRIGHTNESS:
                out = ImageEnhance.Brightness(out).enhance(float(params.brightness[i]))
            elif op == CONTRAST:
                out = ImageEnhance.Contrast(out).enhance(float(params.contrast[i]))
            elif op == SATURATION:
                out = ImageEnhance.Color(out).enhance(float(params.saturation[i]))
            elif op == HUE:
                out = _hue(out, float(params.hue[i]))
    if params.grayscale[i]:
        out = out.convert("L").convert("RGB")
    if params.blur[i]:
        out = out.filter(ImageFilter.GaussianBlur(radius=float(params.blur_sigma[i])))
    return out


def augment_u8(images_u8: np.ndarray, params: ViewParams, size: int, blur: bool = True,
               source: np.ndarray | None = None) -> np.ndarray:
    """Per-image loop over all views: uint8 NHWC -> uint8 (N, size, size, 3). ``blur=False``
    skips the blur op whatever ``params.blur`` says (the CIFAR setting)."""
    if not blur:
        params = params[np.arange(len(params))]
        params.blur = np.zeros(len(params), dtype=bool)
    src = np.arange(len(params)) if source is None else np.asarray(source)
    return np.stack([np.asarray(pil_view(Image.fromarray(images_u8[s]), params, i, size))
                     for i, s in enumerate(src)])


def max_abs_difference(pillow_u8: np.ndarray, views_float_nhwc: np.ndarray) -> float:
    """max |pillow / 255 - views| (a sanity check that both pipelines did the same ops)."""
    return float(np.max(np.abs(pillow_u8.astype(np.float64) / 255.0 - views_float_nhwc)))
