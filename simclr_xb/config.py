"""Typed, validated configuration with the paper's defaults and named presets.

A :class:`Config` is a frozen tree of dataclasses (model, augment, loss, optim, train, data).
It is built from a preset, then from a TOML/JSON file, then from ``section.field=value``
overrides, and every step validates: a bad value raises :class:`ConfigError` naming the
field and the allowed range. The config is saved (as JSON) inside every checkpoint.

Sources for the defaults: Chen et al. 2020 (SimCLR) and the official tf2 code; see
SIMCLR-FACTS.md. Where the two differ the docstring of the field says which one we follow.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

ARCHS = ("resnet18", "resnet34", "resnet50")
LR_SCALINGS = ("linear", "sqrt")
PRECISIONS = ("float32", "float64", "bfloat16")
# augment.recipe: "torchvision" (RandomResizedCrop, bilinear, grey-blend contrast and saturation,
# reflect-padded blur) or "tf2" (the official google-research/simclr tf2 data_util.py ops).
RECIPES = ("torchvision", "tf2")
# loss.reduction: "mean" = paper eq. 1 (mean over the 2N ordered pairs); "tf2" = the official
# objective.py, the two directions summed and averaged over N: exactly 2x eq. 1.
LOSS_REDUCTIONS = ("mean", "tf2")
# model.init: "kaiming" (torchvision: normal, fan_out, gain sqrt 2) or "tf" (the official
# resnet.py: tf.keras VarianceScaling(), i.e. scale 1, fan_in, normal truncated at 2 sigma).
INITS = ("kaiming", "tf")


def loss_scale(reduction: str) -> float:
    """The factor a loss.reduction puts on eq. 1 (mean over 2N): 1 for "mean", 2 for "tf2"."""
    if reduction not in LOSS_REDUCTIONS:
        raise ConfigError(f"config field loss.reduction = {reduction!r} is invalid: expected one of "
                          f"{LOSS_REDUCTIONS}")
    return 2.0 if reduction == "tf2" else 1.0


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range. The message names the field."""


def _check(cond: bool, name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"config field {name} = {value!r} is invalid: expected {allowed}")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet50"
    # Width multiplier of the paper (1x, 2x, 4x); the first stage has round(64 * width)
    # channels, so 0.25 gives the narrow "width-16" ResNet used by the tiny preset.
    width: float = 1.0
    # CIFAR variant (paper appendix B.9): first conv 3x3 stride 1 and no max-pool.
    cifar_stem: bool = False
    # Zero-init the last BN gamma of each residual block (Goyal et al. 2017); the official
    # tf2 resnet.py always does (BatchNormRelu(init_zero=True) at the end of every block).
    zero_init_residual: bool = False
    # Conv init: "kaiming" (torchvision) or "tf" (official: VarianceScaling fan_in, truncated
    # normal); see INITS. Head and probe weights are N(0, 0.01) in both (official model.py).
    init: str = "kaiming"
    # Projection head g: number of linear layers, hidden width (None = the encoder's feature
    # width, as in the official code) and output width (128 in the paper).
    head_layers: int = 2
    head_hidden: int | None = None
    head_out: int = 128
    # Official code: BatchNorm after every head layer, no linear bias, and no BN beta on the
    # last layer. False gives the paper's plain MLP with biases.
    head_bn: bool = True
    # BatchNorm (PyTorch convention: new = (1 - momentum) * old + momentum * batch).
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5

    def validate(self) -> None:
        _check(self.arch in ARCHS, "model.arch", self.arch, f"one of {ARCHS}")
        _check(self.init in INITS, "model.init", self.init, f"one of {INITS}")
        _check(self.width > 0, "model.width", self.width, "a width multiplier > 0")
        base = 64 * self.width
        _check(abs(base - round(base)) < 1e-9 and round(base) >= 1, "model.width", self.width,
               "a multiplier with 64 * width a positive integer (e.g. 0.25, 0.5, 1, 2, 4)")
        _check(self.head_layers >= 1, "model.head_layers", self.head_layers, "an integer >= 1")
        _check(self.head_hidden is None or self.head_hidden >= 1, "model.head_hidden",
               self.head_hidden, "None or an integer >= 1")
        _check(self.head_out >= 1, "model.head_out", self.head_out, "an integer >= 1")
        _check(0 < self.bn_momentum <= 1, "model.bn_momentum", self.bn_momentum, "a value in (0, 1]")
        _check(self.bn_eps > 0, "model.bn_eps", self.bn_eps, "a value > 0")

    @property
    def base_width(self) -> int:
        return int(round(64 * self.width))


