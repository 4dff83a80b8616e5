"""The distributed (data-parallel) context shared by the loop, the CLI and both backends.

numpy/stdlib only: neither torch nor mlx is imported here; the collectives themselves live in
``simclr_xb.backends.{torch,mlx}.distributed`` and are reached lazily through
:class:`DistContext`.

What "data parallel" means in simclr-xb (see docs/distributed.md and SIMCLR-FACTS.md,
"Across devices" and "Large batch and global BN"):

* ``cfg.train.batch_size`` is the GLOBAL batch N; rank r of W gets the r-th slice of N/W
  images of every global batch (:class:`simclr_xb.data.BatchLoader`), samples its views from
  its own stream ``sample_pair(..., rank=r)``, and the learning rate is scaled from N.
* Global negatives: every rank gathers every rank's z and evaluates NT-Xent on
  ``[all ranks' view 1; all ranks' view 2]`` (2N rows, exactly the single-process layout); the
  gather's backward returns to each rank the SUM over ranks of the cotangent of its slice.
* Global BN: batch statistics over the 2N views of all ranks; running_var unbiased with the
  global count.
* Every rank computes the same (global) loss; with collectives whose backward is the exact
  adjoint, each rank's parameter gradient is W times the single-process one, and averaging
  over ranks (DDP / ``all_sum / W``) gives exactly the single-process gradient.
  tests/test_distributed*.py check "2 ranks x 4 == 1 rank x 8" numerically.

Launchers and the environment they set (read by :func:`from_env`):

==================  =================================================================
torchrun            RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT
mlx.launch (ring)   MLX_RANK, MLX_HOSTFILE (a JSON list with one entry per rank)
mlx.launch (nccl)   MLX_RANK, MLX_WORLD_SIZE
mlx.launch (jaccl)  MLX_RANK, MLX_IBV_DEVICES (a JSON list with one entry per rank)
mpirun (mlx, mpi)   OMPI_COMM_WORLD_RANK / OMPI_COMM_WORLD_SIZE (or PMI_RANK / PMI_SIZE)
==================  =================================================================
"""
from __future__ import annotations

import json
import os
import random
import shutil
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from .backend import BACKENDS, backend_module

# Seconds a collective (or the rendezvous) may wait for a missing rank before failing.
DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "SIMCLR_XB_DIST_TIMEOUT"


