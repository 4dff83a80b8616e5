"""Benchmarks: ``simclr-xb bench SUITE`` (one module per suite, core logic here, the command
in cli.py). Each suite returns a :class:`~.common.Report`; :func:`run_suite` adds the
machine, library versions and load average, and writes ``<out_dir>/<suite>-<machine>.json``.

Suites:

* ``augment`` (:mod:`.augment`): images/s of the batched torch (and MLX) view pipelines
  against the per-image Pillow pipeline in a multi-worker torch DataLoader, 32 and 224 px;
* ``train`` (:mod:`.train`): end-to-end training images/s and GFLOP/s per backend,
  architecture and precision against the model-only ceiling, and the usual loop;
* ``ntxent`` (:mod:`.ntxent`): NT-Xent time and peak memory against batch size, exact and
  chunked;
* ``quality`` (:mod:`.quality`): linear-probe and kNN accuracy against epochs;
* ``data`` (:mod:`.data`): CPU-ms per image pair of the streaming folder path against the
  usual per-image path, worker scaling, the index build rate.

Every report's ``load_avg`` says whether the run is ``flagged`` (other jobs on the cores at
its start or end, :func:`~.common.load_flag`).

``size="tiny"`` runs every suite in seconds (the smoke test); timings at that size mean nothing.
Importing this package imports numpy only; :mod:`.flops` is the numpy-only FLOP counter.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path

from .common import load_average, report_dict, write_report

SUITES = ("augment", "train", "ntxent", "quality", "data")
SIZES = ("full", "tiny")


def run_suite(name: str, size: str = "full", out_dir: str | Path = "benchmarks/results",
              machine: str | None = None, command: str = "", log=print, **options) -> tuple[dict, Path]:
    """Run one suite and write its JSON; returns (report dict, path written)."""
    if name not in SUITES:
        raise ValueError(f"unknown benchmark suite {name!r}: expected one of {SUITES} (or 'all')")
    if size not in SIZES:
        raise ValueError(f"benchmark size {size!r} is invalid: expected one of {SIZES}")
    module = importlib.import_module(f"{__name__}.{name}")
    started, load_before = time.time(), load_average()
    report = module.run(size=size, log=log, **options)
    data = report_dict(report, command or f"simclr-xb bench {name}", started, load_before)
    if machine:
        data["machine"]["id"] = machine
    return data, write_report(data, out_dir, machine)
