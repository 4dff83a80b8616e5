"""Distributed data parallel on PyTorch (CPU, gloo): "2 ranks x batch 4 == 1 rank x batch 8".

The ranks are real processes (this file run as a script, one per rank, with torchrun's
environment variables on a free localhost port), training through the real
``Trainer(cfg, dist=from_env("torch"))``. In float64 they must reproduce the single-process
run on the same 8 images and the same per-image view parameters (the 1-process run gets the
concatenation of the two ranks' ``sample_pair(..., rank=r)`` draws): the loss and the probe
metrics at each of 3 LARS steps, every gradient of every step, and every weight, BN buffer
and momentum after the 3 steps. Negative controls in the same processes: a gather whose
backward keeps only the local cotangent, and per-rank BN, must break that equality by a
large margin. Also: the gather's backward in numbers, the loop (``train(dist=...)``) resumed
on every rank from rank 0's checkpoint, a stuck rank failing the job (no hang), the
environment parsing, and ``simclr-xb train --nproc 2`` end to end.

The setting, the comparison and the measured differences (2 CPU cores, float64) are in
tests/dist_cases.py, shared with the other backend's test.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dist_cases import (
    HW,
    LRS,
    MIN_BROKEN,
    NEG_STEPS,
    STEPS,
    TIMEOUT_S,
    TOL_EQUAL,
    WORLD,
    diffs,
    make_cfg,
    rank_batch,
    rel_err,
)

from simclr_xb.distributed import DistContext, DistributedError, free_ports, from_env, launch_argv

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
CFG = make_cfg(channels_last=False)


def run_steps(trainer, rank: int, world: int, steps: int = STEPS) -> dict[str, np.ndarray]:
    """``steps`` training steps of ``trainer`` on its slice; loss, metrics, gradients, final state."""
    out = {}
    for s in range(steps):
        images, labels, p1, p2 = rank_batch(s, CFG, rank, world)
        m = trainer.train_step(images, labels, p1, p2, LRS[s])
        for k, v in m.items():
            out[f"{k}/{s}"] = np.float64(v)
        for name, p in trainer.model.named_parameters():
            out[f"grad/{s}/{name}"] = p.grad.detach().cpu().numpy().astype(np.float64)
    for k, v in trainer.state_dict().items():
        out[f"state/{k}"] = np.asarray(v)
    return out


# --------------------------------------------------------------------------- rank processes


def _buggy_local_gather(tdist):
    """The classic bug: a gather whose backward returns only this rank's cotangent slice."""
    import torch
    import torch.distributed as dist

    class LocalGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.rank = dist.get_rank()
            parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, x.contiguous())
            return torch.stack(parts)

        @staticmethod
        def backward(ctx, g):
            return g[ctx.rank]

    def gather_views(z, group=None):
        n2, d = z.shape
        return LocalGrad.apply(z.reshape(2, n2 // 2, d)).transpose(0, 1).reshape(-1, d)
    return gather_views


def worker_equivalence(out_dir: Path) -> None:
    import torch

    from simclr_xb.backends.torch import distributed as tdist
    from simclr_xb.backends.torch import layers
    from simclr_xb.backends.torch.step import Trainer
    torch.set_num_threads(1)
    ctx = from_env("torch")
    assert ctx is not None and ctx.world == WORLD, ctx
    rank = ctx.rank
    # 1. the gather's backward in numbers: x_r = [0,1,2] + 3r, loss_r = sum(gather * [0..5])
    #    on every rank; the sum over ranks of d loss_r / d x_r is 2 * [0,1,2] and 2 * [3,4,5].
    x = (torch.arange(3, dtype=torch.float64) + 3 * rank).requires_grad_()
    Trainer(CFG, 3, "cpu", dist=ctx)  # joins the process group
    (tdist.all_gather_stack(x).reshape(-1) * torch.arange(6.0, dtype=torch.float64)).sum().backward()
    results = {"gather_grad": x.grad.numpy()}
    # 2. the real Trainer, then the two negative controls
    results.update({f"global/{k}": v for k, v in run_steps(Trainer(CFG, 3, "cpu", dist=ctx), rank, WORLD).items()})
    good_gather, good_bn = tdist.gather_views, tdist.global_batch_norm
    tdist.gather_views = _buggy_local_gather(tdist)
    results.update({f"local_grad/{k}": v for k, v in
                    run_steps(Trainer(CFG, 3, "cpu", dist=ctx), rank, WORLD, NEG_STEPS).items()})
    tdist.gather_views, tdist.global_batch_norm = good_gather, layers.batch_norm
    results.update({f"local_bn/{k}": v for k, v in
                    run_steps(Trainer(CFG, 3, "cpu", dist=ctx), rank, WORLD, NEG_STEPS).items()})
    tdist.global_batch_norm = good_bn
    # 3. the loop: rank 0 alone writes; 2 steps + a resume on both ranks == 3 steps at once
    results.update(loop_resume(ctx, out_dir))
    ctx.barrier()
    np.savez(out_dir / f"rank{rank}.npz", **results)
    ctx.shutdown()


def loop_resume(ctx, out_dir: Path) -> dict[str, np.ndarray]:
    """simclr_xb.train.train with ``dist``: run A stops after 2 steps and is resumed (every rank
    loads rank 0's checkpoint) to step 3; run B does the 3 steps in one go."""
    from simclr_xb.checkpoint import latest_good
    from simclr_xb.data.common import Dataset
    from simclr_xb.train import train
    rng = np.random.default_rng(7)
    data = Dataset(images=rng.integers(0, 256, (32, *HW, 3), dtype=np.uint8), labels=rng.integers(0, 3, 32),
                   classes=["a", "b", "c"], name="synthetic", split="train")
    cfg = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, epochs=1, checkpoint_every=2,
                                                             max_steps=2),
                              data=dataclasses.replace(CFG.data, num_workers=0))
    quiet = dict(backend="torch", show_progress=False, dataset=data, dist=ctx, log=lambda m: None)
    train(cfg, out_dir / "A", **quiet)
    cfg3 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=3))
    a = train(cfg3, out_dir / "A", resume=out_dir / "A", **quiet)
    b = train(cfg3, out_dir / "B", **quiet)
    out = {"loop/steps": np.array([a.step, b.step])}
    if ctx.is_main:
        wa, wb = latest_good(out_dir / "A"), latest_good(out_dir / "B")
        out["loop/max_diff"] = np.array(max(rel_err(wa.weights[k], wb.weights[k]) for k in wb.weights))
        out["loop/world"] = np.array(int(wa.extra["world"]))
    return out


