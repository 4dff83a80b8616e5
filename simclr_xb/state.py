"""Conventions the core and both backends share, each defined once (numpy only).

* A Trainer's state: canonical weight names (:mod:`.resnet_spec`) plus ``momentum/<name>`` for
  every LARS momentum buffer; a checkpoint keeps the two apart (:func:`split_state`,
  :func:`merge_state`).
* An image batch is uint8 NHWC (N, H, W, 3) (:func:`check_images`); a training step takes the
  two views' sampled parameters of it (:func:`check_pair`).
* Evaluation encodes the identity view (whole image resized), a batch at a time
  (:func:`identity_batches`).
* Constants whose value the oracle and both backends must agree on: :data:`PROBE_EPS`,
  :data:`NORM_EPS`.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .augment import ViewParams, identity_params

MOMENTUM_PREFIX = "momentum/"

# The online probe's input is BN without affine parameters over the batch: (h - mean) / sqrt(var + eps).
PROBE_EPS = 1e-5
# NT-Xent rows are divided by max(|z_i|, NORM_EPS), as tf.math.l2_normalize and F.normalize do.
NORM_EPS = 1e-12


def split_state(state: dict) -> tuple[dict, dict]:
    """A Trainer's ``state_dict`` -> (weights, momenta), the momenta without the prefix."""
    weights = {k: v for k, v in state.items() if not k.startswith(MOMENTUM_PREFIX)}
    momenta = {k[len(MOMENTUM_PREFIX):]: v for k, v in state.items() if k.startswith(MOMENTUM_PREFIX)}
    return weights, momenta


def merge_state(weights: dict, momenta: dict) -> dict:
    """(weights, momenta) -> the ``state_dict`` a Trainer loads (inverse of :func:`split_state`)."""
    state = dict(weights)
    state.update({MOMENTUM_PREFIX + k: v for k, v in momenta.items()})
    return state


def check_images(images_u8, name: str = "images_u8") -> tuple[int, int, int]:
    """(N, H, W) of a uint8 NHWC batch (numpy, a lazy array, or a framework tensor: only its
    shape and dtype are read); ValueError naming ``name`` otherwise."""
    shape = tuple(np.shape(images_u8))
    if len(shape) != 4 or shape[3] != 3:
        raise ValueError(f"{name} must be NHWC (N, H, W, 3), got shape {shape}")
    dt = getattr(images_u8, "dtype", None)
    if dt is None:
        dt = np.asarray(images_u8).dtype
    if str(dt).rsplit(".", 1)[-1] != "uint8":  # numpy "uint8", "torch.uint8", "mlx.core.uint8"
        raise ValueError(f"{name} must have dtype uint8, got {dt}")
    return shape[0], shape[1], shape[2]


def check_pair(images_u8, p1: ViewParams, p2: ViewParams, cropped: bool = False) -> tuple[int, int, int]:
    """(N, H, W) of a training step's input: ``images_u8`` as :func:`check_images` (with
    ``cropped``: the 2N views [view 1 of every image; view 2 of every image]); ``p1`` and ``p2``
    one view per image, valid for images of (H, W) unless the views are already cut."""
    n, H, W = check_images(images_u8)
    if cropped:
        n //= 2
    for name, p in (("p1", p1), ("p2", p2)):
        if len(p) != n:
            raise ValueError(f"{name} has {len(p)} views for {n} images")
        if not cropped:
            p.validate((H, W))
    return n, H, W


def check_labelled(images_u8, labels, params: ViewParams) -> tuple[int, int, int]:
    """(N, H, W) of a fine-tuning step's input: images as :func:`check_images`, one view and
    one label per image, the views valid for images of (H, W)."""
    n, H, W = check_images(images_u8, "images")
    if len(params) != n or np.shape(labels) != (n,):
        raise ValueError(f"{n} images need {n} view parameters and labels of shape ({n},), got "
                         f"{len(params)} and {np.shape(labels)}")
    params.validate((H, W))
    return n, H, W


def identity_batches(images_u8, batch_size: int) -> Iterator[tuple[object, ViewParams]]:
    """``(chunk, identity_params(len(chunk), (H, W)))`` over ``images_u8`` (N, H, W, 3),
    ``batch_size`` images at a time: the loop behind every backend's ``encode`` and ``predict``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n, H, W = tuple(np.shape(images_u8))[:3]

    def chunks():
        for i in range(0, n, batch_size):
            chunk = images_u8[i:i + batch_size]
            yield chunk, identity_params(len(chunk), (H, W))
    return chunks()
