"""The SimCLR model, canonical weight I/O, and the training step (:class:`Trainer`).

Training step (identical in the MLX backend; Chen et al. 2020, Algorithm 1):

1. x1 = augment(images, p1), x2 = augment(images, p2), x = [x1; x2] (2N, 3, S, S), made in
   one batched augment call on the device.
2. ONE encoder forward in train mode over the 2N views, so BatchNorm statistics are taken over
   all 2N views (as the official code): h = f(x) (2N, d); z = g(h) (2N, head_out).
3. loss = NT-Xent(z, cfg.loss.temperature) with positives (i, i + N) (:mod:`.ntxent`).
4. Online linear probe (official code), when the Trainer has one and labels are given:
   logits = probe(standardise(stop_gradient(h))) (probe_input), probe_loss = cross-entropy
   vs [labels; labels],
   probe_acc = top-1 accuracy over the 2N views; total = loss + probe_loss (the probe's
   gradient never reaches the encoder).
5. backward of total, then one LARS step (:mod:`.lars`) at the given lr over every trainable
   parameter (encoder + head + probe; LARS exclusion from ParamSpec.lars_excluded).
6. Returns {"loss", "probe_loss", "probe_acc"} as finite-or-not Python floats read in ONE
   device sync. Without a probe (or without labels) the dict has only "loss": the two probe
   keys are ABSENT, never NaN.

Precision (cfg.train.precision): "float32"; "float64" (model, views and loss in float64);
"bfloat16" (``torch.autocast`` bf16 around the model forward, on CPU too; master weights,
views, the loss and the probe in float32).

Initial weights are :func:`simclr_xb.resnet_spec.init_weights` (float64 numpy, cast), so both
backends start from identical weights for one seed; momentum buffers start at zero. The
backend draws no random numbers (torch's global RNG is never used).

Data parallel (``Trainer(dist=ctx)`` with ``ctx.world > 1``; :mod:`.distributed`): the
``norm_layer`` factory passed to :class:`SimCLRModel` becomes global BN (SyncBatchNorm on CUDA),
``Trainer.loss_fn`` an NT-Xent over z gathered from every rank (backward summed over ranks),
encoder + head run under DistributedDataParallel and the probe's gradients are averaged by hand.
"""
from __future__ import annotations

import warnings
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from simclr_xb.augment import ViewParams
from simclr_xb.config import Config, ModelConfig
from simclr_xb.distributed import active
from simclr_xb.resnet_spec import ParamSpec, check_weights, feature_dim, init_weights, model_specs
from simclr_xb.state import (
    MOMENTUM_PREFIX,
    PROBE_EPS,
    check_images,
    check_pair,
    identity_batches,
    merge_state,
    split_state,
)

from .augment import augment, augment_cropped
from .convert import device_name, resolve_device, to_tensor, weights_to_numpy, weights_to_torch
from .head import ProjectionHead
from .lars import LARS
from .layers import NormLayer, batch_norm
from .ntxent import nt_xent, nt_xent_chunked
from .resnet import ResNet


def probe_input(h: torch.Tensor, mean_over_ranks=None) -> torch.Tensor:
    """The online probe's input (reference.probe_input): h (2N, d) standardised per feature
    with the mean and variance of the GLOBAL batch (``mean_over_ranks`` averages the per-rank
    first and second moments; ranks hold equal counts). Raw h grows during pre-training and,
    at the LARS learning rate the probe shares, a linear layer on it diverged (probe loss in
    the hundreds, measured on shapes)."""
    moments = torch.cat([h.mean(dim=0, keepdim=True), h.square().mean(dim=0, keepdim=True)])
    if mean_over_ranks is not None:
        moments = mean_over_ranks(moments)
    mean, var = moments[:1], (moments[1:] - moments[:1].square()).clamp_min(0.0)
    return (h - mean) * torch.rsqrt(var + PROBE_EPS)


class SimCLRModel(nn.Module):
    """encoder f (``encoder.*``) + projection head g (``head.*``) + optional online linear
    probe (``probe.weight``, ``probe.bias``). ``state_dict()`` keys are the canonical names.

    forward: x (N, 3, S, S) -> (h (N, feature_dim), z (N, head_out)).
    """

    def __init__(self, cfg: ModelConfig, num_classes: int | None = None,
                 norm_layer: NormLayer = batch_norm):
        super().__init__()
        self.encoder = ResNet(cfg, norm_layer)
        self.head = ProjectionHead(cfg, norm_layer)
        self.probe = nn.Linear(feature_dim(cfg), num_classes) if num_classes else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.head(h)


# --------------------------------------------------------------------------- canonical weights


