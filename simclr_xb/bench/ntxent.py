"""NT-Xent benchmark: time and peak memory of loss + gradient against the batch size N, for
the exact NT-Xent (one (2N, 2N) similarity matrix) and the chunked one (``chunk`` rows at a
time, :func:`nt_xent_chunked` in each backend), torch on the CPU, MLX on ``device`` (the CPU
by default; ``--device gpu`` on a Mac).

Time: median of ``repeats`` runs of value + backward in this process (z of shape (2N, 128),
float32, the projection width of the paper). Peak memory: one FRESH subprocess per
(backend, method, N) so that no earlier allocation or allocator cache blurs the number:

* torch: ``VmHWM`` (the resident-set high-water mark, /proc/self/status) after one loss +
  backward, minus ``VmHWM`` just before it (z created, torch imported and warmed up on a
  tiny input). torch's CPU allocator returns large blocks to the OS, so this is the peak of
  the loss's own allocations (plus page-granular noise of a few MB);
* MLX: ``mx.get_peak_memory()`` after ``mx.reset_peak_memory()`` (MLX's own count of live
  buffers), and the same VmHWM delta for comparison.

The target: the chunked loss's peak at N = 8192 under a quarter of the exact one's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from .common import Report, Target, installed, measure, rate

DIM = 128
TAU = 0.1
CHUNK = 1024
SIZES = {"full": (256, 512, 1024, 2048, 4096, 8192), "tiny": (8, 24)}
TINY_CHUNK = 5


def _vm_hwm() -> int:
    """Peak resident set size of this process in bytes: ``VmHWM`` of /proc/self/status on
    Linux; elsewhere (macOS has no /proc) ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which
    macOS gives in bytes and Linux in KiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _z(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2 * n, DIM)).astype(np.float32)


def _torch_loss_and_grad(method: str, chunk: int):
    import torch

    from simclr_xb.backends.torch.ntxent import nt_xent, nt_xent_chunked

    def run(z_np):
        z = torch.from_numpy(z_np).requires_grad_(True)
        loss = nt_xent(z, TAU) if method == "exact" else nt_xent_chunked(z, TAU, chunk)
        loss.backward()
        return float(loss.detach()), z.grad
    return run


def _mlx_loss_and_grad(method: str, chunk: int, device: str = "cpu"):
    import mlx.core as mx

    from simclr_xb.backends.mlx.convert import device_for
    from simclr_xb.backends.mlx.ntxent import nt_xent, nt_xent_chunked_value_and_grad

    # chunked: the eager block-by-block value and gradient the MLX trainer uses with
    # loss.chunk (the custom-vjp form under mx.value_and_grad peaks at ~1.3 (2N)^2 floats)
    vg = (mx.value_and_grad(lambda z: nt_xent(z, TAU)) if method == "exact"
          else (lambda z: nt_xent_chunked_value_and_grad(z, TAU, chunk)))

    dev = device_for("float32", device)

    def run(z_np):
        with mx.stream(dev):
            loss, g = vg(mx.array(z_np))
            mx.eval(loss, g)
        return loss.item(), g
    return run


def child(backend: str, method: str, n: int, chunk: int, device: str = "cpu") -> dict:
    """One peak-memory measurement (run in a fresh process by :func:`peak_memory`)."""
    run = (_torch_loss_and_grad(method, chunk) if backend == "torch"
           else _mlx_loss_and_grad(method, chunk, device))
    run(_z(4))  # warm-up on a tiny input: one-time library allocations happen here
    z = _z(n)
    out = {"backend": backend, "method": method, "n": n, "chunk": chunk if method == "chunked" else None}
    if backend == "mlx":
        import mlx.core as mx
        mx.clear_cache()
        mx.reset_peak_memory()
    base = _vm_hwm()
    loss, _ = run(z)
    out["vmhwm_delta_bytes"] = _vm_hwm() - base
    if backend == "mlx":
        out["mlx_peak_bytes"] = int(mx.get_peak_memory())
    out["peak_bytes"] = out.get("mlx_peak_bytes", out["vmhwm_delta_bytes"])
    out["loss"] = loss
    return out


