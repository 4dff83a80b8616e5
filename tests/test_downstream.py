"""Downstream use: semi-supervised fine-tuning, feature extraction and encoder export.

Tiny everywhere (ResNet-18 width 0.125, 16 px views, a few hundred ``shapes`` images) so the
file runs in well under a minute on 2 shared cores. Each test fails if its feature breaks:
the label subset is checked for balance, determinism and replay; the fine-tuning loop for
its views and schedule; both backends' fine-tuning trainers against each other; the exports
for torchvision's exact key set and shapes (derived independently from torchvision's
``_make_layer`` rules), bit-exact features after a round trip, and a cross-check of our
safetensors writer/reader with MLX's own safetensors reader (and the ``safetensors`` package
when it happens to be installed).

Tolerance (float32), as max|torch - mlx| / max(1, max|torch|), measured on the 2-core CPU
(torch 2.13, mlx 0.32.4) when set: eval-mode h 4.4e-7 (2.1e-6 absolute at |h| <= 4.9), z 3e-8,
fine-tuning loss over 3 steps 2.4e-7, logits after them 1.3e-7, weights 3.6e-7.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from simclr_xb.augment import identity_params, sample_view_params
from simclr_xb.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from simclr_xb.cli import main
from simclr_xb.config import ModelConfig, preset
from simclr_xb.data import load_dataset
from simclr_xb.export import (
    detect_format,
    encoder_state,
    export_encoder,
    export_metadata,
    load_exported,
    placeholder_head,
    read_safetensors,
    write_safetensors,
)
from simclr_xb.finetune import (
    FinetuneConfig,
    balanced_quota,
    classifier_specs,
    excluded_flags,
    finetune_augment,
    initial_weights,
    load_subset,
    select_subset,
    train_classifier,
)
from simclr_xb.resnet_spec import encoder_specs, init_weights
from simclr_xb.schedules import scale_lr, warmup_cosine

DATA = "shapes:train=200,test=100"
TOL_BACKENDS = 1e-5  # torch vs MLX, float32 (see the module docstring)


def tiny_cfg(**model):
    cfg = preset("tiny").with_value("model.width", 0.125).with_value("augment.image_size", 16) \
        .with_value("data.name", DATA)
    for k, v in model.items():
        cfg = cfg.with_value(f"model.{k}", v)
    return cfg.validate()


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    """A checkpoint of the tiny model (random weights with non-trivial BN statistics: any
    weights exercise the plumbing; a real pre-training run is what docs/finetune.md measures)."""
    cfg = tiny_cfg()
    w = init_weights(cfg.model, 5)
    rng = np.random.default_rng(1)
    for k in w:
        if k.endswith("running_mean"):
            w[k] = rng.normal(0, 0.1, w[k].shape)
        elif k.endswith("running_var"):
            w[k] = rng.uniform(0.5, 2.0, w[k].shape)
        elif k.endswith(".bias"):  # BN shifts (the encoder has no other bias)
            w[k] = rng.normal(0, 0.1, w[k].shape)
    w = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in w.items()}
    path = tmp_path_factory.mktemp("ck") / "ck.h5"
    save_checkpoint(path, Checkpoint(config=cfg, weights=w, step=42, backend="torch"))
    return path


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _torch():
    return pytest.importorskip("torch")


def _ft_module(backend):
    pytest.importorskip("mlx.core" if backend == "mlx" else "torch")
    import importlib
    return importlib.import_module(f"simclr_xb.backends.{backend}.finetune")


# --------------------------------------------------------------------------- label subset


def test_subset_is_class_balanced_deterministic_and_sized():
    labels = load_dataset("shapes:train=1000,test=10", "train").labels
    for fraction in (0.01, 0.1, 0.37, 1.0):
        a = select_subset(labels, fraction, seed=3)
        assert len(a) == max(10, round(fraction * len(labels)))
        assert np.unique(a).size == len(a) and a.min() >= 0 and a.max() < len(labels)
        counts = np.bincount(labels[a], minlength=10)
        assert counts.max() - counts.min() <= 1, (fraction, counts)
        np.testing.assert_array_equal(a, select_subset(labels, fraction, seed=3))  # same seed
    assert not np.array_equal(select_subset(labels, 0.1, 3), select_subset(labels, 0.1, 4))
    np.testing.assert_array_equal(select_subset(labels, 1.0, 0), np.arange(len(labels)))


def test_subset_with_unequal_classes_fills_from_the_larger_ones():
    labels = np.repeat(np.arange(4), [2, 50, 50, 50])  # class 0 has only 2 images
    a = select_subset(labels, 0.4, seed=0)  # 61 images: class 0 gives its 2, the rest ~19-20 each
    counts = np.bincount(labels[a], minlength=4)
    assert counts.sum() == 61 and counts[0] == 2 and counts[1:].max() - counts[1:].min() <= 1
    q = balanced_quota(np.array([1, 5, 5]), 7, np.random.default_rng(0))
    assert q.tolist()[0] == 1 and q.sum() == 7 and abs(q[1] - q[2]) <= 1


def test_finetune_recipe_pieces():
    cfg = tiny_cfg()
    aug = finetune_augment(cfg.augment)
    assert (aug.jitter_p, aug.gray_p, aug.blur_p) == (0.0, 0.0, 0.0)
    assert (aug.crop_scale, aug.flip_p, aug.image_size) == (cfg.augment.crop_scale, 0.5, 16)
    p = sample_view_params(np.random.default_rng(0), aug, 256, (32, 32))
    assert not (p.jitter.any() or p.grayscale.any() or p.blur.any())
    assert 0 < p.flip.mean() < 1 and len({tuple(c) for c in p.crop}) > 200  # crops and flips vary
    specs = classifier_specs(cfg.model, 10)
    assert specs[-2].name == "fc.weight" and specs[-2].shape == (10, 64)
    mom, lars = excluded_flags(specs, "momentum"), excluded_flags(specs, "lars")
    assert all(mom.values())  # plain momentum SGD: trust 1, no decay anywhere
    assert not lars["encoder.conv1.weight"] and lars["encoder.bn1.weight"] and lars["fc.weight"]
    w = initial_weights(cfg.model, 10, None, seed=0)
    assert not w["fc.weight"].any() and not w["fc.bias"].any()  # zero-init classifier (official)
    np.testing.assert_array_equal(w["encoder.conv1.weight"], init_weights(cfg.model, 0)["encoder.conv1.weight"])


class _RecordingTrainer:
    """A stand-in backend: records what the loop hands it, returns a falling loss."""

    def __init__(self):
        self.calls = []

    def train_step(self, images, labels, params, lr):
        self.calls.append((images.shape, labels.copy(), params, lr))
        return {"loss": 1.0 / len(self.calls), "acc": 50.0}


def test_loop_feeds_crop_flip_views_and_the_cosine_schedule():
    ds = load_dataset("shapes:train=50,test=10", "train")
    ft = FinetuneConfig(epochs=3, batch_size=16, base_lr=0.05)
    t = _RecordingTrainer()
    res = train_classifier(t, ds.images, ds.labels, tiny_cfg().augment, ft, log=None)
    spe = 50 // 16
    assert res["steps"] == len(t.calls) == 3 * spe and res["steps_per_epoch"] == spe
    peak = scale_lr(0.05, 16, "linear")
    lrs = [c[3] for c in t.calls]
    assert lrs[0] == pytest.approx(peak)  # no warmup
    assert lrs == pytest.approx([warmup_cosine(s, 3 * spe, 0, peak) for s in range(3 * spe)])
    assert all(not (c[2].jitter.any() or c[2].grayscale.any() or c[2].blur.any()) for c in t.calls)
    # epochs reshuffle: the label order of the first batch differs between epochs 0 and 1
    assert not np.array_equal(t.calls[0][1], t.calls[spe][1])
    t2 = _RecordingTrainer()
    train_classifier(t2, ds.images, ds.labels, tiny_cfg().augment, ft, log=None)
    np.testing.assert_array_equal(t.calls[4][2].crop, t2.calls[4][2].crop)  # replayable views


def test_loop_stops_on_a_non_finite_loss():
    from simclr_xb.finetune import FinetuneError

    class Diverging(_RecordingTrainer):
        def train_step(self, images, labels, params, lr):
            super().train_step(images, labels, params, lr)
            return {"loss": float("nan") if len(self.calls) == 3 else 1.0, "acc": 0.0}
    ds = load_dataset("shapes:train=40,test=10", "train")
    t = Diverging()
    with pytest.raises(FinetuneError, match="step 2"):
        train_classifier(t, ds.images, ds.labels, tiny_cfg().augment, FinetuneConfig(epochs=2, batch_size=8),
                         log=None)
    assert len(t.calls) == 3


# --------------------------------------------------------------------------- backend trainers


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_finetune_trainer_fits_a_batch(backend):
    m = _ft_module(backend)
    cfg = tiny_cfg()
    ds = load_dataset("shapes:train=32,test=10", "train")
    if backend == "torch":  # a pre-training Trainer.encode first (inference_mode) must not break us
        from simclr_xb.backends.torch.step import Trainer
        Trainer(cfg, None).encode(ds.images[:2])
    tr = m.FinetuneTrainer(cfg.model, cfg.augment, 10, initial_weights(cfg.model, 10, None, 0),
                           FinetuneConfig())
    p = identity_params(32, (32, 32))
    losses = [tr.train_step(ds.images, ds.labels, p, 0.1)["loss"] for _ in range(14)]
    assert losses[0] == pytest.approx(np.log(10), abs=1e-5)  # zero-init classifier: uniform logits
    assert losses[-1] < 0.5 * losses[0], losses
    logits = tr.predict(ds.images, batch_size=7)
    assert logits.shape == (32, 10) and logits.dtype == np.float32
    # eval mode (running BN statistics): a row's logits do not depend on the rest of its batch
    np.testing.assert_allclose(tr.predict(ds.images[:5], batch_size=5), logits[:5], rtol=1e-5, atol=1e-5)
    sd = tr.state_dict()
    assert set(sd) == {s.name for s in classifier_specs(cfg.model, 10)}


def test_finetune_trainers_agree_across_backends():
    mt, mm = _ft_module("torch"), _ft_module("mlx")
    cfg = tiny_cfg()
    ds = load_dataset("shapes:train=24,test=10", "train")
    w = initial_weights(cfg.model, 10, None, 0, zero_init_fc=False)
    ft = FinetuneConfig()
    trainers = [m.FinetuneTrainer(cfg.model, cfg.augment, 10, w, ft) for m in (mt, mm)]
    aug = finetune_augment(cfg.augment)
    for step in range(3):
        p = sample_view_params(np.random.default_rng(step), aug, 24, (32, 32))
        lt, lm = (t.train_step(ds.images, ds.labels, p, 0.05)["loss"] for t in trainers)
        assert lt == pytest.approx(lm, abs=TOL_BACKENDS), step
    pt, pm = (t.predict(ds.images) for t in trainers)
    np.testing.assert_allclose(pt, pm, atol=TOL_BACKENDS * max(1, np.abs(pt).max()))
    st, sm = (t.state_dict() for t in trainers)
    for k in st:  # Nesterov SGD moved the same weights the same way, BN buffers included
        np.testing.assert_allclose(st[k], sm[k], atol=TOL_BACKENDS, err_msg=k)


# --------------------------------------------------------------------------- finetune CLI


def test_finetune_cli_writes_result_weights_and_replayable_subset(ckpt_path, tmp_path):
    out = tmp_path / "ft"
    args = ["finetune", "--checkpoint", str(ckpt_path), "--label-fraction", "0.1", "--epochs", "2",
            "--batch-size", "10", "--backend", "torch", "--seed", "7"]
    r = CliRunner().invoke(main, args + ["--out", str(out), "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    assert "SimCLR" in r.output and "random init" in r.output and "top-1" in r.output
    res = json.loads((out / "result.json").read_text())
    assert res == json.loads((tmp_path / "r.json").read_text())
    assert set(res["runs"]) == {"simclr", "random_init"} and res["n_labeled"] == 20
    assert res["per_class"] == [2] * 10 and res["recipe"]["optimizer"] == "momentum"
    for run in res["runs"].values():
        assert 0 <= run["top1"] <= 100 and run["top5"] >= run["top1"] and run["steps"] == 4
    # the saved indices are the seeded subset, and feeding them back reproduces the run
    train_labels = load_dataset(DATA, "train").labels
    np.testing.assert_array_equal(load_subset(out / "result.json"), select_subset(train_labels, 0.1, 7))
    r2 = CliRunner().invoke(main, args + ["--subset", str(out / "result.json"), "--no-baseline",
                                          "--json", str(tmp_path / "r2.json")])
    assert r2.exit_code == 0, r2.output
    res2 = json.loads((tmp_path / "r2.json").read_text())
    assert res2["subset_indices"] == res["subset_indices"] and res2["subset_source"] == "given"
    assert [h["loss"] for h in res2["runs"]["simclr"]["history"]] == \
        pytest.approx([h["loss"] for h in res["runs"]["simclr"]["history"]], abs=1e-6)
    # fine-tuned weights: torchvision names incl. fc, readable back as canonical weights
    w = load_exported(out / "finetuned-simclr.npz")
    assert set(w) == {s.name for s in classifier_specs(tiny_cfg().model, 10)}
    assert w["fc.weight"].any()  # trained away from its zero init


def test_finetune_cli_errors_are_named(ckpt_path, tmp_path):
    r = CliRunner().invoke(main, ["finetune", "--checkpoint", str(ckpt_path), "--epochs", "1",
                                  "--label-fraction", "1.5"])
    assert r.exit_code != 0 and "label_fraction" in r.output
    r = CliRunner().invoke(main, ["finetune", "--checkpoint", str(tmp_path / "none.h5"), "--epochs", "1"])
    assert r.exit_code != 0 and "none.h5" in r.output
    (tmp_path / "bad.json").write_text("{}")
    r = CliRunner().invoke(main, ["finetune", "--checkpoint", str(ckpt_path), "--epochs", "1",
                                  "--subset", str(tmp_path / "bad.json")])
    assert r.exit_code != 0 and "subset_indices" in r.output


# --------------------------------------------------------------------------- features


def test_features_cli_writes_h_z_labels_and_attributes(ckpt_path, tmp_path):
    torch = _torch()
    out = tmp_path / "f.h5"
    r = CliRunner().invoke(main, ["features", "--checkpoint", str(ckpt_path), "--out", str(out),
                                  "--with-z", "--backend", "torch", "--batch-size", "64"])
    assert r.exit_code == 0, r.output
    assert [p.name for p in tmp_path.iterdir()] == ["f.h5"]  # atomic: no temp file left
    ck = load_checkpoint(ckpt_path)
    from simclr_xb.backends.torch.step import Trainer
    trainer = Trainer(ck.config, None)
    trainer.load_state_dict(ck.weights)
    with h5py.File(out, "r") as f:
        a = dict(f.attrs)
        assert a["checkpoint"] == str(ckpt_path) and a["step"] == 42 and a["arch"] == "resnet18"
        assert a["feature_dim"] == 64 and a["z_dim"] == 64 and a["format"] == "simclr-xb-features"
        for split, n in (("train", 200), ("test", 100)):
            ds = load_dataset(DATA, split)
            h, z = f[split]["h"][()], f[split]["z"][()]
            assert h.shape == (n, 64) and z.shape == (n, 64) and h.dtype == np.float32
            np.testing.assert_array_equal(f[split]["labels"][()], ds.labels)
            np.testing.assert_array_equal(h, trainer.encode(ds.images, batch_size=64))
            trainer.model.eval()
            with torch.no_grad():
                z_ref = trainer.model.head(torch.from_numpy(h)).numpy()
            np.testing.assert_allclose(z, z_ref, rtol=1e-6, atol=1e-6)
    # test split only, no z
    r = CliRunner().invoke(main, ["features", "--checkpoint", str(ckpt_path), "--out", str(out),
                                  "--split", "test", "--backend", "torch"])
    assert r.exit_code == 0, r.output
    with h5py.File(out, "r") as f:
        assert list(f) == ["test"] and "z" not in f["test"] and f.attrs["z_dim"] == 0


def test_features_agree_across_backends(ckpt_path, tmp_path):
    _ft_module("torch"), _ft_module("mlx")
    from simclr_xb.features import load_features
    ck = load_checkpoint(ckpt_path)  # trained in bfloat16 (torch): features are float32 anyway
    ck.config = ck.config.with_value("train.precision", "bfloat16").validate()
    bf16 = save_checkpoint(tmp_path / "bf16.h5", ck)
    outs = {}
    for b in ("torch", "mlx"):
        r = CliRunner().invoke(main, ["features", "--checkpoint", str(bf16), "--split", "test",
                                      "--with-z", "--backend", b, "--out", str(tmp_path / f"{b}.h5")])
        assert r.exit_code == 0, r.output
        outs[b] = load_features(tmp_path / f"{b}.h5")[0]["test"]
    for k in ("h", "z"):
        ref = outs["torch"][k]
        np.testing.assert_allclose(outs["mlx"][k], ref, atol=TOL_BACKENDS * max(1, np.abs(ref).max()))


# --------------------------------------------------------------------------- export


def torchvision_resnet_shapes(depth: int, num_classes: int = 1000) -> dict[str, tuple]:
    """torchvision.models.resnet{depth}().state_dict() names and shapes, written out from
    torchvision's ResNet/_make_layer rules (independent of simclr_xb.resnet_spec)."""
    kind, layers = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]),
                    50: ("bottleneck", [3, 4, 6, 3])}[depth]
    exp = 1 if kind == "basic" else 4
    out: dict[str, tuple] = {}

    def bn(p, c):
        out.update({f"{p}.weight": (c,), f"{p}.bias": (c,), f"{p}.running_mean": (c,),
                    f"{p}.running_var": (c,), f"{p}.num_batches_tracked": ()})
    out["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
        for b in range(n):
            p, stride = f"layer{i + 1}.{b}", (2 if i > 0 and b == 0 else 1)
            if kind == "basic":
                out[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                bn(f"{p}.bn1", planes)
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
            else:
                out[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
                bn(f"{p}.bn1", planes)
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
                out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                bn(f"{p}.bn3", planes * 4)
            if b == 0 and (stride != 1 or inplanes != planes * exp):
                out[f"{p}.downsample.0.weight"] = (planes * exp, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * exp)
            inplanes = planes * exp
    out["fc.weight"], out["fc.bias"] = (num_classes, 512 * exp), (num_classes,)
    return out


@pytest.mark.parametrize("arch,depth", [("resnet18", 18), ("resnet50", 50)])
def test_export_names_and_shapes_are_torchvision_s(arch, depth):
    cfg = ModelConfig(arch=arch, width=1.0, cifar_stem=False)
    zeros = {s.name: np.zeros(s.shape) for s in encoder_specs(cfg)}
    state = encoder_state(zeros, cfg)
    want = {k: v for k, v in torchvision_resnet_shapes(depth).items() if not k.startswith("fc.")}
    assert list(state) == [s.name[len("encoder."):] for s in encoder_specs(cfg)]  # canonical order
    assert {k: tuple(v.shape) for k, v in state.items()} == want
    assert state["bn1.num_batches_tracked"].dtype == np.int64 and state["conv1.weight"].dtype == np.float32


def test_export_torchvision_loads_into_the_project_encoder_exactly(ckpt_path, tmp_path):
    torch = _torch()
    from simclr_xb.backends.torch.resnet import ResNet
    from simclr_xb.backends.torch.step import Trainer, set_weights
    ck = load_checkpoint(ckpt_path)
    r = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt_path), "--format", "torchvision",
                                  "--out", str(tmp_path / "enc.pt")])
    assert r.exit_code == 0, r.output
    assert "CIFAR stem" in r.output and "3x3" in r.output and "max-pool" in r.output
    sd = torch.load(tmp_path / "enc.pt", weights_only=True)
    assert set(sd) == {s.name[len("encoder."):] for s in encoder_specs(ck.config.model)}
    assert "head" not in " ".join(sd)
    with torch.device("meta"):
        a, b = ResNet(ck.config.model), ResNet(ck.config.model)
    a, b = a.to_empty(device="cpu"), b.to_empty(device="cpu")
    a.load_state_dict(sd, strict=True)
    set_weights(b, ck.weights, prefix="encoder.")
    x = torch.from_numpy(np.random.default_rng(0).random((6, 3, 16, 16), dtype=np.float32))
    with torch.no_grad():
        np.testing.assert_array_equal(a.eval()(x).numpy(), b.eval()(x).numpy())
    side = json.loads((tmp_path / "enc.pt.json").read_text())
    assert side["arch"] == "resnet18" and side["step"] == "42" and "CIFAR stem" in side["torchvision_notes"]
    trainer = Trainer(ck.config, None)
    trainer.load_state_dict(placeholder_head(load_exported(tmp_path / "enc.pt"), ck.config.model))
    images = load_dataset(DATA, "test").images[:20]
    ref = Trainer(ck.config, None)
    ref.load_state_dict(ck.weights)
    np.testing.assert_array_equal(trainer.encode(images), ref.encode(images))


