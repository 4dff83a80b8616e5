"""Layer helpers shared by the ResNet and the projection head.

BatchNorm: PyTorch's ``nn.BatchNorm1d/2d`` already follow the project's convention
(normalise with the biased batch variance, store the UNBIASED one in ``running_var``,
``new = (1 - momentum) * old + momentum * batch``; :func:`simclr_xb.reference.batch_norm`),
so they are used as they are. :class:`BatchNorm1dNoBias` is the head's last BN, which has a
scale but no shift (official tf2 code: ``center=False``).

Every builder takes a ``norm_layer`` factory ``(num_features, dims, bias, momentum, eps)
-> nn.Module`` so a later distributed backend can swap in a synchronised BN in one place.
"""
from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn


class BatchNorm1dNoBias(nn.BatchNorm1d):
    """BatchNorm over (N, C) with a learnable scale (``weight``) and no shift (``bias`` is None,
    so it is absent from ``state_dict()``): the last BN of SimCLR's projection head."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, **kw):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True, **kw)
        del self.bias
        self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if getattr(self, "weight", None) is not None:
            nn.init.ones_(self.weight)


def batch_norm(num_features: int, dims: int = 2, bias: bool = True, momentum: float = 0.1,
               eps: float = 1e-5, affine: bool = True) -> nn.Module:
    """The default ``norm_layer``: BatchNorm2d (dims=2, NCHW) or BatchNorm1d (dims=1, (N, C)).

    ``bias=False`` gives a scale without shift (1-d only); ``affine=False`` neither.
    """
    if dims not in (1, 2):
        raise ValueError(f"batch_norm dims must be 1 or 2, got {dims}")
    if affine and not bias:
        if dims != 1:
            raise ValueError("a BatchNorm with weight but no bias exists only for 1-d (the head)")
        return BatchNorm1dNoBias(num_features, eps=eps, momentum=momentum)
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return cls(num_features, eps=eps, momentum=momentum, affine=affine)


NormLayer = Callable[..., nn.Module]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BN follows)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (a BN follows)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    """Any square bias-free convolution (the stem: 7x7/2 ImageNet, 3x3/1 CIFAR)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=kernel, stride=stride, padding=padding, bias=False)
