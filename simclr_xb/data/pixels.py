"""One decoded Pillow image -> uint8 RGB pixels, for every Pillow mode, or a named refusal.

``to_rgb_uint8(img, name)`` returns a C-contiguous uint8 array (H, W, 3). The rules, per mode:

* ``RGB``: as is. ``RGBX``: the padding byte dropped. ``CMYK``, ``YCbCr``, ``HSV``:
  Pillow's own conversion to RGB (``CMYK`` without a colour profile: R = 255 - C - K ...).
* ``L`` (8-bit grey): repeated over the 3 channels. ``1`` (bilevel): 0 -> 0, 1 -> 255, repeated.
* 16-bit grey ``I;16``, ``I;16L``, ``I;16B``, ``I;16N``: scaled from [0, 65535] to [0, 255] as
  round(v * 255 / 65535) = (v + 128) // 257, so 65535 -> 255, 32768 -> 128, 257 -> 1: the full
  16-bit range maps onto the 8-bit range (it never saturates).
* 32-bit integer grey ``I`` (how Pillow opens 16-bit grey PNGs and TIFFs): values in
  [0, 65535] are taken as 16-bit and scaled as above; a value outside that range is refused
  (the scale cannot be known).
* 32-bit float grey ``F``: values in [0, 1] are scaled by 255 (rounded); NaN/Inf or a value
  outside [0, 1] is refused.
* Alpha (``RGBA``, ``LA``, ``PA``, ``P`` with a transparency, ``RGBa``, ``La``): composited on
  a BLACK background, i.e. out = round(colour * alpha / 255), the premultiplied colour. A fully
  transparent pixel is black whatever colour it hides, so invisible pixels never reach the model.
  (``RGBa`` / ``La`` are premultiplied already: their colour channels are used as they are.)
* Palette ``P`` without transparency: the palette looked up (RGB).
* Any other mode (``LAB``, ``I;16S``, ``BGR;24`` ...): converted by Pillow to RGB when it can,
  refused otherwise. An empty image (0 pixels) is refused, and so is one whose conversion
  (up to 16 bytes a pixel) would not fit the memory budget of :mod:`simclr_xb.inputs`.

Every refusal is a :class:`~simclr_xb.data.common.DataError` with a one-line message naming
``name`` (the file) and the mode.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .common import DataError

_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA")


def _grey3(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=-1))


def _scale16(a: np.ndarray) -> np.ndarray:
    """Integers in [0, 65535] -> uint8 with round(v * 255 / 65535) (exact integer arithmetic)."""
    return ((a.astype(np.int64) + 128) // 257).astype(np.uint8)


def _on_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 colour (H, W, 3) and alpha (H, W) -> round(colour * alpha / 255), uint8."""
    out = (rgb.astype(np.uint32) * alpha[..., None].astype(np.uint32) + 127) // 255
    return np.ascontiguousarray(out.astype(np.uint8))


def to_rgb_uint8(img: Image.Image, name: str) -> np.ndarray:  # noqa: C901 - one branch per Pillow mode
    """Pillow image -> uint8 (H, W, 3) RGB by the rules of this module; ``DataError`` naming
    ``name`` when the mode or the values cannot be converted faithfully."""
    mode = img.mode
    w, h = img.size
    if w < 1 or h < 1:
        raise DataError(f"image {name} is empty ({w}x{h} pixels, mode {mode})")
    from ..inputs import InputTooLarge, check_allocation
    try:  # the conversion's temporaries: up to 16 bytes a pixel (int64 grey, uint32 compositing)
        check_allocation(16 * w * h, f"image {name} ({w}x{h} pixels, mode {mode})")
    except InputTooLarge as e:
        raise DataError(str(e)) from None
    try:
        if mode == "RGB":
            out = np.asarray(img, dtype=np.uint8)
        elif mode == "L":
            out = _grey3(np.asarray(img, dtype=np.uint8))
        elif mode == "1":
            out = _grey3(np.asarray(img.convert("L"), dtype=np.uint8))
        elif mode in _GREY16:
            a = np.asarray(img)
            out = _grey3(_scale16(a.astype(np.uint16, copy=False)))
        elif mode == "I":
            a = np.asarray(img, dtype=np.int64)
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi > 65535:
                raise DataError(f"image {name} is 32-bit integer grey (mode I) with values in "
                                f"[{lo}, {hi}]: expected 16-bit values in [0, 65535]; convert it to "
                                f"8- or 16-bit first")
            out = _grey3(_scale16(a))
        elif mode == "F":
            a = np.asarray(img, dtype=np.float64)
            if not np.isfinite(a).all():
                raise DataError(f"image {name} is float grey (mode F) and holds NaN or Inf")
            lo, hi = float(a.min()), float(a.max())
            if lo < 0.0 or hi > 1.0:
                raise DataError(f"image {name} is float grey (mode F) with values in [{lo:g}, {hi:g}]: "
                                f"expected values in [0, 1]; convert it to 8- or 16-bit first")
            out = _grey3(np.rint(a * 255.0).astype(np.uint8))
        elif mode == "RGBa":
            out = np.ascontiguousarray(np.asarray(img, dtype=np.uint8)[..., :3])
        elif mode == "La":
            out = _grey3(np.asarray(img, dtype=np.uint8)[..., 0])
        elif mode in _ALPHA or (mode == "P" and "transparency" in img.info):
            a = np.asarray(img.convert("RGBA"), dtype=np.uint8)
            out = _on_black(a[..., :3], a[..., 3])
        else:  # P (opaque), RGBX, CMYK, YCbCr, HSV and whatever else Pillow converts itself
            out = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except (ValueError, OSError, TypeError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"image {name} has Pillow mode {mode}, which cannot be converted to RGB: "
                        f"{msg}") from None
    if out.ndim != 3 or out.shape[-1] != 3 or out.dtype != np.uint8:
        raise DataError(f"image {name} (mode {mode}) decoded to {out.dtype} {out.shape}, "
                        f"expected uint8 (H, W, 3)")
    return np.ascontiguousarray(out)
