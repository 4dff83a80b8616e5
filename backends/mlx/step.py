"""The SimCLR model, its canonical weights and the (optionally compiled) training step on MLX.

One training step (Chen et al. 2020, Algorithm 1; identical to the torch backend):

1. x1 = augment(images, p1), x2 = augment(images, p2); x = concat([x1, x2]) (2N views);
2. ONE encoder forward in train mode over the 2N views (BN statistics over all 2N):
   h = f(x) (2N, d); z = g(h); loss = nt_xent(z, cfg.loss.temperature);
3. with a probe and labels: logits = probe(standardise(stop_gradient(h))) (probe_input),
   probe_loss = cross-entropy
   against concat([labels, labels]), probe_acc = top-1; the gradient is that of
   loss + probe_loss (the probe never moves the encoder);
4. gradients by ``nn.value_and_grad``; one LARS step at the given lr over every trainable
   parameter (without labels the probe is left untouched: no gradient, no momentum step);
5. returns {"loss", "probe_loss", "probe_acc"} as floats; without a probe or labels only
   {"loss"} (the two probe keys are absent).

Compilation (``cfg.train.compile``, the project's switch for torch.compile / mx.compile): when
True, steps 2-4 are one ``mx.compile(..., inputs=state, outputs=state)`` function with
state = [model.state, optimizer.state], as in mlx-examples ``cifar/main.py``: parameters, BN
running stats and ``num_batches_tracked`` (frozen arrays of the model state), the LARS momenta
and the learning rate all flow in and out of the compiled graph, so the lr (an array in the
optimizer state, written every step) never causes a retrace. When False (the config default)
the same function runs eagerly; MLX is lazy either way and the results agree to float32
rounding. What compiling costs and saves: benchmarks/README.md, "Notes moved from the code".
Augmentation (step 1) always runs eagerly because its gathers have per-step shapes (see
:mod:`.augment`); it is evaluated with the step (one ``mx.async_eval``).

Precision: "float32" (default), "float64" (CPU stream only; MLX has no float64 on Metal) or
"bfloat16": mixed precision with float32 master weights (as torch's autocast keeps them):
the state, the momenta, the LARS step and the augmentation stay float32; each step runs the
forward and backward on bfloat16 copies of the weights (the vjp of the cast hands float32
gradients to LARS) and the NT-Xent and probe losses in float32. Meant for the Metal GPU (MLX's
CPU runs it too, slowly); loss.chunk's extra forward runs in float32. Conformance stays
float32 / float64.

Host syncs: :meth:`Trainer.train_step_async` hands the step's outputs and state to
``mx.async_eval`` and returns at once; :mod:`simclr_xb.pipeline` reads each loss one step late,
so the host builds step s + 1 while step s computes.
"""
from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map

from simclr_xb.augment import ViewParams
from simclr_xb.config import Config, ModelConfig
from simclr_xb.distributed import active
from simclr_xb.resnet_spec import check_weights, feature_dim, init_weights, model_specs
from simclr_xb.state import MOMENTUM_PREFIX, PROBE_EPS, check_images, check_pair, identity_batches, split_state

from . import convert
from .augment import augment, augment_cropped
from .head import ProjectionHead
from .lars import LARS
from .layers import BUFFERS, BatchNorm, logsumexp
from .ntxent import nt_xent, nt_xent_chunked, nt_xent_chunked_value_and_grad
from .resnet import ResNet


def probe_input(h: mx.array, dist=None) -> mx.array:
    """The online probe's input (reference.probe_input): h (2N, d) standardised per feature
    with the mean and variance of the GLOBAL batch (with ``dist``, the per-rank first and
    second moments are averaged over ranks; ranks hold equal counts). Raw h grows during
    pre-training and, at the LARS learning rate the probe shares, a linear layer on it
    diverged (probe loss in the hundreds, measured on shapes)."""
    m1 = mx.mean(h, axis=0, keepdims=True)
    m2 = mx.mean(mx.square(h), axis=0, keepdims=True)
    if dist is not None:
        m1, m2 = dist.mean((m1, m2))
    var = mx.maximum(m2 - mx.square(m1), 0.0)
    return (h - m1) * mx.rsqrt(var + PROBE_EPS)