def test_export_torchvision_matches_torchvision_resnet(tmp_path):
    torch = _torch()
    tv = pytest.importorskip("torchvision")
    from simclr_xb.backends.torch.resnet import ResNet
    from simclr_xb.backends.torch.step import set_weights
    cfg = preset("tiny").with_value("model.width", 1.0).with_value("model.cifar_stem", False) \
        .with_value("augment.image_size", 32).validate()
    w = init_weights(cfg.model, 0)
    res = export_encoder(w, cfg, "torchvision", tmp_path / "r18.pt")
    assert res.notes == []
    model = tv.models.resnet18()
    missing, unexpected = model.load_state_dict(torch.load(res.path, weights_only=True), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    model.fc = torch.nn.Identity()
    with torch.device("meta"):
        ours = ResNet(cfg.model)
    ours = ours.to_empty(device="cpu")
    set_weights(ours, w, prefix="encoder.")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(model.eval()(x).numpy(), ours.eval()(x).numpy(), rtol=1e-5, atol=1e-6)


def test_safetensors_round_trip_and_cross_readers(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a.weight": rng.normal(size=(3, 4, 2, 2)).astype(np.float32),
               "b": rng.normal(size=(5,)), "count": np.array(7, dtype=np.int64),
               "u": rng.integers(0, 255, (2, 3), dtype=np.uint8), "m": np.array([True, False]),
               "h": rng.normal(size=(4,)).astype(np.float16), "empty": np.zeros((0, 3), np.float32)}
    path = write_safetensors(tmp_path / "t.safetensors", tensors, {"k": "v", "config": "{}"})
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert (8 + n) % 8 == 0 and json.loads(raw[8:8 + n])["__metadata__"] == {"k": "v", "config": "{}"}
    back, meta = read_safetensors(path)
    assert meta == {"k": "v", "config": "{}"} and list(back) == list(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v)
    try:  # MLX ships its own safetensors reader and writer: cross-check both directions
        import mlx.core as mx
    except ImportError:
        mx = None
    if mx is not None:  # (MLX reads no F64: a file of the dtypes it has)
        part = {k: tensors[k] for k in ("a.weight", "count", "u", "h")}
        theirs = mx.load(str(write_safetensors(tmp_path / "p.safetensors", part, {"k": "v"})))
        for k, v in part.items():
            np.testing.assert_array_equal(np.array(theirs[k]), v)
        mx.save_safetensors(str(tmp_path / "mx.safetensors"), {"w": mx.array(tensors["a.weight"])},
                            metadata={"by": "mlx"})
        mine, m2 = read_safetensors(tmp_path / "mx.safetensors")
        np.testing.assert_array_equal(mine["w"], tensors["a.weight"])
        assert m2 == {"by": "mlx"}
    try:
        from safetensors.numpy import load_file
    except ImportError:
        load_file = None
    if load_file is not None:
        theirs = load_file(str(path))
        for k, v in tensors.items():
            np.testing.assert_array_equal(theirs[k], v)
    path.write_bytes(raw[:-3])  # truncated: named error, never garbage
    with pytest.raises(ValueError, match="t.safetensors"):
        read_safetensors(path)


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_exported_encoder_loads_into_mlx_and_matches_torch(ckpt_path, tmp_path, fmt):
    pytest.importorskip("mlx.core")
    _torch()
    from simclr_xb.backends.mlx.step import Trainer as MlxTrainer
    from simclr_xb.backends.torch.step import Trainer as TorchTrainer
    ck = load_checkpoint(ckpt_path)
    out = tmp_path / f"enc.{fmt}"
    r = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt_path), "--format", fmt, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert detect_format(out) == fmt
    meta = export_metadata(out)
    assert meta["arch"] == "resnet18" and meta["step"] == "42" and meta["feature_dim"] == "64"
    assert meta["cifar_stem"] == "true" and "3x3" in meta["torchvision_notes"]
    w = load_exported(out)
    assert set(w) == {s.name for s in encoder_specs(ck.config.model)}
    for k, v in w.items():
        np.testing.assert_array_equal(v, ck.weights[k], err_msg=k)
    images = load_dataset(DATA, "test").images[:40]
    mlx_exported = MlxTrainer(ck.config, None)
    mlx_exported.load_state_dict(placeholder_head(w, ck.config.model))
    mlx_ckpt = MlxTrainer(ck.config, None)
    mlx_ckpt.load_state_dict(ck.weights)
    torch_ckpt = TorchTrainer(ck.config, None)
    torch_ckpt.load_state_dict(ck.weights)
    h = mlx_exported.encode(images)
    np.testing.assert_array_equal(h, mlx_ckpt.encode(images))  # the same weights: bit-exact
    ref = torch_ckpt.encode(images)
    np.testing.assert_allclose(h, ref, atol=TOL_BACKENDS * max(1, np.abs(ref).max()))


