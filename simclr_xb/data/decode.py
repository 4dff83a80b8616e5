"""What a data worker does to one image: decode it ONCE, cut each of its view boxes and resize
each to the view size, all from the ORIGINAL resolution.

The boxes (top, left, height, width) come from the core's sampler (:mod:`simclr_xb.augment`)
given the image's own (H, W) from the index; nothing here draws a random number. Each box is
resized with Pillow's antialiased resampler straight from the decoded image
(``Image.resize(size, filter, box=...)``: no intermediate crop copy), which is the oracle's
:func:`simclr_xb.reference.crop_resize_antialias` up to Pillow's 8-bit rounding.

JPEG draft mode: when every box of the image is at least ``2 s * size`` pixels on its shorter
side, libjpeg decodes at a reduced DCT scale 1/s (s the largest of 2, 4, 8 that allows it)
and the boxes are divided by s. Each box then still holds at least ``2 * size`` decoded pixels
per side, so the antialiasing filter still averages >= 2x2 of them per view pixel, and
decoding costs ~s^2 less. Measured against the oracle on the fully decoded image (conformance
case ``data.decode_crop_resize.draft``, 600x800 JPEG, 4 boxes -> 64 px): allowing s up to
min(box) / size instead gave 18 uint8 levels max error at hard edges (mean 0.52); with the
factor 2 margin, 5.6 max (mean 0.33). Without draft mode: at most 1 level (Pillow's 8-bit
rounding).

Images are converted to RGB uint8 by :func:`simclr_xb.data.pixels.to_rgb_uint8` (every Pillow
mode, or a refusal naming the file).
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError)


def decoder_versions() -> dict[str, str]:
    """Pillow and its JPEG library, recorded in each run (they decide the decoded pixels)."""
    from PIL import __version__ as pil
    from PIL import features
    jpeg = features.version("jpg") or "?"
    turbo = features.check_feature("libjpeg_turbo")
    return {"pillow": pil, "libjpeg": f"{jpeg}{' (libjpeg-turbo)' if turbo else ''}"}


def to_rgb(im: Image.Image, name: str) -> np.ndarray:
    """A loaded PIL image -> uint8 (H, W, 3): :func:`simclr_xb.data.pixels.to_rgb_uint8`
    (16-bit, float, palette, alpha and CMYK rules there; a refusal is a DataError naming
    ``name``)."""
    from .pixels import to_rgb_uint8
    return to_rgb_uint8(im, name)


DRAFT_MARGIN = 2  # decoded pixels per view pixel (per side) that draft mode must keep


def draft_scale(boxes: np.ndarray, size: int) -> int:
    """The largest JPEG DCT reduction r (1, 2, 4 or 8) such that every box keeps at least
    ``DRAFT_MARGIN * size`` pixels on each side after dividing by r."""
    boxes = np.asarray(boxes)
    r = int(np.min(boxes[:, 2:4])) // (DRAFT_MARGIN * int(size))
    for s in (8, 4, 2):
        if r >= s:
            return s
    return 1


def open_image(src) -> Image.Image:
    """``src``: a path or the file's bytes -> an (unloaded) PIL image."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(src)))
    return Image.open(os.fspath(src))


def crop_views(src, boxes: np.ndarray, size: int, out: np.ndarray, name: str,
               resample: str = "bilinear", draft: bool = True, hw: tuple[int, int] | None = None) -> None:
    """Decode ``src`` once and write its K views (K, size, size, 3) uint8 into ``out``.

    boxes: (K, 4) int (top, left, height, width) in the ORIGINAL image's pixels; hw: the
    (H, W) the index recorded (a file that changed size since is an error naming it).
    Raises one of :data:`DECODE_ERRORS` for an undecodable file."""
    boxes = np.asarray(boxes, dtype=np.int64)
    with open_image(src) as im:
        W, H = im.size
        if hw is not None and (H, W) != tuple(int(v) for v in hw):
            raise ValueError(f"image is {H}x{W} but the index recorded {hw[0]}x{hw[1]} (the file "
                             f"changed since the index was built: delete the index cache or touch the folder)")
        sy = sx = 1.0
        if draft and im.format == "JPEG":
            s = draft_scale(boxes, size)
            if s > 1:
                res = im.draft("RGB", ((W + s - 1) // s, (H + s - 1) // s))
                if res is not None:
                    sx, sy = W / res[1][2], H / res[1][3]
        im.seek(0)
        im.load()
        rgb = im if im.mode == "RGB" else Image.fromarray(to_rgb(im, name))
        filt = RESAMPLE[resample]
        for k, (top, left, h, w) in enumerate(boxes):
            box = (left / sx, top / sy, (left + w) / sx, (top + h) / sy)
            out[k] = np.asarray(rgb.resize((size, size), filt, box=box), dtype=np.uint8)


def read_header(path) -> tuple[int, int]:
    """(H, W) from the file header; no pixel is decoded."""
    with Image.open(os.fspath(path)) as im:
        W, H = im.size
    return int(H), int(W)
