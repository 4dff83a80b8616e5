"""Config: validation messages, presets with the paper's values, files, overrides, JSON."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

from simclr_xb.config import (
    ARCHS,
    AugmentConfig,
    Config,
    ConfigError,
    LossConfig,
    ModelConfig,
    load_config_file,
    preset,
)

# (field, bad value, text of the allowed range that the message must contain)
INVALID = [
    ("loss.temperature", 0.0, "> 0"),
    ("loss.temperature", -0.1, "> 0"),
    ("loss.temperature", math.inf, "finite"),
    ("train.batch_size", 1, ">= 2"),
    ("train.batch_size", 0, ">= 2"),
    ("augment.crop_scale", (0.0, 1.0), "0 < lo <= hi <= 1"),
    ("augment.crop_scale", (0.5, 1.2), "0 < lo <= hi <= 1"),
    ("augment.crop_scale", (0.9, 0.5), "0 < lo <= hi <= 1"),
    ("augment.crop_scale", (-0.1, 0.5), "0 < lo <= hi <= 1"),
    ("augment.crop_ratio", (1.5, 0.5), "0 < lo <= hi"),
    ("augment.blur_sigma", (0.0, 1.0), "0 < lo <= hi"),
    ("model.arch", "resnet101", "one of"),
    ("model.arch", "vgg16", "resnet50"),
    ("model.width", 0.0, "> 0"),
    ("model.width", -1.0, "> 0"),
    ("model.width", 0.3, "64 * width a positive integer"),  # 64 * 0.3 = 19.2
    ("model.width", 0.01, "64 * width a positive integer"),  # 0.64 channels
    ("model.head_layers", 0, ">= 1"),
    ("model.head_out", 0, ">= 1"),
    ("model.bn_momentum", 0.0, "(0, 1]"),
    ("augment.flip_p", 1.5, "[0, 1]"),
    ("augment.jitter_p", -0.1, "[0, 1]"),
    ("augment.gray_p", 2.0, "[0, 1]"),
    ("augment.blur_p", -1.0, "[0, 1]"),
    ("augment.strength", 1.5, "[0, 1.25]"),
    ("augment.image_size", 4, ">= 8"),
    ("optim.momentum", 1.0, "[0, 1)"),
    ("optim.weight_decay", -1e-6, ">= 0"),
    ("optim.lr_scaling", "cubic", "one of"),
    ("train.precision", "float16", "one of"),
    ("train.on_nonfinite", "ignore", "'stop' or 'skip'"),
]


@pytest.mark.parametrize("field,value,allowed", INVALID, ids=[f"{f}={v}" for f, v, _ in INVALID])
def test_invalid_value_names_field_and_allowed_range(field, value, allowed):
    with pytest.raises(ConfigError) as e:
        Config().with_value(field, value).validate()
    msg = str(e.value)
    assert field in msg and allowed in msg, msg
    # The same error through a nested dict and through a CLI override.
    section, key = field.split(".")
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        Config.from_dict({section: {key: value}})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        Config().with_overrides([f"{field}={json.dumps(list(value) if isinstance(value, tuple) else value)}"])


def test_valid_boundaries_are_accepted():
    Config().with_value("augment.crop_scale", (1.0, 1.0)).validate()
    Config().with_value("augment.flip_p", 0.0).with_value("augment.blur_p", 1.0).validate()
    for width in (1 / 64, 0.25, 0.5, 2.0, 4.0):
        assert Config().with_value("model.width", width).validate().model.base_width == round(64 * width)
    Config().with_value("train.batch_size", 2).validate()


@pytest.mark.parametrize("dotted", ["foo.bar", "model", "model.depth", "loss.tau", ".arch"])
def test_unknown_section_or_field(dotted):
    with pytest.raises(ConfigError) as e:
        Config().with_value(dotted, 1)
    msg = str(e.value)
    assert "unknown config field" in msg and dotted in msg
    # The message lists what exists: the sections, or the fields of a known section.
    assert "'model'" in msg or "'temperature'" in msg or "'arch'" in msg, msg


def test_unknown_section_in_a_dict_and_a_section_that_is_not_a_table():
    with pytest.raises(ConfigError, match="unknown config section 'nope'"):
        Config.from_dict({"nope": {"x": 1}})
    with pytest.raises(ConfigError, match="section 'model' must be a table"):
        Config.from_dict({"model": 3})


@pytest.mark.parametrize("field,value", [
    ("model.arch", 5), ("train.batch_size", "many"), ("train.batch_size", 2.5),
    ("train.batch_size", True), ("model.cifar_stem", "maybe"), ("model.cifar_stem", 2),
    ("augment.crop_scale", 0.5), ("augment.crop_scale", [0.1, 0.5, 1.0]), ("loss.temperature", "hot"),
    ("loss.temperature", True), ("model.width", None),
])
def test_wrong_type_names_the_field(field, value):
    with pytest.raises(ConfigError) as e:
        Config().with_value(field, value)
    assert field in str(e.value)


def test_coercion_of_valid_values():
    cfg = Config().with_value("train.batch_size", 512.0).with_value("model.cifar_stem", "true")
    cfg = cfg.with_value("augment.crop_scale", [0.2, 1]).with_value("model.head_hidden", None)
    cfg = cfg.with_value("loss.temperature", 1)
    assert cfg.train.batch_size == 512 and isinstance(cfg.train.batch_size, int)
    assert cfg.model.cifar_stem is True
    assert cfg.augment.crop_scale == (0.2, 1.0) and isinstance(cfg.augment.crop_scale, tuple)
    assert cfg.loss.temperature == 1.0 and isinstance(cfg.loss.temperature, float)
    assert cfg.model.head_hidden is None


def test_defaults_are_the_papers():
    cfg = Config().validate()
    a = cfg.augment
    assert a.crop_scale == (0.08, 1.0) and a.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert (a.flip_p, a.jitter_p, a.gray_p, a.blur_p) == (0.5, 0.8, 0.2, 0.5)
    assert a.blur_sigma == (0.1, 2.0) and a.crop_tries == 10
    o = cfg.optim
    assert (o.momentum, o.weight_decay, o.eta) == (0.9, 1e-6, 1e-3)
    assert (cfg.model.bn_momentum, cfg.model.bn_eps) == (0.1, 1e-5)
    assert cfg.model.head_out == 128 and cfg.model.head_layers == 2


def test_preset_imagenet():
    cfg = preset("imagenet")
    assert (cfg.model.arch, cfg.model.width, cfg.model.cifar_stem) == ("resnet50", 1.0, False)
    assert cfg.augment.image_size == 224 and cfg.augment.strength == 1.0
    assert cfg.augment.blur_p == 0.5 and cfg.augment.blur_kernel_size == 23  # ~10% of 224, odd
    assert cfg.loss.temperature == 0.1
    # tf2/README.md's command: 0.075 with sqrt scaling (= 0.3 linear at 4096), see
    # tests/test_official_presets.py for every field and its source
    assert cfg.train.batch_size == 4096 and cfg.optim.lr_scaling == "sqrt"
    assert cfg.optim.warmup_epochs == 10


def test_preset_cifar():
    cfg = preset("cifar")
    assert cfg.model.cifar_stem is True and cfg.model.arch == "resnet18"  # official README
    assert cfg.augment.image_size == 32 and cfg.augment.strength == 0.5
    assert cfg.augment.blur_p == 0.0  # the paper leaves blur out for CIFAR-10
    assert cfg.loss.temperature == 0.5


def test_preset_tiny_is_a_narrow_resnet18():
    cfg = preset("tiny")
    assert cfg.model.arch == "resnet18" and cfg.model.width < 1 and cfg.model.cifar_stem
    assert cfg.model.base_width == 16
    assert cfg.augment.image_size == 32 and cfg.augment.blur_p == 0.0


def test_unknown_preset():
    with pytest.raises(ConfigError, match="huge"):
        preset("huge")


def test_blur_kernel_size_is_odd_and_about_a_tenth():
    for size in (8, 32, 96, 224, 225):
        k = AugmentConfig(image_size=size).blur_kernel_size
        assert k % 2 == 1 and abs(k - size / 10) <= 1.5


def test_toml_file_with_preset_base(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text('preset = "tiny"\n\n[loss]\ntemperature = 0.2\n\n[train]\nbatch_size = 64\n'
                 '\n[augment]\ncrop_scale = [0.2, 1.0]\n')
    cfg = load_config_file(p)
    assert cfg.loss.temperature == 0.2 and cfg.train.batch_size == 64
    assert cfg.augment.crop_scale == (0.2, 1.0)
    assert cfg.model == preset("tiny").model  # untouched sections come from the preset


def test_json_file_with_preset_base(tmp_path):
    p = tmp_path / "run.json"
    p.write_text(json.dumps({"preset": "cifar", "model": {"arch": "resnet18"}}))
    cfg = load_config_file(p)
    assert cfg.model.arch == "resnet18" and cfg.model.cifar_stem and cfg.loss.temperature == 0.5


def test_file_without_preset_starts_from_defaults(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text("[model]\narch = 'resnet34'\n")
    cfg = load_config_file(p)
    assert cfg.model.arch == "resnet34" and cfg.augment == AugmentConfig()


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[loss]\ntemperature = -1\n")
    with pytest.raises(ConfigError) as e:
        load_config_file(bad)
    assert "bad.toml" in str(e.value) and "loss.temperature" in str(e.value)
    broken = tmp_path / "broken.toml"
    broken.write_text("[loss\n")
    with pytest.raises(ConfigError, match="broken.toml.*does not parse"):
        load_config_file(broken)
    with pytest.raises(ConfigError, match="missing.toml"):
        load_config_file(tmp_path / "missing.toml")
    unknown = tmp_path / "u.json"
    unknown.write_text(json.dumps({"preset": "huge"}))
    with pytest.raises(ConfigError, match="huge"):
        load_config_file(unknown)


def test_overrides():
    cfg = preset("tiny").with_overrides([
        "train.batch_size=32", "loss.temperature=0.25", "model.arch=resnet34", "model.cifar_stem=false",
        "optim.base_lr=none", "augment.crop_scale=[0.3, 0.9]", "data.name=fashion-mnist",
        "train.max_steps = 7"])
    assert cfg.train.batch_size == 32 and cfg.loss.temperature == 0.25
    assert cfg.model.arch == "resnet34" and cfg.model.cifar_stem is False
    assert cfg.optim.base_lr is None and cfg.augment.crop_scale == (0.3, 0.9)
    assert cfg.data.name == "fashion-mnist" and cfg.train.max_steps == 7
    with pytest.raises(ConfigError, match="section.field=value"):
        Config().with_overrides(["train.batch_size"])
    assert preset("tiny").with_overrides(["augment.crop_scale=0.2,1"]).augment.crop_scale == (0.2, 1.0)
    with pytest.raises(ConfigError, match="augment.crop_scale .* wrong type"):
        preset("tiny").with_overrides(["augment.crop_scale=0.2,x"])


def test_json_round_trip():
    for cfg in (Config(), preset("imagenet"), preset("cifar"), preset("tiny"),
                preset("tiny").with_overrides(["model.head_hidden=48", "optim.base_lr=0.5",
                                               "train.max_steps=3", "data.root=/tmp/x"])):
        text = cfg.to_json()
        back = Config.from_json(text)
        assert back == cfg
        assert json.loads(back.to_json()) == json.loads(text)
        assert Config.from_json(back.to_json()).to_json() == back.to_json()
        assert json.loads(text)["model"]["arch"] in ARCHS


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().model.arch = "resnet18"  # type: ignore[misc]
    assert ModelConfig() == ModelConfig() and LossConfig(0.5) != LossConfig(0.1)
