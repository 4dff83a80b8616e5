"""What only the PyTorch backend has: its augmentation's chunking and scratch buffers, the
LARS optimizer class, torch's RNG, bfloat16 autocast, channels_last, the torch.compile fallback,
module internals, and what torch's api accepts beyond the interface (probe entries, missing
momenta). The per-component tests against the float64 oracle and the Trainer behaviour both
backends share are in tests/test_backends.py; tolerances against the oracle come from
conformance/tolerances.py (tolerance_for), as there.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_backends import AUG, R18, TINY, check, images_u8, tiny_batch, views  # noqa: E402

from simclr_xb import reference as R  # noqa: E402
from simclr_xb.augment import ViewParams, sample_pair, sample_view_params  # noqa: E402
from simclr_xb.backend import get_backend  # noqa: E402
from simclr_xb.config import AugmentConfig, Config, TrainConfig  # noqa: E402
from simclr_xb.resnet_spec import init_weights, model_specs  # noqa: E402

api = get_backend("torch")
from simclr_xb.backends.torch import augment as taug  # noqa: E402
from simclr_xb.backends.torch.lars import LARS  # noqa: E402
from simclr_xb.backends.torch.step import Trainer  # noqa: E402

DTYPES = ("float32", "float64")

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.mark.parametrize("dtype", DTYPES)
def test_augment_in_many_cpu_chunks(monkeypatch, dtype):
    """Chunks of 3 views for crop/jitter/grayscale and blur groups of 2: same numbers."""
    cfg = AugmentConfig(image_size=12, jitter_p=0.9, gray_p=0.4, blur_p=0.6)
    per_view = 3 * 12 * 12 * np.dtype(dtype).itemsize
    monkeypatch.setattr(taug, "CPU_CHUNK_BYTES_SMALL_VIEWS", 3 * per_view)
    monkeypatch.setattr(taug, "CPU_CHUNK_BYTES", 2 * per_view)
    rng = np.random.default_rng(14)
    u8 = images_u8(rng, 11, 15, 13)
    p = sample_view_params(rng, cfg, 11, (15, 13))
    check("augment.full.16px", dtype, api.augment(u8, p, cfg, dtype), R.augment(u8, p, cfg))


def test_augment_results_never_alias_scratch_buffers():
    rng = np.random.default_rng(15)
    u8 = torch.from_numpy(images_u8(rng, 6, 20, 24))
    p, q = sample_view_params(rng, AUG, 6, (20, 24)), sample_view_params(rng, AUG, 6, (20, 24))
    first = taug.augment(u8, p, AUG)
    kept = first.clone()
    taug.augment(u8, q, AUG)
    taug.adjust_hue(first, np.full(6, 0.25))
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    with pytest.raises(ValueError, match="uint8"):
        taug.augment(u8.float(), p, AUG)


def test_augment_two_views_in_one_call_equals_two_calls():
    """The Trainer augments [view 1; view 2] in one call via ``source``: same numbers."""
    rng = np.random.default_rng(12)
    u8 = torch.from_numpy(images_u8(rng, 4, 20, 24))
    p1, p2 = sample_pair(AUG, 4, (20, 24), seed=0, epoch=0, step=0)
    both = taug.augment(u8, ViewParams.concat([p1, p2]), AUG, source=np.r_[0:4, 0:4])
    sep = torch.cat([taug.augment(u8, p1, AUG), taug.augment(u8, p2, AUG)])
    assert both.shape == (8, 3, 16, 16) and both.dtype == torch.float32
    torch.testing.assert_close(both, sep, rtol=0, atol=0)


def test_lars_skips_params_without_grad_and_names_buffers():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(2, 2))
    opt = LARS([("a", a), ("b", b)], {"a": True, "b": False}, lr=0.1)
    assert set(opt.momentum_buffers()) == {"a", "b"}
    assert all(float(v.abs().sum()) == 0 for v in opt.momentum_buffers().values())
    b.grad = torch.ones(2, 2)
    opt.step()
    assert torch.equal(a.detach(), torch.ones(3))  # no grad: untouched
    assert not torch.equal(b.detach(), torch.ones(2, 2))
    with pytest.raises(ValueError, match="no exclusion flag"):
        LARS([("c", a)], {}, lr=0.1)


def _three_losses(seed_torch: int | None = None):
    if seed_torch is not None:
        torch.manual_seed(seed_torch)
    tr = Trainer(TINY, 3, "cpu")
    images, labels = tiny_batch()
    out = []
    for s in range(3):
        if seed_torch is not None:
            torch.manual_seed(seed_torch + s)
        out.append(tr.train_step(images, labels, *views(TINY, 4, (20, 20), s), 0.4))
    return out, tr.state_dict()


def test_determinism_and_no_torch_randomness():
    """Same seed -> identical metrics and weights; torch's global RNG plays no part and is not
    consumed."""
    rng_before = torch.get_rng_state()
    a, sa = _three_losses()
    assert torch.equal(torch.get_rng_state(), rng_before)
    b, sb = _three_losses(seed_torch=123)
    c, _ = _three_losses(seed_torch=7)
    assert a == b == c
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_bfloat16_precision_runs_in_bf16():
    images, labels = tiny_batch()
    p1, p2 = views(TINY, 4, (20, 20), 0)
    f32 = Trainer(TINY, 3, "cpu").train_step(images, labels, p1, p2, 0.4)
    bf = Trainer(dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, precision="bfloat16")),
                 3, "cpu")
    m = bf.train_step(images, labels, p1, p2, 0.4)
    assert all(math.isfinite(v) for v in m.values())
    assert m["loss"] != f32["loss"] and abs(m["loss"] - f32["loss"]) < 0.1  # autocast really ran
    assert bf.state_dict()["encoder.conv1.weight"].dtype == np.float32  # master weights float32


def test_channels_last_matches_default_layout():
    images, labels = tiny_batch()
    p1, p2 = views(TINY, 4, (20, 20), 0)
    cl = Trainer(dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, channels_last=True)),
                 3, "cpu")
    assert cl.model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    init = init_weights(TINY.model, 3, 3)
    for k in ("encoder.conv1.weight", "encoder.layer2.0.downsample.0.weight"):  # OIHW, not OHWI
        np.testing.assert_array_equal(cl.state_dict()[k], init[k].astype(np.float32))
    a = cl.train_step(images, labels, p1, p2, 0.4)
    b = Trainer(TINY, 3, "cpu").train_step(images, labels, p1, p2, 0.4)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken_compile(model, *a, **k):
        def run(x):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    images, labels = tiny_batch()
    p1, p2 = views(TINY, 4, (20, 20), 0)
    tr = Trainer(dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, compile=True)), 3, "cpu")
    with pytest.warns(UserWarning, match="torch.compile failed"):
        m = tr.train_step(images, labels, p1, p2, 0.4)
    assert m == Trainer(TINY, 3, "cpu").train_step(images, labels, p1, p2, 0.4)


@pytest.mark.parametrize("cfg", [R18, dataclasses.replace(R18, arch="resnet50", cifar_stem=False),
                                 dataclasses.replace(R18, head_bn=False, head_layers=3, head_hidden=24)],
                         ids=["r18", "r50", "plain_head"])
def test_module_state_dict_is_in_canonical_order(cfg):
    """The nn.Module's own state_dict: canonical names in the canonical order (the key set of
    Trainer.state_dict is tests/test_backends.py's)."""
    tr = Trainer(Config(model=cfg, train=TrainConfig(batch_size=2)), num_classes=5, device="cpu")
    assert list(tr.model.state_dict()) == [s.name for s in model_specs(cfg, 5)]