@dataclass(frozen=True)
class AugmentConfig:
    # Output side of each view (square). The encoder sees image_size x image_size.
    image_size: int = 224
    # Which implementation of the ops (see RECIPES): "torchvision" = RandomResizedCrop
    # sampler, bilinear resize, contrast/saturation blended with grey, reflect-padded blur,
    # grey 0.299/0.587/0.114; "tf2" = the official tf2 code: sample_distorted_bounding_box
    # sampler (aspect UNIFORM in crop_ratio, crop_tries attempts, crop_min_covered, fallback
    # the whole image), TF bicubic resize, per-channel-mean contrast, HSV saturation,
    # zero ('SAME') padded blur, grey 0.2989/0.5870/0.1140.
    recipe: str = "torchvision"
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the source image
    # aspect ratio w/h: log-uniform (torchvision) or uniform (tf2) in this range
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_tries: int = 10  # torchvision 10; the official tf2 code passes max_attempts=100
    # tf2 only: the crop must cover at least this fraction of the image (min_object_covered;
    # with area_range (0.08, 1) it raises the smallest area to 0.1). Ignored by torchvision.
    crop_min_covered: float = 0.1
    flip_p: float = 0.5
    jitter_p: float = 0.8
    strength: float = 1.0  # colour-distortion strength s (1.0 ImageNet, 0.5 CIFAR-10)
    gray_p: float = 0.2
    blur_p: float = 0.5  # 0 turns blur off (the paper leaves it out for CIFAR-10)
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def validate(self) -> None:
        _check(self.image_size >= 8, "augment.image_size", self.image_size, "an integer >= 8")
        lo, hi = self.crop_scale
        _check(0 < lo <= hi <= 1, "augment.crop_scale", self.crop_scale, "0 < lo <= hi <= 1")
        lo, hi = self.crop_ratio
        _check(0 < lo <= hi, "augment.crop_ratio", self.crop_ratio, "0 < lo <= hi")
        _check(self.crop_tries >= 1, "augment.crop_tries", self.crop_tries, "an integer >= 1")
        _check(self.recipe in RECIPES, "augment.recipe", self.recipe, f"one of {RECIPES}")
        _check(0 <= self.crop_min_covered <= 1, "augment.crop_min_covered", self.crop_min_covered,
               "a fraction in [0, 1]")
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p"):
            v = getattr(self, name)
            _check(0 <= v <= 1, f"augment.{name}", v, "a probability in [0, 1]")
        _check(0 <= self.strength <= 1.25, "augment.strength", self.strength,
               "a value in [0, 1.25] (brightness/contrast/saturation factors 1 +- 0.8 s stay >= 0)")
        lo, hi = self.blur_sigma
        _check(0 < lo <= hi, "augment.blur_sigma", self.blur_sigma, "0 < lo <= hi")

    @property
    def blur_kernel_size(self) -> int:
        """Odd kernel side of about 10% of the image side (official code: 2 * (size // 20) + 1)."""
        return 2 * ((self.image_size // 10) // 2) + 1


@dataclass(frozen=True)
class LossConfig:
    temperature: float = 0.1  # tau: 0.1 at batch 4096 on ImageNet, 0.5 for CIFAR-10
    # None: the exact NT-Xent with its (2N, 2N) similarity matrix. An integer: the same loss
    # and gradient computed `chunk` rows at a time (nt_xent_chunked), so the loss's memory
    # grows linearly in N instead of quadratically (for large batches; slightly slower; on MLX
    # one extra forward per step, as the loss gradient is taken outside the compiled step).
    chunk: int | None = None
    # "mean" (eq. 1, mean over the 2N ordered pairs) or "tf2" (official objective.py: both
    # directions summed, averaged over N = 2x eq. 1). Under LARS the trust ratio cancels the
    # scale for adapted weights, but the excluded BN parameters step lr * g and the weight
    # decay competes with g: the official lr and weight_decay assume "tf2".
    reduction: str = "mean"

    def validate(self) -> None:
        _check(self.reduction in LOSS_REDUCTIONS, "loss.reduction", self.reduction,
               f"one of {LOSS_REDUCTIONS}")
        _check(self.temperature > 0 and math.isfinite(self.temperature), "loss.temperature",
               self.temperature, "a finite value > 0")
        _check(self.chunk is None or (not isinstance(self.chunk, bool) and isinstance(self.chunk, int)
                                      and self.chunk >= 1),
               "loss.chunk", self.chunk, "None (exact NT-Xent) or an integer >= 1 (rows per block)")


@dataclass(frozen=True)
class OptimConfig:
    # base_lr None means the paper's base for the scaling rule: 0.3 (linear: 0.3 * B / 256)
    # or 0.075 (sqrt: 0.075 * sqrt(B)).
    base_lr: float | None = None
    lr_scaling: str = "linear"
    momentum: float = 0.9
    weight_decay: float = 1e-6
    eta: float = 1e-3  # LARS trust coefficient
    nesterov: bool = False
    warmup_epochs: float = 10.0
    # Train an online linear probe on detached h during pre-training (official code); it is
    # excluded from weight decay and trust-ratio adaptation, so it is plain momentum SGD.
    probe: bool = True

    def validate(self) -> None:
        _check(self.base_lr is None or self.base_lr > 0, "optim.base_lr", self.base_lr, "None or > 0")
        _check(self.lr_scaling in LR_SCALINGS, "optim.lr_scaling", self.lr_scaling, f"one of {LR_SCALINGS}")
        _check(0 <= self.momentum < 1, "optim.momentum", self.momentum, "a value in [0, 1)")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "a value >= 0")
        _check(self.eta > 0, "optim.eta", self.eta, "a value > 0")
        _check(self.warmup_epochs >= 0, "optim.warmup_epochs", self.warmup_epochs, "a value >= 0")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 4096  # global batch N (2N views per step)
    epochs: int = 100
    seed: int = 0
    # float32 or float64 (conformance), bfloat16 (autocast training mode, torch).
    precision: str = "float32"
    channels_last: bool = True  # torch only; ignored elsewhere
    compile: bool = False  # torch.compile / mx.compile where supported
    checkpoint_every: int = 200  # steps between checkpoints (and one at the end)
    keep_last: int = 2  # rolling checkpoints kept beside last.h5
    max_steps: int | None = None  # stop early after this many steps (for smoke runs)
    # What to do on a non-finite loss: "stop" (default) or "skip" the step, counting skips.
    on_nonfinite: str = "stop"
    max_skips: int = 10
    # A new run whose weights start from this checkpoint file or run folder (CLI --init-from);
    # its own config and schedule apply (e.g. more epochs). None: the model's own initialisation.
    init_from: str | None = None
    # kNN monitor (simclr_xb/monitor.py): every monitor_every epochs (0 = off) and at the end,
    # the weighted kNN of `simclr-xb eval` scored on monitor_eval images of the test split with
    # a bank of monitor_train training images (fixed seeded subsets; all when fewer). Rank 0 only.
    monitor_every: int = 1
    monitor_train: int = 2000
    monitor_eval: int = 2000
    tensorboard: bool = False  # also write TensorBoard event files beside metrics.jsonl
    progress_every_s: float = 30.0  # not a terminal: a progress line every N s and at epoch ends

    def validate(self) -> None:
        _check(self.batch_size >= 2, "train.batch_size", self.batch_size, "an integer >= 2")
        _check(self.epochs >= 1, "train.epochs", self.epochs, "an integer >= 1")
        _check(self.seed >= 0, "train.seed", self.seed, "an integer >= 0")
        _check(self.precision in PRECISIONS, "train.precision", self.precision, f"one of {PRECISIONS}")
        _check(self.checkpoint_every >= 1, "train.checkpoint_every", self.checkpoint_every, "an integer >= 1")
        _check(self.keep_last >= 0, "train.keep_last", self.keep_last, "an integer >= 0")
        _check(self.max_steps is None or self.max_steps >= 1, "train.max_steps", self.max_steps,
               "None or an integer >= 1")
        _check(self.on_nonfinite in ("stop", "skip"), "train.on_nonfinite", self.on_nonfinite,
               "'stop' or 'skip'")
        _check(self.max_skips >= 0, "train.max_skips", self.max_skips, "an integer >= 0")
        _check(self.monitor_every >= 0, "train.monitor_every", self.monitor_every,
               "an integer >= 0 (epochs between kNN checks; 0 turns the monitor off)")
        _check(self.monitor_train >= 1, "train.monitor_train", self.monitor_train, "an integer >= 1")
        _check(self.monitor_eval >= 1, "train.monitor_eval", self.monitor_eval, "an integer >= 1")
        _check(self.progress_every_s > 0 and math.isfinite(self.progress_every_s),
               "train.progress_every_s", self.progress_every_s, "a finite number of seconds > 0")


@dataclass(frozen=True)
class DataConfig:
    # Dataset spec: shapes, fashion-mnist, mnist, cifar10, cifar100, folder:PATH, hdf5:PATH.
    name: str = "shapes"
    root: str | None = None  # folder to look in (default: $SIMCLR_XB_DATA, ~/.cache/simclr_xb, ...)
    num_workers: int = 1  # prefetch threads (in-memory data); decode processes (folder:, wds:)
    skip_bad_images: bool = False
    # The data workers' crop + antialiased resize (folder:, wds:): auto = torch's uint8 kernel
    # on x86-64 when torch is installed, else pillow (simclr_xb.data.decode.resolve_resize).
    resize: str = "auto"

    def validate(self) -> None:
        _check(bool(self.name), "data.name", self.name, "a dataset name")
        _check(self.resize in ("auto", "pillow", "torch"), "data.resize", self.resize, "auto, pillow or torch")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "an integer >= 0")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> Config:
        for f in fields(self):
            sub = getattr(self, f.name)
            check_limits(f.name, sub, finite_only=True)  # no inf/nan reaches the rules below
            try:
                sub.validate()  # the section's own rules and messages
            except OverflowError:  # a huge finite value; the limits below name it
                pass
            check_limits(f.name, sub)  # then every field's range (also fields added later)
        return self

    # --- conversions -------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: Config | None = None) -> Config:
        """Apply a nested dict ``{section: {field: value}}`` on top of ``base`` (default: defaults)."""
        cfg = base if base is not None else cls()
        for section, values in d.items():
            if section not in _SECTIONS:
                raise ConfigError(f"unknown config section {section!r}: expected one of {sorted(_SECTIONS)}")
            if not isinstance(values, dict):
                raise ConfigError(f"config section {section!r} must be a table of fields, got {values!r}")
            for key, value in values.items():
                cfg = cfg.with_value(f"{section}.{key}", value)
        return cfg.validate()

    @classmethod
    def from_json(cls, text: str) -> Config:
        """A config as :meth:`to_json` wrote it (checkpoints, config.json): fields removed since
        (:data:`REMOVED_FIELDS`) are dropped, so an older run still loads."""
        d = json.loads(text)
        for dotted in REMOVED_FIELDS:
            section, _, key = dotted.partition(".")
            if isinstance(d.get(section), dict):
                d[section].pop(key, None)
        return cls.from_dict(d)

    def with_value(self, dotted: str, value: Any) -> Config:
        """Return a copy with ``section.field`` set to ``value`` (coerced to the field's type)."""
        section, _, key = dotted.partition(".")
        if section not in _SECTIONS or not key:
            raise ConfigError(f"unknown config field {dotted!r}: expected section.field with section in "
                              f"{sorted(_SECTIONS)}")
        sub = getattr(self, section)
        hints = get_type_hints(type(sub))
        if dotted in REMOVED_FIELDS:
            raise ConfigError(f"config field {dotted!r} was removed: {REMOVED_FIELDS[dotted]}")
        if key not in hints:
            raise ConfigError(f"unknown config field {dotted!r}: {section} has fields {sorted(hints)}")
        coerced = _coerce(dotted, value, hints[key])
        return replace(self, **{section: replace(sub, **{key: coerced})})

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> Config:
        """Apply CLI overrides of the form ``section.field=value`` (value parsed as JSON if it can be)."""
        cfg = self
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like section.field=value")
            k, v = item.split("=", 1)
            cfg = cfg.with_value(k.strip(), _parse_scalar(v.strip()))
        return cfg.validate()


