"""Semi-supervised fine-tuning: SimCLR encoder + a new linear layer trained end to end on a
class-balanced fraction of the labels (Chen et al. 2020, sec. 6 "Semi-supervised learning" and
appendix B.5; the 1% / 10% ImageNet protocol of Zhai et al. 2019).

Recipe (:class:`FinetuneConfig` defaults), and where each choice comes from:

* label subset: class-balanced, drawn by seed (:func:`select_subset`); the paper's ImageNet
  subsets hold ~12.8 (1%) and ~128 (10%) images per class. The indices go into the result.
* preprocessing: random resized crop + horizontal flip only, no colour distortion, no blur
  (B.5: "Only random cropping (with random left-to-right flipping and resizing ...) is used").
  Views come from the core sampler :func:`simclr_xb.augment.sample_view_params` with an
  :class:`~simclr_xb.config.AugmentConfig` whose ``jitter_p = gray_p = blur_p = 0``
  (:func:`finetune_augment`), on a stream of their own (:func:`finetune_rng`).
* optimiser: Nesterov momentum SGD, momentum 0.9, lr = 0.05 x B / 256, no warmup, no
  regularisation at all (weight decay 0) (B.5). The official code fine-tunes with the
  same optimiser switch as pre-training (``--optimizer=momentum`` in its README's fine-tuning
  commands, ``lars`` as the flag default); ``optimizer="lars"`` gives LARS with the
  pre-training exclusions (BN parameters, biases, the classifier) instead. Both run through
  the backends' LARS class: with every parameter excluded (trust ratio 1, no decay) LARS *is*
  momentum SGD (``v = m v + lr g``; Nesterov ``w -= m v + lr g``), so no second optimiser exists.
* schedule: the project's :func:`simclr_xb.schedules.warmup_cosine` with 0 warmup steps
  (cosine decay to 0 over the run: the official code's schedule for every mode), lr written
  every step. Epochs: the paper uses 60 for 1% and 30 for 10% of ImageNet; ``--epochs`` is
  required on the command line.
* classifier: a new ``nn.Linear(feature_dim, num_classes)`` named ``fc`` (torchvision's name,
  so a fine-tuned model's weights load into ``torchvision.models.resnetNN(num_classes=C)``),
  zero-initialised (the official ``--zero_init_logits_layer=True``).
* BatchNorm in train mode while fine-tuning (batch statistics, running stats updated);
  evaluation in eval mode on the identity view (the whole test image resized to the
  pre-training view size; the paper's 256-resize + 224-centre-crop has no meaning at 32 px).
* the baseline: the same architecture from random init (:func:`simclr_xb.resnet_spec.init_weights`
  with the same seed) trained on the same subset with the same recipe.

The backend part is :class:`FinetuneTrainer` in ``simclr_xb.backends.<name>.finetune`` (torch
and MLX, same names): ``train_step(images_u8, labels, params, lr) -> {"loss", "acc"}``,
``predict(images_u8, batch_size) -> logits``, ``state_dict()``. Everything else (subset,
loop, schedule, evaluation, result JSON) lives here and is backend-agnostic.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .augment import sample_view_params
from .config import AugmentConfig, Config, ConfigError, ModelConfig
from .evaluate import topk_accuracy
from .resnet_spec import ParamSpec, check_weights, encoder_specs, feature_dim, init_weights
from .schedules import scale_lr, warmup_cosine

# Stream identifiers (see simclr_xb.augment): the label subset and the fine-tuning views never
# share a stream with pre-training, whatever the seeds.
STREAM_SUBSET = 0x5355
STREAM_FINETUNE_VIEWS = 0x4654

OPTIMIZERS = ("momentum", "lars")
RUNS = ("simclr", "random_init")
FC_PREFIX = "fc."


class FinetuneError(RuntimeError):
    """Fine-tuning diverged (non-finite loss) or its inputs do not fit; the message says where."""


@dataclass(frozen=True)
class FinetuneConfig:
    label_fraction: float = 0.1  # fraction of the training split whose labels are used
    epochs: int = 30  # paper: 60 for 1%, 30 for 10% of ImageNet
    batch_size: int = 256  # capped at the subset size
    base_lr: float = 0.05  # peak lr = base_lr * B / 256 (paper B.5: 0.8 at B = 4096)
    lr_scaling: str = "linear"
    optimizer: str = "momentum"  # "momentum" (Nesterov SGD, paper) | "lars" (official flag default)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0  # paper: no regularisation at all
    eta: float = 1e-3  # LARS trust coefficient (optimizer="lars" only)
    warmup_epochs: float = 0.0  # paper: no warmup
    zero_init_fc: bool = True  # official --zero_init_logits_layer=True
    seed: int = 0  # label subset, batch order, views, random-init weights
    precision: str = "float32"  # "float32" | "bfloat16" (torch autocast) | "float64"
    eval_batch_size: int = 256

    def validate(self) -> FinetuneConfig:
        def check(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"fine-tuning setting {name} = {getattr(self, name)!r} is invalid: "
                                  f"expected {allowed}")
        check(0 < self.label_fraction <= 1, "label_fraction", "a fraction in (0, 1]")
        check(self.epochs >= 1, "epochs", "an integer >= 1")
        check(self.batch_size >= 2, "batch_size", "an integer >= 2 (BatchNorm needs 2 images)")
        check(self.base_lr > 0 and math.isfinite(self.base_lr), "base_lr", "a finite value > 0")
        check(self.lr_scaling in ("linear", "sqrt"), "lr_scaling", "'linear' or 'sqrt'")
        check(self.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}")
        check(0 <= self.momentum < 1, "momentum", "a value in [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", "a value >= 0")
        check(self.eta > 0, "eta", "a value > 0")
        check(self.warmup_epochs >= 0, "warmup_epochs", "a value >= 0")
        check(self.seed >= 0, "seed", "an integer >= 0")
        check(self.precision in ("float32", "bfloat16", "float64"), "precision",
              "'float32', 'bfloat16' or 'float64'")
        check(self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- label subset


def balanced_quota(counts: np.ndarray, n_total: int, rng: np.random.Generator) -> np.ndarray:
    """Images to take per class: ``n_total`` split as evenly as the class sizes allow.

    Every class gets ``n_total // C``; a class with fewer images gives all it has and the
    shortfall is split over the others; the last ``r < C`` images go one each to ``r`` classes
    drawn by ``rng`` (among those with images left). Sum = min(n_total, counts.sum()).
    """
    counts = np.asarray(counts, dtype=np.int64)
    quota = np.zeros_like(counts)
    n_total = int(min(n_total, counts.sum()))
    while True:
        remaining = n_total - int(quota.sum())
        room = counts - quota
        open_ = np.flatnonzero(room > 0)
        if remaining <= 0 or open_.size == 0:
            return quota
        share = remaining // open_.size
        if share == 0:
            quota[rng.choice(open_, size=remaining, replace=False)] += 1
            return quota
        quota[open_] += np.minimum(share, room[open_])


def subset_size(n: int, num_classes: int, fraction: float) -> int:
    """round(fraction * n), at least one image per class, at most n."""
    return int(min(n, max(num_classes, round(fraction * n))))


def select_subset(labels: np.ndarray, fraction: float, seed: int,
                  num_classes: int | None = None) -> np.ndarray:
    """Sorted int64 indices of a class-balanced ``fraction`` of ``labels``, a pure function of
    (labels, fraction, seed): :func:`balanced_quota` per class, then each class's images drawn
    without replacement from ``SeedSequence([seed, STREAM_SUBSET])``."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty (N,) array, got shape {labels.shape}")
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction {fraction} must be in (0, 1]")
    num_classes = int(num_classes or labels.max() + 1)
    counts = np.bincount(labels, minlength=num_classes)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), STREAM_SUBSET])))
    quota = balanced_quota(counts, subset_size(len(labels), num_classes, fraction), rng)
    picked = [rng.choice(np.flatnonzero(labels == c), size=int(q), replace=False)
              for c, q in enumerate(quota) if q > 0]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def check_subset(indices, n: int, where: str = "label subset") -> np.ndarray:
    """Validate given subset indices (unique, in [0, n)) and return them as sorted int64."""
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size < 2 or idx.dtype.kind not in "iu":
        raise ValueError(f"{where} must be a 1-D list of at least 2 integer indices, got "
                         f"{idx.dtype} {idx.shape}")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"{where} has indices in [{idx.min()}, {idx.max()}], outside the "
                         f"training split's [0, {n - 1}]")
    if np.unique(idx).size != idx.size:
        raise ValueError(f"{where} has repeated indices")
    return np.sort(idx.astype(np.int64))