def get_weights(module: nn.Module, prefix: str = "", float_dtype=np.float32) -> dict[str, np.ndarray]:
    """Canonical numpy weights of ``module`` (its state_dict keys, prefixed by ``prefix``):
    floats as ``float_dtype``, num_batches_tracked as int64. Layouts need no change (OIHW)."""
    return {prefix + k: v for k, v in weights_to_numpy(module.state_dict(), float_dtype).items()}


def set_weights(module: nn.Module, weights: dict[str, np.ndarray], prefix: str = "",
                where: str = "weights") -> None:
    """Copy the canonical entries under ``prefix`` into ``module`` (cast to its dtype, device
    and memory format). Every entry of the module must be present, with its shape; entries
    outside ``prefix`` are ignored. ValueError names the entry and both shapes."""
    own = module.state_dict()
    sub = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    specs = [ParamSpec(prefix + k, tuple(t.shape), "") for k, t in own.items()]
    check_weights({prefix + k: v for k, v in sub.items()}, specs, where)
    module.load_state_dict(weights_to_torch(sub, own), strict=True)


def build_model(cfg: ModelConfig, weights: dict[str, np.ndarray], num_classes: int | None = None,
                device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                norm_layer: NormLayer = batch_norm) -> SimCLRModel:
    """A :class:`SimCLRModel` holding ``weights`` (canonical, e.g. from init_weights).

    Built on the meta device and materialised directly on ``device``: no default init, and
    torch's global RNG is never touched.
    """
    with torch.device("meta"):
        model = SimCLRModel(cfg, num_classes, norm_layer)
    model = model.to_empty(device=device).to(dtype)
    set_weights(model, weights)
    return model


# --------------------------------------------------------------------------- the trainer


def eval_identity_views(model: nn.Module, images_u8, batch_size: int, out_dim: int, fn) -> np.ndarray:
    """``fn(chunk_u8, identity_params)`` -> (b, out_dim) tensor over the images (uint8 NHWC,
    checked by the caller), ``batch_size`` at a time, with ``model`` in eval mode (its mode
    restored after) -> (N, out_dim) float32 numpy. The one loop behind :meth:`Trainer.encode`
    and the fine-tuning ``predict``; the caller sets inference mode and autocast."""
    batches = identity_batches(images_u8, batch_size)
    was = model.training
    model.eval()
    out = []
    try:
        for chunk, params in batches:
            out.append(fn(chunk, params).float().cpu())
    finally:
        model.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, out_dim), dtype=np.float32)