_SECTIONS = {f.name for f in fields(Config)}

# Fields that no longer exist: setting one (--set, a config file) is an error naming what
# replaced it; a checkpoint's stored config drops them (Config.from_json).
REMOVED_FIELDS = {
    "train.log_every": "it gated nothing: off a terminal a progress line comes every "
                       "train.progress_every_s seconds (default 30), at each epoch end and at the last "
                       "step, and metrics.jsonl records every step; set train.progress_every_s instead "
                       "(e.g. --set train.progress_every_s=10)",
}

# --- limits checked for EVERY field (also fields added later), before the sections' own rules --
# A float (also each float of a tuple) must be finite; a float or int must lie in its LIMITS
# range, inclusive (a field not listed: DEFAULT_FLOAT_LIMIT / DEFAULT_INT_LIMIT in magnitude);
# a str holds at most MAX_STR characters and no NUL or newline. A new numeric field should get
# its own meaningful range here; until then the defaults still refuse inf, nan and 1e30.
# The sections' validate() add the open bounds and relations (bn_eps > 0, lo <= hi, ...).
DEFAULT_FLOAT_LIMIT = 1e9
DEFAULT_INT_LIMIT = 2 ** 53  # exact in JSON and float64
MAX_STR = 4096
NONFINITE_OK: frozenset[str] = frozenset()  # float fields where inf/nan mean something (none yet)
LIMITS: dict[str, tuple[float, float]] = {
    "model.width": (1 / 64, 16),
    "model.head_layers": (1, 64),
    "model.head_hidden": (1, 65536),
    "model.head_out": (1, 65536),
    "model.bn_momentum": (0, 1),
    "model.bn_eps": (0, 0.1),  # an epsilon: small next to a variance (1e-5 in the paper's code)
    "augment.image_size": (8, 8192),
    "augment.crop_scale": (0, 1),
    "augment.crop_ratio": (1e-3, 1e3),
    "augment.crop_tries": (1, 1000),
    "augment.blur_sigma": (0, 1000),
    "augment.crop_min_covered": (0, 1),
    "augment.flip_p": (0, 1),
    "augment.jitter_p": (0, 1),
    "augment.gray_p": (0, 1),
    "augment.blur_p": (0, 1),
    "augment.strength": (0, 1.25),
    "loss.temperature": (1e-4, 1e4),
    "loss.chunk": (1, 2 ** 31 - 1),
    "optim.base_lr": (0, 1e4),
    "optim.momentum": (0, 1),
    "optim.weight_decay": (0, 1),
    "optim.eta": (0, 1e3),
    "optim.warmup_epochs": (0, 1e6),
    "train.batch_size": (2, 2 ** 24),
    "train.epochs": (1, 10 ** 6),
    "train.seed": (0, 2 ** 63 - 1),  # stored as int64 in checkpoints, fed to SeedSequence
    "train.checkpoint_every": (1, 2 ** 62),
    "train.keep_last": (0, 10 ** 6),
    "train.max_steps": (1, 2 ** 62),
    "train.max_skips": (0, 2 ** 62),
    "train.monitor_every": (0, 10 ** 6),
    "train.monitor_train": (1, 10 ** 8),
    "train.monitor_eval": (1, 10 ** 8),
    "train.progress_every_s": (1e-3, 10 ** 6),
    "data.num_workers": (0, 1024),
}


