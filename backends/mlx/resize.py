"""The data workers' crop + antialiased resize for MLX runs: Pillow's (the core's).

Mirror of :mod:`simclr_xb.backends.torch.resize`. MLX has no antialiased uint8 resize, and a
decode worker must not take the training device, so MLX runs resize in the workers with the
core's Pillow path (``data.resize = pillow``, what ``auto`` picks without torch or off
x86-64); a Mac with torch installed may set ``data.resize = torch``.
"""
from __future__ import annotations

import numpy as np


def resize_views(img: np.ndarray, boxes: np.ndarray, size: int, resample: str, out: np.ndarray) -> None:
    """img (H, W, 3) uint8 -> out[k] (size, size, 3) uint8: box k resized as an image of its
    own (:func:`simclr_xb.data.decode.resize_views_pillow`)."""
    from simclr_xb.data.decode import resize_views_pillow
    resize_views_pillow(img, boxes, size, resample, out)
