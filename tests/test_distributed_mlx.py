"""Distributed data parallel on MLX: "2 ranks x batch 4 == 1 rank x batch 8" with mlx.launch.

Two real processes (``mlx.launch -n 2 --backend ring`` over loopback, mlx[cpu]) train through
``Trainer(cfg, dist=from_env("mlx"))`` in float64 and must reproduce the single-process run
on the same 8 images and per-image view parameters: loss and probe metrics at each of 3 LARS
steps, the (rank-averaged) gradients handed to the optimizer at every step, and every weight,
BN buffer and momentum afterwards. Negative controls in the same processes: MLX's own
``all_gather`` (whose vjp keeps only the local cotangent slice) for the negatives, and per-rank
BN. Skipped with the reason when mlx or mlx.launch is missing or the ring cannot start.

The setting, the comparison and the measured differences (2 CPU cores, float64) are in
tests/dist_cases.py, shared with the other backend's test.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dist_cases import LRS, MIN_BROKEN, NEG_STEPS, STEPS, TIMEOUT_S, TOL_EQUAL, WORLD, diffs, make_cfg, rank_batch

from simclr_xb.distributed import DistributedError, free_ports, from_env, mlx_launcher

HERE = Path(__file__).resolve()
CFG = make_cfg()


def run_steps(trainer, rank: int, world: int, steps: int = STEPS) -> dict[str, np.ndarray]:
    """``steps`` steps on this rank's slice: loss, metrics, the gradients given to the optimizer,
    the final state."""
    from mlx.utils import tree_flatten
    seen = []
    real_update = trainer.optimizer.update

    def recording_update(model, grads):
        seen.append(grads)
        return real_update(model, grads)

    trainer.optimizer.update = recording_update  # the step is not compiled: Python sees grads
    out = {}
    for s in range(steps):
        images, labels, p1, p2 = rank_batch(s, CFG, rank, world)
        m = trainer.train_step(images, labels, p1, p2, LRS[s])
        for k, v in m.items():
            out[f"{k}/{s}"] = np.float64(v)
        for name, g in tree_flatten(seen.pop()):
            out[f"grad/{s}/{name}"] = np.array(g, dtype=np.float64)
    for k, v in trainer.state_dict().items():
        out[f"state/{k}"] = np.asarray(v)
    return out


# --------------------------------------------------------------------------- rank processes


def worker(out_dir: Path) -> None:
    import mlx.core as mx

    from simclr_xb.backends.mlx import distributed as mdist
    from simclr_xb.backends.mlx.step import Trainer
    ctx = from_env("mlx")
    assert ctx is not None and ctx.world == WORLD, ctx
    mdist.init(ctx)
    (out_dir / f"started{ctx.rank}").write_text("")
    rank = ctx.rank
    # 1. the gather's vjp in numbers (and MLX's own all_gather, for the record)
    dp = mdist.DataParallel(ctx)
    with mx.stream(mx.cpu):  # float64: the CPU stream (a Mac's default device, the GPU, has none)
        x = mx.arange(3, dtype=mx.float64) + 3 * rank
        w6 = mx.arange(6, dtype=mx.float64)
        ours = mx.grad(lambda v: mx.sum(dp.gather_stack(v).reshape(-1) * w6))(x)
        raw = mx.grad(lambda v: mx.sum(mx.distributed.all_gather(v, group=dp.group) * w6))(x)
        results = {"gather_grad": np.array(ours), "raw_all_gather_grad": np.array(raw)}
    # 2. the real Trainer, then the two negative controls
    results.update({f"global/{k}": v for k, v in run_steps(Trainer(CFG, 3, "cpu", dist=ctx), rank, WORLD).items()})
    # loss.chunk: the loss and dL/dz of the GLOBAL z taken outside the step, then the vjp
    # through the gather (whose backward sums over ranks)
    cfg_chunked = dataclasses.replace(CFG, loss=dataclasses.replace(CFG.loss, chunk=5))
    results.update({f"chunked/{k}": v for k, v in
                    run_steps(Trainer(cfg_chunked, 3, "cpu", dist=ctx), rank, WORLD).items()})
    good_views, good_attach = mdist.DataParallel.gather_views, mdist.DataParallel.attach

    def local_grad_views(self, z):  # MLX's all_gather as it is: vjp = local cotangent slice
        n2, d = z.shape
        g = mx.distributed.all_gather(z.reshape(2, n2 // 2, d), group=self.group)
        return g.reshape(self.world, 2, n2 // 2, d).transpose(1, 0, 2, 3).reshape(-1, d)

    mdist.DataParallel.gather_views = local_grad_views
    results.update({f"local_grad/{k}": v for k, v in
                    run_steps(Trainer(CFG, 3, "cpu", dist=ctx), rank, WORLD, NEG_STEPS).items()})
    mdist.DataParallel.gather_views = good_views
    mdist.DataParallel.attach = lambda self, model: None  # per-rank BN
    results.update({f"local_bn/{k}": v for k, v in
                    run_steps(Trainer(CFG, 3, "cpu", dist=ctx), rank, WORLD, NEG_STEPS).items()})
    mdist.DataParallel.attach = good_attach
    ctx.barrier()
    np.savez(out_dir / f"rank{rank}.npz", **results)


# --------------------------------------------------------------------------- tests

mx = pytest.importorskip("mlx.core")


def _launch(out_dir: Path) -> subprocess.CompletedProcess:
    try:
        launcher = mlx_launcher()
    except DistributedError as e:
        pytest.skip(str(e))
    port = free_ports(WORLD)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    argv = launcher + ["-n", str(WORLD), "--backend", "ring", "--starting-port", str(port), "--",
                       sys.executable, str(HERE), str(out_dir)]
    try:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mlx.launch did not finish in {TIMEOUT_S} s: {e.stdout} {e.stderr}")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("mlxdist")
    r = _launch(out)
    if not all((out / f"started{k}").exists() for k in range(WORLD)):
        pytest.skip(f"mlx.launch could not start 2 ring processes over loopback (exit {r.returncode}): "
                    f"{(r.stdout + r.stderr)[-1500:]}")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return [dict(np.load(out / f"rank{k}.npz")) for k in range(WORLD)]


def _reference(steps: int) -> dict:
    from simclr_xb.backends.mlx.step import Trainer
    return run_steps(Trainer(CFG, 3, "cpu"), 0, 1, steps)


@pytest.fixture(scope="module")
def one_rank():
    """The single process on the global batch of 8 (STEPS steps)."""
    return _reference(STEPS)


@pytest.fixture(scope="module")
def one_rank_neg():
    """The 1-process reference for the negative controls (NEG_STEPS steps)."""
    return _reference(NEG_STEPS)


def _mode(results: dict, mode: str) -> dict:
    return {k[len(mode) + 1:]: v for k, v in results.items() if k.startswith(mode + "/")}


def test_gather_vjp_sums_the_cotangents_over_ranks(two_ranks):
    np.testing.assert_array_equal(two_ranks[0]["gather_grad"], [0.0, 2.0, 4.0])
    np.testing.assert_array_equal(two_ranks[1]["gather_grad"], [6.0, 8.0, 10.0])


def test_two_ranks_of_4_equal_one_rank_of_8(two_ranks, one_rank):
    for r in range(WORLD):
        d = diffs(_mode(two_ranks[r], "global"), one_rank)
        assert max(d.values()) <= TOL_EQUAL, (r, d)
    a, b = _mode(two_ranks[0], "global"), _mode(two_ranks[1], "global")
    for k in a:
        if k.startswith("state/"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_two_ranks_with_chunked_loss_equal_one_rank_of_8(two_ranks, one_rank):
    """loss.chunk = 5 (blocks of 5 rows of the 16 global views) on 2 ranks == the exact loss
    on 1 rank (measured: within the float64 rounding of the equivalence test)."""
    for r in range(WORLD):
        d = diffs(_mode(two_ranks[r], "chunked"), one_rank)
        assert max(d.values()) <= TOL_EQUAL, (r, d)


def test_negative_control_mlx_all_gather_breaks_equivalence(two_ranks, one_rank_neg):
    """MLX's all_gather as it is: same forward, so the same step-0 loss, but half the gradient."""
    d = diffs(_mode(two_ranks[0], "local_grad"), one_rank_neg)
    assert abs(two_ranks[0]["local_grad/loss/0"] - one_rank_neg["loss/0"]) <= TOL_EQUAL
    assert d["grad"] >= MIN_BROKEN["grad"], d
    assert d["state"] >= MIN_BROKEN["state"], d
    name = "grad/0/head.layers.0.linear.weight"
    np.testing.assert_allclose(two_ranks[0][f"local_grad/{name}"], 0.5 * one_rank_neg[name], rtol=1e-8,
                               atol=1e-12)


