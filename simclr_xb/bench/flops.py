"""Analytic FLOP count of the SimCLR network (numpy only; no framework needed).

Counted from :func:`simclr_xb.resnet_spec.encoder_layout` and :func:`head_dims`:

* a convolution costs Ho * Wo * Cout * Cin * kh * kw multiply-accumulates (MACs), with
  Ho = floor((H + 2 pad - k) / stride) + 1; a linear layer in * out MACs;
* BatchNorm, ReLU, the residual additions, pooling and the loss are left out (memory-bound
  and < 1% of the arithmetic of these networks);
* FLOPs = 2 x MACs; a training step (forward + backward: the input gradient and the weight
  gradient each cost one forward) = 3 x the forward FLOPs, the usual convention.

Checked against published counts (tests/test_bench.py): torchvision ResNet-50 at 224 px is
4.09 GMACs and ResNet-18 1.82 GMACs.
"""
from __future__ import annotations

from dataclasses import dataclass

from simclr_xb.config import ModelConfig
from simclr_xb.resnet_spec import encoder_layout, head_dims

TRAIN_FACTOR = 3  # forward + backward


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


@dataclass(frozen=True)
class LayerCount:
    name: str
    macs: int
    out_hw: int  # side of the output map (1 for linear layers)


def layer_macs(cfg: ModelConfig, image_size: int) -> list[LayerCount]:
    """MACs of every conv and linear layer for one square image of side ``image_size``."""
    lay = encoder_layout(cfg)
    out: list[LayerCount] = []
    s = conv_out(image_size, lay.stem_kernel, lay.stem_stride, lay.stem_pad)
    out.append(LayerCount("encoder.conv1", s * s * lay.stem_ch * 3 * lay.stem_kernel ** 2, s))
    if lay.maxpool:
        s = conv_out(s, 3, 2, 1)
    for b in lay.blocks:
        p = b.prefix
        if b.kind == "basic":
            s1 = conv_out(s, 3, b.stride, 1)
            out.append(LayerCount(f"{p}.conv1", s1 * s1 * b.planes * b.in_ch * 9, s1))
            out.append(LayerCount(f"{p}.conv2", s1 * s1 * b.planes * b.planes * 9, s1))
        else:
            out.append(LayerCount(f"{p}.conv1", s * s * b.planes * b.in_ch, s))
            s1 = conv_out(s, 3, b.stride, 1)
            out.append(LayerCount(f"{p}.conv2", s1 * s1 * b.planes * b.planes * 9, s1))
            out.append(LayerCount(f"{p}.conv3", s1 * s1 * b.out_ch * b.planes, s1))
        if b.downsample:
            out.append(LayerCount(f"{p}.downsample.0", s1 * s1 * b.out_ch * b.in_ch, s1))
        s = s1
    for i, (fan_in, fan_out) in enumerate(head_dims(cfg)):
        out.append(LayerCount(f"head.{i}.linear", fan_in * fan_out, 1))
    return out


def model_flops(cfg: ModelConfig, image_size: int) -> dict:
    """Per-image counts: encoder and head MACs, forward FLOPs and training-step FLOPs."""
    layers = layer_macs(cfg, image_size)
    enc = sum(l.macs for l in layers if l.name.startswith("encoder."))
    head = sum(l.macs for l in layers if l.name.startswith("head."))
    fwd = 2 * (enc + head)
    return {"encoder_macs": enc, "head_macs": head, "forward_flops": fwd,
            "train_flops": TRAIN_FACTOR * fwd}


def step_flops(cfg: ModelConfig, image_size: int, batch: int) -> int:
    """FLOPs of one SimCLR training step: forward + backward over the 2N views of N images."""
    return 2 * batch * model_flops(cfg, image_size)["train_flops"]