def load_subset(path: str | Path) -> np.ndarray:
    """The ``subset_indices`` of a fine-tuning result JSON (``--json`` / ``--out``), or of an
    ``.npy`` file: reproduces a run's labelled subset exactly."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            a = np.load(path, allow_pickle=False, mmap_mode="r")
            if a.ndim != 1 or a.dtype.kind not in "iu":
                raise ValueError(f"holds {a.dtype} {a.shape}, expected integer indices (N,)")
            return np.asarray(a, dtype=np.int64)
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read a label subset from {path}: {e}") from None
    if not isinstance(data, dict) or "subset_indices" not in data:
        raise ValueError(f"{path} has no 'subset_indices' (expected a simclr-xb finetune result)")
    idx = data["subset_indices"]
    if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) and
                                            0 <= i < 2 ** 63 for i in idx):
        bad = next((i for i in idx if not (isinstance(i, int) and not isinstance(i, bool) and
                                           0 <= i < 2 ** 63)), idx) if isinstance(idx, list) else idx
        raise ValueError(f"{path}: subset_indices must be a list of integers >= 0, found {bad!r}")
    return np.asarray(idx, dtype=np.int64)


# --------------------------------------------------------------------------- model pieces


def finetune_augment(aug: AugmentConfig) -> AugmentConfig:
    """The fine-tuning views: crop + flip of pre-training, colour jitter / grayscale / blur off."""
    out = replace(aug, jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    out.validate()
    return out


def finetune_rng(seed: int, epoch: int, step: int) -> np.random.Generator:
    """The generator of fine-tuning step ``step``'s views."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed), STREAM_FINETUNE_VIEWS, int(epoch), int(step)])))


