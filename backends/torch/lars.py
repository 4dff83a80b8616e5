"""LARS (You et al. 2017, "Large Batch Training of Convolutional Networks") as used by
SimCLR: the official code's ``lars_optimizer.py`` with classic momentum (SIMCLR-FACTS.md).

For each parameter w with gradient g (:func:`simclr_xb.reference.lars_step`):

    g <- g + wd * w                                   (unless excluded)
    trust = eta * |w| / |g|  if |w| > 0 and |g| > 0   (unless excluded), else 1
    v <- m * v + lr * trust * g
    w <- w - v                 (Nesterov: w <- w - (m * v + lr * trust * g))

Excluded parameters (BN weights and biases, linear biases, the online probe) get no weight
decay and trust 1. Exclusion is a per-parameter flag given by the caller from
:attr:`simclr_xb.resnet_spec.ParamSpec.lars_excluded` (by kind/module, never by name regex);
the optimizer keeps excluded and adapted parameters in two param groups (``group["excluded"]``).
Each group also carries the parameters' canonical ``names``, so momentum buffers can be
exported and restored by name (:meth:`LARS.momentum_buffers`).

The learning rate is written by the caller every step: ``group["lr"] = schedule(step)``.
Parameters whose ``.grad`` is None are skipped (their momentum is left as it is), as in
``torch.optim.SGD``. Momentum buffers exist from construction, at zero.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


class LARS(torch.optim.Optimizer):
    """LARS with classic momentum over named parameters.

    named_params: iterable of (canonical name, parameter); excluded: {name: bool}.
    """

    def __init__(self, named_params: Iterable[tuple[str, torch.Tensor]], excluded: Mapping[str, bool],
                 lr: float = 0.0, momentum: float = 0.9, weight_decay: float = 1e-6,
                 eta: float = 1e-3, nesterov: bool = False):
        named = list(named_params)
        missing = [n for n, _ in named if n not in excluded]
        if missing:
            raise ValueError(f"LARS: no exclusion flag for parameters {missing[:5]}")
        groups = []
        for flag in (False, True):
            sel = [(n, p) for n, p in named if bool(excluded[n]) == flag]
            if sel:
                groups.append({"params": [p for _, p in sel], "names": [n for n, _ in sel],
                               "excluded": flag})
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, nesterov=nesterov)
        super().__init__(groups, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    # ------------------------------------------------------------------ momentum by name
    def named_params(self):
        for group in self.param_groups:
            yield from zip(group["names"], group["params"])

    def momentum_buffers(self) -> dict[str, torch.Tensor]:
        """{canonical name: momentum buffer v} (live tensors)."""
        return {n: self.state[p]["momentum_buffer"] for n, p in self.named_params()}

    @torch.no_grad()
    def set_momentum_buffers(self, buffers: Mapping[str, torch.Tensor]) -> None:
        """Copy ``buffers`` (by canonical name, any dtype/device) into the momentum buffers."""
        for n, p in self.named_params():
            v = self.state[p]["momentum_buffer"]
            src = buffers[n]
            if tuple(src.shape) != tuple(v.shape):
                raise ValueError(f"momentum/{n} has shape {tuple(src.shape)}, model expects {tuple(v.shape)}")
            v.copy_(src)

    def set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = float(lr)

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            lr, m = group["lr"], group["momentum"]
            if group["excluded"]:
                scaled = torch._foreach_mul(grads, lr)  # trust = 1, no decay
            else:
                if group["weight_decay"] != 0:
                    grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                w_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = torch.where((w_norm > 0) & (g_norm > 0),
                                    group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                scaled = torch._foreach_mul(grads, list((lr * trust).unbind(0)))
            torch._foreach_mul_(bufs, m)
            torch._foreach_add_(bufs, scaled)  # v = m v + lr trust g
            if group["nesterov"]:
                update = torch._foreach_mul(bufs, m)
                torch._foreach_add_(update, scaled)
            else:
                update = bufs
            torch._foreach_sub_(params, update)
        return loss