def peak_memory(backend: str, method: str, n: int, chunk: int, device: str = "cpu") -> dict:
    """Run :func:`child` in a fresh interpreter and return its result."""
    code = ("import json, sys; from simclr_xb.bench.ntxent import child; "
            f"print('RESULT ' + json.dumps(child({backend!r}, {method!r}, {n}, {chunk}, {device!r})))")
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"peak-memory child ({backend}, {method}, N={n}) failed with code "
                       f"{proc.returncode}: {proc.stderr.strip()[-2000:]}")


def run(size: str = "full", backends: tuple[str, ...] = ("torch", "mlx"), repeats: int | None = None,
        chunk: int | None = None, sizes: tuple[int, ...] | None = None, memory: str | bool | None = None,
        device: str = "cpu", log=print, **_) -> Report:
    """``memory``: "all" sizes (full default), True = the largest size only (tiny default), False.
    ``device``: the MLX device ("cpu" | "gpu"); torch runs on the CPU."""

    sizes = tuple(sizes or SIZES[size])
    chunk = chunk or (TINY_CHUNK if size == "tiny" else CHUNK)
    repeats = repeats or (3 if size == "tiny" else 5)
    memory = ("all" if size == "full" else True) if memory is None else memory
    rows, skipped = [], {}
    for backend in installed(backends, skipped):
        for n in sizes:
            z = _z(n)
            for method in ("exact", "chunked"):
                fn = (_torch_loss_and_grad(method, chunk) if backend == "torch"
                      else _mlx_loss_and_grad(method, chunk, device))
                loss, _ = fn(z)
                t = measure(lambda fn=fn, z=z: fn(z), repeats=repeats, warmup=0)
                row = {"backend": backend, "method": method, "n": n, "views": 2 * n, "dim": DIM,
                       "chunk": chunk if method == "chunked" else None, "loss": loss,
                       "matrix_mb": 4 * (2 * n) ** 2 / 2 ** 20, **t.to_dict(), **rate(2 * n, t)}
                if memory == "all" or (memory and n == max(sizes)):
                    m = peak_memory(backend, method, n, chunk, device if backend == "mlx" else "cpu")
                    row.update(peak_mb=m["peak_bytes"] / 2 ** 20,
                               vmhwm_delta_mb=m["vmhwm_delta_bytes"] / 2 ** 20)
                    if "mlx_peak_bytes" in m:
                        row["mlx_peak_mb"] = m["mlx_peak_bytes"] / 2 ** 20
                rows.append(row)
                log(f"ntxent {backend} {method:7s} N={n:5d}: {t.median * 1e3:9.2f} ms"
                    + (f", peak {row['peak_mb']:.1f} MB" if "peak_mb" in row else ""))
    targets = []
    n_max = max(sizes)
    for backend in backends:
        got = {r["method"]: r for r in rows if r["backend"] == backend and r["n"] == n_max}
        if len(got) < 2:
            continue
        if all("peak_mb" in r for r in got.values()):
            exact, chunked = got["exact"]["peak_mb"], got["chunked"]["peak_mb"]
            targets.append(Target(f"{backend}: chunked / exact peak memory of loss + grad at N={n_max}",
                                  chunked / exact if exact > 0 else None, 0.25, lower_is_better=True,
                                  note=f"{chunked:.1f} MB vs {exact:.1f} MB (chunk {chunk})"))
        diff = abs(got["exact"]["loss"] - got["chunked"]["loss"])
        targets.append(Target(f"{backend}: |exact - chunked| loss at N={n_max}", diff, 1e-4,
                              lower_is_better=True, note="float32, same z"))
    settings = {"size": size, "backends": list(backends), "sizes": list(sizes), "dim": DIM, "tau": TAU,
                "chunk": chunk, "repeats": repeats, "dtype": "float32",
                "device": {"torch": "cpu", "mlx": device},
                "timed": "value + gradient", "memory": memory,
                "torch_threads": sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None,
                "skipped": skipped}
    return Report("ntxent", settings, rows, targets)