class Trainer:
    """SimCLR pre-training state on one device: model, LARS, and the step (see module doc).

    cfg: the run's :class:`Config`; num_classes: classes of the online probe (None: no probe;
    also none when ``cfg.optim.probe`` is False); device: explicit, else "cuda" if available
    else "cpu"; dist: a :class:`simclr_xb.distributed.DistContext` (None or world 1: one
    process; else data parallel, see the module docstring; device None/"cuda" then means
    cuda:LOCAL_RANK); weights:
    optional canonical start weights instead of ``init_weights(cfg.model, cfg.train.seed)``;
    encode_only: no optimizer (evaluation): ``encode`` and the weights only, ``train_step`` refuses.
    """

    def __init__(self, cfg: Config, num_classes: int | None = None, device: str | None = None,
                 dist=None, *, weights: dict[str, np.ndarray] | None = None, encode_only: bool = False):
        cfg.validate()
        self.cfg = cfg
        # Data parallel (world > 1): join the process group, pick cuda:LOCAL_RANK, global BN.
        self.dist = active(dist)
        self._dp = None
        if self.dist is not None:
            from .distributed import DataParallel
            self._dp = DataParallel(self.dist, device)
            device = self._dp.device
        self._device = resolve_device(device)
        prec = cfg.train.precision
        self.dtype = torch.float64 if prec == "float64" else torch.float32  # master weights
        self.amp_dtype = torch.bfloat16 if prec == "bfloat16" else None
        self.num_classes = int(num_classes) if (num_classes and cfg.optim.probe) else None
        self.specs = model_specs(cfg.model, self.num_classes)
        if weights is None:
            weights = init_weights(cfg.model, cfg.train.seed, self.num_classes)
        else:
            check_weights(weights, self.specs, "Trainer weights")
        self.model = build_model(cfg.model, weights, self.num_classes, self._device, self.dtype,
                                 norm_layer=self._dp.norm_layer if self._dp else batch_norm)
        self.channels_last = bool(cfg.train.channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # What the forward calls: the model, or DDP over its encoder + head.
        self._net = self._dp.wrap(self.model) if self._dp else self.model
        excluded = {s.name: s.lars_excluded for s in self.specs if s.trainable}
        names = {n for n, _ in self.model.named_parameters()}
        if names != set(excluded):
            raise RuntimeError(f"model parameters {sorted(names ^ set(excluded))[:5]} do not match "
                               "the canonical trainable entries")
        o = cfg.optim
        # encode_only (evaluation, features, the kNN monitor): no LARS and no momenta
        self.optimizer = None if encode_only else LARS(
            self.model.named_parameters(), excluded, lr=0.0, momentum=o.momentum,
            weight_decay=o.weight_decay, eta=o.eta, nesterov=o.nesterov)
        # Swap point for distributed training: z (2N_local, d) -> scalar loss.
        red = cfg.loss.reduction  # "mean" (eq. 1) or "tf2" (2x, the official objective.py)
        self.loss_fn = partial(nt_xent, tau=cfg.loss.temperature, reduction=red) if cfg.loss.chunk is None else \
            partial(nt_xent_chunked, tau=cfg.loss.temperature, chunk=cfg.loss.chunk, reduction=red)  # memory O(N)
        if self._dp is not None:  # global negatives: NT-Xent over every rank's z
            self.loss_fn = self._dp.global_loss(self.loss_fn)
        self._view_buf: torch.Tensor | None = None
        self._compiled = None
        if cfg.train.compile:
            try:
                self._compiled = torch.compile(self._net)
            except Exception as e:  # noqa: BLE001 - any failure means: run eagerly
                warnings.warn(f"torch.compile is unavailable ({e!r}); running the model eagerly", stacklevel=2)

    @property
    def device(self) -> str:
        return device_name(self._device)

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        return torch.autocast(self._device.type, dtype=torch.bfloat16, enabled=self.amp_dtype is not None)

    def _views(self, images: torch.Tensor, params: ViewParams, source: np.ndarray | None,
               reuse: bool = False, cropped: bool = False) -> torch.Tensor:
        """Augmented views (n, 3, S, S). ``reuse``: write into a buffer kept across training
        steps (on the CPU a fresh multi-MB tensor costs page faults every step; by the next
        step the previous graph, which saved the views, is gone)."""
        out = None
        if reuse and self._device.type == "cpu":
            shape = (len(params), 3, self.cfg.augment.image_size, self.cfg.augment.image_size)
            if self._view_buf is None or tuple(self._view_buf.shape) != shape:
                self._view_buf = torch.empty(shape, dtype=self.dtype, device=self._device)
            out = self._view_buf
        if cropped:  # views already cut and resized by the data workers
            x = augment_cropped(images, params, self.cfg.augment, self.dtype, out=out)
        else:
            x = augment(images, params, self.cfg.augment, self.dtype, source=source, out=out)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _forward(self, x: torch.Tensor):
        if self._compiled is not None:
            try:
                return self._compiled(x)
            except Exception as e:  # noqa: BLE001 - compilation failed: fall back once, loudly
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {e}); running the model eagerly",
                              stacklevel=2)
                self._compiled = None
        return self._net(x)

    # ------------------------------------------------------------------ the step
    def augment_pair(self, images_u8, p1: ViewParams, p2: ViewParams) -> torch.Tensor:
        """Both views of the batch as the step makes them: [view1; view2] (2N, 3, S, S) on the
        device, a fresh tensor (the step itself writes into a buffer it reuses)."""
        n = len(p1)
        with torch.no_grad():
            return self._views(to_tensor(images_u8, self._device), ViewParams.concat([p1, p2]),
                               np.concatenate([np.arange(n), np.arange(n)]))

    def train_step(self, images_u8, labels, p1: ViewParams, p2: ViewParams, lr: float, *,
                   skip_nonfinite: bool = False, cropped: bool = False, views=None) -> dict[str, float]:
        """One SimCLR step on a batch of N uint8 NHWC images (numpy or tensor) and the two
        views' parameters; ``labels`` (N,) int or None. Returns {"loss"[, "probe_loss",
        "probe_acc"]} (see the module docstring).

        ``skip_nonfinite``: check the total loss and every gradient BEFORE the optimizer step;
        if any is NaN/Inf, take no step, put the BN running statistics and
        num_batches_tracked back to their values before the forward (momenta are untouched)
        and return {"loss": nan, "skipped": True}. Costs one extra device sync per step.

        ``cropped``: ``images_u8`` are the 2N views (2N, S, S, 3) the data workers already cut
        from the original images, [view 1 of every image; view 2 of every image]
        (simclr_xb.data.StreamLoader); ``p1``/``p2`` supply flip, jitter, grayscale, blur.

        ``views``: the 2N augmented views as :meth:`augment_pair` returns them, used instead of
        augmenting ``images_u8`` (the benchmark's model-only step: fixed views, moving weights)."""
        if self.optimizer is None:
            raise RuntimeError("this Trainer was built with encode_only=True (no optimizer): it encodes, "
                               "it does not train")
        n, H, W = check_pair(images_u8, p1, p2, cropped)
        if views is not None:
            x = views
        else:
            images = to_tensor(images_u8, self._device)
            source = np.concatenate([np.arange(n), np.arange(n)])
            with torch.no_grad():
                x = self._views(images, ViewParams.concat([p1, p2]), source, reuse=True, cropped=cropped)
        # BN buffers before the forward (small), to undo a skipped step's statistics update.
        buffers = [b.clone() for b in self.model.buffers()] if skip_nonfinite else None
        self.model.train()
        with self._autocast():
            h, z = self._forward(x)
        loss = self.loss_fn(z.to(self.dtype))
        total, extra = loss, []
        if self.model.probe is not None and labels is not None:
            if np.shape(labels) != (n,):
                raise ValueError(f"labels must have shape ({n},), got {np.shape(labels)}")
            y = to_tensor(labels, self._device).long()
            y2 = torch.cat([y, y])
            logits = self.model.probe(probe_input(h.detach().to(self.dtype),
                                                  self._dp.mean if self._dp else None))
            probe_loss = F.cross_entropy(logits, y2)
            acc = (logits.argmax(dim=1) == y2).to(self.dtype).mean()
            total = loss + probe_loss
            extra = [probe_loss.detach(), acc]
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self._dp is not None:
            self._dp.after_backward(self.model)
        if skip_nonfinite:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            # max |g| per tensor is NaN/Inf iff the tensor holds a NaN/Inf (never overflows).
            peaks = torch.stack([total.detach().to(self.dtype).abs()] +
                                [m.to(self.dtype) for m in torch._foreach_norm(grads, float("inf"))])
            if not bool(torch.isfinite(peaks).all()):  # one sync
                with torch.no_grad():
                    for b, saved in zip(self.model.buffers(), buffers):
                        b.copy_(saved)
                self.optimizer.zero_grad(set_to_none=True)
                return {"loss": float("nan"), "skipped": True}
        self.optimizer.set_lr(lr)
        self.optimizer.step()
        values = torch.stack([loss.detach().to(self.dtype)] + extra)
        if self._dp is not None and extra:
            values = self._dp.mean(values)  # probe metrics of the global batch
        values = values.tolist()  # one sync
        out = {"loss": values[0]}
        if extra:
            out["probe_loss"], out["probe_acc"] = values[1], values[2]
        return out

    # ------------------------------------------------------------------ state
    def _np_float(self):
        return np.float64 if self.dtype == torch.float64 else np.float32

    def state_dict(self) -> dict[str, np.ndarray]:
        """Canonical weights (float32, or float64 under precision float64; num_batches_tracked
        int64) plus ``momentum/<name>`` for every trainable parameter."""
        out = get_weights(self.model, float_dtype=self._np_float())
        if self.optimizer is None:  # encode_only
            return out
        return merge_state(out, weights_to_numpy(self.optimizer.momentum_buffers(), self._np_float()))

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Load canonical weights and (optionally) momenta. Names and shapes are validated
        against the model (ValueError naming the entry and both shapes). Without any
        ``momentum/`` entry the momenta are reset to zero (e.g. loading exported weights);
        with some, all must be present."""
        weights, momenta = split_state(state)
        check_weights(weights, self.specs, "state_dict")
        if momenta:  # named with the prefix in errors, as in the state
            trainable = [ParamSpec(MOMENTUM_PREFIX + s.name, s.shape, s.kind) for s in self.specs if s.trainable]
            check_weights(merge_state({}, momenta), trainable, "state_dict momenta")
        set_weights(self.model, weights, where="state_dict")
        if self.optimizer is None:  # encode_only: momenta are not kept
            return
        bufs = self.optimizer.momentum_buffers()
        if momenta:
            self.optimizer.set_momentum_buffers(weights_to_torch(momenta, bufs))
        else:
            for v in bufs.values():
                v.zero_()

    # ------------------------------------------------------------------ evaluation
    def encode(self, images_u8, batch_size: int = 256) -> np.ndarray:
        """Eval-mode representation h of the identity view (whole image resized to
        cfg.augment.image_size) of uint8 NHWC images -> (N, feature_dim) float32 numpy."""
        check_images(images_u8)

        def h_of(chunk, params):
            return self.model.encoder(self._views(to_tensor(chunk, self._device), params, None))

        with torch.inference_mode(), self._autocast():
            return eval_identity_views(self.model, images_u8, batch_size, feature_dim(self.cfg.model), h_of)
