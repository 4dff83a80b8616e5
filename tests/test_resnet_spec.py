"""Canonical names and shapes (torchvision's), parameter counts, init, weight checking."""
from __future__ import annotations

import math

import numpy as np
import pytest

from simclr_xb.config import ModelConfig
from simclr_xb.resnet_spec import (
    check_weights,
    encoder_layout,
    encoder_specs,
    feature_dim,
    head_dims,
    head_specs,
    init_weights,
    last_bn_of_block,
    model_specs,
    probe_specs,
)


def _count(specs) -> int:
    return sum(math.prod(s.shape) for s in specs if s.trainable)


# torchvision's published totals include fc (feature_dim * 1000 + 1000); our encoder has none.
@pytest.mark.parametrize("arch,with_fc,feat", [
    ("resnet18", 11_689_512, 512), ("resnet34", 21_797_672, 512), ("resnet50", 25_557_032, 2048)])
def test_parameter_counts_match_torchvision(arch, with_fc, feat):
    specs = encoder_specs(ModelConfig(arch=arch))
    assert _count(specs) == with_fc - (feat * 1000 + 1000)
    assert feature_dim(ModelConfig(arch=arch)) == feat


def test_wide_resnet50_counts_match_the_paper():
    # SimCLR Table 6: ResNet-50 (2x) 94M and (4x) 375M parameters.
    assert round(_count(encoder_specs(ModelConfig(width=2.0))) / 1e6) == 94
    assert round(_count(encoder_specs(ModelConfig(width=4.0))) / 1e6) == 375


# A few keys (without our "encoder." prefix) and their shapes in torchvision's state_dict.
KNOWN = {
    "resnet18": {"conv1.weight": (64, 3, 7, 7), "bn1.running_mean": (64,), "bn1.num_batches_tracked": (),
                 "layer1.0.conv1.weight": (64, 64, 3, 3), "layer1.1.bn2.bias": (64,),
                 "layer2.0.conv1.weight": (128, 64, 3, 3), "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                 "layer2.0.downsample.1.running_var": (128,), "layer3.1.conv2.weight": (256, 256, 3, 3),
                 "layer4.1.conv2.weight": (512, 512, 3, 3), "layer4.1.bn2.weight": (512,)},
    "resnet50": {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv1.weight": (64, 64, 1, 1),
                 "layer1.0.conv2.weight": (64, 64, 3, 3), "layer1.0.conv3.weight": (256, 64, 1, 1),
                 "layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer1.0.bn3.weight": (256,),
                 "layer2.0.conv1.weight": (128, 256, 1, 1), "layer2.0.conv2.weight": (128, 128, 3, 3),
                 "layer2.0.downsample.0.weight": (512, 256, 1, 1), "layer3.5.conv3.weight": (1024, 256, 1, 1),
                 "layer4.2.bn3.running_var": (2048,), "layer4.0.downsample.1.num_batches_tracked": ()},
}
ENTRIES = {"resnet18": 120, "resnet50": 318}  # torchvision state_dict: 122 and 320 with fc


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_names_and_shapes_are_torchvisions(arch):
    specs = {s.name: s.shape for s in encoder_specs(ModelConfig(arch=arch))}
    assert all(n.startswith("encoder.") for n in specs)
    assert len(specs) == ENTRIES[arch]
    for key, shape in KNOWN[arch].items():
        assert specs[f"encoder.{key}"] == shape, key
    if arch == "resnet18":
        assert "encoder.layer1.0.downsample.0.weight" not in specs  # same width, stride 1
        assert "encoder.layer1.0.conv3.weight" not in specs


def test_names_and_shapes_against_torchvision_itself():
    torchvision = pytest.importorskip("torchvision")
    for arch in ("resnet18", "resnet34", "resnet50"):
        sd = getattr(torchvision.models, arch)(weights=None).state_dict()
        want = {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("fc.")}
        got = {s.name.removeprefix("encoder."): s.shape for s in encoder_specs(ModelConfig(arch=arch))}
        assert got == want
        assert list(got) == list(want)  # same order too


