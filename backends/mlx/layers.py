"""Layers the MLX backend needs beyond mlx.nn: a PyTorch-convention BatchNorm and conv helpers.

BatchNorm (Ioffe & Szegedy 2015) in PyTorch's convention, which simclr-xb fixes for every
backend (SIMCLR-FACTS.md): normalise with the BIASED batch variance, store the UNBIASED one
in ``running_var``, ``new = (1 - momentum) * old + momentum * batch`` (momentum 0.1 = TF decay
0.9), eps 1e-5, and count ``num_batches_tracked``. ``mlx.nn.BatchNorm`` stored the biased
variance in older MLX releases, has no counter and no "scale without shift" form, hence our
own. The projection head's last BN has a weight but NO bias (official code: ``center=False``).

:func:`exp` / :func:`logsumexp`: MLX's CPU ``mx.exp`` is a float32-accurate approximation even
for float64 inputs (measured relative error 1.8e-6 on mlx 0.32), which would cap the float64
conformance at ~1e-6; for float64 we use ``e ** x`` (``mx.power``, accurate to ~1e-15).
"""
from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def exp(x: mx.array) -> mx.array:
    """Elementwise e^x, accurate in float64 too (see the module docstring)."""
    if x.dtype == mx.float64:
        return mx.power(mx.array(math.e, dtype=mx.float64), x)
    return mx.exp(x)


def logsumexp(x: mx.array, axis: int) -> mx.array:
    """log(sum(exp(x))) along ``axis`` with the max subtracted first (stable; -inf entries
    contribute 0 and get zero gradient). Same as ``mx.logsumexp`` but float64-accurate."""
    if x.dtype != mx.float64:
        return mx.logsumexp(x, axis=axis)
    m = mx.stop_gradient(mx.max(x, axis=axis, keepdims=True))
    return mx.squeeze(m + mx.log(mx.sum(exp(x - m), axis=axis, keepdims=True)), axis=axis)


def batch_norm(x: mx.array, weight, bias, running_mean: mx.array, running_var: mx.array,
               train: bool, momentum: float = 0.1, eps: float = 1e-5, gather=None):
    """BatchNorm over every axis but the last (channels-last). Returns (y, new_mean, new_var).

    train: y = (x - mean_B) / sqrt(var_B + eps) * weight + bias (biased var_B); running stats
    move by ``momentum`` toward (mean_B, var_B * n / (n - 1)), n = elements per channel.
    eval: normalise with the running stats, returned unchanged. ``weight``/``bias`` may be None.
    x: (..., C); weight, bias, running stats: (C,).
    gather (data parallel, :mod:`.distributed`): None, or a differentiable stack over ranks
    (a (...) -> (W, ...) with a vjp summed over ranks); then mean_B/var_B are those of the
    batches of all W ranks (equal sizes n): mean = mean_r(mean_r), var = mean_r(var_r +
    (mean_r - mean)^2), and n becomes W * n (global BN).
    bfloat16 x (mixed precision): statistics and normalisation in float32, y back in bfloat16
    (torch's autocast also runs batch norm in float32).
    """
    if x.dtype == mx.bfloat16:
        w32, b32 = (None if p is None else p.astype(mx.float32) for p in (weight, bias))
        y, new_mean, new_var = batch_norm(x.astype(mx.float32), w32, b32, running_mean, running_var,
                                          train, momentum, eps, gather)
        return y.astype(mx.bfloat16), new_mean, new_var
    if train:
        axes = tuple(range(x.ndim - 1))
        n = x.size // x.shape[-1]
        mean = mx.mean(x, axis=axes)
        var = mx.mean(mx.square(x - mean), axis=axes)
        if gather is not None:
            stats = gather(mx.stack([mean, var]))  # (W, 2, C)
            mean = mx.mean(stats[:, 0], axis=0)
            var = mx.mean(stats[:, 1] + mx.square(stats[:, 0] - mean), axis=0)
            n = n * stats.shape[0]
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
    ``gather``: the data-parallel hook of :func:`batch_norm` (None: this process's batch).
    """

    gather = None

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
                             self.running_var, self.training, self.momentum, self.eps, self.gather)
        if self.training:
            self.running_mean = m
            self.running_var = v
            self.num_batches_tracked = self.num_batches_tracked + 1
        return y


def conv2d(x: mx.array, w: mx.array, stride: int = 1, padding: int = 0) -> mx.array:
    """Cross-correlation without bias: x (N, H, W, Cin), w OHWI (Cout, kh, kw, Cin) -> NHWC.

    ``mx.conv2d``, except in float64: MLX's CPU convolution accumulates float64 inputs with
    float32 accuracy (measured max error 3e-6 on unit-normal data, mlx 0.32), so float64 uses
    im2col + matmul (float64-exact; slower, meant for conformance runs).
    """
    if x.dtype != mx.float64:
        return mx.conv2d(x, w, stride=stride, padding=padding)
    cout, kh, kw, cin = w.shape
    n, H, W, _ = x.shape
    if padding:
        x = mx.pad(x, [(0, 0), (padding, padding), (padding, padding), (0, 0)])
    ho = (H + 2 * padding - kh) // stride + 1
    wo = (W + 2 * padding - kw) // stride + 1
    taps = [x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            for i in range(kh) for j in range(kw)]  # each (N, Ho, Wo, Cin), in (kh, kw) order
    cols = mx.stack(taps, axis=3).reshape(n * ho * wo, kh * kw * cin)
    return (cols @ w.reshape(cout, kh * kw * cin).T).reshape(n, ho, wo, cout)


class Conv2d(nn.Module):
    """Convolution without bias, weight OHWI (Cout, kh, kw, Cin), through :func:`conv2d`.

    Zero-initialised: the backend's weights always come from
    :func:`simclr_xb.resnet_spec.init_weights` (so that both backends start identical).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1,
                 padding: int = 0):
        super().__init__()
        self.weight = mx.zeros((out_ch, kernel_size, kernel_size, in_ch))
        self.stride = stride
        self.padding = padding

    def __call__(self, x: mx.array) -> mx.array:
        return conv2d(x, self.weight, self.stride, self.padding)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> Conv2d:
    """3x3 convolution, padding 1, no bias (torchvision ``conv3x3``)."""
    return Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> Conv2d:
    """1x1 convolution, no bias (torchvision ``conv1x1``)."""
    return Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, padding=0)
