"""Data-parallel SimCLR on MLX (``mx.distributed``, processes started by ``mlx.launch``).

The same contract as the torch backend (:mod:`simclr_xb.backends.torch.distributed`):

* Global negatives (:meth:`DataParallel.gather_views`): z of every rank gathered into
  ``[all ranks' view 1; all ranks' view 2]`` (2N, d), the single-process layout.
* MLX's ``mx.distributed.all_gather`` differentiates to the LOCAL slice of the cotangent only
  (mlx 0.32.4: with loss = sum(gather(x) * [0..5]) on both ranks, rank 0 gets [0, 1, 2] where
  the adjoint is [0, 2, 4]), and ``all_sum``'s vjp is the identity (not a sum over ranks).
  :func:`make_gather` wraps all_gather in an ``mx.custom_function`` whose vjp all-sums the
  cotangent and then takes this rank's slice: the exact adjoint, so the gradient of every
  rank's slice is summed across ranks (it also compiles under ``mx.compile``).
* Global BN: each :class:`.layers.BatchNorm` gets that gather as its ``gather`` hook and
  combines the ranks' per-channel (mean, biased var) into the global statistics (equal counts
  per rank); running_var is unbiased with the global count.
* Every rank computes the same global loss; its parameter gradient is then W x the
  single-process one, and ``nn.average_gradients`` (all_sum / W, batched into few messages)
  gives the single-process gradient. Probe metrics are averaged the same way.

Two local processes over loopback (Linux CI, mlx[cpu]):
``mlx.launch -n 2 --backend ring -- python script.py``; tests/test_distributed_mlx.py checks
"2 ranks x 4 == 1 rank x 8". MLX has no collective timeout: a dead peer closes its sockets
and the ring reports an error, a stuck (alive) peer is only caught by the launcher.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from simclr_xb.distributed import DistContext, DistributedError

from .layers import BatchNorm

_GROUP: mx.distributed.Group | None = None


def init(ctx: DistContext, device: str | None = None) -> mx.distributed.Group:
    """The global MLX group (created once), checked against the context."""
    global _GROUP
    if _GROUP is None:
        try:
            _GROUP = mx.distributed.init(strict=True, backend=ctx.comm or "any")
        except (RuntimeError, ValueError) as e:
            raise DistributedError(f"mx.distributed.init(backend={ctx.comm or 'any'!r}) failed: {e}. Start "
                                   f"the ranks with mlx.launch (or `simclr-xb train --backend mlx --nproc N`)") from e
    if (_GROUP.rank(), _GROUP.size()) != (ctx.rank, ctx.world):
        raise DistributedError(f"the MLX group is rank {_GROUP.rank()} of {_GROUP.size()}, the environment "
                               f"says rank {ctx.rank} of {ctx.world}")
    return _GROUP


def barrier(ctx: DistContext) -> None:
    mx.eval(mx.distributed.all_sum(mx.array(1.0), group=init(ctx)))


def any_flag(ctx: DistContext, flag: bool) -> bool:
    s = mx.distributed.all_sum(mx.array(1.0 if flag else 0.0), group=init(ctx))
    return bool(s.item() > 0)


def shutdown(ctx: DistContext) -> None:
    """MLX groups need no teardown; the processes simply exit."""


def make_gather(group: mx.distributed.Group):
    """all_gather along axis 0 ((n, ...) -> (W * n, ...), rank order) whose vjp is the SUM over
    ranks of the cotangent's rows of this rank."""
    rank = group.rank()

    @mx.custom_function
    def gather(x):
        return mx.distributed.all_gather(x, group=group)

    @gather.vjp
    def gather_vjp(primals, cotangent, output):
        x = primals[0] if isinstance(primals, (list, tuple)) else primals
        cot = cotangent[0] if isinstance(cotangent, (list, tuple)) else cotangent
        n = x.shape[0]
        return (mx.distributed.all_sum(cot, group=group)[rank * n:(rank + 1) * n],)

    return gather


class DataParallel:
    """What :class:`.step.Trainer` needs for data parallelism (built after mx.distributed.init)."""

    def __init__(self, ctx: DistContext):
        self.ctx = ctx
        self.group = init(ctx)
        self.world = self.group.size()
        self._gather = make_gather(self.group)

    def gather_stack(self, x: mx.array) -> mx.array:
        """x (...) on every rank -> (W, ...) with the summed-cotangent vjp."""
        return self._gather(x[None])

    def gather_views(self, z: mx.array) -> mx.array:
        """This rank's z = [view 1; view 2] (2n, d) -> global [all view 1; all view 2] (2Wn, d)."""
        n2, d = z.shape
        g = self._gather(z.reshape(2, n2 // 2, d))  # (W * 2, n, d), rank-major
        return g.reshape(self.world, 2, n2 // 2, d).transpose(1, 0, 2, 3).reshape(-1, d)

    def attach(self, model: nn.Module) -> None:
        """Global BN: every BatchNorm of ``model`` takes its statistics over all ranks."""
        for _, m in model.named_modules():
            if isinstance(m, BatchNorm):
                m.gather = self.gather_stack

    def average_gradients(self, grads):
        return nn.average_gradients(grads, group=self.group)

    def mean(self, values: tuple) -> tuple:
        """Mean over ranks of scalar metrics (one message)."""
        s = mx.distributed.all_sum(mx.stack(list(values)), group=self.group) / self.world
        return tuple(s[i] for i in range(len(values)))


__all__ = ["DataParallel", "make_gather", "init", "barrier", "any_flag", "shutdown"]