def _limit_error(name: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"config field {name} = {value!r} is invalid: expected {why}")


def _check_number(name: str, v: Any, shown: Any, finite_only: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return
    if isinstance(v, float) and not math.isfinite(v):
        if name in NONFINITE_OK:
            return
        lo, hi = LIMITS.get(name, (-DEFAULT_FLOAT_LIMIT, DEFAULT_FLOAT_LIMIT))
        raise _limit_error(name, shown, f"a finite number in [{lo:g}, {hi:g}]")
    if finite_only:
        return
    if name in LIMITS:
        lo, hi = LIMITS[name]
    else:
        m = DEFAULT_FLOAT_LIMIT if isinstance(v, float) else DEFAULT_INT_LIMIT
        lo, hi = -m, m
    if not lo <= v <= hi:
        fmt = (lambda x: f"{x:g}" if isinstance(x, float) else str(x))
        raise _limit_error(name, shown, f"{'a number' if isinstance(v, float) else 'an integer'} in "
                                        f"[{fmt(lo)}, {fmt(hi)}]")


def check_limits(section: str, obj: Any, finite_only: bool = False) -> None:
    """Raise ConfigError naming the field unless every field of the section ``obj`` is within
    the limits above (generic over the dataclass's fields, so new fields are covered);
    ``finite_only``: only refuse inf/nan (and bad text)."""
    for f in fields(obj):
        name, v = f"{section}.{f.name}", getattr(obj, f.name)
        if isinstance(v, (tuple, list)):
            for x in v:
                _check_number(name, x, v, finite_only)
        elif isinstance(v, str):
            if len(v) > MAX_STR or any(c in v for c in "\x00\n\r"):
                raise _limit_error(name, v if len(v) <= 80 else v[:80] + "...",
                                   f"a text of at most {MAX_STR} characters without NUL or newline")
        else:
            _check_number(name, v, v, finite_only)


def _parse_scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, an int of > 4300 digits, deep nesting
        return text


def _coerce(name: str, value: Any, hint: Any) -> Any:  # noqa: C901 - one branch per field type, each a line
    """Coerce ``value`` to the annotated type, with an error that names the field."""
    hint_s = str(hint)
    optional = "None" in hint_s
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config field {name} may not be None")
    try:
        if hint_s.startswith("tuple"):
            if isinstance(value, str) and value.count(",") == 1:  # CLI: crop_scale=0.2,1.0
                value = [float(v) for v in value.split(",")]
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise TypeError
            return (float(value[0]), float(value[1]))
        if "bool" in hint_s:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise TypeError
        if "int" in hint_s and "float" not in hint_s:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if "float" in hint_s:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if "str" in hint_s:
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError, OverflowError):
        shown = hint.__name__ if isinstance(hint, type) else hint_s.replace("NoneType", "None")
        text = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ConfigError(f"config field {name} = {text} has the wrong type: expected {shown}") from None
    return value


