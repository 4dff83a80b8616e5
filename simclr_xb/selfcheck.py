"""``simclr-xb selfcheck``: one command a Mac user runs and sends back (docs/apple-silicon.md).

It writes ONE JSON document with:

* ``system``: OS, machine, chip, Python, simclr-xb;
* ``mlx``: version, default device, each device's ``mx.device_info()`` (the GPU's is
  "not available" where MLX has no GPU, e.g. Linux with mlx[cpu]);
* ``tf32``: ``MLX_ENABLE_TF32`` as the environment had it, what this check used ("0": full
  float32, as conformance) and what training does (the environment's value; MLX's default 1
  lets M5-class GPUs run float32 matmul-family ops at reduced precision,
  docs/src/usage/precision.rst in MLX);
* ``conformance``: the MLX conformance cases against the float64 oracle, float32 on the CPU
  and on the GPU (and the GPU against the CPU), float64 on the CPU, with the worst error per
  (implementation, dtype) and every failing row;
* ``training``: ``steps`` steps of the tiny preset on each device, eager and compiled
  (``mx.compile``), losses, seconds per step, images/s and MLX's peak memory;
* ``distributed``: a 2-rank ring over loopback (``mlx.launch -n 2 --backend ring``): an
  all_sum and an all_gather checked against their closed forms.

Nothing here is a timing assertion: the numbers are what this machine measured. MLX is
imported lazily (the core stays numpy-only at import time).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

NOT_AVAILABLE = "not available"
TF32_ENV = "MLX_ENABLE_TF32"


# --------------------------------------------------------------------------- system


def chip() -> str:
    """The processor's name: ``sysctl machdep.cpu.brand_string`` on macOS ("Apple M4 Pro"),
    /proc/cpuinfo's model name on Linux, else what :mod:`platform` knows."""
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                 text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    from .bench.common import cpu_model
    return cpu_model()


