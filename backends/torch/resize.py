"""The data workers' crop + antialiased resize with PyTorch's uint8 kernel.

Selected by ``data.resize = torch`` (the default on x86-64 when torch is installed, see
:func:`simclr_xb.data.decode.resolve_resize`); runs inside the decode worker processes, never
on the training device. Each view is its box of the decoded image, resized as an image of its
own to (size, size) by ``torch.nn.functional.interpolate(..., antialias=True)`` on uint8
channels-last input: the same antialiased separable filter as Pillow's (the oracle
:func:`simclr_xb.reference.crop_resize_antialias`), computed by torch's vectorised uint8
path (AVX2 on x86-64), measured 3-5x cheaper than Pillow's resampler at 32-224 px
(benchmarks/README.md). It rounds like Pillow up to one uint8 level (bilinear) or two
(bicubic): conformance cases ``data.decode_crop_resize.torch*``.

Threads: a decode worker process starts with one intra-op thread (the workers are the
parallelism, ``data.num_workers``; :func:`simclr_xb.data.stream._worker_main` sets
``OMP_NUM_THREADS=1`` before torch is first imported there); called in the training process
(``num_workers = 0``) it uses that process's threads and changes nothing.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MODES = {"bilinear": "bilinear", "bicubic": "bicubic"}


def resize_views(img: np.ndarray, boxes: np.ndarray, size: int, resample: str, out: np.ndarray) -> None:
    """img (H, W, 3) uint8 -> out[k] (size, size, 3) uint8: box k (top, left, height, width),
    integer pixels of ``img``, resized as an image of its own."""
    if not img.flags.writeable:
        img = img.copy()
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0)  # NCHW view of HWC
    for k, (top, left, h, w) in enumerate(np.asarray(boxes, dtype=np.int64)):
        crop = t[:, :, top:top + h, left:left + w].contiguous(memory_format=torch.channels_last)
        v = F.interpolate(crop, size=(size, size), mode=MODES[resample], antialias=True)
        out[k] = v[0].permute(1, 2, 0).numpy()
