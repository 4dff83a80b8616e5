"""Bad inputs: each gives an error that names the field or file and says what was expected.

One test per row of docs/bad-inputs.md (same order); the commands run in-process through
the click CLI (``simclr-xb train`` / ``eval``) with the torch backend and a tiny config.
"""
from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from simclr_xb import checkpoint as C
from simclr_xb.checkpoint import Checkpoint, latest_good, save_checkpoint
from simclr_xb.cli import main
from simclr_xb.config import preset
from simclr_xb.resnet_spec import init_weights

TINY = ["--backend", "torch", "--quiet", "--set", "model.width=0.125", "--set", "augment.image_size=16",
        "--set", "data.num_workers=0"]


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def failed_with(r, *parts: str) -> str:
    """Assert a clean user error (exit code 1, ``Error: ...``, no traceback) holding ``parts``."""
    assert r.exit_code in (1, 2) and isinstance(r.exception, (SystemExit, type(None))), \
        f"exit {r.exit_code}: {r.output}\n{r.exception!r}"  # 1: UserError, 2: click usage error
    assert "Error: " in r.output and "Traceback" not in r.output
    for p in parts:
        assert p in r.output, f"{p!r} not in:\n{r.output}"
    return r.output


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def h5data(tmp_path_factory) -> Path:
    """64 random 32x32 images, 10 classes, in the layout the ``hdf5:`` reader takes."""
    path = tmp_path_factory.mktemp("data") / "small.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["images"] = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
        f["labels"] = np.arange(64) % 10
    return path


def _ckpt(path: Path, arch="resnet18", weights_arch=None, step=2) -> Path:
    cfg = preset("tiny").with_overrides(["model.width=0.125", f"model.arch={arch}"])
    wcfg = cfg.with_overrides([f"model.arch={weights_arch or arch}"])
    save_checkpoint(path, Checkpoint(config=cfg, weights=init_weights(wcfg.model, 0), step=step))
    return path


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize("args,parts", [
    (["--set", "train.batch_size=1"], ["config field train.batch_size = 1 is invalid: expected an integer >= 2"]),
    (["--set", "model.width=0.3"], ["config field model.width = 0.3 is invalid", "64 * width a positive integer"]),
    (["--set", "train.epochs=many"], ["config field train.epochs = 'many' has the wrong type: expected int"]),
    (["--set", "model.depth=3"], ["unknown config field 'model.depth': model has fields"]),
    (["--set", "train.on_nonfinite=ignore"],
     ["config field train.on_nonfinite = 'ignore' is invalid: expected 'stop' or 'skip'"]),
    (["--temperature", "0"], ["config field loss.temperature = 0.0 is invalid: expected a finite value > 0"]),
    (["--image-size", "4"], ["config field augment.image_size = 4 is invalid: expected an integer >= 8"]),
], ids=["batch", "width", "type", "unknown-field", "on_nonfinite", "temperature", "image-size"])
def test_invalid_config_values_name_the_field(tmp_path, args, parts):
    failed_with(cli("train", "--out", tmp_path / "o", *args), *parts)
    assert not (tmp_path / "o").exists()  # nothing created before the config is valid


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nbatch_size = 4\n")
    failed_with(cli("train", "--out", tmp_path / "o", "--config", bad), f"config file {bad} does not parse")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('preset = "huge"\n')
    failed_with(cli("train", "--out", tmp_path / "o", "--config", unknown),
                f"{unknown}: unknown preset 'huge': expected one of ['cifar', 'imagenet', 'tiny']")


def test_unknown_preset_or_backend(tmp_path):
    failed_with(cli("train", "--out", tmp_path, "--preset", "huge"),
                "Invalid value for '--preset': 'huge' is not one of 'cifar', 'imagenet', 'tiny'")
    failed_with(cli("train", "--out", tmp_path, "--backend", "jax"),
                "Invalid value for '--backend': 'jax' is not one of 'torch', 'mlx'")


# ------------------------------------------------------------------------------ data


def test_batch_larger_than_the_dataset(tmp_path, h5data):
    failed_with(cli("train", *TINY, "--out", tmp_path / "o", "--data", f"hdf5:{h5data}", "--batch-size", 128),
                "config field train.batch_size = 128 is larger than the dataset", "(64 training images)",
                "expected a batch size <= 64")


