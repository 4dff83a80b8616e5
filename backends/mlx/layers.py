"""Layers the MLX backend needs beyond mlx.nn: a PyTorch-convention BatchNorm and conv helpers.

BatchNorm (Ioffe & Szegedy 2015) in PyTorch's convention, which simclr-xb fixes for every
backend (SIMCLR-FACTS.md): normalise with the BIASED batch variance, store the UNBIASED one
in ``running_var``, ``new = (1 - momentum) * old + momentum * batch`` (momentum 0.1 = TF decay
0.9), eps 1e-5, and count ``num_batches_tracked``. ``mlx.nn.BatchNorm`` stored the biased
variance in older MLX releases, has no counter and no "scale without shift" form, hence our
own. The projection head's last BN has a weight but NO bias (official code: ``center=False``).
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def batch_norm(x: mx.array, weight, bias, running_mean: mx.array, running_var: mx.array,
               train: bool, momentum: float = 0.1, eps: float = 1e-5):
    """BatchNorm over every axis but the last (channels-last). Returns (y, new_mean, new_var).

    train: y = (x - mean_B) / sqrt(var_B + eps) * weight + bias (biased var_B); running stats
    move by ``momentum`` toward (mean_B, var_B * n / (n - 1)), n = elements per channel.
    eval: normalise with the running stats, returned unchanged. ``weight``/``bias`` may be None.
    x: (..., C); weight, bias, running stats: (C,).
    """
    if train:
        axes = tuple(range(x.ndim - 1))
        n = x.size // x.shape[-1]
        mean = mx.mean(x, axis=axes)
        var = mx.mean(mx.square(x - mean), axis=axes)
        unbiased = var * n / max(n - 1, 1)
        new_mean = (1 - momentum) * running_mean + momentum * mean
        new_var = (1 - momentum) * running_var + momentum * unbiased
    else:
        mean, var = running_mean, running_var
        new_mean, new_var = running_mean, running_var
    y = (x - mean) / mx.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y, new_mean, new_var


class BatchNorm(nn.Module):
    """BatchNorm module over the last axis with PyTorch's running-stat convention.

    Trainable: ``weight`` (gamma) and, when ``bias=True``, ``bias`` (beta). Frozen buffers
    (part of ``module.state``, so ``mx.compile(inputs=state, outputs=state)`` carries their
    updates): ``running_mean``, ``running_var`` (unbiased), ``num_batches_tracked`` (int64).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 bias: bool = True):
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = mx.ones((num_features,))
        if bias:
            self.bias = mx.zeros((num_features,))
        self.running_mean = mx.zeros((num_features,))
        self.running_var = mx.ones((num_features,))
        self.num_batches_tracked = mx.array(0, dtype=mx.int64)
        self.freeze(keys=list(BUFFERS), recurse=False)

    def unfreeze(self, *args, **kwargs):
        """Keep the buffers frozen whatever is unfrozen (they never get gradients)."""
        super().unfreeze(*args, **kwargs)
        self.freeze(keys=list(BUFFERS), recurse=False)
        return self

    def __call__(self, x: mx.array) -> mx.array:
        y, m, v = batch_norm(x, self.get("weight"), self.get("bias"), self.running_mean,
                             self.running_var, self.training, self.momentum, self.eps)
        if self.training:
            self.running_mean = m
            self.running_var = v
            self.num_batches_tracked = self.num_batches_tracked + 1
        return y


def conv2d(x: mx.array, w: mx.array, stride: int = 1, padding: int = 0) -> mx.array:
    """Cross-correlation without bias: x (N, H, W, Cin), w OHWI (Cout, kh, kw, Cin) -> NHWC.
    The same call ``mlx.nn.Conv2d`` makes."""
    return mx.conv2d(x, w, stride=stride, padding=padding)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (torchvision ``conv3x3``)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (torchvision ``conv1x1``)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, padding=0, bias=False)
