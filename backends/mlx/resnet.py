"""ResNet encoder f for SimCLR on MLX (He et al. 2016, "Deep Residual Learning for Image
Recognition"; torchvision v1.5 blocks: the bottleneck's stride sits on the 3x3 conv).

Built from :func:`simclr_xb.resnet_spec.encoder_layout` so that both backends share one
architecture table. Attribute names are torchvision's (conv1, bn1, layer1..layer4 as lists of
blocks, downsample = [conv1x1, BatchNorm]), so the flattened parameter tree IS the canonical
name list under ``encoder.`` (see :mod:`.convert`). Images are NHWC, conv weights OHWI.

Stems: ImageNet 7x7/2 conv + 3x3/2 max-pool with padding 1 (``nn.MaxPool2d`` pads with -inf,
as PyTorch); CIFAR variant (SimCLR appendix B.9) 3x3/1 conv and no max-pool. The width
multiplier scales every channel count (SimCLR's 2x, 4x). ``zero_init_residual`` zeroes each
block's last BN gamma (Goyal et al. 2017), as torchvision. Weights are normally overwritten
by :func:`simclr_xb.resnet_spec.init_weights` (``model.init`` "kaiming" or "tf", zero-init
residual), drawn once in numpy from the seed, so both backends start from the same numbers.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from simclr_xb.config import ModelConfig
from simclr_xb.resnet_spec import BlockSpec, encoder_layout

from .layers import BatchNorm, Conv2d, conv1x1, conv3x3


class BasicBlock(nn.Module):
    """relu(bn2(conv3x3(relu(bn1(conv3x3_s(x))))) + shortcut(x)); ResNet-18/34."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: bool = False,
                 momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = BatchNorm(planes, eps, momentum)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = BatchNorm(planes, eps, momentum)
        if downsample:
            self.downsample = [conv1x1(in_ch, planes * self.expansion, stride),
                               BatchNorm(planes * self.expansion, eps, momentum)]

    def last_bn(self) -> BatchNorm:
        return self.bn2

    def __call__(self, x: mx.array) -> mx.array:
        out = nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return nn.relu(out + _shortcut(self, x))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride here, v1.5) -> 1x1 expand (x4), plus shortcut; ResNet-50."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: bool = False,
                 momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.conv1 = conv1x1(in_ch, planes)
        self.bn1 = BatchNorm(planes, eps, momentum)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = BatchNorm(planes, eps, momentum)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = BatchNorm(planes * self.expansion, eps, momentum)
        if downsample:
            self.downsample = [conv1x1(in_ch, planes * self.expansion, stride),
                               BatchNorm(planes * self.expansion, eps, momentum)]

    def last_bn(self) -> BatchNorm:
        return self.bn3

    def __call__(self, x: mx.array) -> mx.array:
        out = nn.relu(self.bn1(self.conv1(x)))
        out = nn.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return nn.relu(out + _shortcut(self, x))


def _shortcut(block: nn.Module, x: mx.array) -> mx.array:
    if "downsample" in block:
        conv, bn = block.downsample
        return bn(conv(x))
    return x


STAGES = ("layer1", "layer2", "layer3", "layer4")
BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_block(spec: BlockSpec, cfg: ModelConfig) -> nn.Module:
    """One residual block from its :class:`~simclr_xb.resnet_spec.BlockSpec`, with the BN
    momentum and epsilon of ``cfg`` (the torch backend's ``make_block(spec, cfg)``)."""
    cls = BLOCK_TYPES[spec.kind]
    if spec.planes * cls.expansion != spec.out_ch:
        raise ValueError(f"block {spec.prefix}: out_ch {spec.out_ch} != planes {spec.planes} "
                         f"x expansion {cls.expansion}")
    return cls(spec.in_ch, spec.planes, spec.stride, spec.downsample, cfg.bn_momentum, cfg.bn_eps)


_MAXPOOL = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)  # ImageNet stem, torchvision's


class ResNet(nn.Module):
    """Encoder f: NHWC images (N, S, S, 3) -> h (N, feature_dim) after global average pooling."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        lay = encoder_layout(cfg)
        self.conv1 = Conv2d(3, lay.stem_ch, kernel_size=lay.stem_kernel,
                            stride=lay.stem_stride, padding=lay.stem_pad)
        self.bn1 = BatchNorm(lay.stem_ch, cfg.bn_eps, cfg.bn_momentum)
        # A plain bool, not a child module: a parameter-less nn.MaxPool2d child would put an
        # empty "maxpool" entry into the parameter and gradient trees (which the optimiser's
        # exclusion tree, built from canonical names, does not have).
        self.use_maxpool = bool(lay.maxpool)
        stages: dict[str, list] = {}
        for spec in lay.blocks:  # prefixes encoder.layer{s}.{b}, in order
            stage = spec.prefix.split(".")[1]
            stages.setdefault(stage, []).append(make_block(spec, cfg))
        for name, blocks in stages.items():
            setattr(self, name, blocks)
        if cfg.zero_init_residual:
            for b in self.blocks():
                b.last_bn().weight = mx.zeros_like(b.last_bn().weight)

    def blocks(self) -> list[nn.Module]:
        """The residual blocks in forward order (layer1.0, layer1.1, ..., layer4.*)."""
        return [b for name in STAGES if name in self for b in self[name]]

    def __call__(self, x: mx.array) -> mx.array:
        out = nn.relu(self.bn1(self.conv1(x)))
        if self.use_maxpool:
            out = _MAXPOOL(out)
        for block in self.blocks():
            out = block(out)
        return mx.mean(out, axis=(1, 2))


def resnet(cfg: ModelConfig) -> ResNet:
    """The encoder of ``cfg.arch`` (resnet18 / resnet34 / resnet50) at ``cfg.width``."""
    return ResNet(cfg)