def test_image_size_and_stem(tmp_path, h5data):
    """Any image_size >= 8 runs with either stem (padding keeps every map >= 1x1); below 8 the
    config refuses it; the ImageNet stem on small images trains but warns."""
    r = cli("train", *TINY, "--out", tmp_path / "o", "--data", f"hdf5:{h5data}", "--batch-size", 16,
            "--max-steps", 1, "--image-size", 8, "--set", "model.cifar_stem=false")
    assert r.exit_code == 0, r.output
    assert "warning: model.cifar_stem = false (ImageNet stem, total stride 32) with augment.image_size = 8 " \
           "leaves 1x1 feature maps from layer2 on" in r.output
    assert "--set model.cifar_stem=true" in r.output
    r = cli("train", *TINY, "--out", tmp_path / "p", "--data", f"hdf5:{h5data}", "--batch-size", 16,
            "--max-steps", 1, "--image-size", 32, "--set", "model.cifar_stem=false")
    assert r.exit_code == 0 and "warning: model.cifar_stem" not in r.output, r.output


def test_missing_or_empty_data_folder(tmp_path):
    missing = tmp_path / "nowhere"
    failed_with(cli("train", *TINY, "--out", tmp_path / "o", "--data", f"folder:{missing}"),
                f"image folder {missing} does not exist or is not a folder")
    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    failed_with(cli("train", *TINY, "--out", tmp_path / "o", "--data", f"folder:{empty}"),
                f"image folder {empty} holds no images: expected {empty}/<class>/<image> with extensions .png")
    failed_with(cli("train", *TINY, "--out", tmp_path / "o", "--data", "cifar10", "--data-root", empty),
                "dataset 'cifar10' not found: expected the files cifar-10-batches-py/batches.meta",
                str(empty))


def _image_folder(root: Path, bad: bool) -> Path:
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    if bad:
        (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def test_corrupt_image_fails_or_is_skipped(tmp_path):
    folder = _image_folder(tmp_path / "imgs", bad=True)
    failed_with(cli("train", *TINY, "--out", tmp_path / "o", "--data", f"folder:{folder}", "--batch-size", 4),
                f"cannot decode image {folder / 'a' / 'broken.png'}", "--skip-bad-images")
    for flag in (["--skip-bad-images"], ["--set", "data.skip_bad_images=true"]):
        out = tmp_path / f"ok{len(flag)}"
        r = cli("train", *TINY, "--out", out, "--data", f"folder:{folder}", "--batch-size", 4,
                "--max-steps", 1, *flag)
        assert r.exit_code == 0, r.output
        assert f"warning: skipped 1 undecodable image(s) in {folder}" in r.output
        assert "8 images of median " in r.output  # a folder streams at its own sizes


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], data: bytes) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + data)


def test_truncated_idx_file(tmp_path):
    root = tmp_path / "mnist"
    root.mkdir()
    _write_idx(root / "train-images-idx3-ubyte", 0x803, (20, 28, 28), bytes(20 * 28 * 28 - 100))
    _write_idx(root / "train-labels-idx1-ubyte", 0x801, (20,), bytes(20))
    failed_with(cli("train", *TINY, "--out", tmp_path / "o", "--data", "mnist", "--data-root", root),
                f"IDX file {root / 'train-images-idx3-ubyte'} is truncated: dims (20, 28, 28) need 15696 bytes, "
                f"got 15596")


