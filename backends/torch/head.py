"""SimCLR projection head g: h (N, d) -> z (N, head_out) (Chen et al. 2020, sec. 2.1 and B.4).

Official tf2 code (default, ``head_bn=True``): each layer is Linear without bias followed by
BatchNorm; the last BN has a scale but no shift (``center=False``); ReLU between layers, not
after the last. ``head_bn=False`` is the paper's plain MLP: Linear with bias, ReLU between.
Dimensions come from :func:`simclr_xb.resnet_spec.head_dims`. The head is an
``nn.Sequential`` of :class:`HeadLayer` so that, as ``SimCLRModel.head``, its state_dict keys
are the canonical ``head.{i}.linear.weight``, ``head.{i}.bn.{weight,bias,running_mean,...}``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from simclr_xb.config import ModelConfig
from simclr_xb.resnet_spec import head_dims

from .layers import NormLayer, batch_norm


class HeadLayer(nn.Module):
    """Linear (+ BN) (+ ReLU): (N, d_in) -> (N, d_out)."""

    def __init__(self, d_in: int, d_out: int, use_bn: bool, last: bool, cfg: ModelConfig,
                 norm_layer: NormLayer = batch_norm):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out, bias=not use_bn)
        self.bn = (norm_layer(d_out, dims=1, bias=not last, momentum=cfg.bn_momentum, eps=cfg.bn_eps)
                   if use_bn else None)
        self.relu = None if last else nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.relu is not None:
            x = self.relu(x)
        return x


class ProjectionHead(nn.Sequential):
    """g: h (N, feature_dim) -> z (N, cfg.head_out)."""

    def __init__(self, cfg: ModelConfig, norm_layer: NormLayer = batch_norm):
        dims = head_dims(cfg)
        super().__init__(*[HeadLayer(din, dout, cfg.head_bn, i == len(dims) - 1, cfg, norm_layer)
                           for i, (din, dout) in enumerate(dims)])
