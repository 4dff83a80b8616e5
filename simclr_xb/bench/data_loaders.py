"""``bench data``'s loader rows: CPU-ms per image pair of whole data loaders, measured the
same way on both sides (:mod:`.tv_baseline`'s methodology, see its docstring):

* ``ours``: :class:`simclr_xb.data.StreamLoader` with W spawned worker processes over the
  listed images (decode once, crop + resize both views into shared memory; the main process
  draws the view parameters and copies each batch out of the ring). The flip, jitter,
  grayscale and blur of the views run afterwards on the training device, not in these
  processes (``ours_backend_ms`` of the ``cpu_per_pair`` rows, measured separately);
* ``torchvision-full`` / ``torchvision-crop-flip``: :mod:`.tv_baseline` run by another
  interpreter (one that has torchvision) on the same folder and the same files.

Three measures, the same on both sides:

* ``steady_cpu_ms_per_pair`` (the targets' measure): one loader whose workers persist runs two
  epochs over the N pairs; the CPU of the second epoch (user + sys of the main process,
  ``RUSAGE_SELF``, and of the live workers, ``/proc/<pid>/stat``), / N. No start-up is in it
  (the first epoch starts the workers and warms up): what a long training run spends per pair;
* ``cpu_ms_per_pair``: a fresh loader over the N pairs, closed (its workers joined) at the end;
  CPU = ``RUSAGE_SELF`` + ``RUSAGE_CHILDREN`` deltas around it, / N: start-up included (a
  spawned interpreter importing numpy, Pillow and, for the torch resizer, torch, for ours; a
  fork for torchvision's);
* ``marginal_cpu_ms_per_pair`` = (CPU(long) - CPU(short)) / (N - M) of two such passes (M pairs
  in the short one): start-up cancels in expectation, but its spread (seconds of imports in
  ours' spawned workers on a busy machine) stays in the difference.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from . import tv_baseline
from .tv_baseline import _cpu_s, steady_cpu_s  # the same CPU counts on both sides

ENV_VAR = "SIMCLR_XB_TORCHVISION_PYTHON"
SCRIPT = Path(tv_baseline.__file__)
TV_MODES = ("full", "crop-flip")
MEASURE = "steady_cpu_ms_per_pair"  # the one the targets use (the module docstring)


def stream_loader(ds, idx: np.ndarray, size: int, workers: int, batch: int, resize: str):
    """The measured StreamLoader: ``idx`` in order, two views drawn as training draws them."""
    from simclr_xb.augment import sample_pair
    from simclr_xb.config import AugmentConfig
    from simclr_xb.data import StreamLoader
    cfg = AugmentConfig(image_size=size, blur_p=0.5 if size >= 96 else 0.0)

    def mk(epoch, step, i, hw):
        return list(sample_pair(cfg, len(i), hw, 0, epoch, step, 0))
    return StreamLoader(ds.subset(idx), batch, mk, size, shuffle=False, drop_last=True, num_workers=workers,
                        resize=resize)


def _stream_pass(ds, idx: np.ndarray, size: int, workers: int, batch: int,
                 resize: str) -> tuple[float, float, int]:
    """(CPU s, wall s, pairs) of one fresh StreamLoader pass over ``idx`` (in order), closed
    at the end so that its workers' CPU is in RUSAGE_CHILDREN."""
    c0, t0 = _cpu_s(), time.perf_counter()
    loader = stream_loader(ds, idx, size, workers, batch, resize)
    try:
        pairs = sum(len(b.indices) for b in loader.epoch(0))
    finally:
        loader.close()
    return _cpu_s() - c0, time.perf_counter() - t0, pairs


def _stream_steady(ds, idx: np.ndarray, size: int, workers: int, batch: int,
                   resize: str) -> tuple[float, float, int]:
    """(CPU s, wall s, pairs) of the second epoch of one StreamLoader (its workers persist across
    epochs): the first starts them and warms up, the second is counted (main + live workers)."""
    loader = stream_loader(ds, idx, size, workers, batch, resize)
    try:
        sum(1 for _ in loader.epoch(0))
        pids = [p.pid for p in loader._procs]
        count = {"pairs": 0}

        def epoch():
            count["pairs"] = sum(len(b.indices) for b in loader.epoch(1))
        cpu, wall = steady_cpu_s(pids, epoch)
    finally:
        loader.close()
    return cpu, wall, count["pairs"]