def worker_failure(out_dir: Path) -> None:
    """Rank 1 stops taking part after the first collective (alive, stuck); rank 0 must fail
    with a timeout error (SIMCLR_XB_DIST_TIMEOUT) in the next one instead of hanging. (A rank
    that dies is seen sooner: gloo reports "Connection closed by peer" at once.)"""
    import torch

    from simclr_xb.backends.torch import distributed as tdist
    ctx = from_env("torch").setup("cpu")
    z = torch.ones(4, 2, dtype=torch.float64, requires_grad=True)
    tdist.gather_views(z)  # both ranks
    if ctx.rank == 1:
        time.sleep(TIMEOUT_S)  # stuck: the parent kills it once rank 0 is done
    t0 = time.perf_counter()
    try:
        tdist.gather_views(z)
    except Exception as e:  # noqa: BLE001 - what the stuck peer looks like on rank 0
        (out_dir / "rank0.txt").write_text(f"{type(e).__name__} after {time.perf_counter() - t0:.1f} s: {e}")
        ctx.abort(3)  # as the CLI does: a plain exit lets gloo's destructor SIGABRT (-6) half the time
    (out_dir / "rank0.txt").write_text("no error")


def spawn_ranks(mode: str, out_dir: Path, world: int = WORLD, timeout_env: str = "180",
                wait_for: int | None = None):
    """Start ``world`` ranks of this file in ``mode``; wait for all (or only rank ``wait_for``,
    killing the others after it). Returns the exit codes and outputs."""
    port = free_ports(1)
    procs = []
    for r in range(world):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1", SIMCLR_XB_DIST_TIMEOUT=timeout_env)
        procs.append(subprocess.Popen([sys.executable, str(HERE), mode, str(out_dir)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = {}
    try:
        for r in ([wait_for] if wait_for is not None else range(world)):
            outs[r] = procs[r].communicate(timeout=TIMEOUT_S)[0]
    except subprocess.TimeoutExpired:
        pytest.fail(f"{mode}: a rank hung for {TIMEOUT_S} s")
    finally:
        for r, p in enumerate(procs):
            if p.poll() is None:
                p.kill()
            if r not in outs:
                outs[r] = p.communicate()[0]
    return [p.returncode for p in procs], [outs[r] for r in range(world)]


# --------------------------------------------------------------------------- tests

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    codes, outs = spawn_ranks("equivalence", out)
    assert codes == [0, 0], "\n".join(o[-3000:] for o in outs)
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(WORLD)]


def _reference(steps: int) -> dict:
    from simclr_xb.backends.torch.step import Trainer
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_steps(Trainer(CFG, 3, "cpu"), 0, 1, steps)
    finally:
        torch.set_num_threads(n)


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


def test_gather_backward_sums_the_cotangents_over_ranks(two_ranks):
    """Both ranks: loss = sum(gather(x) * [0..5]); rank 0 must get 0+0, 1+1, 2+2 (the sum of
    both ranks' cotangents of its slice), not [0, 1, 2] (the local-slice bug)."""
    np.testing.assert_array_equal(two_ranks[0]["gather_grad"], [0.0, 2.0, 4.0])
    np.testing.assert_array_equal(two_ranks[1]["gather_grad"], [6.0, 8.0, 10.0])


def test_two_ranks_of_4_equal_one_rank_of_8(two_ranks, one_rank):
    """Same loss and probe metrics, same gradients at every step, same weights, BN buffers and
    momenta after 3 LARS steps, on both ranks (global BN + global negatives)."""
    for r in range(WORLD):
        d = diffs(_mode(two_ranks[r], "global"), one_rank)
        assert max(d.values()) <= TOL_EQUAL, (r, d)
    # the ranks stay identical to each other (one state, replicated)
    a, b = _mode(two_ranks[0], "global"), _mode(two_ranks[1], "global")
    for k in a:
        if k.startswith("state/"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_negative_control_local_gradient_gather_breaks_equivalence(two_ranks, one_rank_neg):
    """Same forward (so the same loss at step 0), but the gradients come out halved."""
    d = diffs(_mode(two_ranks[0], "local_grad"), one_rank_neg)
    assert abs(two_ranks[0]["local_grad/loss/0"] - one_rank_neg["loss/0"]) <= TOL_EQUAL
    assert d["grad"] >= MIN_BROKEN["grad"], d
    assert d["state"] >= MIN_BROKEN["state"], d
    g_bug = two_ranks[0]["local_grad/grad/0/head.0.linear.weight"]
    g_ref = one_rank_neg["grad/0/head.0.linear.weight"]
    np.testing.assert_allclose(g_bug, 0.5 * g_ref, rtol=1e-8, atol=1e-12)


def test_negative_control_per_rank_bn_breaks_equivalence(two_ranks, one_rank_neg):
    d = diffs(_mode(two_ranks[0], "local_bn"), one_rank_neg)
    assert d["loss"] >= MIN_BROKEN["loss"], d
    assert d["grad"] >= MIN_BROKEN["grad"], d
    assert d["state"] >= MIN_BROKEN["state"], d


def test_loop_resumes_every_rank_from_rank_0_checkpoint(two_ranks):
    """train(dist=...): 2 steps, then a resume of the same folder on both ranks to step 3, ends
    with the weights of an uninterrupted 3-step run (exactly: float64, same collectives)."""
    for r in range(WORLD):
        np.testing.assert_array_equal(two_ranks[r]["loop/steps"], [3, 3])
    assert int(two_ranks[0]["loop/world"]) == WORLD
    assert float(two_ranks[0]["loop/max_diff"]) == 0.0


def test_a_stuck_rank_fails_the_job_instead_of_hanging(tmp_path):
    codes, outs = spawn_ranks("failure", tmp_path, timeout_env="3", wait_for=0)
    assert codes[0] == 3, (codes, [o[-2000:] for o in outs])
    msg = (tmp_path / "rank0.txt").read_text()
    assert "timed out" in msg.lower() or "timeout" in msg.lower(), msg


# --------------------------------------------------------------------------- environment, launcher


def test_abort_exits_with_the_code_and_flushes_the_message():
    """DistContext.abort skips interpreter shutdown (gloo's destructor aborts on a pending
    collective) but still delivers buffered output and the message."""
    code = ("import sys; from simclr_xb.distributed import DistContext; print('buffered', end=''); "
            "DistContext(rank=1, world=2, local_rank=1, backend='torch').abort(7, 'rank 1 of 2: gone'); "
            "print('not reached')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 7, r
    assert r.stdout == "buffered" and r.stderr.strip() == "rank 1 of 2: gone", r



def test_from_env_torchrun():
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "x", "MASTER_PORT": "1"}
    ctx = from_env("torch", env)
    assert ctx == DistContext(rank=1, world=4, local_rank=1, backend="torch", comm=None, timeout_s=600.0)
    assert not ctx.is_main
    assert from_env("torch", {"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert from_env("torch", {}) is None
    assert from_env("torch", dict(env, SIMCLR_XB_DIST_TIMEOUT="12.5")).timeout_s == 12.5
    with pytest.raises(DistributedError, match="SIMCLR_XB_DIST_TIMEOUT"):
        from_env("torch", dict(env, SIMCLR_XB_DIST_TIMEOUT="soon"))
    with pytest.raises(DistributedError, match="torchrun"):
        from_env("mlx", env)
    with pytest.raises(DistributedError, match="not an integer"):
        from_env("torch", dict(env, RANK="one"))


def test_from_env_mlx(tmp_path):
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([["127.0.0.1:5000"], ["127.0.0.1:5001"], ["127.0.0.1:5002"]]))
    ctx = from_env("mlx", {"MLX_RANK": "2", "MLX_HOSTFILE": str(hostfile)})
    assert (ctx.rank, ctx.world, ctx.backend, ctx.comm) == (2, 3, "mlx", "ring")
    single = tmp_path / "single"
    single.write_text("\n")  # what mlx.launch writes for one process
    assert from_env("mlx", {"MLX_RANK": "0", "MLX_HOSTFILE": str(single)}) is None
    assert from_env("mlx", {"MLX_RANK": "1", "MLX_WORLD_SIZE": "2"}).comm == "nccl"
    assert from_env("mlx", {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}).comm == "mpi"
    assert from_env("mlx", {}) is None
    with pytest.raises(DistributedError, match="mlx.launch"):
        from_env("torch", {"MLX_RANK": "0", "MLX_HOSTFILE": str(hostfile)})
    with pytest.raises(DistributedError, match="number of processes"):
        from_env("mlx", {"MLX_RANK": "0"})
    with pytest.raises(DistributedError, match="rank 3 / world 3"):
        from_env("mlx", {"MLX_RANK": "3", "MLX_HOSTFILE": str(hostfile)})


def test_active_context():
    from simclr_xb.distributed import active
    assert active(None) is None and active(DistContext(rank=0, world=1)) is None
    ctx = DistContext(rank=1, world=2)
    assert active(ctx) is ctx
    with pytest.raises(TypeError, match="DistContext"):
        active(object())
    with pytest.raises(DistributedError, match="rank 2 / world 2"):
        DistContext(rank=2, world=2)


def test_launch_argv():
    argv = launch_argv("torch", 2, ["train", "--backend", "torch"], python="/py")
    assert argv == ["/py", "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                    "--nproc-per-node", "2", "-m", "simclr_xb.cli", "train", "--backend", "torch"]
    argv = launch_argv("mlx", 2, ["train"], port=41000, python=sys.executable)
    assert argv[0].endswith("mlx.launch") or argv[0] == "mlx.launch"
    assert argv[1:] == ["-n", "2", "--backend", "ring", "--starting-port", "41000", "--", sys.executable,
                        "-m", "simclr_xb.cli", "train"]
    assert "--hostfile" in launch_argv("mlx", 2, ["train"], hostfile="h.json", python=sys.executable)
    with pytest.raises(DistributedError):
        launch_argv("torch", 0, [])


# --------------------------------------------------------------------------- CLI end to end


def test_cli_nproc_forwards_the_command_and_checks_every_rank(monkeypatch):
    """--nproc re-runs exactly the given options (minus --nproc) under the launcher, and fails
    when a rank did not mark success even if the launcher exits 0 (mlx.launch does)."""
    from click.testing import CliRunner

    from simclr_xb.cli import main
    from simclr_xb.distributed import STATUS_ENV
    seen = []

    def fake_run(argv, env=None, **kw):
        seen.append(argv)
        Path(env[STATUS_ENV], "rank0.ok").write_text("")
        if len(seen) == 1:
            Path(env[STATUS_ENV], "rank1.ok").write_text("")
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    args = ["train", "--backend", "torch", "--set", "train.seed=3", "--set", "data.num_workers=0",
            "--batch-size", "8", "--out", "runs/x", "--no-compile", "--quiet", "--nproc", "2"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    i = seen[0].index("simclr_xb.cli")
    assert seen[0][:i] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                           "--nproc-per-node", "2", "-m"]
    assert seen[0][i + 1:] == ["train", "--backend", "torch", "--set", "train.seed=3", "--set",
                               "data.num_workers=0", "--batch-size", "8", "--out", "runs/x", "--no-compile",
                               "--quiet"]
    r = CliRunner().invoke(main, args)  # rank 1 never marks success
    assert r.exit_code == 1 and "rank(s) 1 of 2 did not finish" in r.output



def _cli(*args, timeout=TIMEOUT_S):
    env = dict(os.environ, OMP_NUM_THREADS="1", SIMCLR_XB_DIST_TIMEOUT="180")
    return subprocess.run([sys.executable, "-m", "simclr_xb.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_nproc_2_trains_and_logs_on_rank_0(tmp_path):
    """``simclr-xb train --nproc 2`` (torchrun): one start line and one metrics line per step
    (rank 0 only), one set of checkpoints recording world 2, config.json."""
    from simclr_xb.checkpoint import latest_good
    out = tmp_path / "run"
    r = _cli("train", "--backend", "torch", "--nproc", "2", "--data", "shapes:train=64,test=16",
             "--batch-size", "8", "--width", "0.125", "--image-size", "16", "--quiet", "--max-steps", "2",
             "--set", "train.checkpoint_every=1", "--set", "data.num_workers=0", "--out", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stderr.count("simclr-xb: torch on cpu") == 1, r.stderr[-3000:]  # rank 0 logs alone
    assert r.stdout.count("done:") == 1
    ck = latest_good(out)
    assert ck.step == 2 and int(ck.extra["world"]) == 2 and ck.config.train.batch_size == 8
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and all(np.isfinite(x["loss"]) for x in lines)
    assert (out / "config.json").exists()


# --------------------------------------------------------------------------- GPU (not run here)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs 2 CUDA devices (NCCL + SyncBatchNorm); never run in this project's CI")
def test_two_gpus_sync_batch_norm_equal_one_gpu(tmp_path):  # pragma: no cover - no GPU here
    code = """
import torch, torch.distributed as dist
from simclr_xb.distributed import from_env
from simclr_xb.backends.torch.distributed import DataParallel, all_gather_stack
ctx = from_env("torch"); dp = DataParallel(ctx, "cuda"); r = ctx.rank
bn = dp.norm_layer(4, dims=2).to("cuda", torch.float64)
assert isinstance(bn, torch.nn.SyncBatchNorm)
x = torch.randn(8, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).cuda()
ref = torch.nn.functional.batch_norm(x, None, None, training=True)
torch.testing.assert_close(bn(x[r * 4:(r + 1) * 4]), ref[r * 4:(r + 1) * 4], rtol=0, atol=1e-10)
v = (torch.arange(3.0, dtype=torch.float64, device="cuda") + 3 * r).requires_grad_()
(all_gather_stack(v).reshape(-1) * torch.arange(6.0, dtype=torch.float64, device="cuda")).sum().backward()
assert v.grad.tolist() == [2.0 * (k + 3 * r) for k in range(3)], v.grad  # NCCL reduce-scatter
dist.destroy_process_group()
"""
    script = tmp_path / "gpu_check.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(script)], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-3000:]


if __name__ == "__main__":
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    {"equivalence": worker_equivalence, "failure": worker_failure}[mode](out_dir)