# --- presets ---------------------------------------------------------------------------
def _official_model(arch: str) -> ModelConfig:
    """The official tf2 model: zero-init last BN gamma of every block (resnet.py), TF's
    VarianceScaling conv init, a 3-layer head with BN (run.py: num_proj_layers 3,
    proj_out_dim 128), BN decay 0.9 (= momentum 0.1 here), eps 1e-5. cifar_stem follows
    model.py's ``image_size <= 32``."""
    return ModelConfig(arch=arch, width=1.0, zero_init_residual=True, init="tf", head_layers=3,
                       head_hidden=None, head_out=128, head_bn=True, bn_momentum=0.1, bn_eps=1e-5)


def _imagenet() -> Config:
    """google-research/simclr tf2/README.md's ImageNet pre-training command (batch 4096,
    100 epochs, tau 0.1, lr 0.075 with sqrt scaling = 0.3 linear at 4096, weight decay 1e-4),
    run.py's defaults for every flag it leaves out, and data_util.py's augmentation."""
    return Config(
        model=replace(_official_model("resnet50"), cifar_stem=False),
        augment=AugmentConfig(image_size=224, recipe="tf2", crop_tries=100, strength=1.0, blur_p=0.5),
        loss=LossConfig(temperature=0.1, reduction="tf2"),
        optim=OptimConfig(base_lr=0.075, lr_scaling="sqrt", weight_decay=1e-4, warmup_epochs=10),
        train=TrainConfig(batch_size=4096, epochs=100),
        # An ImageNet folder (train/<class>/*, val/<class>/*): ./imagenet, else
        # $SIMCLR_XB_DATA/imagenet or ~/.cache/simclr_xb/imagenet; streamed by index.
        data=DataConfig(name="folder:imagenet", num_workers=8),
    )