def ours(ds, idx: np.ndarray, size: int, workers: int, batch: int, short: int, resize: str = "auto") -> dict:
    """The ``ours`` loader row at view size ``size`` (same keys as tv_baseline's result);
    ``resize``: the workers' resizer (``data.resize``)."""
    steady_cpu, steady_wall, steady_pairs = _stream_steady(ds, idx, size, workers, batch, resize)  # also the warm-up
    short_cpu, _, short_pairs = _stream_pass(ds, idx[:short], size, workers, batch, resize)
    cpu, wall, pairs = _stream_pass(ds, idx, size, workers, batch, resize)
    return {"side": "ours", "mode": "decode+crop+resize", "resize": resize, "size": size, "workers": workers,
            "batch_size": batch, "pairs": pairs, "short_pairs": short_pairs, "cpu_s": cpu,
            "short_cpu_s": short_cpu, "wall_s": wall, "cpu_ms_per_pair": 1000 * cpu / pairs,
            "marginal_cpu_ms_per_pair": 1000 * (cpu - short_cpu) / (pairs - short_pairs),
            "steady_cpu_ms_per_pair": 1000 * steady_cpu / steady_pairs, "pairs_per_s": steady_pairs / steady_wall,
            "pass_pairs_per_s": pairs / wall, "start_method": "spawn"}


def interpreter(option: str | None) -> str | None:
    """The torchvision interpreter: ``option`` (``--torchvision-python``), else the
    SIMCLR_XB_TORCHVISION_PYTHON environment variable, else None (no torchvision rows)."""
    path = option or os.environ.get(ENV_VAR) or None
    if path is None:
        return None
    where = "--torchvision-python" if option else ENV_VAR
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ValueError(f"{where} {path!r} is not an executable file (expected a Python that has "
                         f"torchvision, e.g. /work/tvenv/bin/python)")
    return path


def parse_result(stdout: str, what: str) -> dict:
    """The JSON object on the last non-empty line of tv_baseline's stdout, checked for
    :data:`tv_baseline.RESULT_KEYS`; ValueError naming ``what`` otherwise."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{what}: printed nothing (expected one JSON line)")
    try:
        out = json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: the last line of its output is not JSON ({e}): {lines[-1][:200]!r}") from None
    if not isinstance(out, dict):
        raise ValueError(f"{what}: printed {type(out).__name__}, expected a JSON object")
    missing = [k for k in tv_baseline.RESULT_KEYS if k not in out]
    if missing:
        raise ValueError(f"{what}: its JSON lacks {missing}")
    for k in ("cpu_ms_per_pair", "marginal_cpu_ms_per_pair", "steady_cpu_ms_per_pair", "pairs_per_s"):
        v = out[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) \
                or (v <= 0 and k != "marginal_cpu_ms_per_pair"):  # a difference: noise can make it <= 0
            raise ValueError(f"{what}: {k} is {v!r}, expected a {'finite' if k.startswith('marg') else 'positive'} "
                             "number")
    return out


def torchvision(python: str, root: str, files: list[str], size: int, mode: str, workers: int, batch: int,
                short: int, timeout: float = 900) -> dict:
    """The ``torchvision-<mode>`` loader row: tv_baseline run by ``python`` on ``files``
    (paths relative to the split folder)."""
    with tempfile.TemporaryDirectory(prefix="simclr-xb-tv-") as tmp:
        listing = Path(tmp) / "files.txt"
        listing.write_text("\n".join(files) + "\n")
        cmd = [python, str(SCRIPT), str(root), "--size", str(size), "--mode", mode, "--workers", str(workers),
               "--batch-size", str(batch), "--files", str(listing), "--short-pairs", str(short)]
        what = f"the torchvision baseline ({python} {SCRIPT.name} --size {size} --mode {mode})"
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONPATH": ""})
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise ValueError(f"{what} failed with exit code {r.returncode}: {tail}")
    return {"side": f"torchvision-{mode}", **parse_result(r.stdout, what)}


def split_relative(ds, idx: np.ndarray, root: str) -> list[str]:
    """The files of ``idx`` relative to the split folder that ImageFolder reads."""
    from simclr_xb.data.stream import source_of
    split = tv_baseline._split_root(str(root))
    return [os.path.relpath(source_of(ds.index, int(i)), split) for i in idx]


def ratio_row(size: int, rows: list[dict]) -> dict:
    """torchvision / ours marginal CPU-ms per pair at ``size``, from the loader rows of one run."""
    by = {r["side"]: r for r in rows if r["size"] == size}
    out = {"bench": "loader_ratio", "size": size, "measure": MEASURE}
    for mode in TV_MODES:
        if f"torchvision-{mode}" in by:
            for m, suffix in ((MEASURE, ""), ("marginal_cpu_ms_per_pair", "_marginal")):
                o, tv = by["ours"][m], by[f"torchvision-{mode}"][m]  # a marginal can be <= 0 (noise): None
                out[f"vs_torchvision_{mode.replace('-', '_')}{suffix}"] = tv / o if o > 0 and tv > 0 else None
    return out
