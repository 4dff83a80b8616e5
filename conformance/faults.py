"""Faults to inject into the float64 oracle: the negative controls that prove a tolerance has
teeth (tests/test_conformance.py, tests/test_reliability.py, scripts/float32_study.py).

Each function returns a context manager that swaps one function of :mod:`simclr_xb.reference`
for a faulty one while it is active (the oracle's functions look each other up at call time,
so ``train_step`` picks the fault up). A tolerance has teeth when the faulty oracle, compared
with the correct one, FAILS it by a wide margin.
"""
from __future__ import annotations

import numpy as np

from simclr_xb import reference as R


class Patched:
    """Replace attributes of :mod:`simclr_xb.reference` inside a ``with`` block."""

    def __init__(self, **fns):
        self.fns, self.saved = fns, {}

    def __enter__(self):
        for k, f in self.fns.items():
            self.saved[k] = getattr(R, k)
            setattr(R, k, f)
        return self

    def __exit__(self, *exc):
        for k, f in self.saved.items():
            setattr(R, k, f)


def grad_error(name: str, factor: float = 1.01) -> Patched:
    """The gradient of parameter ``name`` is off by ``factor`` (1.01: a 1% error). For a
    LARS-adapted weight a pure scale cancels in the trust ratio; pick a BN parameter or bias
    (LARS-excluded: it moves by lr * g)."""
    real = R.loss_and_grads

    def loss_and_grads(weights, x, cfg):
        loss, g, up = real(weights, x, cfg)
        return loss, {**g, name: g[name] * factor}, up
    return Patched(loss_and_grads=loss_and_grads)


def bn_backward_unbiased() -> Patched:
    """BN's backward normalises with the UNBIASED variance while the forward uses the biased
    one (a hand-written backward that re-derives the statistics with the wrong convention)."""
    def batch_norm_backward(dy, x, weight, eps=1e-5):
        axes = tuple(range(x.ndim - 1))
        n = x.size // x.shape[-1]
        inv_std = 1.0 / np.sqrt(x.var(axis=axes) * n / max(n - 1, 1) + eps)
        xhat = (x - x.mean(axis=axes)) * inv_std
        g = dy * weight if weight is not None else dy
        dx = (g - g.mean(axis=axes) - xhat * (g * xhat).mean(axis=axes)) * inv_std
        return dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)
    return Patched(batch_norm_backward=batch_norm_backward)


def bn_running_var_biased() -> Patched:
    """BN's running_var moves toward the BIASED batch variance (mlx.nn.BatchNorm's old
    convention) instead of the unbiased one."""
    real = R.batch_norm

    def batch_norm(x, weight, bias, running_mean, running_var, train, momentum=0.1, eps=1e-5):
        y, m, v = real(x, weight, bias, running_mean, running_var, train, momentum, eps)
        if train:
            v = (1 - momentum) * running_var + momentum * x.var(axis=tuple(range(x.ndim - 1)))
        return y, m, v
    return Patched(batch_norm=batch_norm)


# The controls every multi-step case must fail: (label, fault factory).
MULTI_STEP_CONTROLS = (
    ("1% error in d(encoder.bn1.weight)", lambda: grad_error("encoder.bn1.weight")),
    ("1% error in d(encoder.layer2.0.bn1.bias)", lambda: grad_error("encoder.layer2.0.bn1.bias")),
    ("BN backward with the unbiased variance", bn_backward_unbiased),
    ("BN running_var with the biased variance", bn_running_var_biased),
)