def test_train_step_passes_probe_entries_and_missing_momenta():
    """torch's api.train_step takes a missing momentum as zeros and passes probe weights and
    extra momentum keys through unchanged (MLX refuses them)."""
    images, _ = tiny_batch()
    w = init_weights(TINY.model, 3, num_classes=3)
    rng = np.random.default_rng(3)
    mom = {s.name: rng.normal(0, 0.01, s.shape) for s in model_specs(TINY.model) if s.trainable}
    del mom["encoder.conv1.weight"]  # missing: counts as zeros
    mom["extra"] = np.ones(2)  # not a parameter: passed through
    p1, p2 = views(TINY, 4, (20, 20), 0)
    loss, nw, nm = api.train_step(w, mom, images, p1, p2, 0.6, TINY, "float64")
    rloss, rw, rm = R.train_step(w, mom, images, p1, p2, 0.6, TINY)
    assert set(nw) == set(rw) and set(nm) == set(rm) and "probe.weight" in nw and "extra" in nm
    check("train_step.1", "float64", (loss, nw, nm), (rloss, rw, rm))
    np.testing.assert_array_equal(nw["probe.weight"], w["probe.weight"])


def test_encode_restores_training_mode():
    tr = Trainer(TINY, 3, "cpu")
    tr.encode(tiny_batch(n=5)[0], batch_size=2)
    assert tr.model.training
