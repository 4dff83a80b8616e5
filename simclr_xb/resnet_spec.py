"""ResNet / projection-head architecture table and the canonical parameter names and shapes.

Canonical names are torchvision's ResNet names (He et al. 2016; torchvision
``models/resnet.py``: conv1, bn1, layer1.0.conv1, ..., layer2.0.downsample.0/1) under the
prefix ``encoder.``, so that an exported encoder loads into ``torchvision.models.resnetNN``
with every key matching. Canonical shapes are PyTorch's: conv weights OIHW, linear (out, in).
Both backends and the HDF5 checkpoint use these names; each backend converts layouts in one
function of its own (see ``backends/*/convert.py``).

Blocks follow torchvision v1.5: in the bottleneck the stride sits on the 3x3 conv.
The width multiplier scales every channel count including the stem (SimCLR's 2x and 4x).
The CIFAR variant (SimCLR appendix B.9) uses a 3x3 stride-1 first conv and no max-pool.

Projection head (official tf2 code): ``head.{i}.linear.weight`` (no bias) followed by
``head.{i}.bn.*``; the last layer's BN has no beta (``center=False``). With ``head_bn=False``
every layer is ``head.{i}.linear.weight`` + ``head.{i}.linear.bias`` (the paper's plain MLP).
Online linear probe: ``probe.weight``, ``probe.bias``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .augment import STREAM_INIT
from .config import ModelConfig

BLOCKS = {"resnet18": ("basic", (2, 2, 2, 2)),
          "resnet34": ("basic", (3, 4, 6, 3)),
          "resnet50": ("bottleneck", (3, 4, 6, 3))}
EXPANSION = {"basic": 1, "bottleneck": 4}

# Kinds of canonical entries.
TRAINABLE_KINDS = ("conv", "bn.weight", "bn.bias", "linear.weight", "linear.bias")
BUFFER_KINDS = ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked")


@dataclass(frozen=True)
class ParamSpec:
    """One canonical entry: name, PyTorch-layout shape, kind, and LARS exclusion."""

    name: str
    shape: tuple[int, ...]
    kind: str

    @property
    def trainable(self) -> bool:
        return self.kind in TRAINABLE_KINDS

    @property
    def lars_excluded(self) -> bool:
        """Excluded from weight decay AND trust-ratio adaptation: BN parameters, biases and the
        online probe (official code's exclude list), chosen by kind/module, never by name regex."""
        return self.kind in ("bn.weight", "bn.bias", "linear.bias") or self.name.startswith("probe.")


@dataclass(frozen=True)
class BlockSpec:
    """One residual block: canonical prefix (e.g. ``encoder.layer2.0``), type, channels, stride."""

    prefix: str
    kind: str  # "basic" | "bottleneck"
    in_ch: int
    planes: int
    out_ch: int
    stride: int
    downsample: bool


@dataclass(frozen=True)
class EncoderLayout:
    stem_kernel: int  # 7 (ImageNet) or 3 (CIFAR)
    stem_stride: int
    stem_pad: int
    maxpool: bool
    stem_ch: int
    blocks: tuple[BlockSpec, ...]
    feature_dim: int


def encoder_layout(cfg: ModelConfig) -> EncoderLayout:
    kind, counts = BLOCKS[cfg.arch]
    exp = EXPANSION[kind]
    base = cfg.base_width
    blocks = []
    in_ch = base
    for stage, n in enumerate(counts):
        planes = base * 2 ** stage
        for b in range(n):
            stride = 2 if (stage > 0 and b == 0) else 1
            out_ch = planes * exp
            blocks.append(BlockSpec(prefix=f"encoder.layer{stage + 1}.{b}", kind=kind, in_ch=in_ch,
                                    planes=planes, out_ch=out_ch, stride=stride,
                                    downsample=(stride != 1 or in_ch != out_ch)))
            in_ch = out_ch
    if cfg.cifar_stem:
        return EncoderLayout(3, 1, 1, False, base, tuple(blocks), in_ch)
    return EncoderLayout(7, 2, 3, True, base, tuple(blocks), in_ch)


def feature_dim(cfg: ModelConfig) -> int:
    """Width of h, the representation after global average pooling."""
    return encoder_layout(cfg).feature_dim


def head_dims(cfg: ModelConfig) -> list[tuple[int, int]]:
    """(in, out) of each head layer."""
    d = feature_dim(cfg)
    hidden = cfg.head_hidden or d
    dims, cur = [], d
    for i in range(cfg.head_layers):
        out = cfg.head_out if i == cfg.head_layers - 1 else hidden
        dims.append((cur, out))
        cur = out
    return dims


def _bn(prefix: str, c: int, beta: bool = True) -> list[ParamSpec]:
    out = [ParamSpec(f"{prefix}.weight", (c,), "bn.weight")]
    if beta:
        out.append(ParamSpec(f"{prefix}.bias", (c,), "bn.bias"))
    out += [ParamSpec(f"{prefix}.running_mean", (c,), "bn.running_mean"),
            ParamSpec(f"{prefix}.running_var", (c,), "bn.running_var"),
            ParamSpec(f"{prefix}.num_batches_tracked", (), "bn.num_batches_tracked")]
    return out


def encoder_specs(cfg: ModelConfig) -> list[ParamSpec]:
    lay = encoder_layout(cfg)
    k = lay.stem_kernel
    specs = [ParamSpec("encoder.conv1.weight", (lay.stem_ch, 3, k, k), "conv")]
    specs += _bn("encoder.bn1", lay.stem_ch)
    for b in lay.blocks:
        p = b.prefix
        if b.kind == "basic":
            specs.append(ParamSpec(f"{p}.conv1.weight", (b.planes, b.in_ch, 3, 3), "conv"))
            specs += _bn(f"{p}.bn1", b.planes)
            specs.append(ParamSpec(f"{p}.conv2.weight", (b.out_ch, b.planes, 3, 3), "conv"))
            specs += _bn(f"{p}.bn2", b.out_ch)
        else:
            specs.append(ParamSpec(f"{p}.conv1.weight", (b.planes, b.in_ch, 1, 1), "conv"))
            specs += _bn(f"{p}.bn1", b.planes)
            specs.append(ParamSpec(f"{p}.conv2.weight", (b.planes, b.planes, 3, 3), "conv"))
            specs += _bn(f"{p}.bn2", b.planes)
            specs.append(ParamSpec(f"{p}.conv3.weight", (b.out_ch, b.planes, 1, 1), "conv"))
            specs += _bn(f"{p}.bn3", b.out_ch)
        if b.downsample:
            specs.append(ParamSpec(f"{p}.downsample.0.weight", (b.out_ch, b.in_ch, 1, 1), "conv"))
            specs += _bn(f"{p}.downsample.1", b.out_ch)
    return specs


def head_specs(cfg: ModelConfig) -> list[ParamSpec]:
    specs = []
    dims = head_dims(cfg)
    for i, (din, dout) in enumerate(dims):
        last = i == len(dims) - 1
        specs.append(ParamSpec(f"head.{i}.linear.weight", (dout, din), "linear.weight"))
        if cfg.head_bn:
            specs += _bn(f"head.{i}.bn", dout, beta=not last)
        else:
            specs.append(ParamSpec(f"head.{i}.linear.bias", (dout,), "linear.bias"))
    return specs


def probe_specs(cfg: ModelConfig, num_classes: int) -> list[ParamSpec]:
    d = feature_dim(cfg)
    return [ParamSpec("probe.weight", (num_classes, d), "linear.weight"),
            ParamSpec("probe.bias", (num_classes,), "linear.bias")]


def model_specs(cfg: ModelConfig, num_classes: int | None = None) -> list[ParamSpec]:
    """Every canonical entry of encoder + head (+ probe when ``num_classes`` is given), in order."""
    specs = encoder_specs(cfg) + head_specs(cfg)
    if num_classes:
        specs += probe_specs(cfg, num_classes)
    return specs


def last_bn_of_block(block: BlockSpec) -> str:
    return f"{block.prefix}.bn2" if block.kind == "basic" else f"{block.prefix}.bn3"


# Standard deviation of a unit normal truncated to [-2, 2] (tf.keras VarianceScaling's constant).
TRUNC_STD = 0.87962566103423978


def truncated_normal(rng: np.random.Generator, std: float, shape: tuple[int, ...]) -> np.ndarray:
    """N(0, std^2) truncated to [-2 std, 2 std] (TF's truncated_normal), by redrawing the
    entries that fall outside. Deterministic given the generator's state."""
    out = rng.normal(0.0, std, shape)
    bad = np.abs(out) > 2 * std
    while bad.any():
        out[bad] = rng.normal(0.0, std, int(bad.sum()))
        bad = np.abs(out) > 2 * std
    return out


def init_weights(cfg: ModelConfig, seed: int, num_classes: int | None = None) -> dict[str, np.ndarray]:
    """Canonical float64 initial weights, identical for every backend given the seed.

    conv: ``cfg.init`` "kaiming": normal, fan_out, ReLU gain (torchvision), std sqrt(2 / fan_out);
    "tf": tf.keras VarianceScaling() as the official resnet.py uses it (scale 1, fan_in,
    truncated normal: N(0, s^2) cut at +-2 s, s = sqrt(1 / fan_in) / 0.8796... so the
    truncated std is sqrt(1 / fan_in)); BN gamma 1, beta 0, running mean 0, var 1; head and
    probe linear weights N(0, 0.01) (official code), biases 0; ``zero_init_residual`` sets
    each block's last BN gamma to 0.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), STREAM_INIT])))
    out: dict[str, np.ndarray] = {}
    for s in model_specs(cfg, num_classes):
        if s.kind == "conv" and cfg.init == "tf":
            fan_in = s.shape[1] * s.shape[2] * s.shape[3]
            out[s.name] = truncated_normal(rng, math.sqrt(1.0 / fan_in) / TRUNC_STD, s.shape)
        elif s.kind == "conv":
            fan_out = s.shape[0] * s.shape[2] * s.shape[3]
            out[s.name] = rng.normal(0.0, math.sqrt(2.0 / fan_out), s.shape)
        elif s.kind == "linear.weight":
            out[s.name] = rng.normal(0.0, 0.01, s.shape)
        elif s.kind in ("bn.weight", "bn.running_var"):
            out[s.name] = np.ones(s.shape)
        elif s.kind == "bn.num_batches_tracked":
            out[s.name] = np.zeros((), dtype=np.int64)
        else:
            out[s.name] = np.zeros(s.shape)
    if cfg.zero_init_residual:
        for b in encoder_layout(cfg).blocks:
            out[f"{last_bn_of_block(b)}.weight"][:] = 0.0
    return out


def check_weights(weights: dict[str, np.ndarray], specs: list[ParamSpec], where: str = "weights") -> None:
    """Raise ValueError naming every missing, unexpected or mis-shaped entry."""
    want = {s.name: s.shape for s in specs}
    missing = [n for n in want if n not in weights]
    extra = [n for n in weights if n not in want]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} entries (first: {', '.join(missing[:5])})")
    if extra:
        problems.append(f"unexpected {len(extra)} entries (first: {', '.join(extra[:5])})")
    for n, shape in want.items():
        if n in weights and tuple(np.shape(weights[n])) != tuple(shape):
            problems.append(f"{n} has shape {tuple(np.shape(weights[n]))}, model expects {tuple(shape)}")
    if problems:
        raise ValueError(f"{where} do not match the model: " + "; ".join(problems[:8]))
