"""HDF5 checkpoints: round trip, atomic writes, checksums, fallback, retention; import hygiene."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from simclr_xb import checkpoint as C
from simclr_xb.checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_good,
    load_checkpoint,
    rolling_checkpoints,
    save_checkpoint,
    save_rolling,
)
from simclr_xb.config import preset
from simclr_xb.resnet_spec import init_weights, model_specs

REPO = Path(__file__).resolve().parents[1]


def _ckpt(step: int = 3, epoch: int = 1) -> Checkpoint:
    cfg = preset("tiny").with_overrides(["model.width=0.125", "train.seed=7"])
    weights = init_weights(cfg.model, step)
    rng = np.random.default_rng(step)
    momentum = {s.name: rng.standard_normal(s.shape) for s in model_specs(cfg.model) if s.trainable}
    extra = {"losses": np.linspace(4.0, 3.0, 5), "rng_state": np.arange(4, dtype=np.uint64)}
    return Checkpoint(config=cfg, weights=weights, momentum=momentum, extra=extra, epoch=epoch,
                      step=step, backend="numpy", versions={"numpy": np.__version__})


def _assert_same(a: Checkpoint, b: Checkpoint) -> None:
    assert a.config == b.config and (a.epoch, a.step, a.backend) == (b.epoch, b.step, b.backend)
    for group in ("weights", "momentum", "extra"):
        da, db = getattr(a, group), getattr(b, group)
        assert set(da) == set(db), group
        for k in da:
            assert np.asarray(da[k]).dtype == np.asarray(db[k]).dtype, k
            assert np.shape(da[k]) == np.shape(db[k]), k
            np.testing.assert_array_equal(da[k], db[k])


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip_a_data_byte(path: Path, dataset: str) -> None:
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_offset()  # raw data of a contiguous dataset
    assert offset is not None
    with open(path, "r+b") as fh:
        fh.seek(offset + 3)
        b = fh.read(1)
        fh.seek(offset + 3)
        fh.write(bytes([b[0] ^ 0xFF]))


# --------------------------------------------------------------------------- round trip


def test_round_trip_every_group_config_and_counters(tmp_path):
    ck = _ckpt()
    path = save_checkpoint(tmp_path / "a.h5", ck)
    back = load_checkpoint(path)
    _assert_same(ck, back)
    assert back.versions == {"numpy": np.__version__} and back.path == path
    assert back.weights["encoder.bn1.num_batches_tracked"].shape == ()
    sd = back.state_dict()
    assert "momentum/encoder.conv1.weight" in sd and "encoder.conv1.weight" in sd
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == C.FORMAT and int(f.attrs["format_version"]) == C.FORMAT_VERSION


def test_default_versions_are_recorded(tmp_path):
    ck = _ckpt()
    ck.versions = {}
    back = load_checkpoint(save_checkpoint(tmp_path / "v.h5", ck))
    assert back.versions["numpy"] == np.__version__ and "simclr_xb" in back.versions


# --------------------------------------------------------------------------- atomicity


def test_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.h5"
    save_checkpoint(path, _ckpt(step=1))
    real = h5py.Group.create_dataset
    calls = {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:  # the disk fills up midway
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(path, _ckpt(step=2))
    assert str(path) in str(e.value) and "untouched" in str(e.value)
    monkeypatch.undo()
    assert load_checkpoint(path).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.h5"]  # no temp file left


def test_crash_of_any_kind_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.h5"
    save_checkpoint(path, _ckpt(step=1))
    real = h5py.Group.create_dataset
    calls = {"n": 0}

    def crashing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt  # not an OSError: still no half-written target
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", crashing)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _ckpt(step=2))
    monkeypatch.undo()
    assert load_checkpoint(path).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.h5"]
    # A real non-OSError from h5py: a unicode array it cannot store.
    bad = _ckpt(step=2)
    bad.extra["names"] = np.array(["a", "b"])
    with pytest.raises(TypeError):
        save_checkpoint(path, bad)
    assert load_checkpoint(path).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.h5"]


def test_failed_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.h5"
    save_checkpoint(path, _ckpt(step=1))

    def no_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(C.os, "replace", no_replace)
    with pytest.raises(CheckpointError, match="could not write checkpoint"):
        save_checkpoint(path, _ckpt(step=2))
    monkeypatch.undo()
    assert load_checkpoint(path).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.h5"]


def test_leftover_temp_files_break_nothing(tmp_path):
    run = tmp_path / "run"
    save_rolling(run, _ckpt(step=1), keep=2)
    # A crash (kill -9) after the temp file was created leaves it behind.
    (run / f".ckpt-{2:08d}.h5.tmp-99999").write_bytes(b"\x89HDF half a file")
    (run / ".last.h5.tmp-99999").write_bytes(b"junk")
    (run / f".ckpt-{2:08d}.h5.tmp-{os.getpid()}").write_bytes(b"junk from this pid")
    assert [p.name for p in rolling_checkpoints(run)] == [f"ckpt-{1:08d}.h5"]
    assert latest_good(run).step == 1
    save_rolling(run, _ckpt(step=2), keep=2)
    assert latest_good(run).step == 2
    assert [p.name for p in rolling_checkpoints(run)] == [f"ckpt-{2:08d}.h5", f"ckpt-{1:08d}.h5"]


# --------------------------------------------------------------------------- corruption


def test_truncated_file_is_detected_and_named(tmp_path):
    path = save_checkpoint(tmp_path / "t.h5", _ckpt())
    _truncate(path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_flipped_data_byte_fails_the_checksum(tmp_path):
    path = save_checkpoint(tmp_path / "c.h5", _ckpt())
    _flip_a_data_byte(path, "weights/encoder.layer1.0.conv1.weight")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "checksum" in str(e.value) and str(path) in str(e.value)
    assert load_checkpoint(path, verify=False).step == 3  # readable, but not trusted by default


@pytest.mark.parametrize("signature", [b"TREE", b"SNOD", b"HEAP"])
def test_damaged_hdf5_metadata_is_a_checkpoint_error(tmp_path, signature):
    # h5py reports damaged B-trees / heaps as RuntimeError: it must still become a
    # CheckpointError naming the file, or latest_good could not fall back past it.
    run = tmp_path / "run"
    save_rolling(run, _ckpt(step=1), keep=3)
    save_rolling(run, _ckpt(step=2), keep=3)
    newest = run / f"ckpt-{2:08d}.h5"
    data = bytearray(newest.read_bytes())
    i = data.find(signature)
    assert i >= 0
    data[i:i + 4] = b"XXXX"
    for p in (newest, run / "last.h5"):  # the same bytes: fine whether or not they share an inode
        p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(newest)
    assert str(newest) in str(e.value)
    with pytest.raises(CheckpointError):
        load_checkpoint(run / "last.h5")
    assert latest_good(run).step == 1


def test_edited_attribute_or_added_dataset_fails_the_checksum(tmp_path):
    path = save_checkpoint(tmp_path / "e.h5", _ckpt())
    with h5py.File(path, "r+") as f:
        f.attrs["step"] = 4
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)
    path = save_checkpoint(tmp_path / "f.h5", _ckpt())
    with h5py.File(path, "r+") as f:
        f["extra"].create_dataset("sneaky", data=np.zeros(2))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_newer_format_version_is_rejected(tmp_path):
    path = save_checkpoint(tmp_path / "n.h5", _ckpt())
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = C.FORMAT_VERSION + 1
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert f"format version {C.FORMAT_VERSION + 1}" in msg and "upgrade" in msg and str(path) in msg


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.h5")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a simclr-xb checkpoint"):
        load_checkpoint(foreign)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5 at all")
    with pytest.raises(CheckpointError, match="text.h5"):
        load_checkpoint(text)


# --------------------------------------------------------------------------- run folders


def test_rolling_retention_and_last_points_at_the_newest(tmp_path):
    run = tmp_path / "run"
    for step in range(1, 6):
        last = save_rolling(run, _ckpt(step=step), keep=2)
        assert last == run / "last.h5"
        assert load_checkpoint(last).step == step
    names = sorted(p.name for p in run.iterdir())
    assert names == [f"ckpt-{4:08d}.h5", f"ckpt-{5:08d}.h5", "last.h5"]
    assert [load_checkpoint(p).step for p in rolling_checkpoints(run)] == [5, 4]
    save_rolling(run, _ckpt(step=6), keep=0)  # keep 0 still keeps the newest
    assert [p.name for p in rolling_checkpoints(run)] == [f"ckpt-{6:08d}.h5"]


def test_latest_good_falls_back_to_the_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2, 3):
        save_rolling(run, _ckpt(step=step), keep=3)
    newest = run / f"ckpt-{3:08d}.h5"
    for p in (newest, run / "last.h5"):  # truncation is idempotent even if they share an inode
        _truncate(p)
    warnings = []
    ck = latest_good(run, warn=warnings.append)
    assert ck.step == 2 and ck.path == run / f"ckpt-{2:08d}.h5"
    assert len(warnings) == 2 and "last.h5" in warnings[0] and newest.name in warnings[1]
    # Given the file itself, the same fallback.
    assert latest_good(newest).step == 2
    # Nothing readable at all: an error that lists every failure.
    for p in rolling_checkpoints(run):
        _truncate(p, 0.1)
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        latest_good(run)
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        latest_good(tmp_path / "empty_dir_that_does_not_exist")


def test_latest_good_prefers_last_h5(tmp_path):
    run = tmp_path / "run"
    save_rolling(run, _ckpt(step=1), keep=2)
    save_rolling(run, _ckpt(step=2), keep=2)
    assert latest_good(run).path == run / "last.h5" and latest_good(run).step == 2


# --------------------------------------------------------------------------- import hygiene

CORE = ("simclr_xb", "simclr_xb.config", "simclr_xb.augment", "simclr_xb.schedules",
        "simclr_xb.reference", "simclr_xb.resnet_spec", "simclr_xb.backend", "simclr_xb.checkpoint",
        "simclr_xb.data")


def test_core_imports_no_framework(tmp_path):
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {CORE!r}]; "
            "bad = [m for m in ('torch', 'mlx') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_backends_is_not_a_top_level_name(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import backends"], cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode != 0 and "backends" in r.stderr
    # From the repository root the folder is on sys.path, but it refuses to import as a stray name.
    r = subprocess.run([sys.executable, "-c", "import backends"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0 and "simclr_xb.backends" in r.stderr
