"""The kNN monitor (simclr_xb/monitor.py): its value is `simclr-xb eval`'s kNN on the same
checkpoint and split, it never changes the trajectory (one process, both backends, and two
data-parallel torch ranks), it runs when due, and it can be turned off.

The rank processes of the data-parallel test run this file as a script.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simclr_xb.augment import sample_subset
from simclr_xb.checkpoint import load_checkpoint
from simclr_xb.config import ConfigError, preset
from simclr_xb.monitor import KnnMonitor

HERE = Path(__file__).resolve()
SPEC = "shapes:train=96,test=48"


def small_cfg(*overrides: str):
    """2 epochs of 3 steps (batch 32 of 96 images), a checkpoint every 3 steps."""
    return preset("tiny").with_overrides([
        "model.width=0.125", "augment.image_size=16", "train.batch_size=32", "train.epochs=2",
        "train.checkpoint_every=3", "train.keep_last=5", "data.num_workers=0",
        f"data.name={SPEC}", "train.precision=float32", *overrides])


def run(cfg, out, backend="torch", **kw):
    from simclr_xb.train import train
    return train(cfg, out, backend=backend, show_progress=False, log=kw.pop("log", lambda m: None), **kw)


def records(out):
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines() if l.strip()]


def _backend_or_skip(backend):
    if backend == "mlx":
        pytest.importorskip("mlx.core", reason="MLX is not installed")
    else:
        pytest.importorskip("torch")


# --------------------------------------------------------------------------- the value


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_monitor_value_is_simclr_xb_eval_knn_on_the_same_checkpoint(tmp_path, backend, one_torch_thread):
    """Banks larger than the splits: the monitor scores the whole train and test splits, as
    `simclr-xb eval` does; at steps 3 and 6 (epoch ends) its top-1/top-5 equal eval's exactly."""
    _backend_or_skip(backend)
    from simclr_xb.evaluate import evaluate
    cfg = small_cfg("train.monitor_train=1000", "train.monitor_eval=1000")
    run(cfg, tmp_path / "r", backend)
    checks = {r["step"]: r for r in records(tmp_path / "r") if "knn_top1" in r}
    assert sorted(checks) == [3, 6]
    for step in (3, 6):
        ck = load_checkpoint(tmp_path / "r" / f"ckpt-{step:08d}.h5")
        ev = evaluate(ck.config, ck.weights, backend=backend, log=lambda m: None)
        assert (ev["n_train"], ev["n_test"]) == (96, 48)
        assert checks[step]["knn_top1"] == ev["knn"]["top1"], (step, checks[step], ev["knn"])
        assert checks[step]["knn_top5"] == ev["knn"]["top5"]
        assert checks[step]["knn_s"] > 0
    # the two checks scored different encoders (else the equality above would prove little)
    h3 = load_checkpoint(tmp_path / "r" / "ckpt-00000003.h5").weights
    h6 = load_checkpoint(tmp_path / "r" / "ckpt-00000006.h5").weights
    assert any(not np.array_equal(h3[k], h6[k]) for k in h3)


# --------------------------------------------------------------------------- the trajectory


def _final_state(out):
    ck = load_checkpoint(Path(out) / "last.h5")
    return {**ck.weights, **{f"momentum/{k}": v for k, v in ck.momentum.items()}}


def _assert_same_run(a, b):
    sa, sb = _final_state(a), _final_state(b)
    assert sorted(sa) == sorted(sb)
    bn = [k for k in sa if k.endswith(("running_mean", "running_var"))]
    assert bn and any(k.startswith("momentum/") for k in sa)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    la = [r["loss"] for r in records(a)]
    assert la == [r["loss"] for r in records(b)]


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_monitor_on_and_off_end_with_the_same_weights_momenta_and_bn_buffers(tmp_path, backend,
                                                                             one_torch_thread):
    _backend_or_skip(backend)
    run(small_cfg("train.monitor_every=1", "train.monitor_train=64", "train.monitor_eval=32"),
        tmp_path / "on", backend)
    run(small_cfg("train.monitor_every=0"), tmp_path / "off", backend)
    assert sum("knn_top1" in r for r in records(tmp_path / "on")) == 2
    assert not any("knn_top1" in r for r in records(tmp_path / "off"))
    _assert_same_run(tmp_path / "on", tmp_path / "off")


def test_negative_control_a_train_mode_encode_changes_the_bn_buffers(tmp_path, monkeypatch,
                                                                     one_torch_thread):
    """A monitor that encodes with the training model in train mode (the bug the design avoids)
    moves the BN running statistics: the comparison above catches it."""
    pytest.importorskip("torch")
    import torch

    def leaky_check(self, trainer, step):
        x = torch.rand(8, 3, 16, 16, dtype=torch.float32)
        trainer.model.train()
        with torch.no_grad():
            trainer.model.encoder(x)
        return {"knn_top1": 0.0}

    run(small_cfg("train.monitor_every=0"), tmp_path / "off", "torch")
    monkeypatch.setattr(KnnMonitor, "check", leaky_check)
    run(small_cfg("train.monitor_every=1"), tmp_path / "leaky", "torch")
    with pytest.raises(AssertionError):
        _assert_same_run(tmp_path / "leaky", tmp_path / "off")