def test_export_errors_are_named(ckpt_path, tmp_path):
    r = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt_path), "--format", "onnx",
                                  "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "onnx" in r.output
    (tmp_path / "junk.bin").write_bytes(b"abc")
    with pytest.raises(ValueError, match="junk.bin"):
        load_exported(tmp_path / "junk.bin")


def test_export_torchvision_failed_write_is_a_named_error(ckpt_path, tmp_path, monkeypatch):
    """torch.save reports a failed write (disk full) as RuntimeError: the export turns it into a
    clean error naming the file, and leaves no temp file and no partial export behind."""
    torch = _torch()

    def full_disk(obj, f, *a, **k):
        Path(f).write_bytes(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed "
                           "writing file data/0: file write failed")
    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "exp" / "enc.pt"
    r = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt_path), "--format", "torchvision",
                                  "--out", str(out)])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.exception, r.output)
    assert f"could not write {out}" in r.output and "PytorchStreamWriter failed" in r.output, r.output
    assert list((tmp_path / "exp").iterdir()) == []


def test_new_commands_have_help_without_importing_frameworks():
    for cmd in ("finetune", "features", "export"):
        r = CliRunner().invoke(main, [cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, cmd
    code = ("import sys; from click.testing import CliRunner; from simclr_xb.cli import main; "
            "[CliRunner().invoke(main, [c, '--help']) for c in ('finetune', 'features', 'export')]; "
            "assert 'torch' not in sys.modules and 'mlx' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