def test_truncated_cifar_file(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    batch = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": list(range(10)) * 2}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    whole = (root / "data_batch_3").read_bytes()
    (root / "data_batch_3").write_bytes(whole[: len(whole) // 2])
    failed_with(cli("train", *TINY, "--out", tmp_path / "o", "--data", "cifar10", "--data-root", tmp_path),
                f"CIFAR file {root / 'data_batch_3'} is", "truncated or corrupt")


def test_truncated_hdf5_file(tmp_path, h5data):
    cut = tmp_path / "cut.h5"
    whole = h5data.read_bytes()
    cut.write_bytes(whole[: len(whole) // 3])
    failed_with(cli("train", *TINY, "--out", tmp_path / "o", "--data", f"hdf5:{cut}"),
                f"HDF5 file {cut} is unreadable (truncated or not HDF5?)")


# ------------------------------------------------------------------------------ checkpoints


def test_checkpoint_of_another_architecture_eval_and_resume(tmp_path, h5data):
    wrong = _ckpt(tmp_path / "a" / "wrong.h5", arch="resnet18", weights_arch="resnet34")
    want = (f"checkpoint {wrong} does not fit the architecture of its own config (resnet18 x0.125, CIFAR "
            f"stem): its weights do not match the model: unexpected")
    failed_with(cli("eval", "--checkpoint", wrong, "--data", f"hdf5:{h5data}"), want)
    failed_with(cli("train", *TINY, "--out", tmp_path / "a", "--resume", wrong, "--data", f"hdf5:{h5data}"),
                want)
    # a good resnet18 checkpoint resumed with an explicit, different architecture
    good = _ckpt(tmp_path / "b" / "good.h5", arch="resnet18")
    failed_with(cli("train", *TINY, "--out", tmp_path / "b", "--resume", good, "--data", f"hdf5:{h5data}",
                    "--arch", "resnet34"),
                f"cannot resume from {good} with a different config: ",
                "model.arch = 'resnet18' in the checkpoint, 'resnet34' requested",
                "A resumed run keeps its checkpoint's config", "start a new run with another --out")


def test_checkpoint_from_a_newer_format_version(tmp_path, h5data):
    path = _ckpt(tmp_path / "run" / "last.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = C.FORMAT_VERSION + 1
    want = (f"checkpoint {path} has format version {C.FORMAT_VERSION + 1}; this simclr-xb reads versions "
            f"up to {C.FORMAT_VERSION}: upgrade simclr-xb")
    failed_with(cli("eval", "--checkpoint", path, "--data", f"hdf5:{h5data}"), want)
    failed_with(cli("train", *TINY, "--out", tmp_path / "run", "--resume", tmp_path / "run",
                    "--data", f"hdf5:{h5data}"), want)


def test_resume_with_no_checkpoint(tmp_path, h5data):
    (tmp_path / "run").mkdir()
    failed_with(cli("train", *TINY, "--out", tmp_path / "run", "--resume", tmp_path / "run",
                    "--data", f"hdf5:{h5data}"),
                f"no checkpoint found at {tmp_path / 'run'}: expected a checkpoint file, or a run folder "
                f"holding last.h5 or ckpt-<step>.h5")


# ------------------------------------------------------------------------------ output


def test_output_folder_under_a_regular_file(tmp_path, h5data):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "sub"
    failed_with(cli("train", *TINY, "--out", out, "--data", f"hdf5:{h5data}"),
                f"output folder {out} is not writable (Not a directory: {out}): choose another --out")


def test_output_folder_without_write_permission(tmp_path, h5data):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("running as root: permission bits do not block writes (the regular-file case "
                    "above covers the message)")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        failed_with(cli("train", *TINY, "--out", locked, "--data", f"hdf5:{h5data}"),
                    f"output folder {locked} is not writable (Permission denied")
    finally:
        locked.chmod(0o700)


def test_disk_full_while_writing_a_checkpoint(tmp_path, h5data, monkeypatch):
    real_file, calls = h5py.File, []

    def file(name, mode="r", *a, **k):
        if mode == "w":
            calls.append(name)
            if len(calls) == 2:  # the second checkpoint (step 4): the disk fills up mid-write
                with open(name, "wb") as fh:
                    fh.write(b"\x00" * 1000)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_file(name, mode, *a, **k)

    monkeypatch.setattr(C.h5py, "File", file)
    out = tmp_path / "run"
    r = cli("train", *TINY, "--out", out, "--data", f"hdf5:{h5data}", "--batch-size", 16,
            "--set", "train.checkpoint_every=2", "--max-steps", 6)
    failed_with(r, f"could not write checkpoint {out / 'ckpt-00000004.h5'}: no space left on the device "
                   f"(disk full or quota exceeded)", "the previous checkpoint, if any, is untouched")
    monkeypatch.undo()
    assert latest_good(out).step == 2  # verifies the checksum
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".h5" or ".tmp" in p.name) == \
        ["ckpt-00000002.h5", "last.h5"]


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("cifar_stem", [True, False], ids=["cifar-stem", "imagenet-stem"])
def test_smallest_image_size_trains_with_either_stem(backend, cifar_stem):
    """What actually works: the smallest allowed view (8 px) takes one finite training step
    with the ResNet-18 and ResNet-50 layouts of either stem (padding keeps every map >= 1x1)."""
    if backend == "mlx":
        pytest.importorskip("mlx.core", reason="MLX is not installed")
    from simclr_xb.augment import sample_pair
    from simclr_xb.backend import get_backend
    for arch in ("resnet18", "resnet50"):
        cfg = preset("tiny").with_overrides([f"model.arch={arch}", "model.width=0.125", "augment.image_size=8",
                                             "train.batch_size=2", f"model.cifar_stem={str(cifar_stem).lower()}"])
        images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        p1, p2 = sample_pair(cfg.augment, 2, (32, 32), 0, 0, 0, 0)
        out = get_backend(backend).Trainer(cfg, 10).train_step(images, np.arange(2), p1, p2, 0.1)
        assert np.isfinite(out["loss"]), (arch, out)
