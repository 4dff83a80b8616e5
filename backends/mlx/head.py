"""Projection head g for SimCLR on MLX: z = g(h) (Chen et al. 2020, sec. 2.1; official tf2 code).

Layer i is ``linear`` (no bias) + ``bn`` when ``head_bn`` (official code; the last BN has a
weight but no bias, ``center=False``), or ``linear`` with bias when not (the paper's plain MLP
``W2 relu(W1 h)``); ReLU between layers, none after the last. Dimensions come from
:func:`simclr_xb.resnet_spec.head_dims`. Parameters flatten as ``layers.{i}.linear.weight``,
which :mod:`.convert` maps to the canonical ``head.{i}.linear.weight``.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from simclr_xb.config import ModelConfig
from simclr_xb.resnet_spec import head_dims

from .layers import BatchNorm


class HeadLayer(nn.Module):
    def __init__(self, din: int, dout: int, bn: bool, bn_bias: bool, momentum: float, eps: float):
        super().__init__()
        self.linear = nn.Linear(din, dout, bias=not bn)
        if bn:
            self.bn = BatchNorm(dout, eps, momentum, bias=bn_bias)

    def __call__(self, x: mx.array) -> mx.array:
        out = self.linear(x)
        return self.bn(out) if "bn" in self else out


class ProjectionHead(nn.Module):
    """g: h (N, feature_dim) -> z (N, head_out)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dims = head_dims(cfg)
        self.layers = [HeadLayer(din, dout, cfg.head_bn, i < len(dims) - 1, cfg.bn_momentum,
                                 cfg.bn_eps)
                       for i, (din, dout) in enumerate(dims)]

    def __call__(self, h: mx.array) -> mx.array:
        out = h
        for i, layer in enumerate(self.layers):
            out = layer(out)
            if i < len(self.layers) - 1:
                out = nn.relu(out)
        return out
