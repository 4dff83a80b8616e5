"""What a data worker does to one image: decode it ONCE, cut each of its view boxes and resize
each to the view size, all from the ORIGINAL resolution.

The boxes (top, left, height, width) come from the core's sampler (:mod:`simclr_xb.augment`)
given the image's own (H, W) from the index; nothing here draws a random number. Each view is
its box resized AS AN IMAGE OF ITS OWN with an antialiased filter (the taps stop at the box's
edges), as torchvision's ``RandomResizedCrop`` does on a PIL image or a tensor and the official
tf2 code does (crop, then resize): the oracle is :func:`simclr_xb.reference.crop_resize_antialias`.
Two implementations, chosen by ``data.resize`` (:func:`resolve_resize`):

* ``pillow``: ``Image.crop(box).resize(size, filter)`` (Pillow's 8-bit resampler);
* ``torch``: :mod:`simclr_xb.backends.torch.resize` (torch's vectorised uint8 antialiased
  kernel, 3-5x cheaper; imported by the worker only when chosen, so the core never imports
  torch).

They round differently by at most 1 uint8 level (bilinear) or 2 (bicubic); each is held
against the oracle by its conformance case (``data.decode_crop_resize*``).

JPEG draft mode: when every box of the image is at least ``2 s * size`` pixels on its shorter
side, libjpeg decodes at a reduced DCT scale 1/s (s the largest of 2, 4, 8 that allows it)
and the boxes are divided by s and rounded to whole decoded pixels. Each box then still holds
at least ``2 * size`` decoded pixels per side, so the antialiasing filter still averages
>= 2x2 of them per view pixel, and the decode costs less (Huffman decoding stays: ~1.5x at
s = 2, ~2x at s = 8, measured). Measured against the oracle on the fully decoded image
(conformance case ``data.decode_crop_resize.draft``): see its tolerance. Without draft mode:
at most 1 level (8-bit rounding).

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


def decoder_versions(resize: str = "pillow") -> dict[str, str]:
    """Pillow, its JPEG library and the workers' resize (``data.resize``, resolved), recorded in
    each run (they decide the decoded pixels)."""
    from importlib.metadata import PackageNotFoundError, version

    from PIL import __version__ as pil
    from PIL import features
    jpeg = features.version("jpg") or "?"
    turbo = features.check_feature("libjpeg_turbo")
    impl = resolve_resize(resize)
    if impl == "torch":
        try:
            impl = f"torch {version('torch')}"
        except PackageNotFoundError:
            pass
    return {"pillow": pil, "libjpeg": f"{jpeg}{' (libjpeg-turbo)' if turbo else ''}", "resize": impl}


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


RESIZE_CHOICES = ("auto", "pillow", "torch")


def resolve_resize(name: str = "auto") -> str:
    """``data.resize`` -> the implementation the workers use: ``auto`` is ``torch`` where its
    vectorised uint8 kernel exists (x86-64, AVX2) and torch is installed (found, not imported),
    else ``pillow``; ``torch`` without torch is an error naming the field."""
    import importlib.util
    import platform
    if name not in RESIZE_CHOICES:
        raise ValueError(f"data.resize must be one of {', '.join(RESIZE_CHOICES)}, got {name!r}")
    has_torch = importlib.util.find_spec("torch") is not None
    if name == "auto":
        return "torch" if has_torch and platform.machine().lower() in ("x86_64", "amd64") else "pillow"
    if name == "torch" and not has_torch:
        raise ValueError("data.resize = torch needs PyTorch installed (pip install 'simclr-xb[torch]'), "
                         "or set data.resize = pillow")
    return name


def resize_views_pillow(img, boxes: np.ndarray, size: int, resample: str, out: np.ndarray) -> None:
    """img (a PIL RGB image or (H, W, 3) uint8) -> out[k] (size, size, 3) uint8: box k (top,
    left, height, width; whole pixels) cropped, then resized as an image of its own."""
    im = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, dtype=np.uint8))
    filt = RESAMPLE[resample]
    for k, (top, left, h, w) in enumerate(np.asarray(boxes, dtype=np.int64)):
        out[k] = np.asarray(im.crop((left, top, left + w, top + h)).resize((size, size), filt), dtype=np.uint8)


def _torch_resize():
    from simclr_xb.backends.torch.resize import resize_views
    return resize_views


def scaled_boxes(boxes: np.ndarray, hw: tuple[int, int], decoded_hw: tuple[int, int]) -> np.ndarray:
    """Boxes in the original image's pixels -> whole pixels of a reduced decode of it (edges
    rounded to the nearest decoded pixel, at least one pixel, inside the image)."""
    H, W = hw
    h2, w2 = decoded_hw
    b = np.asarray(boxes, dtype=np.float64)
    top, left = b[:, 0] * h2 / H, b[:, 1] * w2 / W
    bottom, right = (b[:, 0] + b[:, 2]) * h2 / H, (b[:, 1] + b[:, 3]) * w2 / W
    t = np.clip(np.rint(top), 0, h2 - 1).astype(np.int64)
    lft = np.clip(np.rint(left), 0, w2 - 1).astype(np.int64)
    bot = np.clip(np.maximum(np.rint(bottom), t + 1), 1, h2).astype(np.int64)
    rgt = np.clip(np.maximum(np.rint(right), lft + 1), 1, w2).astype(np.int64)
    return np.stack([t, lft, bot - t, rgt - lft], axis=1)


def crop_views(src, boxes: np.ndarray, size: int, out: np.ndarray, name: str,
               resample: str = "bilinear", draft: bool = True, hw: tuple[int, int] | None = None,
               resize: str = "pillow") -> None:
    """Decode ``src`` once and write its K views (K, size, size, 3) uint8 into ``out``.

    boxes: (K, 4) int (top, left, height, width) in the ORIGINAL image's pixels; hw: the
    (H, W) the index recorded (a file that changed size since is an error naming it);
    resize: ``pillow`` or ``torch`` (:func:`resolve_resize`).
    Raises one of :data:`DECODE_ERRORS` for an undecodable file."""
    boxes = np.asarray(boxes, dtype=np.int64)
    with open_image(src) as im:
        W, H = im.size
        if hw is not None and (H, W) != tuple(int(v) for v in hw):
            raise ValueError(f"image is {H}x{W} but the index recorded {hw[0]}x{hw[1]} (the file "
                             f"changed since the index was built: delete the index cache or touch the folder)")
        if draft and im.format == "JPEG":
            s = draft_scale(boxes, size)
            if s > 1:
                im.draft("RGB", ((W + s - 1) // s, (H + s - 1) // s))
        im.seek(0)
        im.load()
        rgb = im if im.mode == "RGB" else Image.fromarray(to_rgb(im, name))
        if rgb.size != (W, H):  # decoded at a reduced DCT scale
            boxes = scaled_boxes(boxes, (H, W), (rgb.size[1], rgb.size[0]))
        if resize == "torch":
            _torch_resize()(np.array(rgb), boxes, size, resample, out)
        elif resize == "pillow":
            resize_views_pillow(rgb, boxes, size, resample, out)
        else:
            raise TypeError(f"resize must be 'pillow' or 'torch' (resolved), got {resize!r}")


def read_header(path) -> tuple[int, int]:
    """(H, W) from the file header; no pixel is decoded."""
    with Image.open(os.fspath(path)) as im:
        W, H = im.size
    return int(H), int(W)