def test_negative_control_per_rank_bn_breaks_equivalence(two_ranks, one_rank_neg):
    d = diffs(_mode(two_ranks[0], "local_bn"), one_rank_neg)
    assert d["loss"] >= MIN_BROKEN["loss"], d
    assert d["grad"] >= MIN_BROKEN["grad"], d
    assert d["state"] >= MIN_BROKEN["state"], d


def test_cli_nproc_2_mlx(tmp_path):
    """``simclr-xb train --backend mlx --nproc 2`` (mlx.launch, ring over loopback): rank 0 alone
    logs and writes the run; the checkpoint records world 2."""
    from simclr_xb.checkpoint import latest_good
    try:
        mlx_launcher()
    except DistributedError as e:
        pytest.skip(str(e))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "simclr_xb.cli", "train", "--backend", "mlx", "--nproc", "2",
                        "--data", "shapes:train=64,test=16", "--batch-size", "8", "--width", "0.125",
                        "--image-size", "16", "--quiet", "--set", "data.num_workers=0", "--max-steps", "2",
                        "--out", str(out)], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert (r.stdout + r.stderr).count("simclr-xb: mlx on") == 1, (r.stdout + r.stderr)[-3000:]
    ck = latest_good(out)
    assert ck.step == 2 and int(ck.extra["world"]) == 2
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]


def test_cli_nproc_2_mlx_fails_when_the_ranks_fail(tmp_path):
    """mlx.launch exits 0 even when its ranks fail; ``simclr-xb train --nproc`` must not."""
    try:
        mlx_launcher()
    except DistributedError as e:
        pytest.skip(str(e))
    r = subprocess.run([sys.executable, "-m", "simclr_xb.cli", "train", "--backend", "mlx", "--nproc", "2",
                        "--data", f"folder:{tmp_path / 'missing'}", "--out", str(tmp_path / "run")],
                       env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=TIMEOUT_S)
    assert r.returncode == 1, (r.stdout + r.stderr)[-3000:]
    # the first rank to fail prints its error; mlx.launch may kill the other before it does
    assert ("rank 0 of 2:" in r.stderr or "rank 1 of 2:" in r.stderr), r.stderr[-3000:]
    assert "did not finish" in r.stderr, r.stderr[-3000:]


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