def classifier_specs(model_cfg: ModelConfig, num_classes: int) -> list[ParamSpec]:
    """Canonical entries of the fine-tuned model: ``encoder.*`` + ``fc.weight`` (C, d), ``fc.bias``."""
    d = feature_dim(model_cfg)
    return encoder_specs(model_cfg) + [ParamSpec("fc.weight", (num_classes, d), "linear.weight"),
                                       ParamSpec("fc.bias", (num_classes,), "linear.bias")]


def excluded_flags(specs: list[ParamSpec], optimizer: str) -> dict[str, bool]:
    """LARS exclusion per trainable entry. "momentum": every parameter excluded (trust 1, no
    decay): plain (Nesterov) momentum SGD. "lars": the pre-training rule (BN parameters and
    biases, by kind) plus the classifier (as the online probe / the official
    ``head_supervised``)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {optimizer!r} is unknown: expected one of {OPTIMIZERS}")
    return {s.name: (optimizer == "momentum" or s.lars_excluded or s.name.startswith(FC_PREFIX))
            for s in specs if s.trainable}


def initial_weights(model_cfg: ModelConfig, num_classes: int, encoder: dict | None, seed: int,
                    zero_init_fc: bool = True) -> dict[str, np.ndarray]:
    """Start weights of a fine-tuning run: the given canonical ``encoder.*`` entries (None: the
    random init of :func:`~simclr_xb.resnet_spec.init_weights` at ``seed``) + the classifier
    (zeros, or N(0, 0.01) as the online probe's init)."""
    specs = classifier_specs(model_cfg, num_classes)
    init = init_weights(model_cfg, seed, num_classes)
    enc_names = [s.name for s in specs if not s.name.startswith(FC_PREFIX)]
    src = init if encoder is None else encoder
    out = {n: np.asarray(src[n]) for n in enc_names if n in src}
    check_weights(out, specs[:-2], "encoder weights")
    if zero_init_fc:
        out["fc.weight"] = np.zeros((num_classes, feature_dim(model_cfg)))
    else:
        out["fc.weight"] = init["probe.weight"]
    out["fc.bias"] = np.zeros(num_classes)
    return out


# --------------------------------------------------------------------------- the loop


def train_classifier(trainer, images: np.ndarray, labels: np.ndarray, aug: AugmentConfig,
                     ft: FinetuneConfig, log=print, label: str = "", num_workers: int = 1,
                     resample: str = "bilinear", resize: str = "auto") -> dict:
    """Fine-tune ``trainer`` (a backend :class:`FinetuneTrainer`) on uint8 ``images`` / ``labels``.

    Step s (epoch e): batch from a seeded BatchLoader (drop_last), views from
    ``sample_view_params(finetune_rng(seed, e, s), finetune_augment(aug), B, hw)``,
    lr = warmup_cosine(s, total, warmup, base_lr scaled to B). Returns the per-epoch mean loss
    and accuracy (on the augmented training views). Raises :class:`FinetuneError` on a
    non-finite loss.
    """
    from .data import BatchLoader

    n = len(labels)
    if n < 2:
        raise FinetuneError(f"fine-tuning needs at least 2 labelled images, got {n}")
    batch = min(ft.batch_size, n)
    view_cfg = finetune_augment(aug)
    stream = getattr(images, "is_stream", False)  # a StreamDataset: views cut by the workers
    if stream:
        from .data import StreamLoader
        from .data.stream import whole_view_params

        def make_params(epoch, s, idx, hw_):
            return [sample_view_params(finetune_rng(ft.seed, epoch, epoch * loader.steps_per_epoch + s),
                                       view_cfg, len(idx), hw_)]
        loader = StreamLoader(images, batch, make_params, aug.image_size, seed=ft.seed, drop_last=True,
                              shuffle=True, num_workers=num_workers, views_per_image=1, resample=resample,
                              resize=resize)
    else:
        loader = BatchLoader(images, labels, batch_size=batch, seed=ft.seed, drop_last=True,
                             shuffle=True, num_workers=0)
    spe = loader.steps_per_epoch
    total = ft.epochs * spe
    warmup = int(round(ft.warmup_epochs * spe))
    peak = scale_lr(ft.base_lr, batch, ft.lr_scaling)
    hw = None if stream else tuple(images.shape[1:3])
    history = []
    t0 = time.perf_counter()
    step = 0
    for epoch in range(ft.epochs):
        losses, accs = [], []
        for b in loader.epoch(epoch):
            if stream:
                x, params = b.views, whole_view_params(b.params[0], aug.image_size)
            else:
                x = b.images
                params = sample_view_params(finetune_rng(ft.seed, epoch, step), view_cfg, len(b.labels), hw)
            lr = warmup_cosine(step, total, warmup, peak)
            m = trainer.train_step(x, b.labels, params, lr)
            if not math.isfinite(m["loss"]):
                raise FinetuneError(f"{label or 'fine-tuning'}: non-finite loss {m['loss']} at step "
                                    f"{step} (epoch {epoch}, lr {lr:.4g}); lower --lr")
            losses.append(m["loss"])
            accs.append(m["acc"])
            step += 1
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "acc": float(np.mean(accs))})
        if log and (epoch + 1 == ft.epochs or (epoch + 1) % max(1, ft.epochs // 5) == 0):
            log(f"  {label} epoch {epoch + 1}/{ft.epochs}: loss {history[-1]['loss']:.4f}, "
                f"train-view acc {history[-1]['acc']:.1f}% ({time.perf_counter() - t0:.0f} s)")
    if stream:
        loader.close()
    return {"history": history, "steps": total, "steps_per_epoch": spe, "batch_size": batch,
            "peak_lr": peak, "train_s": round(time.perf_counter() - t0, 2)}


def score(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1 (and top-5 when there are more than 5 classes) in percent."""
    c = logits.shape[1]
    return {"top1": topk_accuracy(logits, labels, 1),
            "top5": topk_accuracy(logits, labels, 5) if c > 5 else None}


def finetune(cfg: Config, weights: dict | None, ft: FinetuneConfig, data_spec: str | None = None,
             backend: str | None = None, device: str | None = None, root: str | None = None,
             subset: np.ndarray | None = None, runs: tuple[str, ...] = RUNS, log=print,
             keep_weights: bool = False, fallback_backend: str | None = None) -> dict:
    """Fine-tune the SimCLR encoder ``weights`` (canonical; ``encoder.*`` used) and, for
    comparison, the same architecture from random init, on one class-balanced label subset of
    the train split; score both on the test split.

    ``subset``: reuse these train-split indices (e.g. :func:`load_subset` of an earlier result)
    instead of drawing them. ``runs``: which of ("simclr", "random_init") to run. ``backend``
    None: ``fallback_backend`` (e.g. the checkpoint's) if installed, else any. Returns the
    result dict (JSON-serialisable; ``subset_indices`` included). With ``keep_weights`` each
    run's entry also holds its fine-tuned canonical weights under ``"weights"`` (not JSON).
    """
    from .backend import backend_module, get_backend
    from .data import open_dataset
    from .data.stream import predict_split
    from .evaluate import pick_backend
    from .train import stream_resample

    ft.validate()
    log = log or (lambda m: None)
    for r in runs:
        if r not in RUNS:
            raise ValueError(f"unknown run {r!r}: expected a subset of {RUNS}")
    if "simclr" in runs and weights is None:
        raise ValueError("the 'simclr' run needs pre-trained weights")
    t_start = time.perf_counter()
    spec = data_spec or cfg.data.name
    train_ds = open_dataset(spec, "train", root=root or cfg.data.root)
    test_ds = open_dataset(spec, "test", root=root or cfg.data.root)
    stream = getattr(train_ds, "is_stream", False)
    num_classes = len(train_ds.classes)
    if subset is None:
        idx = select_subset(train_ds.labels, ft.label_fraction, ft.seed, num_classes)
        subset_source = "drawn"
    else:
        idx = check_subset(subset, len(train_ds.labels))
        subset_source = "given"
    if stream:  # the labelled subset by index; its views are decoded per batch
        images = train_ds.subset(idx)
        labels = images.labels
    else:
        images, labels = train_ds.images[idx], train_ds.labels[idx]
    per_class = np.bincount(labels, minlength=num_classes)
    backend = pick_backend(backend, fallback_backend)
    api = get_backend(backend)
    ft_mod = backend_module(backend, "finetune")
    log(f"fine-tuning on {len(idx)} labelled images of {spec} ({100 * len(idx) / len(train_ds.labels):.2f}% "
        f"of {len(train_ds.labels)}; per class {per_class.min()}-{per_class.max()}), "
        f"{ft.epochs} epochs, {ft.optimizer} optimizer, {backend} backend")
    out: dict = {
        "format": "simclr-xb-finetune", "data": spec, "num_classes": num_classes,
        "classes": list(train_ds.classes), "n_train": int(len(train_ds.labels)),
        "n_test": int(len(test_ds.labels)), "label_fraction": ft.label_fraction,
        "n_labeled": int(len(idx)), "per_class": per_class.tolist(), "subset_source": subset_source,
        "subset_seed": ft.seed, "recipe": ft.to_dict(),
        "augment": asdict(finetune_augment(cfg.augment)), "model": asdict(cfg.model),
        "backend": backend, "versions": {"backend": api.version()}, "runs": {},
    }
    for run in runs:
        t0 = time.perf_counter()
        start = initial_weights(cfg.model, num_classes, weights if run == "simclr" else None,
                                ft.seed, ft.zero_init_fc)
        trainer = ft_mod.FinetuneTrainer(cfg.model, cfg.augment, num_classes, start, ft, device=device)
        label = "SimCLR" if run == "simclr" else "random init"
        res = train_classifier(trainer, images, labels, cfg.augment, ft, log=log, label=label,
                               num_workers=cfg.data.num_workers, resample=stream_resample(cfg),
                               resize=cfg.data.resize)
        if stream:
            def pred(ds, trainer=trainer):
                return predict_split(trainer.predict, ds, ft.eval_batch_size, cfg.augment.image_size,
                                     cfg.data.num_workers, stream_resample(cfg), cfg.data.resize)
            test = score(*pred(test_ds))
            train_acc = score(*pred(images))["top1"]
        else:
            test = score(trainer.predict(test_ds.images, ft.eval_batch_size), test_ds.labels)
            train_acc = score(trainer.predict(images, ft.eval_batch_size), labels)["top1"]
        res.update(test, train_top1=train_acc, device=trainer.device,
                   wall_s=round(time.perf_counter() - t0, 2))
        if keep_weights:
            res["weights"] = trainer.state_dict()
        out["runs"][run] = res
        t5 = f", top-5 {test['top5']:.2f}%" if test["top5"] is not None else ""
        log(f"{label}: test top-1 {test['top1']:.2f}%{t5} (train subset {train_acc:.1f}%, "
            f"{res['wall_s']:.0f} s)")
    if "simclr" in out["runs"] and "random_init" in out["runs"]:
        out["gain_top1"] = out["runs"]["simclr"]["top1"] - out["runs"]["random_init"]["top1"]
    out["subset_indices"] = idx.tolist()
    out["wall_s"] = round(time.perf_counter() - t_start, 2)
    return out


def format_table(result: dict) -> str:
    """The comparison as a small text table."""
    rows = [f"{'encoder init':14s} {'top-1':>7s} {'top-5':>7s} {'train acc':>9s} {'wall s':>7s}"]
    names = {"simclr": "SimCLR", "random_init": "random init"}
    for run, r in result["runs"].items():
        t5 = f"{r['top5']:7.2f}" if r.get("top5") is not None else f"{'-':>7s}"
        rows.append(f"{names[run]:14s} {r['top1']:7.2f} {t5} {r['train_top1']:9.1f} {r['wall_s']:7.0f}")
    head = (f"{result['data']}: {result['n_labeled']} labels ({100 * result['label_fraction']:g}%), "
            f"{result['recipe']['epochs']} epochs")
    return "\n".join([head] + rows)


def save_finetuned(path: str | Path, weights: dict[str, np.ndarray], cfg: Config, run: str,
                   checkpoint: str | None = None) -> Path:
    """A fine-tuned model as npz with torchvision names (``conv1.weight``, ..., ``fc.weight``):
    a full ``torchvision.models.resnetNN(num_classes=C)`` state for ImageNet-stem width-1
    models; :func:`simclr_xb.export.load_exported` reads it back (``encoder.*`` + ``fc.*``)."""
    from .export import ENCODER_PREFIX, metadata, write_npz
    arrays = {(k[len(ENCODER_PREFIX):] if k.startswith(ENCODER_PREFIX) else k):
              np.asarray(v, dtype=np.int64 if k.endswith("num_batches_tracked") else np.float32)
              for k, v in weights.items()}
    meta = dict(metadata(cfg, checkpoint), format="simclr-xb-finetuned", run=run)
    return write_npz(path, arrays, meta)


def result_json(result: dict) -> str:
    """The result without in-memory weights, as JSON."""
    clean = dict(result)
    clean["runs"] = {k: {kk: vv for kk, vv in v.items() if kk != "weights"} for k, v in result["runs"].items()}
    return json.dumps(clean, indent=1)