def test_cifar_stem_and_layout():
    lay = encoder_layout(ModelConfig(arch="resnet18", cifar_stem=True))
    assert (lay.stem_kernel, lay.stem_stride, lay.stem_pad, lay.maxpool) == (3, 1, 1, False)
    specs = {s.name: s.shape for s in encoder_specs(ModelConfig(arch="resnet18", cifar_stem=True))}
    assert specs["encoder.conv1.weight"] == (64, 3, 3, 3)
    lay = encoder_layout(ModelConfig(arch="resnet50"))
    assert (lay.stem_kernel, lay.stem_stride, lay.stem_pad, lay.maxpool) == (7, 2, 3, True)
    assert [b.stride for b in lay.blocks] == [1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1]
    assert [b.downsample for b in lay.blocks].count(True) == 4
    assert lay.blocks[0].in_ch == 64 and lay.blocks[0].out_ch == 256 and lay.blocks[-1].out_ch == 2048


@pytest.mark.parametrize("arch,width,feat", [("resnet18", 0.25, 128), ("resnet34", 0.5, 256),
                                             ("resnet50", 0.0625, 128), ("resnet50", 2.0, 4096)])
def test_width_multiplier_scales_every_stage(arch, width, feat):
    cfg = ModelConfig(arch=arch, width=width)
    assert feature_dim(cfg) == feat
    specs = {s.name: s.shape for s in encoder_specs(cfg)}
    assert specs["encoder.conv1.weight"][0] == round(64 * width)


def test_head_specs_official_and_plain():
    cfg = ModelConfig(arch="resnet50")
    assert head_dims(cfg) == [(2048, 2048), (2048, 128)]
    names = {s.name: s for s in head_specs(cfg)}
    assert names["head.0.linear.weight"].shape == (2048, 2048)
    assert names["head.1.linear.weight"].shape == (128, 2048)
    assert "head.0.bn.bias" in names and "head.1.bn.weight" in names
    assert "head.1.bn.bias" not in names  # the last BN has no beta (center=False)
    assert not any(n.endswith("linear.bias") for n in names)
    plain = {s.name: s.shape for s in head_specs(ModelConfig(arch="resnet18", head_bn=False,
                                                              head_layers=3, head_hidden=256, head_out=64))}
    assert plain == {"head.0.linear.weight": (256, 512), "head.0.linear.bias": (256,),
                     "head.1.linear.weight": (256, 256), "head.1.linear.bias": (256,),
                     "head.2.linear.weight": (64, 256), "head.2.linear.bias": (64,)}


def test_trainable_and_lars_exclusion_by_kind():
    specs = model_specs(ModelConfig(arch="resnet18", head_bn=False), num_classes=10)
    by = {s.name: s for s in specs}
    assert [s.name for s in probe_specs(ModelConfig(arch="resnet18"), 10)] == ["probe.weight", "probe.bias"]
    assert by["probe.weight"].shape == (10, 512)
    for s in specs:
        assert s.trainable == (s.kind in ("conv", "bn.weight", "bn.bias", "linear.weight", "linear.bias"))
        excluded = s.kind in ("bn.weight", "bn.bias", "linear.bias") or s.name.startswith("probe.")
        assert s.lars_excluded == excluded, s.name
    assert not by["encoder.conv1.weight"].lars_excluded and not by["head.0.linear.weight"].lars_excluded
    assert by["encoder.bn1.weight"].lars_excluded and by["head.0.linear.bias"].lars_excluded
    assert by["probe.weight"].lars_excluded
    assert not by["encoder.bn1.running_mean"].trainable
    assert not by["encoder.bn1.num_batches_tracked"].trainable


def test_init_weights_deterministic_and_shaped():
    cfg = ModelConfig(arch="resnet18", width=0.25)
    a, b, c = init_weights(cfg, 0), init_weights(cfg, 0), init_weights(cfg, 1)
    check_weights(a, model_specs(cfg))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float64)
    assert not np.array_equal(a["encoder.conv1.weight"], c["encoder.conv1.weight"])
    assert (a["encoder.bn1.weight"] == 1).all() and (a["encoder.bn1.bias"] == 0).all()
    assert (a["encoder.bn1.running_var"] == 1).all() and (a["encoder.bn1.running_mean"] == 0).all()
    assert a["encoder.bn1.num_batches_tracked"].shape == () and a["encoder.bn1.num_batches_tracked"] == 0
    assert init_weights(cfg, 0, num_classes=5)["probe.bias"].shape == (5,)


