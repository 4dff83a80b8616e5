"""ResNet-18/34/50 encoder f of SimCLR (He et al. 2016, "Deep Residual Learning for Image
Recognition"; torchvision ``models/resnet.py`` v1.5: the bottleneck's stride is on the 3x3).

The architecture is read from :func:`simclr_xb.resnet_spec.encoder_layout` (one table for every
backend): width multiplier (SimCLR's 1x/2x/4x, stem included), CIFAR stem (SimCLR appendix
B.9: 3x3 stride-1 first conv, no max-pool). Module attribute names are torchvision's, so
``ResNet.state_dict()`` keys are exactly the canonical names without the ``encoder.`` prefix
(conv1, bn1, layer1.0.conv1, ..., layer2.0.downsample.0/1). There is no fc: the output is h,
the global average pool of the last stage, (N, feature_dim).

Weights are not initialised here: :class:`simclr_xb.backends.torch.step.SimCLRModel` loads
:func:`simclr_xb.resnet_spec.init_weights` (convs by ``model.init``: Kaiming fan-out, or "tf" =
the official resnet.py's VarianceScaling fan-in truncated normal; BN gamma 1 / beta 0, and
``zero_init_residual``: each block's last BN gamma 0, Goyal et al. 2017, always on in the
official code), drawn once in numpy from the seed: the same numbers as the MLX backend.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from simclr_xb.config import ModelConfig
from simclr_xb.resnet_spec import BlockSpec, encoder_layout

from .layers import NormLayer, batch_norm, conv, conv1x1, conv3x3


class BasicBlock(nn.Module):
    """3x3 -> BN -> ReLU -> 3x3 -> BN, + shortcut, -> ReLU. (N, in_ch, H, W) -> (N, out_ch, H/s, W/s)."""

    expansion = 1

    def __init__(self, spec: BlockSpec, norm: NormLayer):
        super().__init__()
        self.conv1 = conv3x3(spec.in_ch, spec.planes, spec.stride)
        self.bn1 = norm(spec.planes)
        self.conv2 = conv3x3(spec.planes, spec.out_ch)
        self.bn2 = norm(spec.out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(spec, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.downsample is None else self.downsample(x)
        return self.relu(out + short)


class Bottleneck(nn.Module):
    """1x1 -> BN -> ReLU -> 3x3 (stride) -> BN -> ReLU -> 1x1 -> BN, + shortcut, -> ReLU."""

    expansion = 4

    def __init__(self, spec: BlockSpec, norm: NormLayer):
        super().__init__()
        self.conv1 = conv1x1(spec.in_ch, spec.planes)
        self.bn1 = norm(spec.planes)
        self.conv2 = conv3x3(spec.planes, spec.planes, spec.stride)
        self.bn2 = norm(spec.planes)
        self.conv3 = conv1x1(spec.planes, spec.out_ch)
        self.bn3 = norm(spec.out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(spec, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        short = x if self.downsample is None else self.downsample(x)
        return self.relu(out + short)


def _downsample(spec: BlockSpec, norm: NormLayer) -> nn.Module | None:
    """Projection shortcut (1x1 conv with the block's stride, then BN) where shapes change."""
    if not spec.downsample:
        return None
    return nn.Sequential(conv1x1(spec.in_ch, spec.out_ch, spec.stride), norm(spec.out_ch))


BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_block(spec: BlockSpec, cfg: ModelConfig, norm_layer: NormLayer = batch_norm) -> nn.Module:
    """The block described by ``spec``, with the config's BN momentum and eps."""
    return BLOCK_TYPES[spec.kind](spec, partial(norm_layer, momentum=cfg.bn_momentum, eps=cfg.bn_eps))


class ResNet(nn.Module):
    """The SimCLR encoder: NCHW images (N, 3, S, S) -> h (N, feature_dim)."""

    def __init__(self, cfg: ModelConfig, norm_layer: NormLayer = batch_norm):
        super().__init__()
        lay = encoder_layout(cfg)
        self.feature_dim = lay.feature_dim
        self.conv1 = conv(3, lay.stem_ch, lay.stem_kernel, lay.stem_stride, lay.stem_pad)
        self.bn1 = norm_layer(lay.stem_ch, momentum=cfg.bn_momentum, eps=cfg.bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if lay.maxpool else nn.Identity()
        for stage in range(1, 5):
            prefix = f"encoder.layer{stage}."
            blocks = [make_block(b, cfg, norm_layer) for b in lay.blocks if b.prefix.startswith(prefix)]
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))  # global average pool -> h
