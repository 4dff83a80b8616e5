"""Conformance report: a fixed-width table for the terminal and a JSON document."""
from __future__ import annotations

import json
import platform
from collections import Counter
from pathlib import Path

from .runner import Result


def _num(v) -> str:
    return "-" if v is None else f"{v:.1e}"


HEADER = f"{'case':44s} {'pair':18s} {'dtype':7s} {'max abs':>8s} {'max rel':>8s} {'atol':>8s} {'rtol':>8s}  status"


def row(r: Result) -> str:
    line = (f"{r.case:44s} {r.pair:18s} {r.dtype:7s} {_num(r.max_abs):>8s} {_num(r.max_rel):>8s} "
            f"{_num(r.atol):>8s} {_num(r.rtol):>8s}  {r.status}")
    if r.status in ("FAIL", "ERROR") and r.detail:
        line += f"  [{r.detail[:160]}]"
    return line


def summary(results: list[Result]) -> str:
    c = Counter(r.status for r in results)
    return ", ".join(f"{c[s]} {s}" for s in ("PASS", "FAIL", "ERROR", "SKIP") if c[s])


def failed(results: list[Result]) -> bool:
    return any(r.status in ("FAIL", "ERROR") for r in results)


def write_json(results: list[Result], path: str | Path, backends: dict[str, str]) -> None:
    from simclr_xb import __version__
    doc = {"simclr_xb": __version__, "python": platform.python_version(), "machine": platform.machine(),
           "backends": backends, "summary": dict(Counter(r.status for r in results)),
           "cases": sorted({r.case for r in results}),
           "results": [r.to_dict() for r in results]}
    Path(path).write_text(json.dumps(doc, indent=2, default=float))
