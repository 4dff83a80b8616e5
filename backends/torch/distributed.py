"""Data-parallel SimCLR on PyTorch: process group, global negatives, global BN, DDP wiring.

The contract (the loop and :class:`simclr_xb.distributed.DistContext` hold the rest):

* Global negatives (:func:`gather_views`): every rank gathers every rank's z (2n, d) and builds
  ``[all ranks' view 1; all ranks' view 2]`` (2N, d), exactly the single-process layout of the
  global batch, so NT-Xent's positives stay at (i, i + N). The gather's backward
  (:class:`_GatherStack`) is the exact adjoint of a gather: each rank receives the SUM over
  ranks of the cotangents of its own slice (reduce-scatter on NCCL; all-reduce then slice on
  gloo, which has no reduce-scatter). A backward that keeps only the local cotangent is the
  classic multi-GPU SimCLR bug (SIMCLR-FACTS.md, "Across devices").
* Global BN: ``torch.nn.SyncBatchNorm`` on CUDA. SyncBatchNorm refuses CPU tensors, so on the
  CPU (gloo) :class:`GlobalBatchNorm` computes the same statistics: each rank's per-channel
  (mean, biased var) are gathered with the same differentiable gather and combined (equal
  counts per rank: mean = mean_r(mean_r), var = mean_r(var_r + (mean_r - mean)^2)); autograd
  through the gather gives the global-BN backward (the cross-rank sums of the gradient
  statistics). running_var stores the UNBIASED variance with the GLOBAL count M = n * W.
* Gradients: every rank computes the same global loss; through adjoint collectives each rank's
  parameter gradient is W x the single-process one, and DistributedDataParallel's AVERAGE
  over ranks gives exactly the single-process gradient (tests/test_distributed.py checks
  "2 ranks x 4 == 1 rank x 8" to float64 rounding). The online probe (outside DDP: it is
  trained on detached h and may be absent from a step) is averaged by hand, which makes its
  loss the mean of the ranks' probe losses = the probe loss of the global batch.

Collective order: all ranks run the same graph, so the gathers (forward and backward) and
DDP's bucket all-reduces are issued in the same order everywhere.
"""
from __future__ import annotations

import inspect
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from simclr_xb.distributed import DistContext, DistributedError

from .layers import BatchNorm1dNoBias

# --------------------------------------------------------------------------- process group


def pick_device(ctx: DistContext, device: str | torch.device | None = None) -> torch.device:
    """This rank's device: an explicit CPU/indexed device as given; "cuda" (or None with CUDA
    available) -> ``cuda:{local_rank}``, made the current CUDA device."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(dev)
    return dev


def comm_backend(ctx: DistContext, device: torch.device) -> str:
    return ctx.comm or ("nccl" if device.type == "cuda" else "gloo")


def init(ctx: DistContext, device: str | torch.device | None = None) -> None:
    """Join the default process group (idempotent) with ``ctx.timeout_s`` on the rendezvous and
    every collective: a missing or dead rank fails the job instead of hanging it."""
    if dist.is_initialized():
        if dist.get_world_size() != ctx.world or dist.get_rank() != ctx.rank:
            raise DistributedError(f"the torch process group is rank {dist.get_rank()} of "
                                   f"{dist.get_world_size()}, the context says rank {ctx.rank} of {ctx.world}")
        return
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise DistributedError(f"{var} is not set: start the ranks with torchrun (or `simclr-xb train "
                                   f"--nproc N`), which sets MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE")
    dev = pick_device(ctx, device)
    kwargs = {}
    if comm_backend(ctx, dev) == "nccl":
        kwargs["device_id"] = dev
    dist.init_process_group(backend=comm_backend(ctx, dev), rank=ctx.rank, world_size=ctx.world,
                            timeout=timedelta(seconds=ctx.timeout_s), **kwargs)


def _flag_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier(ctx: DistContext) -> None:
    """All ranks meet; on gloo a monitored barrier names the ranks that never arrived."""
    init(ctx)
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=timedelta(seconds=ctx.timeout_s), wait_all_ranks=True)
    else:
        dist.barrier(device_ids=[torch.cuda.current_device()] if dist.get_backend() == "nccl" else None)


def any_flag(ctx: DistContext, flag: bool) -> bool:
    init(ctx)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_flag_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def shutdown(ctx: DistContext) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- the gather


class _GatherStack(torch.autograd.Function):
    """x (...) on every rank -> (W, ...) stacked in rank order; backward: the sum over ranks of
    the cotangent's slice [rank] (the adjoint of the gather)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        world = dist.get_world_size(group)
        x = x.contiguous()
        if dist.get_backend(group) == "nccl":
            out = x.new_empty((world,) + tuple(x.shape))
            dist.all_gather_into_tensor(out, x, group=group)
            return out
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        if dist.get_backend(ctx.group) == "nccl":
            out = grad.new_empty(grad.shape[1:])
            dist.reduce_scatter_tensor(out.view(-1), grad.view(-1), op=dist.ReduceOp.SUM, group=ctx.group)
            return out, None
        summed = grad.clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=ctx.group)
        return summed[ctx.rank], None


def all_gather_stack(x: torch.Tensor, group=None) -> torch.Tensor:
    """Differentiable gather: x (...) -> (W, ...) with rank r's x at index r."""
    return _GatherStack.apply(x, group)