def _cifar() -> Config:
    """google-research/simclr tf2/README.md's CIFAR-10 command: ResNet-18, batch 512,
    1000 epochs, lr 1.0 (linear scaling: 2.0 at 512), weight decay 1e-4, tau 0.5, colour
    strength 0.5, no blur; run.py's defaults otherwise (10 warmup epochs, LARS, 3-layer head)."""
    return Config(
        model=replace(_official_model("resnet18"), cifar_stem=True),
        augment=AugmentConfig(image_size=32, recipe="tf2", crop_tries=100, strength=0.5, blur_p=0.0),
        loss=LossConfig(temperature=0.5, reduction="tf2"),
        optim=OptimConfig(base_lr=1.0, lr_scaling="linear", weight_decay=1e-4, warmup_epochs=10),
        train=TrainConfig(batch_size=512, epochs=1000),
        data=DataConfig(name="cifar10"),
    )


def _tiny() -> Config:
    """A narrow ResNet-18 (width 16) that trains in minutes on 2 CPU cores.

    Departs from the CIFAR recipe (tau 0.2, crop (0.35, 1), batch 128, sqrt lr scaling) where a
    10-epoch CPU budget on 32 px ``shapes`` needs it; the runs behind each choice:
    docs/tiny-preset.md. Keeps the torchvision recipe, the eq. 1 loss scale and Kaiming init.
    """
    return Config(
        model=ModelConfig(arch="resnet18", width=0.25, cifar_stem=True, head_hidden=None, head_out=64),
        augment=AugmentConfig(image_size=32, crop_scale=(0.35, 1.0), strength=1.0, blur_p=0.0),
        loss=LossConfig(temperature=0.2),
        optim=OptimConfig(lr_scaling="sqrt", warmup_epochs=1),
        train=TrainConfig(batch_size=128, epochs=10, checkpoint_every=100),
        data=DataConfig(name="shapes"),
    )