# --------------------------------------------------------------------------- when and whether


def test_due_at_every_nth_epoch_end_and_at_the_last_step():
    m = KnnMonitor(small_cfg("train.monitor_every=2"), "torch", None, None, [], None, [], 2,
                   steps_per_epoch=3, end_step=10)
    assert [s for s in range(1, 11) if m.due(s)] == [6, 10]


def test_off_switch_and_when_it_cannot_run(tmp_path):
    from simclr_xb.data import load_dataset
    msgs = []
    ds = load_dataset(SPEC, "train")
    assert KnnMonitor.for_run(small_cfg("train.monitor_every=0"), "torch", None, ds, 3, 6, msgs.append) is None
    assert msgs == []
    other = load_dataset("shapes:train=96,test=48,seed=3", "train")
    assert KnnMonitor.for_run(small_cfg(), "torch", None, other, 3, 6, msgs.append) is None
    assert "kNN monitor off" in msgs[-1] and "passed in" in msgs[-1]
    m = KnnMonitor.for_run(small_cfg("train.monitor_train=10", "train.monitor_eval=7"), "torch", None,
                           ds, 3, 6, msgs.append)
    assert m is not None and len(m.bank[1]) == 10 and len(m.test[1]) == 7
    np.testing.assert_array_equal(m.bank[1], ds.labels[sample_subset(0, 96, 10, "train")])
    with pytest.raises(ConfigError, match="train.monitor_every"):
        small_cfg("train.monitor_every=-1")
    with pytest.raises(ConfigError, match="train.monitor_train"):
        small_cfg("train.monitor_train=0")


def test_a_failing_check_is_logged_and_never_stops_the_run(tmp_path, monkeypatch, one_torch_thread):
    pytest.importorskip("torch")
    import simclr_xb.evaluate as evaluate

    def boom(*a, **k):
        raise MemoryError("no room for the bank")

    monkeypatch.setattr(evaluate, "knn_classify", boom)
    logged = []
    res = run(small_cfg("train.monitor_train=64", "train.monitor_eval=32"), tmp_path / "r", log=logged.append)
    assert res.stopped == "completed" and res.step == 6
    warn = [m for m in logged if "kNN monitor failed" in m]
    assert len(warn) == 1 and "at step 3" in warn[0] and "no room for the bank" in warn[0]
    assert not any("knn_top1" in r for r in records(tmp_path / "r"))


def test_subset_is_fixed_by_the_seed_sorted_and_whole_when_small():
    a = sample_subset(0, 1000, 50, "train")
    np.testing.assert_array_equal(a, sample_subset(0, 1000, 50, "train"))
    assert len(set(a.tolist())) == 50 and (np.diff(a) > 0).all()
    assert not np.array_equal(a, sample_subset(1, 1000, 50, "train"))
    assert not np.array_equal(a, sample_subset(0, 1000, 50, "test"))
    np.testing.assert_array_equal(sample_subset(0, 30, 50, "train"), np.arange(30))


def test_training_plot_draws_the_knn_curve(tmp_path):
    from PIL import Image

    from simclr_xb.plot import COLORS, training_plot
    recs = [{"step": s, "loss": 5.0 - 0.1 * s, "lr": 0.1, "probe_acc": 0.2} for s in range(1, 11)]
    for r in recs[4::5]:
        r["knn_top1"] = 30.0 + r["step"]
    training_plot(recs, tmp_path / "with.png")
    training_plot([{k: v for k, v in r.items() if k != "knn_top1"} for r in recs], tmp_path / "without.png")
    px = lambda p: {tuple(c) for c in np.asarray(Image.open(p).convert("RGB")).reshape(-1, 3)}
    assert COLORS[1] in px(tmp_path / "with.png")  # the second series of the accuracy panel
    assert COLORS[1] not in px(tmp_path / "without.png")


# --------------------------------------------------------------------------- data parallel


def worker_data_parallel(out_dir: Path) -> None:
    """One rank: the same 2-rank run with the monitor on (A) and off (B)."""
    import torch

    from simclr_xb.distributed import from_env
    torch.set_num_threads(1)
    ctx = from_env("torch")
    assert ctx is not None and ctx.world == 2, ctx
    base = ("train.batch_size=8", "train.epochs=1", "train.checkpoint_every=100", "train.max_steps=4",
            "data.name=shapes:train=32,test=16", "train.precision=float64", "model.head_out=16")
    for name, on in (("A", "1"), ("B", "0")):
        run(small_cfg(*base, f"train.monitor_every={on}"), out_dir / name, "torch", dist=ctx)
    ctx.barrier()
    ctx.shutdown()


def test_data_parallel_run_with_the_monitor_ends_where_one_without_it_does(tmp_path):
    pytest.importorskip("torch")
    from simclr_xb.distributed import free_ports
    port = free_ports(1)
    procs = []
    for r in range(2):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   SIMCLR_XB_DIST_TIMEOUT="180")
        procs.append(subprocess.Popen([sys.executable, str(HERE), "data_parallel", str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    assert [r["step"] for r in records(tmp_path / "A") if "knn_top1" in r] == [4]  # rank 0 checked
    _assert_same_run(tmp_path / "A", tmp_path / "B")


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    {"data_parallel": worker_data_parallel}[mode](out)
