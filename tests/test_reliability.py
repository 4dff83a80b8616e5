"""Crash safety, signals, determinism and resume (exact per-step losses), non-finite values.

Subprocess tests run ``python -m simclr_xb.cli train`` (torch, CPU, OMP_NUM_THREADS=1) on a
64-image HDF5 copy of the ``shapes`` dataset with a narrow ResNet-18 (width 0.125, 16 px
views): 8 steps, a checkpoint every 2. Test hooks live in this file (the child's
``-c`` program below), never in the package: ``HANG_AT_SAVE=<file name>`` makes the child
sleep inside :func:`simclr_xb.checkpoint.save_checkpoint` between writing the temporary file
and ``os.replace`` (so the parent can SIGKILL it there deterministically);
``STEP_SLEEP=<s>`` slows every step down so that a signal lands mid-run.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from simclr_xb.checkpoint import latest_good, load_checkpoint, rolling_checkpoints
from simclr_xb.config import preset
from simclr_xb.data import Dataset, make_shapes
from simclr_xb.data.shapes import SHAPE_CLASSES
from simclr_xb.progress import MetricsLog
from simclr_xb.train import NonFiniteLossError, train

TIMEOUT = 240  # seconds for one child on a loaded 2-core machine
N_IMAGES, BATCH, EPOCHS = 64, 16, 2
STEPS = N_IMAGES // BATCH * EPOCHS  # 8

CHILD = r"""
import os, sys, time
import torch
torch.set_num_threads(1)
hang = os.environ.get("HANG_AT_SAVE")
if hang:
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        if os.path.basename(str(dst)) == hang:
            with open(os.environ["HANG_MARKER"], "w") as f:
                f.write(str(src))
            time.sleep(3600)
        return real_replace(src, dst, *a, **k)
    os.replace = replace
sleep = float(os.environ.get("STEP_SLEEP", "0"))
if sleep:
    from simclr_xb.backends.torch import step as S
    real_step = S.Trainer.train_step
    def train_step(self, *a, **k):
        out = real_step(self, *a, **k)
        time.sleep(sleep)
        return out
    S.Trainer.train_step = train_step