PRESETS = {"imagenet": _imagenet, "cifar": _cifar, "tiny": _tiny}


def preset(name: str) -> Config:
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[name]().validate()


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few tables of scalars


def _read_config_table(path: Path) -> dict[str, Any]:
    """The parsed top-level table of a config file: at most MAX_CONFIG_BYTES, UTF-8, a table
    (not a list or a number), whose values are tables of scalars or (for tuples) short lists."""
    try:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist or is not a regular file")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes: expected a "
                          f"few [section] tables of field = value")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ConfigError(f"config file {path} does not parse: {e}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deeply: expected [section] tables of "
                          f"field = value") from None
    if not isinstance(data, dict):
        kind = {"list": "list", "str": "text", "bool": "boolean", "NoneType": "null"}.get(
            type(data).__name__, "number")
        raise ConfigError(f"config file {path} holds a {kind}, expected a table of "
                          f"[section] tables (e.g. {{\"train\": {{\"epochs\": 10}}}})")
    for section, values in data.items():
        for key, v in (values.items() if isinstance(values, dict) else ()):
            if isinstance(v, dict) or (isinstance(v, list) and (len(v) > 16 or any(
                    isinstance(x, (dict, list)) for x in v))):
                raise ConfigError(f"{path}: config field {section}.{key} is a nested "
                                  f"{type(v).__name__}: expected a number, text, boolean or a pair")
    return data


def load_config_file(path: str | Path, base: Config | None = None) -> Config:
    """Read a TOML (``.toml``) or JSON (``.json``) file of ``[section] field = value`` tables.

    A top-level ``preset = "name"`` key picks the base preset; the tables override it.
    """
    path = Path(path)
    data = _read_config_table(path)
    if "preset" in data:
        try:
            base = preset(data.pop("preset"))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    try:
        return Config.from_dict(data, base)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