class SimCLRModel(nn.Module):
    """Encoder f + projection head g (+ optional online linear probe on h).

    Canonical names: ``encoder.*`` (torchvision ResNet names), ``head.{i}.*``,
    ``probe.weight`` (num_classes, d) / ``probe.bias``.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int | None = None):
        super().__init__()
        self.encoder = ResNet(cfg)
        self.head = ProjectionHead(cfg)
        if num_classes:
            self.probe = nn.Linear(feature_dim(cfg), num_classes)

    def __call__(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """x (N, S, S, 3) -> (h (N, d), z (N, head_out))."""
        h = self.encoder(x)
        return h, self.head(h)


def get_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """Canonical numpy weights and BN buffers of ``model`` (conv weights OIHW)."""
    return convert.get_canonical(model)


def set_weights(model: nn.Module, weights: dict[str, np.ndarray], *, dtype: str = "float32") -> None:
    """Load canonical numpy ``weights`` (OIHW convs) into ``model`` in place (torch's
    ``set_weights(module, weights, ...)``: the same two positional arguments, options by keyword)."""
    convert.set_canonical(model, weights, dtype)


def cross_entropy(logits: mx.array, labels: mx.array) -> mx.array:
    """Mean softmax cross-entropy (the online probe's loss), logits (B, K), labels (B,) int."""
    lse = logsumexp(logits, axis=1)
    return mx.mean(lse - mx.take_along_axis(logits, labels[:, None], axis=1)[:, 0])


def contrastive_loss(z: mx.array, tau: float, dist=None, chunk: int | None = None,
                     reduction: str = "mean") -> mx.array:
    """The SimCLR loss on this process's z (2N, d). With ``dist`` (a
    :class:`.distributed.DataParallel`) it is the loss of the GLOBAL batch: z of every rank
    gathered as [all view 1; all view 2], with a gather whose vjp sums across ranks.
    ``chunk`` selects the transformable chunked form (:func:`.ntxent.nt_xent_chunked`, usable
    under ``mx.grad``); the Trainer's ``loss.chunk`` takes the linear-memory route instead
    (:meth:`Trainer._loss_outside` and ``z_cotangent`` of :func:`simclr_loss`)."""
    if dist is not None:
        z = dist.gather_views(z)  # global negatives
    return nt_xent(z, tau, reduction) if chunk is None else nt_xent_chunked(z, tau, chunk, reduction)


def simclr_loss(model: SimCLRModel, x: mx.array, labels: mx.array | None, tau: float, dist=None,
                z_cotangent: mx.array | None = None, loss_value: mx.array | None = None,
                reduction: str = "mean"):
    """Total loss of one step on the 2N views x -> (total, (loss, probe_loss, probe_acc)).

    ``labels`` (2N,) int or None; without labels probe_loss and probe_acc are 0 and unused.
    ``z_cotangent`` and ``loss_value``: dL/dz of the (global) z and the loss, computed outside
    the transform (:func:`.ntxent.nt_xent_chunked_value_and_grad`); the contrastive term is
    then s - stop_gradient(s) + loss_value with s = sum(z * z_cotangent): its value is
    ``loss_value`` (exactly, s - s = 0; NaN if s is not finite) and its gradient through z is
    ``z_cotangent`` (through the gather's vjp with ``dist``).
    """
    h, z = model(x)
    if z.dtype == mx.bfloat16:  # mixed precision: the losses in float32, as autocast runs them
        h, z = h.astype(mx.float32), z.astype(mx.float32)
    if z_cotangent is None:
        loss = contrastive_loss(z, tau, dist, reduction=reduction)  # loss.reduction
    else:
        s = mx.sum((dist.gather_views(z) if dist is not None else z) * z_cotangent)
        loss = s - mx.stop_gradient(s) + loss_value
    if labels is None:
        zero = mx.zeros((), dtype=loss.dtype)
        return loss, (loss, zero, zero)
    logits = model.probe(probe_input(mx.stop_gradient(h), dist))
    probe_loss = cross_entropy(logits, labels)
    acc = mx.mean((mx.argmax(logits, axis=1) == labels).astype(loss.dtype))
    return loss + probe_loss, (loss, probe_loss, acc)


def _select_inplace(live, before, ok: mx.array) -> None:
    """Set every array leaf of the nested dicts/lists ``live`` (in place, so a compiled step's
    state containers stay the same objects) to ``where(ok, leaf, before's leaf)``; leaves
    that did not exist before are kept."""
    for k, v in (live.items() if isinstance(live, dict) else enumerate(live)):
        if isinstance(before, dict) and k not in before:
            continue
        if isinstance(v, mx.array):
            live[k] = mx.where(ok, v, before[k])
        elif isinstance(v, (dict, list)):
            _select_inplace(v, before[k], ok)


def lars_excluded_tree(specs) -> dict:
    """Tree of LARS exclusion flags in the MLX parameter structure, from the canonical specs."""
    return convert.tree_from_canonical({s.name: s.lars_excluded for s in specs if s.trainable})


def eval_identity_views(model: nn.Module, images_u8: np.ndarray, batch_size: int, out_dim: int,
                        fn) -> np.ndarray:
    """``fn(chunk_u8, identity_params)`` -> (b, out_dim) numpy over the images (uint8 NHWC, checked
    by the caller), ``batch_size`` at a time, with ``model`` in eval mode (train mode after) ->
    (N, out_dim) float32. The one loop behind :meth:`Trainer.encode` and the fine-tuning
    ``predict``."""
    batches = identity_batches(np.asarray(images_u8), batch_size)
    out = []
    model.eval()
    try:
        for chunk, params in batches:
            out.append(fn(chunk, params))
    finally:
        model.train()
    return np.concatenate(out) if out else np.zeros((0, out_dim), dtype=np.float32)


class PendingStep:
    """A step launched by :meth:`Trainer.train_step_async`: its outputs are being computed."""

    def __init__(self, trainer: Trainer, outputs: tuple, with_probe: bool, before):
        self._trainer, self._outputs, self._with_probe, self._before = trainer, outputs, with_probe, before
        self._result = None

    def result(self) -> dict[str, float]:
        """Wait for the step and return {"loss"[, "probe_loss", "probe_acc"]} (or the skip
        record), as :meth:`Trainer.train_step`."""
        if self._result is None:
            loss, probe_loss, acc, *ok = self._outputs
            with mx.stream(self._trainer._dev):
                if ok and not ok[0].item():
                    self._result = {"loss": float("nan"), "skipped": True}
                else:
                    self._result = {"loss": loss.item()}
                    if self._with_probe:
                        self._result.update(probe_loss=probe_loss.item(), probe_acc=acc.item())
            self._before = None  # the step is kept: release the old state
        return self._result

    def discard(self) -> None:
        """Undo the step: every state leaf (weights, BN buffers, momenta, optimizer counters)
        goes back to its value from before it (needs ``keep_before``)."""
        if self._before is None:
            raise RuntimeError("this step cannot be undone: it was launched without keep_before "
                               "or its result was already taken")
        with mx.stream(self._trainer._dev):
            _select_inplace(self._trainer._state, self._before, mx.array(False))
            mx.eval(self._trainer._state)
        self._before = None


class Trainer:
    """The MLX side of :mod:`simclr_xb.train` (interface in :mod:`simclr_xb.backend`).

    Args:
        cfg: the run's config (model, augment, loss, optim, train.precision, train.seed).
        num_classes: classes of the online probe; None (or ``cfg.optim.probe`` False) = no probe.
        device: "cpu", "gpu" or None (GPU when MLX has one; always CPU for float64).
        dist: a :class:`simclr_xb.distributed.DistContext` (None or world 1: one process;
            else data parallel with global negatives, global BN and averaged gradients,
            :mod:`.distributed`; as in the torch Trainer, ``self.dist`` is that context (None for
            one process) and ``self._dp`` its :class:`.distributed.DataParallel`).
        encode_only: no optimizer (evaluation): ``encode`` and the weights only, ``train_step``
            refuses.
    """

    def __init__(self, cfg: Config, num_classes: int | None = None, device: str | None = None,
                 dist=None, *, encode_only: bool = False):
        cfg.validate()
        precision = cfg.train.precision
        # bfloat16: mixed precision as torch's autocast keeps it: float32 master weights, BN
        # buffers, momenta and augmentation; the forward and backward in bfloat16; the losses
        # in float32 (:meth:`_step_fn`, :func:`simclr_loss`)
        self.compute_dtype = mx.bfloat16 if precision == "bfloat16" else None
        if precision == "bfloat16":
            precision = "float32"
        self.cfg = cfg
        self.dtype = precision  # of the state and the views
        self.dist = active(dist)
        self._dp = None
        if self.dist is not None:
            from .distributed import DataParallel
            self._dp = DataParallel(self.dist)
        self._dev = convert.device_for(precision, device)
        self.num_classes = num_classes if (num_classes and cfg.optim.probe) else None
        self.specs = model_specs(cfg.model, self.num_classes)
        with mx.stream(self._dev):
            self.model = SimCLRModel(cfg.model, self.num_classes)
            set_weights(self.model, init_weights(cfg.model, cfg.train.seed, self.num_classes),
                        dtype=self.dtype)
            # encode_only (evaluation, features, the kNN monitor): no LARS and no momenta
            self.optimizer = None if encode_only else LARS.from_config(
                cfg.optim, lars_excluded_tree(self.specs), convert.mx_dtype(self.dtype))
            if self.optimizer is not None:
                self.optimizer.init(self.model.trainable_parameters())
            mx.eval(self.model.state, self.optimizer.state if self.optimizer is not None else [])
        if self._dp is not None:
            self._dp.attach(self.model)  # global BN
        self._state = [self.model.state] + ([self.optimizer.state] if self.optimizer is not None else [])
        self._steps = {}
        self.compiled = bool(cfg.train.compile)
        self.traces = 0  # times the step function body ran in Python (= traces when compiled)

    @property
    def device(self) -> str:
        return convert.device_name(self._dev)

    # ------------------------------------------------------------------ training
    def _step_fn(self, with_probe: bool, skip_nonfinite: bool = False):
        """Loss + gradient + LARS step as one function of (x[, labels]), built once per
        (probe, skip) setting and wrapped in ``mx.compile(inputs=state, outputs=state)`` when
        compiling. With ``skip_nonfinite`` it also returns ``ok`` (loss and every gradient
        finite) and, branch-free, keeps the state from before the step where not ``ok``."""
        key = (with_probe, skip_nonfinite)
        if key in self._steps:
            return self._steps[key]
        model, opt, tau, dist = self.model, self.optimizer, self.cfg.loss.temperature, self._dp

        mixed = self.compute_dtype

        def loss_fn(x, labels=None, z_cotangent=None, loss_value=None):
            if mixed is not None:  # bf16 copies of the float32 masters: their vjp casts back
                model.update(tree_map(lambda p: p.astype(mixed), model.trainable_parameters()))
                x = x.astype(mixed)
            return simclr_loss(model, x, labels, tau, dist, z_cotangent, loss_value, self.cfg.loss.reduction)

        def masters_back(masters):
            if masters is not None:  # the model holds the float32 master weights again
                model.update(masters)

        loss_and_grad = nn.value_and_grad(model, loss_fn)

        state = self._state

        def update(total, grads, before):
            if dist is not None:
                grads = dist.average_gradients(grads)  # all_sum / W
            opt.update(model, grads)
            if before is None:
                return ()
            # Branch-free guard (compiles): every state leaf (parameters, BN buffers, momenta,
            # optimizer counters) becomes where(ok, after, before).
            ok = mx.all(mx.isfinite(total))
            for _, g in tree_flatten(grads):
                ok = ok & mx.all(mx.isfinite(g))
            _select_inplace(state, before, ok)
            return (ok,)

        def step_probe(x, labels, *outside):
            self.traces += 1  # Python runs only while tracing when compiled
            before = tree_map(lambda a: a, state) if skip_nonfinite else None  # same leaves
            masters = model.trainable_parameters() if mixed is not None else None
            (total, aux), grads = loss_and_grad(x, labels, *outside)
            masters_back(masters)
            if dist is not None:
                aux = dist.mean(aux)  # probe metrics of the global batch (the loss is global)
            return (*aux, *update(total, grads, before))

        def step_ssl(x, *outside):
            self.traces += 1
            before = tree_map(lambda a: a, state) if skip_nonfinite else None
            masters = model.trainable_parameters() if mixed is not None else None
            (total, aux), grads = loss_and_grad(x, None, *outside)
            masters_back(masters)
            grads.pop("probe", None)  # no labels: the probe takes no step at all
            return (*aux, *update(total, grads, before))

        fn = step_probe if with_probe else step_ssl
        if self.compiled:
            fn = mx.compile(fn, inputs=self._state, outputs=self._state)
        self._steps[key] = fn
        return fn

    def _loss_outside(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """With ``loss.chunk``: (dL/dz of the global z, loss), taken outside any transform.

        MLX allocates a lazy graph's blocks all at once, so a chunked loss inside
        ``nn.value_and_grad`` peaks at ~1.3 (2N)^2 floats; here z is computed by a train-mode
        forward, the loss and its gradient block by block, eagerly
        (:func:`.ntxent.nt_xent_chunked_value_and_grad`, linear in N), and the step's own
        forward + backward (the vjp of z with this cotangent, :func:`simclr_loss`) follows.
        Costs one more forward. The BN buffers are put back after this forward so that the
        step updates them once, as without chunking."""
        bns = [(m, {k: m[k] for k in BUFFERS}) for _, m in self.model.named_modules()
               if isinstance(m, BatchNorm)]
        try:
            _, z = self.model(x)
            if self._dp is not None:
                z = self._dp.gather_views(z)
            mx.eval(z)
        finally:  # also when the forward fails (e.g. out of memory): the trainer stays usable
            for m, buffers in bns:
                m.update(buffers)
        loss, g = nt_xent_chunked_value_and_grad(z, self.cfg.loss.temperature, self.cfg.loss.chunk,
                                                 self.cfg.loss.reduction)
        return g, loss

    def augment_pair(self, images_u8: np.ndarray, p1: ViewParams, p2: ViewParams) -> mx.array:
        """Both views of the batch in one batched pipeline call: [view1; view2] (2N, S, S, 3)."""
        n = len(images_u8)
        imgs = mx.array(np.asarray(images_u8, dtype=np.uint8))
        imgs = mx.take(imgs, mx.array(np.concatenate([np.arange(n), np.arange(n)])), axis=0)
        return augment(imgs, ViewParams.concat([p1, p2]), self.cfg.augment,
                       convert.mx_dtype(self.dtype))

    def train_step(self, images_u8: np.ndarray, labels: np.ndarray | None, p1: ViewParams,
                   p2: ViewParams, lr: float, *, skip_nonfinite: bool = False,
                   cropped: bool = False, views=None) -> dict[str, float]:
        """One SimCLR step on uint8 images (N, H, W, 3) with the two views' parameters;
        ``labels`` (N,) int or None. Returns {"loss"[, "probe_loss", "probe_acc"]}.

        ``skip_nonfinite``: if the total loss or any gradient is NaN/Inf, the step changes
        nothing (parameters, BN running statistics and num_batches_tracked, momenta and the
        optimizer's counters keep their values from before the forward; branch-free, see
        :meth:`_step_fn`) and the result is {"loss": nan, "skipped": True}.

        ``cropped``: ``images_u8`` are the 2N views (2N, S, S, 3) the data workers already cut
        from the original images, [view 1 of every image; view 2 of every image]
        (simclr_xb.data.StreamLoader); ``p1``/``p2`` supply flip, jitter, grayscale, blur.

        ``views``: the 2N augmented views as :meth:`augment_pair` returns them, used instead of
        augmenting ``images_u8`` (the benchmark's model-only step: fixed views, moving weights)."""
        return self.train_step_async(images_u8, labels, p1, p2, lr, skip_nonfinite=skip_nonfinite,
                                     cropped=cropped, views=views).result()

    def train_step_async(self, images_u8: np.ndarray, labels: np.ndarray | None, p1: ViewParams,
                         p2: ViewParams, lr: float, *, skip_nonfinite: bool = False,
                         cropped: bool = False, keep_before: bool = False, views=None) -> PendingStep:
        """:meth:`train_step` without waiting for it: the step's outputs and the new state are
        handed to ``mx.async_eval`` and a :class:`PendingStep` is returned at once, so the
        host can prepare the next step (sample views, load the batch, build its graph) while
        this one computes. ``PendingStep.result()`` blocks and gives train_step's dict (the
        same numbers: the graph is the same). ``keep_before``: hold the state from before the
        step so that :meth:`PendingStep.discard` can undo it (the loop launches one step ahead
        and undoes it when it stops early)."""
        if self.optimizer is None:
            raise RuntimeError("this Trainer was built with encode_only=True (no optimizer): it encodes, "
                               "it does not train")
        n, H, W = check_pair(images_u8, p1, p2, cropped)
        with_probe = self.num_classes is not None and labels is not None
        if with_probe and np.shape(labels) != (n,):
            raise ValueError(f"labels must have shape ({n},), got {np.shape(labels)}")
        with mx.stream(self._dev):
            before = tree_map(lambda a: a, self._state) if keep_before else None
            if views is not None:
                x = views
            elif cropped:
                x = augment_cropped(np.asarray(images_u8, dtype=np.uint8), ViewParams.concat([p1, p2]),
                                    self.cfg.augment, convert.mx_dtype(self.dtype))
            else:
                x = self.augment_pair(images_u8, p1, p2)
            self.optimizer.learning_rate = lr
            self.model.train()
            y = mx.array(np.concatenate([labels, labels]).astype(np.int32)) if with_probe else None
            step = self._step_fn(with_probe, skip_nonfinite)
            outside = self._loss_outside(x) if self.cfg.loss.chunk is not None else ()
            loss, probe_loss, acc, *ok = step(x, y, *outside) if with_probe else step(x, *outside)
            mx.async_eval(loss, probe_loss, acc, *ok, self._state)
        return PendingStep(self, (loss, probe_loss, acc, *ok), with_probe, before)

    # ------------------------------------------------------------------ evaluation
    def encode(self, images_u8: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Eval-mode h (N, d) float32 of the identity view (whole image resized to S x S)."""
        check_images(images_u8)

        def h_of(chunk, params):
            x = augment(chunk, params, self.cfg.augment, convert.mx_dtype(self.dtype))
            return convert.to_numpy(self.model.encoder(x).astype(mx.float32))

        with mx.stream(self._dev):
            return eval_identity_views(self.model, images_u8, batch_size, feature_dim(self.cfg.model), h_of)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Canonical weights + BN buffers (OIHW convs; float32, or float64 with that precision;
        num_batches_tracked int64) and ``momentum/<name>`` for every trainable parameter."""
        out = get_weights(self.model)
        for path, v in (self.optimizer.momenta() if self.optimizer is not None else {}).items():
            name = convert.to_canonical_name(path)
            out[MOMENTUM_PREFIX + name] = convert.relayout(convert.to_numpy(v), convert.MLX_CONV,
                                                           convert.CANONICAL_CONV)
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Load canonical weights and (optionally) momenta, validated first: ValueError naming
        the entries and shapes, nothing changed on failure. Without any ``momentum/`` entry
        the momenta are reset to zero (e.g. exported weights); with some, all must be present."""
        weights, momenta = split_state(state)
        check_weights(weights, self.specs, "state_dict")
        trainable = [s for s in self.specs if s.trainable]
        if momenta:
            check_weights(momenta, trainable, "state_dict momenta")
        else:
            momenta = {s.name: np.zeros(s.shape) for s in trainable}
        with mx.stream(self._dev):
            set_weights(self.model, weights, dtype=self.dtype)
            if self.optimizer is None:  # encode_only: momenta are not kept
                mx.eval(self._state)
                return
            self.optimizer.set_momenta({
                convert.to_mlx_path(k): convert.to_mx(
                    np.ascontiguousarray(convert.relayout(np.asarray(v), convert.CANONICAL_CONV,
                                                          convert.MLX_CONV)), self.dtype)
                for k, v in momenta.items()})
            mx.eval(self._state)

    @staticmethod
    def with_precision(cfg: Config, dtype: str) -> Config:
        """``cfg`` with ``train.precision = dtype`` (used by the numpy-boundary api)."""
        return replace(cfg, train=replace(cfg.train, precision=dtype))


__all__ = ["SimCLRModel", "Trainer", "PendingStep", "get_weights", "set_weights", "simclr_loss",
           "cross_entropy", "contrastive_loss", "lars_excluded_tree", "MOMENTUM_PREFIX"]