def gather_views(z: torch.Tensor, group=None) -> torch.Tensor:
    """This rank's z = [view 1; view 2] (2n, d) -> the global [all view 1; all view 2] (2Wn, d)."""
    n2, d = z.shape
    if n2 % 2:
        raise ValueError(f"gather_views expects z of shape (2n, d), got {tuple(z.shape)}")
    g = all_gather_stack(z.reshape(2, n2 // 2, d), group)  # (W, 2, n, d)
    return g.transpose(0, 1).reshape(-1, d)


# --------------------------------------------------------------------------- global BN


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the batch of ALL ranks, for (N, C) and (N, C, H, W) inputs on any device
    (the CPU/gloo path; CUDA uses ``nn.SyncBatchNorm``). Same parameters, buffers and state_dict
    keys as ``nn.BatchNorm{1,2}d``; eval mode (or a world of 1) is plain BatchNorm. Ranks must
    hold equally many values per channel (the loader's full batches guarantee it).
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"GlobalBatchNorm expects (N, C) or (N, C, H, W), got {x.dim()}-d input")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        C = x.shape[1]
        shape = (1, C) + (1,) * (x.dim() - 2)
        axes = [0] + list(range(2, x.dim()))
        xs = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        n = xs.numel() // C
        mean_r = xs.mean(axes)
        var_r = (xs - mean_r.view(shape)).square().mean(axes)
        stats = all_gather_stack(torch.stack([mean_r, var_r]))  # (W, 2, C)
        world = stats.shape[0]
        mean = stats[:, 0].mean(0)
        var = (stats[:, 1] + (stats[:, 0] - mean).square()).mean(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                m = n * world
                self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
                self.running_var.mul_(1 - f).add_((var * (m / max(m - 1, 1))).to(self.running_var.dtype),
                                                  alpha=f)
        y = (xs - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y.to(x.dtype)


class GlobalBatchNorm1dNoBias(GlobalBatchNorm):
    """:class:`GlobalBatchNorm` with a scale and no shift (the head's last BN)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, **kw):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True, **kw)
        del self.bias
        self.register_parameter("bias", None)

    reset_parameters = BatchNorm1dNoBias.reset_parameters


class SyncBatchNormNoBias(nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` with a scale and no shift (the head's last BN, CUDA)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, **kw):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True, **kw)
        del self.bias
        self.register_parameter("bias", None)

    reset_parameters = BatchNorm1dNoBias.reset_parameters


def _check(dims: int, affine: bool, bias: bool) -> None:
    if dims not in (1, 2):
        raise ValueError(f"batch_norm dims must be 1 or 2, got {dims}")
    if affine and not bias and dims != 1:
        raise ValueError("a BatchNorm with weight but no bias exists only for 1-d (the head)")


def global_batch_norm(num_features: int, dims: int = 2, bias: bool = True, momentum: float = 0.1,
                      eps: float = 1e-5, affine: bool = True) -> nn.Module:
    """``norm_layer`` factory (same signature as :func:`.layers.batch_norm`): global BN on any device."""
    _check(dims, affine, bias)
    if affine and not bias:
        return GlobalBatchNorm1dNoBias(num_features, eps=eps, momentum=momentum)
    return GlobalBatchNorm(num_features, eps=eps, momentum=momentum, affine=affine)


def sync_batch_norm(num_features: int, dims: int = 2, bias: bool = True, momentum: float = 0.1,
                    eps: float = 1e-5, affine: bool = True) -> nn.Module:
    """``norm_layer`` factory: ``nn.SyncBatchNorm`` (CUDA only; not run in this project's CI)."""
    _check(dims, affine, bias)
    if affine and not bias:
        return SyncBatchNormNoBias(num_features, eps=eps, momentum=momentum)
    return nn.SyncBatchNorm(num_features, eps=eps, momentum=momentum, affine=affine)


# --------------------------------------------------------------------------- the trainer's hooks


class _Backbone(nn.Module):
    """encoder + head of a SimCLRModel (shared modules, same parameters) as the one module DDP
    wraps: x -> (h, z). The probe stays outside (see the module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder = model.encoder
        self.head = model.head

    def forward(self, x: torch.Tensor):
        h = self.encoder(x)
        return h, self.head(h)


class DataParallel:
    """What :class:`backends.torch.step.Trainer` needs for data parallelism: the device, the
    ``norm_layer`` factory, the DDP-wrapped network, the global loss and the probe/metric
    averaging. Built (and the process group joined) before the model."""

    def __init__(self, ctx: DistContext, device: str | torch.device | None = None):
        self.ctx = ctx
        self.device = pick_device(ctx, device)
        init(ctx, self.device)
        self.world = dist.get_world_size()
        self.norm_layer = sync_batch_norm if self.device.type == "cuda" else global_batch_norm

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP over encoder + head. Buffers are not broadcast every step: global BN keeps the
        running stats identical on every rank."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        # torch >= 2.13 renamed the switch (and then also syncs buffers once at init: harmless).
        new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers" if new_name else "broadcast_buffers": False}
        return DistributedDataParallel(_Backbone(model), device_ids=ids, **no_sync)

    @staticmethod
    def global_loss(local_loss):
        """NT-Xent of this rank's z -> NT-Xent over the gathered global z."""
        def loss_fn(z: torch.Tensor) -> torch.Tensor:
            return local_loss(gather_views(z))
        return loss_fn

    def after_backward(self, model: nn.Module) -> None:
        """Average the probe's gradients over ranks (DDP averages encoder and head)."""
        probe = getattr(model, "probe", None)
        grads = [p.grad for p in probe.parameters() if p.grad is not None] if probe is not None else []
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.world
            i = 0
            for g in grads:
                g.copy_(flat[i:i + g.numel()].view_as(g))
                i += g.numel()

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean over ranks (the logged metrics; the loss is already global)."""
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world


__all__ = ["DataParallel", "GlobalBatchNorm", "GlobalBatchNorm1dNoBias", "SyncBatchNormNoBias",
           "all_gather_stack", "gather_views", "global_batch_norm", "sync_batch_norm", "init", "barrier",
           "any_flag", "shutdown", "pick_device"]
