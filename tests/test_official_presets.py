"""The ``imagenet`` and ``cifar`` presets against the official google-research/simclr tf2 code.

Every expected value below was read from the official files (not from this project):
  run.py      tf2/run.py flag defaults (commit 1e7f15d as stored): learning_rate 0.3,
              learning_rate_scaling 'linear', warmup_epochs 10, weight_decay 1e-6,
              batch_norm_decay 0.9, momentum 0.9, optimizer 'lars', temperature 0.1,
              proj_out_dim 128, num_proj_layers 3, width_multiplier 1, resnet_depth 50,
              color_jitter_strength 1.0, use_blur True, lineareval_while_pretraining True.
  README      tf2/README.md (= README.md at dec99a8) pre-training commands:
              CIFAR-10: --train_batch_size=512 --train_epochs=1000 --learning_rate=1.0
                --weight_decay=1e-4 --temperature=0.5 --image_size=32 --resnet_depth=18
                --use_blur=False --color_jitter_strength=0.5
              ImageNet: --train_batch_size=4096 --train_epochs=100 --temperature=0.1
                --learning_rate=0.075 --learning_rate_scaling=sqrt --weight_decay=1e-4
                --image_size=224
  data_util   tf2/data_util.py: crop_and_resize -> area_range (0.08, 1.0), aspect (3/4, 4/3)
              x the output aspect (1 here), min_object_covered 0.1, max_attempts 100, bicubic
              resize; jitter p 0.8, grayscale p 0.2, blur p 0.5 sigma U(0.1, 2.0).
  objective   tf2/objective.py: reduce_mean(loss_a + loss_b) -> reduction "tf2".
  resnet      tf2/resnet.py: last BN of every block init_zero=True; convs VarianceScaling();
              BATCH_NORM_EPSILON 1e-5.
  model       tf2/model.py: cifar_stem = image_size <= 32; LARS excludes batch_normalization
              and bias; sqrt scaling lr * sqrt(B), linear lr * B / 256.
"""
import math

import pytest

from simclr_xb.config import ConfigError, preset

# field -> (expected value, source)
COMMON = {
    "model.width": (1.0, "run.py width_multiplier 1"),
    "model.zero_init_residual": (True, "resnet.py init_zero=True"),
    "model.init": ("tf", "resnet.py VarianceScaling()"),
    "model.head_layers": (3, "run.py num_proj_layers 3"),
    "model.head_out": (128, "run.py proj_out_dim 128"),
    "model.head_hidden": (None, "model.py: hidden width = input width"),
    "model.head_bn": (True, "model.py LinearLayer(use_bn=True)"),
    "model.bn_momentum": (0.1, "run.py batch_norm_decay 0.9"),
    "model.bn_eps": (1e-5, "resnet.py BATCH_NORM_EPSILON"),
    "augment.recipe": ("tf2", "data_util.py"),
    "augment.crop_scale": ((0.08, 1.0), "data_util.py area_range"),
    "augment.crop_ratio": ((3 / 4, 4 / 3), "data_util.py aspect_ratio_range"),
    "augment.crop_tries": (100, "data_util.py max_attempts"),
    "augment.crop_min_covered": (0.1, "data_util.py min_object_covered"),
    "augment.flip_p": (0.5, "data_util.py random_flip_left_right"),
    "augment.jitter_p": (0.8, "data_util.py random_color_jitter"),
    "augment.gray_p": (0.2, "data_util.py random_color_jitter"),
    "augment.blur_sigma": ((0.1, 2.0), "data_util.py random_blur"),
    "loss.reduction": ("tf2", "objective.py reduce_mean(loss_a + loss_b)"),
    "optim.momentum": (0.9, "run.py momentum 0.9"),
    "optim.eta": (1e-3, "lars_optimizer.py EETA_DEFAULT"),
    "optim.nesterov": (False, "lars_optimizer.py use_nesterov=False"),
    "optim.warmup_epochs": (10, "run.py warmup_epochs 10"),
    "optim.probe": (True, "run.py lineareval_while_pretraining True"),
}
CIFAR = {
    "model.arch": ("resnet18", "README --resnet_depth=18"),
    "model.cifar_stem": (True, "model.py image_size <= 32"),
    "augment.image_size": (32, "README --image_size=32"),
    "augment.strength": (0.5, "README --color_jitter_strength=0.5"),
    "augment.blur_p": (0.0, "README --use_blur=False"),
    "loss.temperature": (0.5, "README --temperature=0.5"),
    "optim.base_lr": (1.0, "README --learning_rate=1.0"),
    "optim.lr_scaling": ("linear", "run.py learning_rate_scaling default"),
    "optim.weight_decay": (1e-4, "README --weight_decay=1e-4"),
    "train.batch_size": (512, "README --train_batch_size=512"),
    "train.epochs": (1000, "README --train_epochs=1000"),
}
IMAGENET = {
    "model.arch": ("resnet50", "run.py resnet_depth 50"),
    "model.cifar_stem": (False, "model.py image_size 224 > 32"),
    "augment.image_size": (224, "README --image_size=224"),
    "augment.strength": (1.0, "run.py color_jitter_strength 1.0"),
    "augment.blur_p": (0.5, "run.py use_blur True, data_util.py p 0.5"),
    "loss.temperature": (0.1, "README --temperature=0.1"),
    "optim.base_lr": (0.075, "README --learning_rate=0.075"),
    "optim.lr_scaling": ("sqrt", "README --learning_rate_scaling=sqrt"),
    "optim.weight_decay": (1e-4, "README --weight_decay=1e-4"),
    "train.batch_size": (4096, "README --train_batch_size=4096"),
    "train.epochs": (100, "README --train_epochs=100"),
}