class DistributedError(RuntimeError):
    """The distributed environment is inconsistent or a launcher cannot be found."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a data-parallel job.

    rank: 0..world-1 (rank 0 logs and writes checkpoints); world: number of processes;
    local_rank: index on this machine (selects the GPU); backend: the simclr-xb backend every
    rank runs ("torch" or "mlx"); comm: the communication backend ("gloo"/"nccl" for torch,
    "ring"/"mpi"/"nccl"/"jaccl" for mlx; None lets the backend choose); timeout_s: how long a
    collective waits for a missing rank before the job fails (no silent hang).
    """

    rank: int
    world: int
    local_rank: int = 0
    backend: str = "torch"
    comm: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise DistributedError(f"DistContext backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise DistributedError(f"DistContext rank {self.rank} / world {self.world} is invalid: "
                                   f"expected world >= 1 and 0 <= rank < world")
        if not self.timeout_s > 0:
            raise DistributedError(f"DistContext timeout_s must be > 0, got {self.timeout_s}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _impl(self):
        return backend_module(self.backend, "distributed")

    def setup(self, device: str | None = None) -> DistContext:
        """Join the process group (idempotent). Trainers call this themselves."""
        self._impl().init(self, device)
        return self

    def barrier(self) -> None:
        """Wait for every rank (fails after ``timeout_s`` naming the missing rank where the
        communication backend can, e.g. gloo's monitored barrier)."""
        if self.world > 1:
            self._impl().barrier(self)

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any rank (e.g. a rank got SIGTERM)."""
        if self.world == 1:
            return bool(flag)
        return self._impl().any_flag(self, bool(flag))

    def shutdown(self) -> None:
        """Leave the process group (after a final barrier, when the run succeeded)."""
        if self.world > 1:
            self._impl().shutdown(self)

    def abort(self, code: int, message: str | None = None) -> NoReturn:
        """Leave this process NOW with exit status ``code`` after printing ``message`` to stderr.

        For a rank whose collective failed (a peer died or timed out): interpreter shutdown
        would run the communication library's destructors with that collective still pending,
        and gloo's then calls std::terminate (SIGABRT, "terminate called without an active
        exception"; seen with torch 2.13 in about half of the runs), which turns a clear error
        into a crash with the wrong exit status. Flushes stdout/stderr first; skips the rest.
        """
        try:
            if message:
                print(message, file=sys.stderr)
        except (OSError, ValueError):  # a closed or broken stderr must not stop the exit
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def active(dist) -> DistContext | None:
    """``dist`` when it asks for several processes; None for None or a world of 1. Anything but
    a :class:`DistContext` (or None) is a TypeError."""
    if dist is None:
        return None
    if not isinstance(dist, DistContext):
        raise TypeError(f"dist must be a simclr_xb.distributed.DistContext or None, got {type(dist).__name__}")
    return dist if dist.world > 1 else None


def _int(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise DistributedError(f"environment variable {key}={environ[key]!r} is not an integer") from None


def _json_len(text: str, var: str) -> int:
    """Number of entries of the JSON list in ``text`` (an empty text: 1 process)."""
    if not text.strip():
        return 1
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as e:
        raise DistributedError(f"{var} should hold a JSON list with one entry per rank: {e}") from None
    if not isinstance(entries, list):
        raise DistributedError(f"{var} should hold a JSON list with one entry per rank, got {text[:80]!r}")
    return len(entries)


def _read(path: str, var: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise DistributedError(f"cannot read {var}={path!r}: {e.strerror}") from None


def timeout_from_env(environ: Mapping[str, str] | None = None) -> float:
    environ = os.environ if environ is None else environ
    raw = environ.get(TIMEOUT_ENV)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r} must be a number of seconds > 0")
    return value


def from_env(backend: str, environ: Mapping[str, str] | None = None) -> DistContext | None:
    """The context a launcher set up for this process, or None for a single process.

    Reads torchrun's variables for ``backend="torch"`` and mlx.launch's (or mpirun's) for
    ``backend="mlx"``; a world of 1 gives None. Launching one backend's command under the
    other backend's launcher raises :class:`DistributedError` (it would silently train W
    independent copies).
    """
    environ = os.environ if environ is None else environ
    if backend not in BACKENDS:
        raise DistributedError(f"unknown backend {backend!r}: expected one of {BACKENDS}")
    timeout = timeout_from_env(environ)
    torchrun = "RANK" in environ and "WORLD_SIZE" in environ
    mlx_rank_var = next((k for k in ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK") if k in environ), None)
    if backend == "torch":
        if not torchrun:
            if mlx_rank_var == "MLX_RANK":
                raise DistributedError("this process was started by mlx.launch (MLX_RANK is set) but runs "
                                       "--backend torch: use torchrun or `simclr-xb train --nproc N`")
            return None
        world = _int(environ, "WORLD_SIZE")
        if world <= 1:
            return None
        return DistContext(rank=_int(environ, "RANK"), world=world,
                           local_rank=_int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else 0,
                           backend="torch", comm=environ.get("SIMCLR_XB_DIST_COMM") or None,
                           timeout_s=timeout)
    # mlx
    if mlx_rank_var is None:
        if torchrun and _int(environ, "WORLD_SIZE") > 1:
            raise DistributedError("this process was started by torchrun (RANK/WORLD_SIZE are set) but "
                                   "runs --backend mlx: use mlx.launch or `simclr-xb train --nproc N`")
        return None
    rank = _int(environ, mlx_rank_var)
    comm = None
    if mlx_rank_var == "MLX_RANK":
        if environ.get("MLX_HOSTFILE") is not None:  # ring: a file with the JSON list of ranks
            world = _json_len(_read(environ["MLX_HOSTFILE"], "MLX_HOSTFILE"), "MLX_HOSTFILE")
            comm = "ring"
        elif "MLX_WORLD_SIZE" in environ:
            world, comm = _int(environ, "MLX_WORLD_SIZE"), "nccl"
        elif "MLX_IBV_DEVICES" in environ:
            world = _json_len(_read(environ["MLX_IBV_DEVICES"], "MLX_IBV_DEVICES"), "MLX_IBV_DEVICES")
            comm = "jaccl"
        else:
            raise DistributedError("MLX_RANK is set but neither MLX_HOSTFILE, MLX_WORLD_SIZE nor "
                                   "MLX_IBV_DEVICES tells the number of processes")
    else:
        size_var = "OMPI_COMM_WORLD_SIZE" if mlx_rank_var.startswith("OMPI") else "PMI_SIZE"
        if size_var not in environ:
            raise DistributedError(f"{mlx_rank_var} is set but {size_var} is not")
        world, comm = _int(environ, size_var), "mpi"
    if world <= 1:
        return None
    local = environ.get("OMPI_COMM_WORLD_LOCAL_RANK")
    return DistContext(rank=rank, world=world, local_rank=int(local) if local else 0, backend="mlx",
                       comm=comm, timeout_s=timeout)


# --------------------------------------------------------------------------- launching


def free_ports(n: int, host: str = "127.0.0.1", tries: int = 50) -> int:
    """A base port p such that p, p+1, ..., p+n-1 are free now on ``host`` (racy by nature:
    another program may take one before the job binds it)."""
    for _ in range(tries):
        base = random.randint(20000, 60000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise DistributedError(f"found no {n} consecutive free ports on {host}")


def mlx_launcher(python: str | None = None) -> list[str]:
    """The ``mlx.launch`` command of this environment (next to the interpreter, else on PATH)."""
    beside = Path(python or sys.executable).parent / "mlx.launch"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mlx.launch")
    if found:
        return [found]
    raise DistributedError("mlx.launch was not found next to the Python interpreter or on PATH: "
                           "install mlx (pip install 'mlx[cpu]' on Linux)")


def launch_argv(backend: str, nproc: int, cli_args: Sequence[str], *, hostfile: str | None = None,
                port: int | None = None, python: str | None = None) -> list[str]:
    """The command that runs ``simclr-xb <cli_args>`` in ``nproc`` processes on this machine.

    torch: ``python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node N -m
    simclr_xb.cli ...`` (torchrun's single-node rendezvous on a free port). mlx: ``mlx.launch
    -n N --backend ring --starting-port P -- python -m simclr_xb.cli ...`` over loopback, or
    ``mlx.launch --hostfile FILE`` for several machines (then ``nproc`` is ignored: the
    hostfile lists the ranks).
    """
    python = python or sys.executable
    if nproc < 1:
        raise DistributedError(f"--nproc must be >= 1, got {nproc}")
    if backend == "torch":
        if hostfile:
            raise DistributedError("a hostfile is an mlx.launch option; for several machines run torchrun "
                                   "with its rendezvous flags on each (see scripts/slurm_torchrun.sh)")
        return [python, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc-per-node", str(nproc), "-m", "simclr_xb.cli", *cli_args]
    if backend == "mlx":
        cmd = mlx_launcher(python)
        if hostfile:
            cmd += ["--hostfile", str(hostfile)]
        else:
            cmd += ["-n", str(nproc), "--backend", "ring",
                    "--starting-port", str(port if port is not None else free_ports(nproc))]
        return cmd + ["--", python, "-m", "simclr_xb.cli", *cli_args]
    raise DistributedError(f"unknown backend {backend!r}: expected one of {BACKENDS}")


# mlx.launch exits 0 even when a rank fails (mlx 0.32.4; it does stop the other ranks), so a
# local launch by the CLI gives every rank this folder to mark its success in.
STATUS_ENV = "SIMCLR_XB_STATUS_DIR"


def mark_done(ctx: DistContext | None, environ: Mapping[str, str] | None = None) -> None:
    """Record that this rank finished successfully (when launched with :data:`STATUS_ENV`)."""
    folder = (os.environ if environ is None else environ).get(STATUS_ENV)
    if folder:
        Path(folder, f"rank{ctx.rank if ctx is not None else 0}.ok").write_text("")


def failed_ranks(folder: str | Path, world: int) -> list[int]:
    """Ranks that did not mark success in ``folder`` (see :func:`mark_done`)."""
    return [r for r in range(world) if not Path(folder, f"rank{r}.ok").exists()]


__all__ = ["DistContext", "DistributedError", "active", "from_env", "launch_argv", "free_ports", "mlx_launcher",
           "timeout_from_env", "mark_done", "failed_ranks", "DEFAULT_TIMEOUT_S", "TIMEOUT_ENV", "STATUS_ENV"]