def system_info() -> dict:
    from simclr_xb import __version__
    mac = platform.mac_ver()[0]
    return {"os": platform.platform(), "system": platform.system(), "release": platform.release(),
            "macos": mac or NOT_AVAILABLE, "machine": platform.machine(), "chip": chip(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "simclr_xb": __version__}


def mlx_info() -> dict:
    import mlx.core as mx

    def info(dev):
        try:
            return {k: (v if isinstance(v, (int, float, str)) else str(v))
                    for k, v in mx.device_info(dev).items()}
        except Exception as e:  # noqa: BLE001 - recorded, never fatal
            return f"{NOT_AVAILABLE}: {type(e).__name__}: {e}"

    gpu = mx.is_available(mx.gpu)
    return {"version": mx.__version__, "default_device": str(mx.default_device()),
            "gpu_available": gpu, "devices": ["cpu"] + (["gpu"] if gpu else []),
            "cpu": info(mx.cpu), "gpu": info(mx.gpu) if gpu else NOT_AVAILABLE}


# --------------------------------------------------------------------------- conformance


def conformance(pattern: str | None, log=print) -> dict:
    """MLX (both devices) against the oracle, float32 and float64."""
    from simclr_xb.conformance.runner import run
    t0 = time.perf_counter()
    results = run(["mlx-cpu", "mlx-gpu"], pattern, ("float32", "float64"))
    out = {"cases": pattern or "all", "seconds": round(time.perf_counter() - t0, 1)}
    for impl, dtype in (("mlx-cpu", "float32"), ("mlx-gpu", "float32"), ("mlx-cpu", "float64"),
                        ("mlx-gpu", "float64")):
        rows = [r for r in results if r.dtype == dtype and r.pair.startswith(impl + "~")]
        compared = [r for r in rows if r.status != "SKIP"]
        if not compared:
            why = next((r.detail for r in rows if r.status == "SKIP"), "")
            out[f"{impl}/{dtype}"] = f"{NOT_AVAILABLE}: {why}" if why else NOT_AVAILABLE
            continue
        counts = {s: sum(r.status == s for r in compared) for s in ("PASS", "FAIL", "ERROR")}
        errs = [r for r in compared if r.max_abs is not None]
        worst = max(errs, key=lambda r: r.max_abs) if errs else None
        out[f"{impl}/{dtype}"] = {
            **counts, "pairs": sorted({r.pair for r in compared}),
            "worst_max_abs": worst.max_abs if worst else None,
            "worst_case": f"{worst.case} {worst.pair}" if worst else None,
            "failures": [{"case": r.case, "pair": r.pair, "status": r.status, "max_abs": r.max_abs,
                          "atol": r.atol, "detail": r.detail[:300]}
                         for r in compared if r.status != "PASS"]}
        log(f"selfcheck: conformance {impl} {dtype}: {counts['PASS']} PASS, {counts['FAIL']} FAIL, "
            f"{counts['ERROR']} ERROR")
    out["rows"] = [r.to_dict() for r in results if r.status != "SKIP"]
    return out


# --------------------------------------------------------------------------- training


def tiny_config(batch_size: int | None = None, image_size: int | None = None,
                width: float | None = None):
    from simclr_xb.config import preset
    cfg = preset("tiny")
    model, aug, train = cfg.model, cfg.augment, cfg.train
    if width is not None:
        model = replace(model, width=width)
    if image_size is not None:
        aug = replace(aug, image_size=image_size)
    if batch_size is not None:
        train = replace(train, batch_size=batch_size)
    return replace(cfg, model=model, augment=aug, train=replace(train, precision="float32")).validate()


def train_steps(cfg, device: str, compiled: bool, steps: int, seed: int = 0) -> dict:
    """``steps`` steps of ``cfg`` on ``device`` from the same init and views -> losses,
    seconds per step (the first one apart: it traces/compiles), images/s, peak memory."""
    import mlx.core as mx

    from simclr_xb.augment import sample_pair
    from simclr_xb.backend import get_backend
    api = get_backend("mlx")
    cfg = replace(cfg, train=replace(cfg.train, compile=compiled))
    n, side = cfg.train.batch_size, cfg.augment.image_size
    images = np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    tr = api.Trainer(cfg, None, device=device)
    mx.clear_cache()
    mx.reset_peak_memory()
    losses, times = [], []
    for s in range(steps):
        p1, p2 = sample_pair(cfg.augment, n, (side, side), seed, 0, s)
        t0 = time.perf_counter()
        losses.append(tr.train_step(images, None, p1, p2, 0.1)["loss"])
        times.append(time.perf_counter() - t0)
    warm = times[1:] or times
    per_step = float(np.median(warm))
    return {"device": tr.device, "compiled": compiled, "steps": steps, "batch_size": n,
            "image_size": side, "losses": losses, "first_step_s": round(times[0], 4),
            "median_step_s": round(per_step, 5), "images_per_s": round(n / per_step, 2),
            "peak_memory_bytes": int(mx.get_peak_memory())}


def training(steps: int, cfg, log=print) -> dict:
    import mlx.core as mx
    out = {"preset": "tiny", "model": {"arch": cfg.model.arch, "width": cfg.model.width},
           "batch_size": cfg.train.batch_size, "image_size": cfg.augment.image_size}
    for device in ("cpu", "gpu"):
        if device == "gpu" and not mx.is_available(mx.gpu):
            out[device] = NOT_AVAILABLE
            continue
        runs = {}
        for compiled in (False, True):
            try:
                runs["compiled" if compiled else "eager"] = train_steps(cfg, device, compiled, steps)
            except Exception as e:  # noqa: BLE001 - recorded: the report is what matters
                runs["compiled" if compiled else "eager"] = f"ERROR: {type(e).__name__}: {e}"
        e, c = runs["eager"], runs["compiled"]
        if isinstance(e, dict) and isinstance(c, dict):
            runs["max_abs_loss_diff_eager_vs_compiled"] = float(np.max(np.abs(
                np.array(e["losses"]) - np.array(c["losses"]))))
            runs["compiled_speedup"] = round(e["median_step_s"] / c["median_step_s"], 3)
            log(f"selfcheck: {device}: eager {e['images_per_s']} img/s, compiled "
                f"{c['images_per_s']} img/s, peak {e['peak_memory_bytes'] / 2**20:.1f} MB")
        out[device] = runs
    return out


# --------------------------------------------------------------------------- distributed


def ring_worker(out_dir: str) -> None:
    """One rank of :func:`ring_smoke_test` (run by mlx.launch)."""
    import mlx.core as mx
    g = mx.distributed.init(strict=True, backend="ring")
    rank, world = g.rank(), g.size()
    with mx.stream(mx.cpu):
        s = mx.distributed.all_sum(mx.array([rank + 1.0, 10.0 * rank]), group=g)
        gathered = mx.distributed.all_gather(mx.array([float(rank)]), group=g)
        mx.eval(s, gathered)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "world": world, "all_sum": np.array(s).tolist(),
         "all_gather": np.array(gathered).tolist()}))