def _get(cfg, dotted):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


@pytest.mark.parametrize("name,table", [("cifar", CIFAR), ("imagenet", IMAGENET)])
def test_preset_equals_official_flags(name, table):
    cfg = preset(name)
    expected = {**COMMON, **table}
    for field, (value, source) in expected.items():
        got = _get(cfg, field)
        if isinstance(value, float):
            assert got == pytest.approx(value, rel=1e-12), f"{name}: {field} = {got!r}, official {value!r} ({source})"
        elif isinstance(value, tuple):
            assert got == pytest.approx(value, rel=1e-12), f"{name}: {field} = {got!r}, official {value!r} ({source})"
        else:
            assert got == value, f"{name}: {field} = {got!r}, official {value!r} ({source})"


def test_imagenet_lr_equals_the_linear_default_at_4096():
    # README: "learning rate of 0.3 with linear scaling is equivalent to 0.075 with sqrt at 4096"
    cfg = preset("imagenet")
    assert cfg.optim.base_lr * math.sqrt(cfg.train.batch_size) == pytest.approx(0.3 * 4096 / 256)


def test_tiny_keeps_its_measured_recipe():
    cfg = preset("tiny")
    assert (cfg.augment.recipe, cfg.loss.reduction, cfg.model.init, cfg.model.zero_init_residual) == \
        ("torchvision", "mean", "kaiming", False)


@pytest.mark.parametrize("field,value", [("augment.recipe", "pil"), ("loss.reduction", "sum"),
                                         ("model.init", "xavier"), ("augment.crop_min_covered", 1.5)])
def test_bad_recipe_fields_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        preset("tiny").with_overrides([f"{field}={value}"])


def test_tf_init_is_truncated_fan_in():
    import numpy as np

    from simclr_xb.resnet_spec import init_weights
    w = init_weights(preset("cifar").model, 0)
    k = w["encoder.layer2.0.conv2.weight"]  # (128, 128, 3, 3): fan_in 1152
    std = math.sqrt(1.0 / (128 * 9))
    assert np.abs(k).max() <= 2 * std / 0.87962566103423978
    assert k.std() == pytest.approx(std, rel=0.02)
    assert (w["encoder.layer1.0.bn2.weight"] == 0).all()
    kaiming = init_weights(preset("tiny").model, 0)["encoder.layer1.0.conv1.weight"]
    assert np.abs(kaiming).max() > 2.5 * kaiming.std()  # not truncated: the negative control