from simclr_xb.cli import main
main(sys.argv[1:], prog_name="simclr-xb")
"""


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def shapes64(tmp_path_factory) -> Path:
    """64 shapes images (32x32) and labels in an HDF5 file the ``hdf5:`` reader takes."""
    path = tmp_path_factory.mktemp("data") / "shapes64.h5"
    images, labels = make_shapes(N_IMAGES, "train", 0)
    with h5py.File(path, "w") as f:
        f["images"], f["labels"] = images, labels
        f.attrs["classes"] = json.dumps(list(SHAPE_CLASSES))
    return path


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--backend", "torch", "--data", f"hdf5:{data}", "--out", str(out), "--quiet",
            "--batch-size", str(BATCH), "--epochs", str(EPOCHS), "--set", "model.width=0.125",
            "--set", "augment.image_size=16", "--set", "train.checkpoint_every=2",
            "--set", "train.keep_last=2", "--set", "data.num_workers=0", *extra]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def start(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], env=child_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    p = start(args, **env)
    out, err = p.communicate(timeout=TIMEOUT)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = TIMEOUT) -> None:
    t_end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > t_end:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in MetricsLog.read(run_dir / "metrics.jsonl")}


def metric_lines(run_dir: Path) -> int:
    p = run_dir / "metrics.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0


def assert_same_final_state(run_dir: Path, ref_dir: Path) -> None:
    a, b = load_checkpoint(run_dir / "last.h5"), load_checkpoint(ref_dir / "last.h5")
    assert a.step == b.step == STEPS
    for group in ("weights", "momentum"):
        ga, gb = getattr(a, group), getattr(b, group)
        assert set(ga) == set(gb)
        for k in ga:
            np.testing.assert_array_equal(ga[k], gb[k], err_msg=f"{group}/{k} differs")
    assert losses(run_dir) == losses(ref_dir)


class _Reference:
    """An uninterrupted CLI run, started in the background when first requested (so it runs
    beside the requesting test's own child) and waited for at :attr:`dir`."""

    def __init__(self, data: Path, out: Path):
        self.out, self.proc, self.done = out, start(train_args(data, out)), False

    @property
    def dir(self) -> Path:
        if not self.done:
            out, err = self.proc.communicate(timeout=TIMEOUT)
            assert self.proc.returncode == 0, err
            assert sorted(losses(self.out)) == list(range(1, STEPS + 1))
            self.done = True
        return self.out


@pytest.fixture(scope="module")
def reference(shapes64, tmp_path_factory):
    ref = _Reference(shapes64, tmp_path_factory.mktemp("ref") / "run")
    yield ref
    if ref.proc.poll() is None:
        ref.proc.kill()
        ref.proc.communicate()


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


# --------------------------------------------------------------------------- crash safety


@pytest.mark.slow
def test_sigkill_inside_checkpoint_write_resumes_to_identical_weights(shapes64, reference, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "hanging"
    p = start(train_args(shapes64, out), HANG_AT_SAVE="ckpt-00000004.h5", HANG_MARKER=str(marker))
    try:
        wait_for(marker.exists, p, "the child to hang inside the step-4 checkpoint write")
        time.sleep(0.05)
        tmp = Path(marker.read_text())
        assert tmp.exists() and tmp.name.startswith(".ckpt-00000004.h5.tmp-")  # written, not renamed
    finally:
        p.kill()
        p.communicate()
    assert p.returncode == -signal.SIGKILL
    # The interrupted write left a complete previous checkpoint and no ckpt-4.
    assert [c.name for c in rolling_checkpoints(out)] == ["ckpt-00000002.h5"]
    assert latest_good(out).step == 2
    r = run(train_args(shapes64, out, "--resume", str(out)))
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stderr and "(step 2," in r.stderr
    assert "removed 1 temporary file(s)" in r.stderr and not tmp.exists()
    assert_same_final_state(out, reference.dir)


@pytest.mark.slow
def test_sigkill_at_a_random_moment_resumes_to_identical_weights(shapes64, reference, tmp_path):
    seed = random.randrange(2**32)
    delay = random.Random(seed).uniform(0.0, 1.5)
    out = tmp_path / "run"
    p = start(train_args(shapes64, out), STEP_SLEEP="0.15")
    try:
        wait_for(lambda: (out / "ckpt-00000002.h5").exists(), p, "the first checkpoint")
        time.sleep(delay)
    finally:
        p.kill()
        p.communicate()
    at = latest_good(out).step
    r = run(train_args(shapes64, out, "--resume", str(out)))
    assert r.returncode == 0, f"seed {seed}, killed after {delay:.2f} s:\n{r.stderr}"
    assert f"(step {at}," in r.stderr
    assert_same_final_state(out, reference.dir)


def _flip_a_data_byte(path: Path) -> None:
    with h5py.File(path, "r") as f:
        offset = f["weights/encoder.conv1.weight"].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset + 5)
        b = fh.read(1)
        fh.seek(offset + 5)
        fh.write(bytes([b[0] ^ 0x40]))


@pytest.mark.slow
def test_corrupt_newest_checkpoints_fall_back_to_the_previous_good_one(shapes64, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference.dir, out)  # copies last.h5 and ckpt-8 as separate files
    _flip_a_data_byte(out / "last.h5")
    data = (out / "ckpt-00000008.h5").read_bytes()
    (out / "ckpt-00000008.h5").write_bytes(data[: len(data) // 2])
    r = run(train_args(shapes64, out, "--resume", str(out)))
    assert r.returncode == 0, r.stderr
    assert f"skipping {out / 'last.h5'}" in r.stderr and "fails its checksum" in r.stderr
    assert f"skipping {out / 'ckpt-00000008.h5'}" in r.stderr and "truncated or corrupt" in r.stderr
    assert "(step 6," in r.stderr
    assert_same_final_state(out, reference.dir)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_writes_a_checkpoint_exits_cleanly_and_resumes_exactly(shapes64, reference, tmp_path, sig):
    out = tmp_path / "run"
    p = start(train_args(shapes64, out), STEP_SLEEP="0.4")
    try:
        wait_for(lambda: metric_lines(out) >= 3, p, "three steps")
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=TIMEOUT)
    finally:
        p.kill()
    assert p.returncode == 0, stderr
    k = metric_lines(out)
    assert 3 <= k < STEPS
    assert f"received signal {int(sig)} ({sig.name}): writing a checkpoint at step {k}" in stderr
    assert f"done: signal at step {k}/{STEPS}" in stdout
    ck = load_checkpoint(out / "last.h5")
    assert ck.step == k and all(np.isfinite(v).all() for v in ck.weights.values())
    if sig == signal.SIGINT:  # (one resume is enough to show the signal checkpoint is exact)
        r = run(train_args(shapes64, out, "--resume", str(out)))
        assert r.returncode == 0, r.stderr
        assert_same_final_state(out, reference.dir)


# --------------------------------------------------------------------------- determinism (in-process)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    images, labels = make_shapes(N_IMAGES, "train", 0)
    return Dataset(images=images, labels=labels, classes=list(SHAPE_CLASSES), name="shapes64")


def tiny_cfg(*overrides: str):
    return preset("tiny").with_overrides([
        "model.width=0.125", "augment.image_size=16", f"train.batch_size={BATCH}",
        f"train.epochs={EPOCHS}", "train.checkpoint_every=2", "train.keep_last=10",
        "data.num_workers=0", *overrides])


def fit(dataset, out, backend="torch", resume=None, cfg=None, **kw):
    return train(cfg or tiny_cfg(), out, backend=backend, resume=resume, dataset=dataset,
                 show_progress=False, log=kw.pop("log", lambda m: None), **kw)


def _mlx_or_skip():
    return pytest.importorskip("mlx.core", reason="MLX is not installed")


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_same_seed_same_losses_and_resume_replays_them_exactly(dataset, tmp_path, backend):
    if backend == "mlx":
        _mlx_or_skip()
    fit(dataset, tmp_path / "a", backend)
    fit(dataset, tmp_path / "b", backend)
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(la) == list(range(1, STEPS + 1)) and all(math.isfinite(v) for v in la.values())
    assert la == lb  # bitwise: same seed, same config, same process
    # stop at step 3 (between checkpoints: the final save writes step 3), resume to the end
    res = fit(dataset, tmp_path / "c", backend, cfg=tiny_cfg("train.max_steps=3"))
    assert res.stopped == "max_steps" and res.step == 3
    fit(dataset, tmp_path / "c", backend, resume=tmp_path / "c")
    assert losses(tmp_path / "c") == la
    wa, wc = load_checkpoint(tmp_path / "a" / "last.h5"), load_checkpoint(tmp_path / "c" / "last.h5")
    for k in wa.weights:
        np.testing.assert_array_equal(wa.weights[k], wc.weights[k], err_msg=k)


# Start on MLX, stop at step 4, resume on torch vs resume on MLX, compare steps 5-6: step 5's
# loss is a forward of the loaded weights, step 6's the first to see an update with the loaded
# momenta. base_lr 0.01 (peak 0.04). In float32 step 6 depends on BLAS/device rounding: at this
# size (batch 16, ResNet-18 x0.125, 16 px) a ReLU input within float32 noise of 0 flips sign on
# one backend and not the other and changes the BN gradients by 1-2.5% (measured: one flip in
# layer3.1, oracle margin 2.4e-6; docs/float32.md), so float32 cannot tell a 1% gradient bug from
# rounding here. Measured (mlx 0.32.4 vs torch 2.13, CPU, |loss| ~ 3.4): step 5 <= 2.2e-6;
# step 6 <= 7.9e-6 with OpenBLAS preloaded, 7.9e-4 without. 2e-3 still catches a resume that
# dropped the momenta (step 6 moves 6.6e-3 .. 3.3e-2). The float64 test below has the teeth.
CROSS_BACKEND_LOSS_ATOL = {5: 2e-5, 6: 2e-3}


def test_resume_on_the_other_backend_continues_the_trajectory(dataset, tmp_path):
    _mlx_or_skip()
    a, b = tmp_path / "to-torch", tmp_path / "to-mlx"
    fit(dataset, a, "mlx", cfg=tiny_cfg("train.max_steps=4", "optim.base_lr=0.01"))  # MLX start
    shutil.copytree(a, b)
    six = tiny_cfg("train.max_steps=6", "optim.base_lr=0.01")
    fit(dataset, a, "torch", resume=a, cfg=six)
    fit(dataset, b, "mlx", resume=b, cfg=six)
    la, lb = losses(a), losses(b)
    assert sorted(la) == sorted(lb) == list(range(1, 7))
    assert all(la[s] == lb[s] for s in range(1, 5))  # the shared MLX part, kept in the log
    for s, tol in CROSS_BACKEND_LOSS_ATOL.items():
        assert abs(la[s] - lb[s]) < tol, f"step {s}: |loss difference| {abs(la[s] - lb[s]):.3g}"
    assert load_checkpoint(a / "last.h5").backend == "torch"


# The same resume in float64 (MLX float64 runs on its CPU stream): both backends then follow
# the oracle to ~1e-13, so the tolerance can be tight enough that a 1% error in one gradient or
# a biased running variance on the resuming side FAILS it (negative controls below). Steps 5-6
# losses and the final weights, BN buffers and momenta. Measured (mlx 0.32.4, torch 2.13, CPU,
# with and without OpenBLAS): 3.0e-14; a 1% error in d(encoder.bn1.weight) on torch: 3.5e-3,
# torch's running_var biased: 5.8e-3.
RESUME_F64 = ("train.max_steps=6", "optim.base_lr=0.01", "train.precision=float64")
RESUME_F64_ATOL = 1e-9


@pytest.fixture(scope="module")
def mlx_float64_resumed(dataset, tmp_path_factory):
    """(the MLX run stopped at step 4, the same run resumed on MLX to step 6)."""
    _mlx_or_skip()
    root = tmp_path_factory.mktemp("resume64")
    start, end = root / "start", root / "mlx"
    fit(dataset, start, "mlx", cfg=tiny_cfg("train.max_steps=4", *RESUME_F64[1:]))
    shutil.copytree(start, end)
    fit(dataset, end, "mlx", resume=end, cfg=tiny_cfg(*RESUME_F64))
    return start, end


def _resume_on_torch_float64(dataset, mlx_float64_resumed, tmp_path) -> float:
    """Resume the MLX float64 run on torch; max |difference| from the MLX resume (losses of
    steps 5-6, every weight, BN buffer and momentum of the last checkpoint)."""
    start, end = mlx_float64_resumed
    out = tmp_path / "torch"
    shutil.copytree(start, out)
    fit(dataset, out, "torch", resume=out, cfg=tiny_cfg(*RESUME_F64))
    la, lb = losses(out), losses(end)
    assert sorted(la) == sorted(lb) == list(range(1, 7))
    a, b = load_checkpoint(out / "last.h5"), load_checkpoint(end / "last.h5")
    assert a.backend == "torch" and b.backend == "mlx"
    diffs = [abs(la[s] - lb[s]) for s in (5, 6)]
    for x, y in ((a.weights, b.weights), (a.momentum, b.momentum)):
        assert set(x) == set(y)
        diffs += [float(np.max(np.abs(x[k].astype(np.float64) - y[k]))) for k in x if x[k].size]
    return max(diffs)


def test_resume_on_the_other_backend_continues_the_trajectory_float64(dataset, mlx_float64_resumed,
                                                                     tmp_path):
    err = _resume_on_torch_float64(dataset, mlx_float64_resumed, tmp_path)
    assert err < RESUME_F64_ATOL, f"torch resume vs mlx resume (float64): {err:.3g}"


def _torch_grad_error(monkeypatch, name="encoder.bn1.weight", factor=1.01):
    """The torch backend's gradient of ``name`` is off by 1% when LARS steps."""
    from simclr_xb.backends.torch.lars import LARS
    real = LARS.step

    def step(self, closure=None):
        for n, p in self.named_params():
            if n == name and p.grad is not None:
                p.grad.mul_(factor)
        return real(self, closure)
    monkeypatch.setattr(LARS, "step", step)


def _torch_bn_running_var_biased(monkeypatch):
    """The torch backend's BN keeps the BIASED batch variance in running_var (corrected after
    each step from the value before it: autograd keeps running_var during the step)."""
    import torch

    from simclr_xb.backends.torch import step as S
    real = S.Trainer.train_step

    def train_step(self, *a, **k):
        seen = {}

        def remember(m, inp):
            seen.setdefault(m, (m.running_var.clone(), inp[0].numel() // inp[0].shape[1]))
        hooks = [m.register_forward_pre_hook(remember) for m in self.model.modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        try:
            out = real(self, *a, **k)
        finally:
            for h in hooks:
                h.remove()
        with torch.no_grad():
            for m, (old, n) in seen.items():
                unbiased = (m.running_var - (1 - m.momentum) * old) / m.momentum
                m.running_var.copy_((1 - m.momentum) * old + m.momentum * unbiased * (n - 1) / n)
        return out
    monkeypatch.setattr(S.Trainer, "train_step", train_step)


@pytest.mark.parametrize("fault", [_torch_grad_error, _torch_bn_running_var_biased],
                         ids=["grad_1pct", "bn_running_var_biased"])
def test_resume_float64_catches_a_faulty_backend(dataset, mlx_float64_resumed, tmp_path,
                                                 monkeypatch, fault):
    fault(monkeypatch)
    err = _resume_on_torch_float64(dataset, mlx_float64_resumed, tmp_path)
    assert err > 1000 * RESUME_F64_ATOL, f"the fault moved the resumed run only {err:.3g}"


# --------------------------------------------------------------------------- non-finite values


class NanAt:
    """Wraps the torch NT-Xent: returns NaN (or a finite loss with NaN gradients) at the given
    call numbers (0-based = training step when nothing else calls it)."""

    def __init__(self, real, calls, kind="loss"):
        self.real, self.calls, self.kind, self.n = real, set(calls), kind, 0

    def __call__(self, z, *a, **k):
        out = self.real(z, *a, **k)
        i, self.n = self.n, self.n + 1
        if i not in self.calls:
            return out
        if self.kind == "loss":
            return out * float("nan")
        import torch
        return out + 0.0 * torch.sqrt(z[0, 0] - z[0, 0])  # value unchanged, d/dz = 0 * inf = NaN


def _patch_ntxent(monkeypatch, calls, kind="loss") -> NanAt:
    from simclr_xb.backends.torch import step as S
    fake = NanAt(S.nt_xent, calls, kind)
    monkeypatch.setattr(S, "nt_xent", fake)
    return fake


def test_nonfinite_loss_stops_and_keeps_the_checkpoints(dataset, tmp_path, monkeypatch):
    _patch_ntxent(monkeypatch, {5})
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as e:
        fit(dataset, out)
    msg = str(e.value)
    assert "loss became nan at step 5" in msg
    assert f"the last good checkpoint is {out / 'last.h5'} (step 4)" in msg
    assert "train.on_nonfinite=skip" in msg
    for c in [out / "last.h5", *rolling_checkpoints(out)]:
        ck = load_checkpoint(c)  # verifies the checksum
        assert ck.step in (2, 4) and all(np.isfinite(v).all() for v in ck.weights.values())
    assert latest_good(out).step == 4


def test_nonfinite_loss_on_the_first_step_points_at_the_data(dataset, tmp_path, monkeypatch):
    _patch_ntxent(monkeypatch, {0})
    with pytest.raises(NonFiniteLossError) as e:
        fit(dataset, tmp_path / "run")
    msg = str(e.value)
    assert "loss became nan at step 0" in msg and "no checkpoint had been written yet" in msg
    assert "first step of the run" in msg and "check the data" in msg and "base_lr" not in msg


def test_nonfinite_gradient_with_finite_loss_never_reaches_a_checkpoint(dataset, tmp_path, monkeypatch):
    _patch_ntxent(monkeypatch, {3}, kind="grad")  # step 3's update makes the weights NaN
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as e:
        fit(dataset, out)
    msg = str(e.value)
    assert "at step 4, so no checkpoint was written" in msg and "(step 2)" in msg
    assert not (out / "ckpt-00000004.h5").exists() and latest_good(out).step == 2


def test_nonfinite_skip_mode_skips_counts_and_leaves_the_model_unchanged(dataset, tmp_path, monkeypatch):
    _patch_ntxent(monkeypatch, {3}, kind="grad")
    out, logged = tmp_path / "run", []
    cfg = tiny_cfg("train.on_nonfinite=skip", "train.max_skips=1", "train.checkpoint_every=1")
    res = fit(dataset, out, cfg=cfg, log=logged.append)
    assert res.stopped == "completed" and res.step == STEPS
    recs = {r["step"]: r for r in MetricsLog.read(out / "metrics.jsonl")}
    assert recs[4].get("skipped") is True and recs[4]["skips"] == 1 and math.isnan(recs[4]["loss"])
    assert not any(r.get("skipped") for s, r in recs.items() if s != 4)
    assert any("non-finite loss or gradient at step 3" in m and "(1/1 skips" in m for m in logged)
    before, after = load_checkpoint(out / "ckpt-00000003.h5"), load_checkpoint(out / "ckpt-00000004.h5")
    for group in ("weights", "momentum"):
        for k, v in getattr(before, group).items():
            np.testing.assert_array_equal(getattr(after, group)[k], v, err_msg=f"{group}/{k}")
    final = load_checkpoint(out / "last.h5")
    assert all(np.isfinite(v).all() for v in final.weights.values())
    assert not np.array_equal(final.weights["encoder.conv1.weight"], after.weights["encoder.conv1.weight"])


def test_nonfinite_skip_mode_stops_after_max_skips(dataset, tmp_path, monkeypatch):
    _patch_ntxent(monkeypatch, {2, 5})
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as e:
        fit(dataset, out, cfg=tiny_cfg("train.on_nonfinite=skip", "train.max_skips=1"))
    msg = str(e.value)
    assert "at step 5" in msg and "after 1 skipped step(s) (train.max_skips = 1)" in msg
    assert latest_good(out).step == 4


def _trainer(backend: str, compile_: bool = False, chunk: int | None = None):
    from simclr_xb.backend import get_backend
    cfg = preset("tiny").with_overrides(["model.width=0.125", "augment.image_size=8",
                                         "train.batch_size=4", f"train.compile={str(compile_).lower()}"]
                                        + ([f"loss.chunk={chunk}"] if chunk else []))
    return cfg, get_backend(backend).Trainer(cfg, 10)


def _step(cfg, tr, s: int, **kw):
    from simclr_xb.augment import sample_pair
    images = np.random.default_rng(s).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    p1, p2 = sample_pair(cfg.augment, 4, (16, 16), 0, 0, s, 0)
    return tr.train_step(images, np.arange(4) % 10, p1, p2, 0.1, **kw)


def _assert_state_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # NaN == NaN here


@pytest.mark.parametrize("backend,compile_,chunk", [("torch", False, None), ("mlx", False, None),
                                                    ("mlx", True, None), ("torch", False, 3),
                                                    ("mlx", True, 3)],
                         ids=["torch", "mlx", "mlx-compiled", "torch-chunked", "mlx-compiled-chunked"])
def test_trainer_skip_nonfinite_restores_everything(backend, compile_, chunk):
    """(chunked: MLX takes the loss and dL/dz outside the compiled step, which must still see
    the non-finite loss and keep everything.)"""
    if backend == "mlx":
        _mlx_or_skip()
    cfg, tr = _trainer(backend, compile_, chunk)
    _step(cfg, tr, 0, skip_nonfinite=True)  # momenta and BN statistics become non-trivial
    good = tr.state_dict()
    bad = dict(good)
    bad["encoder.conv1.weight"] = good["encoder.conv1.weight"].copy()
    bad["encoder.conv1.weight"].flat[0] = np.inf
    tr.load_state_dict(bad)
    out = _step(cfg, tr, 1, skip_nonfinite=True)
    assert out["skipped"] is True and math.isnan(out["loss"])
    _assert_state_equal(tr.state_dict(), bad)  # BN stats, num_batches_tracked, momenta: as before
    tr.load_state_dict(good)
    out = _step(cfg, tr, 1, skip_nonfinite=True)  # a finite step still trains
    assert "skipped" not in out and math.isfinite(out["loss"]) and "probe_acc" in out
    after = tr.state_dict()
    assert not np.array_equal(after["encoder.conv1.weight"], good["encoder.conv1.weight"])
    assert after["encoder.bn1.num_batches_tracked"] == good["encoder.bn1.num_batches_tracked"] + 1
    # and the same step without the guard gives the same numbers
    cfg2, ref = _trainer(backend, compile_, chunk)
    ref.load_state_dict(good)
    out2 = _step(cfg2, ref, 1)
    assert out2["loss"] == pytest.approx(out["loss"], rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_trainer_skip_nonfinite_catches_a_nan_gradient_under_a_finite_loss(backend, monkeypatch):
    if backend == "mlx":
        mx = _mlx_or_skip()
        from simclr_xb.backends.mlx import step as S
        real = S.contrastive_loss
        monkeypatch.setattr(S, "contrastive_loss",
                            lambda z, *a, **k: real(z, *a, **k) + 0.0 * mx.sqrt(z[0, 0] - z[0, 0]))
        cfg, tr = _trainer(backend)
    else:
        cfg, tr = _trainer(backend)
        tr.loss_fn = NanAt(tr.loss_fn, {0}, kind="grad")
    before = tr.state_dict()
    out = _step(cfg, tr, 0, skip_nonfinite=True)
    assert out == {"loss": out["loss"], "skipped": True} and math.isnan(out["loss"])
    _assert_state_equal(tr.state_dict(), before)