def ring_smoke_test(timeout_s: float = 180) -> dict:
    """2 ranks on this machine over loopback: all_sum([r + 1, 10 r]) = [3, 10] and
    all_gather([r]) = [0, 1] on both ranks."""
    from simclr_xb.distributed import DistributedError, free_ports, mlx_launcher
    try:
        launcher = mlx_launcher()
    except DistributedError as e:
        return {"status": "SKIP", "detail": str(e)}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        argv = launcher + ["-n", "2", "--backend", "ring", "--starting-port", str(free_ports(2)), "--",
                           sys.executable, "-m", "simclr_xb.selfcheck", "--ring-worker", d]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
        except subprocess.TimeoutExpired:
            return {"status": "FAIL", "detail": f"mlx.launch did not finish in {timeout_s:.0f} s"}
        got = [json.loads(p.read_text()) for p in sorted(Path(d).glob("rank*.json"))]
    out = {"backend": "ring", "ranks": 2, "transport": "loopback (127.0.0.1)",
           "seconds": round(time.perf_counter() - t0, 2), "results": got}
    ok = len(got) == 2 and all(g["all_sum"] == [3.0, 10.0] and g["all_gather"] == [0.0, 1.0]
                               for g in got)
    out["status"] = "PASS" if ok else "FAIL"
    if not ok:
        out["detail"] = f"exit {r.returncode}: {(r.stdout + r.stderr)[-1500:]}"
    return out


# --------------------------------------------------------------------------- the whole check


def run_selfcheck(steps: int = 20, cases: str | None = None, batch_size: int | None = None,
                  image_size: int | None = None, width: float | None = None, ring: bool = True,
                  log=print) -> dict:
    """Every section above -> one dict (JSON-ready). Sets ``MLX_ENABLE_TF32=0`` for this
    process first (before any MLX op), recording what the environment had."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    env_tf32 = os.environ.get(TF32_ENV)
    os.environ[TF32_ENV] = "0"
    started = time.time()
    doc = {"selfcheck": 1, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
           "system": system_info()}
    try:
        doc["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        doc["load_average"] = NOT_AVAILABLE
    doc["mlx"] = mlx_info()
    doc["tf32"] = {
        "environment": env_tf32 if env_tf32 is not None else "unset",
        "used_here": "0 (full float32: conformance and the training steps below)",
        "mlx_default": "1: float32 matmul, convolution and attention may run at reduced "
                       "precision on hardware with matrix units (M5-class GPUs)",
        "training": "simclr-xb train leaves MLX_ENABLE_TF32 as the environment sets it (unset "
                    "= MLX's default 1); set MLX_ENABLE_TF32=0 for full float32"}
    log(f"selfcheck: {doc['system']['chip']}, mlx {doc['mlx']['version']}, GPU "
        f"{'available' if doc['mlx']['gpu_available'] else NOT_AVAILABLE}")
    doc["conformance"] = conformance(cases, log)
    cfg = tiny_config(batch_size, image_size, width)
    doc["training"] = training(steps, cfg, log)
    doc["distributed"] = {"ring_2_ranks_loopback": ring_smoke_test() if ring else
                          {"status": "SKIP", "detail": "--no-ring"}}
    doc["seconds"] = round(time.time() - started, 1)
    return doc


def summary(doc: dict) -> str:
    """A few lines for the terminal."""
    lines = [f"{doc['system']['os']} / {doc['system']['chip']} / mlx {doc['mlx']['version']} / "
             f"MLX_ENABLE_TF32 env {doc['tf32']['environment']}"]
    for key, v in doc["conformance"].items():
        if "/" in key:
            lines.append(f"  conformance {key}: " + (v if isinstance(v, str) else
                         f"{v['PASS']} PASS, {v['FAIL']} FAIL, {v['ERROR']} ERROR, worst "
                         f"{v['worst_max_abs']:.1e} ({v['worst_case']})"))
    for dev in ("cpu", "gpu"):
        t = doc["training"][dev]
        if isinstance(t, str):
            lines.append(f"  training {dev}: {t}")
            continue
        for mode in ("eager", "compiled"):
            r = t[mode]
            lines.append(f"  training {dev} {mode}: " + (r if isinstance(r, str) else
                         f"{r['images_per_s']} img/s, peak {r['peak_memory_bytes'] / 2**20:.1f} MB, "
                         f"last loss {r['losses'][-1]:.4f}"))
    ring = doc["distributed"]["ring_2_ranks_loopback"]
    lines.append(f"  ring 2 ranks (loopback): {ring['status']}")
    return "\n".join(lines)


def failed(doc: dict) -> bool:
    """Any conformance FAIL/ERROR, training error or failed ring test."""
    bad = any(isinstance(v, dict) and (v["FAIL"] or v["ERROR"]) for k, v in doc["conformance"].items()
              if "/" in k)
    for dev in ("cpu", "gpu"):
        t = doc["training"][dev]
        if isinstance(t, dict) and any(isinstance(t[m], str) for m in ("eager", "compiled")):
            bad = True
    return bad or doc["distributed"]["ring_2_ranks_loopback"]["status"] == "FAIL"


if __name__ == "__main__":  # the ring smoke test's ranks: python -m simclr_xb.selfcheck --ring-worker DIR
    if len(sys.argv) == 3 and sys.argv[1] == "--ring-worker":
        ring_worker(sys.argv[2])
    else:
        sys.exit("usage: simclr-xb selfcheck [--json report.json] (this module's __main__ is the "
                 "ring test's worker)")
