"""TensorBoard logging (simclr_xb/tblog.py): the event files a run writes are read back by
TensorBoard's own reader and hold metrics.jsonl's scalars, for both backends; a resumed run
purges the events after its checkpoint. Skipped without the optional extra."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from simclr_xb.config import ConfigError, preset

pytest.importorskip("tensorboardX", reason="the tensorboard extra is not installed")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="tensorboard (the reader) is not installed")

SPEC = "shapes:train=64,test=32"


def cfg_(*overrides):
    return preset("tiny").with_overrides([
        "model.width=0.125", "augment.image_size=16", "train.batch_size=32", "train.epochs=2",
        "train.checkpoint_every=2", "data.num_workers=0", f"data.name={SPEC}", "train.precision=float32",
        "train.tensorboard=true", "train.monitor_train=64", "train.monitor_eval=32", *overrides])


def run(cfg, out, backend="torch", **kw):
    from simclr_xb.train import train
    return train(cfg, out, backend=backend, show_progress=False, log=lambda m: None, **kw)


def read_events(folder):
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def records(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_event_files_hold_the_logged_scalars(tmp_path, backend, one_torch_thread):
    pytest.importorskip("mlx.core" if backend == "mlx" else "torch")
    run(cfg_(), tmp_path / "r", backend)
    assert list((tmp_path / "r").glob("events.out.tfevents.*"))
    ev, recs = read_events(tmp_path / "r"), records(tmp_path / "r")
    assert {"train/loss", "train/lr", "train/images_per_s", "probe/loss", "probe/top1", "knn/top1",
            "knn/top5", "knn/seconds"} <= set(ev)
    for tag, key, scale in (("train/loss", "loss", 1), ("train/lr", "lr", 1), ("probe/top1", "probe_acc", 100),
                            ("train/images_per_s", "images_per_s", 1)):
        assert [s for s, _ in ev[tag]] == [r["step"] for r in recs] == [1, 2, 3, 4]
        np.testing.assert_array_equal([v for _, v in ev[tag]],
                                      np.float32([scale * r[key] for r in recs]), err_msg=tag)
    knn = [(r["step"], np.float32(r["knn_top1"])) for r in recs if "knn_top1" in r]
    assert [s for s, _ in knn] == [2, 4] and ev["knn/top1"] == knn


def test_resume_purges_the_events_after_the_checkpoint(tmp_path, one_torch_thread):
    pytest.importorskip("torch")
    out = tmp_path / "r"
    run(cfg_("train.monitor_every=0"), out)
    first = read_events(out)["train/loss"]
    # resume from step 2: steps 3-4 are written again (into a second event file); without the
    # purge the reader keeps both copies (measured: this test then fails)
    (out / "last.h5").unlink()
    (out / "ckpt-00000004.h5").unlink()
    run(cfg_("train.monitor_every=0"), out, resume=out / "ckpt-00000002.h5")
    again = read_events(out)["train/loss"]
    assert [s for s, _ in again] == [1, 2, 3, 4]
    assert again == first


def test_two_writers_in_the_same_second_keep_both_files(tmp_path):
    """A resume that starts within the second of the first run's start (tiny runs do) must not
    overwrite its event file (measured: without the suffix this test fails, one file)."""
    from simclr_xb.tblog import TensorBoardLog
    a = TensorBoardLog(tmp_path)
    a.write({"step": 1, "loss": 1.0})
    b = TensorBoardLog(tmp_path, resume_step=1)
    b.write({"step": 2, "loss": 2.0})
    a.close()
    b.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    assert read_events(tmp_path)["train/loss"] == [(1, 1.0), (2, 2.0)]


def test_missing_library_is_a_one_line_config_error(tmp_path, monkeypatch):
    from simclr_xb.progress import MetricsLog
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ConfigError, match=r"train.tensorboard .*pip install 'simclr-xb\[tensorboard\]'"):
        MetricsLog(tmp_path / "metrics.jsonl", tensorboard=True)


def test_cli_flag_sets_the_config_field():
    from simclr_xb.cli import build_config
    assert build_config(None, None, (), tensorboard=True).train.tensorboard is True
    assert build_config(None, None, (), tensorboard=None).train.tensorboard is False
