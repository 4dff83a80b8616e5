"""The MLX loop without per-step host syncs (simclr_xb/pipeline.py): each loss is read one step
late, with the next step already launched (mx.async_eval). It must give the SAME float32
losses, checkpoints and resume as the synchronous loop, never put a launched-ahead step into a
checkpoint, and undo a launched-ahead step the loop does not count."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from simclr_xb.checkpoint import load_checkpoint
from simclr_xb.config import preset
from simclr_xb.data.common import Dataset
from simclr_xb.data.shapes import SHAPE_CLASSES, make_shapes
from simclr_xb.pipeline import StepPipeline
from simclr_xb.train import NonFiniteLossError, train

# --------------------------------------------------------------------------- the pipeline alone


class FakePending:
    def __init__(self, log, step):
        self.log, self.step = log, step

    def result(self):
        self.log.append(("read", self.step))
        return {"loss": float(self.step)}

    def discard(self):
        self.log.append(("discard", self.step))


class FakeTrainer:
    def train_step_async(self):  # only its presence matters
        raise AssertionError


def _pipe(log, may=lambda s: True):
    return StepPipeline(FakeTrainer(), lambda batch, s, keep: log.append(("launch", s, keep))
                        or FakePending(log, s), None, lambda s: 0.1 * s, may)


def test_each_step_is_launched_before_the_previous_one_is_read():
    log, got = [], []
    pipe = _pipe(log)
    for _t0, _lr, m in pipe.run(range(3), 5):
        got.append(m["loss"])
    assert got == [5.0, 6.0, 7.0]
    assert log == [("launch", 5, False), ("launch", 6, True), ("read", 5), ("launch", 7, True),
                   ("read", 6), ("read", 7)]


def test_no_launch_ahead_where_not_allowed_and_early_stop_undoes_the_step_in_flight():
    log = []
    pipe = _pipe(log, may=lambda s: s != 7)  # e.g. step 7 starts after a checkpoint
    for _t0, _lr, m in pipe.run(range(4), 5):
        if m["loss"] == 7.0:
            break  # a stop: step 8 was launched ahead and is not counted
    assert ("launch", 7, True) not in log and ("launch", 7, False) in log
    assert log.index(("read", 6)) < log.index(("launch", 7, False))  # 7 waited for 6's metrics
    assert log[-1] == ("discard", 8)


def test_a_synchronous_trainer_runs_one_step_at_a_time():
    calls = []
    pipe = StepPipeline(object(), None, lambda batch, s: calls.append(s) or {"loss": s},
                        lambda s: 0.0, lambda s: True)
    assert [m["loss"] for _, _, m in pipe.run([0] * 3, 2)] == [2, 3, 4] == calls


# --------------------------------------------------------------------------- the MLX loop

mx = pytest.importorskip("mlx.core")


@pytest.fixture(scope="module")
def dataset():
    images, labels = make_shapes(64, "train", 0)
    return Dataset(images=images, labels=labels, classes=list(SHAPE_CLASSES), name="shapes64")


def _cfg(*overrides):
    return preset("tiny").with_overrides([
        "model.width=0.125", "augment.image_size=16", "train.batch_size=16", "train.epochs=2",
        "train.checkpoint_every=3", "train.keep_last=10", "data.num_workers=0", *overrides])


def _fit(dataset, out, synchronous: bool, monkeypatch, cfg=None, resume=None):
    if synchronous:  # the loop as before: one blocking step at a time
        real = StepPipeline.__init__

        def sync_init(self, *a, **k):
            real(self, *a, **k)
            self.lagged = False
        monkeypatch.setattr(StepPipeline, "__init__", sync_init)
    try:
        return train(cfg or _cfg(), out, backend="mlx", dataset=dataset, resume=resume,
                     show_progress=False, log=lambda m: None)
    finally:
        monkeypatch.undo()


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_lagged_loop_gives_the_synchronous_losses_and_checkpoints(dataset, tmp_path, monkeypatch):
    """float32, bitwise: every loss, every checkpoint (at steps 3 and 6, where the loop does
    not launch ahead) and the final weights."""
    _fit(dataset, tmp_path / "sync", True, monkeypatch)
    _fit(dataset, tmp_path / "lag", False, monkeypatch)
    ls, ll = _losses(tmp_path / "sync"), _losses(tmp_path / "lag")
    assert len(ls) == 8 and all(math.isfinite(v) for v in ls)
    assert ls == ll
    for name in ("ckpt-00000003.h5", "ckpt-00000006.h5", "last.h5"):
        a, b = load_checkpoint(tmp_path / "sync" / name), load_checkpoint(tmp_path / "lag" / name)
        assert a.step == b.step
        for k in a.weights:
            np.testing.assert_array_equal(a.weights[k], b.weights[k], err_msg=f"{name} {k}")
        for k in a.momentum:
            np.testing.assert_array_equal(a.momentum[k], b.momentum[k], err_msg=f"{name} {k}")


def test_lagged_loop_stops_at_max_steps_with_the_state_of_that_step(dataset, tmp_path, monkeypatch):
    """max_steps 5 (between checkpoints): the run must not keep a 6th step launched ahead;
    resuming replays the uninterrupted losses."""
    _fit(dataset, tmp_path / "full", False, monkeypatch)
    res = _fit(dataset, tmp_path / "c", False, monkeypatch, cfg=_cfg("train.max_steps=5"))
    assert res.step == 5
    _fit(dataset, tmp_path / "c", False, monkeypatch, resume=tmp_path / "c")
    assert _losses(tmp_path / "c") == _losses(tmp_path / "full")
    a, b = load_checkpoint(tmp_path / "full" / "last.h5"), load_checkpoint(tmp_path / "c" / "last.h5")
    for k in a.weights:
        np.testing.assert_array_equal(a.weights[k], b.weights[k], err_msg=k)


def test_mlx_discard_restores_the_state_from_before_the_step(dataset):
    from simclr_xb.augment import sample_pair
    from simclr_xb.backends.mlx.api import Trainer
    cfg = _cfg()
    tr = Trainer(cfg, None)
    images = dataset.images[:16]
    p1, p2 = sample_pair(cfg.augment, 16, (32, 32), 0, 0, 0)
    tr.train_step(images, None, p1, p2, 0.3)
    before = tr.state_dict()
    tr.train_step_async(images, None, p1, p2, 0.3, keep_before=True).discard()
    after = tr.state_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    # negative control: without discard the state moves
    tr.train_step_async(images, None, p1, p2, 0.3).result()
    assert any(not np.array_equal(before[k], v) for k, v in tr.state_dict().items())


def test_lagged_loop_stops_at_a_nonfinite_loss_and_keeps_the_checkpoints(dataset, tmp_path,
                                                                          monkeypatch):
    """Stop mode: the NaN of step 4 is read one step late (step 5 already launched); the run
    stops naming step 4 and the checkpoint of step 3 stays the last one."""
    from simclr_xb.backends.mlx import step as S
    real, calls = S.nt_xent, []

    def nan_at_4(z, tau, *rest):
        calls.append(1)
        out = real(z, tau, *rest)
        return out * mx.array(float("nan")) if len(calls) == 5 else out
    monkeypatch.setattr(S, "nt_xent", nan_at_4)
    with pytest.raises(NonFiniteLossError, match="at step 4"):
        train(_cfg(), tmp_path / "r", backend="mlx", dataset=dataset, show_progress=False,
              log=lambda m: None)
    assert load_checkpoint(tmp_path / "r" / "last.h5").step == 3