def test_init_statistics():
    w = init_weights(ModelConfig(arch="resnet18", width=0.5), 0)
    conv = w["encoder.layer4.1.conv2.weight"]  # (256, 256, 3, 3): Kaiming normal, fan_out
    assert conv.std() == pytest.approx(math.sqrt(2.0 / (256 * 9)), rel=0.01)
    assert abs(conv.mean()) < 5 * conv.std() / math.sqrt(conv.size)  # zero mean, 5 sigma
    assert w["head.0.linear.weight"].std() == pytest.approx(0.01, rel=0.02)


def test_zero_init_residual():
    cfg = ModelConfig(arch="resnet50", width=0.0625, zero_init_residual=True)
    w = init_weights(cfg, 0)
    base = init_weights(ModelConfig(arch="resnet50", width=0.0625), 0)
    last = {f"{last_bn_of_block(b)}.weight" for b in encoder_layout(cfg).blocks}
    assert len(last) == 16 and all(n.endswith("bn3.weight") for n in last)
    for n in last:
        assert (w[n] == 0).all()
    for n in w:
        if n not in last:
            np.testing.assert_array_equal(w[n], base[n])  # nothing else changes
    basic = ModelConfig(arch="resnet18", width=0.125, zero_init_residual=True)
    w18 = init_weights(basic, 0)
    assert (w18["encoder.layer1.0.bn2.weight"] == 0).all() and (w18["encoder.layer1.0.bn1.weight"] == 1).all()
    assert (w18["encoder.layer2.0.downsample.1.weight"] == 1).all()


def test_check_weights_messages():
    cfg = ModelConfig(arch="resnet18", width=0.125)
    specs = model_specs(cfg)
    w = init_weights(cfg, 0)
    check_weights(w, specs)  # fine

    bad = dict(w)
    bad["encoder.layer1.0.conv2.weight"] = np.zeros((8, 3, 3, 3))
    with pytest.raises(ValueError) as e:
        check_weights(bad, specs, where="checkpoint x.h5")
    msg = str(e.value)
    assert "checkpoint x.h5" in msg and "encoder.layer1.0.conv2.weight" in msg
    assert "(8, 3, 3, 3)" in msg and "(8, 8, 3, 3)" in msg

    missing = {k: v for k, v in w.items() if k != "head.0.bn.running_var"}
    missing["encoder.fc.weight"] = np.zeros(3)
    with pytest.raises(ValueError) as e:
        check_weights(missing, specs)
    msg = str(e.value)
    assert "missing 1" in msg and "head.0.bn.running_var" in msg
    assert "unexpected 1" in msg and "encoder.fc.weight" in msg


@pytest.mark.parametrize("cifar_stem", [True, False])
def test_stage_sides_match_the_torch_model(cifar_stem):
    """resnet_spec.stage_sides (the small-image warning's geometry) against the feature maps
    the torch encoder really makes, S = 8..69 (docs/bad-inputs.md)."""
    torch = pytest.importorskip("torch")
    from simclr_xb.backends.torch.resnet import ResNet
    from simclr_xb.resnet_spec import stage_sides
    cfg = ModelConfig(arch="resnet18", width=0.125, cifar_stem=cifar_stem)
    net = ResNet(cfg).eval()
    seen = {}
    net.maxpool.register_forward_hook(lambda m, i, o: seen.__setitem__("stem", o.shape[-1]))
    for k in range(1, 5):
        getattr(net, f"layer{k}").register_forward_hook(
            lambda m, i, o, k=k: seen.__setitem__(f"layer{k}", o.shape[-1]))
    with torch.no_grad():
        for size in range(8, 70):
            net(torch.zeros(1, 3, size, size))
            assert stage_sides(cfg, size) == seen, size
