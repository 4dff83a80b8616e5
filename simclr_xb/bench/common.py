"""What every benchmark suite shares: timing statistics, the machine record, the JSON file.

A suite returns a :class:`Report`; :func:`write_report` stores it as
``<out_dir>/<suite>-<machine>.json`` with this structure (checked by tests/test_bench.py)::

    {"schema": 1, "suite": str, "machine": {...}, "versions": {...}, "command": str,
     "started": ISO time, "wall_s": float, "load_avg": {"before": [1, 5, 15 min], "after": [...]},
     "settings": {...}, "rows": [{...}, ...], "targets": [{"name", "value", "target", "met",
     "note"}, ...]}

Timings are medians of ``repeats`` (>= 5 by default) runs with their spread; ratios in a
suite's targets are always taken between rows measured in the same run on the same cores.
This module imports numpy and the standard library only.
"""
from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SCHEMA = 1
REPORT_KEYS = ("schema", "suite", "machine", "versions", "command", "started", "wall_s", "load_avg",
               "settings", "rows", "targets")
TARGET_KEYS = ("name", "value", "target", "met", "note")


@dataclass
class Timing:
    """Seconds of ``runs`` repeated measurements: median, min, max and the relative spread
    (max - min) / median."""

    runs: list[float]

    @property
    def median(self) -> float:
        return float(np.median(self.runs))

    def to_dict(self) -> dict:
        r = np.asarray(self.runs, dtype=np.float64)
        med = float(np.median(r))
        return {"median_s": med, "min_s": float(r.min()), "max_s": float(r.max()),
                "iqr_s": float(np.percentile(r, 75) - np.percentile(r, 25)),
                "spread": float((r.max() - r.min()) / med) if med > 0 else 0.0,
                "repeats": int(r.size), "runs_s": [float(v) for v in r]}


def measure(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> Timing:
    """Wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return Timing(runs)


def rate(items: float, t: Timing) -> dict:
    """Items per second at the median time, and at the fastest and slowest run."""
    return {"per_s": items / t.median, "per_s_best": items / min(t.runs),
            "per_s_worst": items / max(t.runs)}


@dataclass
class Target:
    """One acceptance target: ``value`` measured against ``target`` (met when value >= target,
    or <= target for ``lower_is_better``)."""

    name: str
    value: float | None
    target: float
    lower_is_better: bool = False
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None or not np.isfinite(self.value):
            return None
        return self.value <= self.target if self.lower_is_better else self.value >= self.target

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "target": self.target, "met": self.met,
                "lower_is_better": self.lower_is_better, "note": self.note}


@dataclass
class Report:
    suite: str
    settings: dict
    rows: list[dict] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def installed(backends, skipped: dict) -> list[str]:
    """The backends of ``backends`` that import; each one that does not is recorded in
    ``skipped`` (name -> reason) so the report says why its rows are missing."""
    from simclr_xb.backend import BackendUnavailable, get_backend
    ok = []
    for name in backends:
        try:
            get_backend(name)
            ok.append(name)
        except BackendUnavailable as e:
            skipped[name] = str(e)
    return ok


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - platforms without it
        return []


# Load-average points allowed beyond the suite's own threads before its run is flagged.
LOAD_MARGIN = 1.0


def load_flag(before: list[float], after: list[float], own_threads: int) -> dict:
    """Flag a run that starts or ends with other jobs on the cores: the 1-minute load average
    above LOAD_MARGIN when the suite starts (none of its own threads run yet), or above
    ``own_threads + LOAD_MARGIN`` when it ends. Flagged figures are not to be reported as
    results (benchmarks/README.md)."""
    reasons = []
    if before and before[0] > LOAD_MARGIN:
        reasons.append(f"load {before[0]:.2f} at the start > {LOAD_MARGIN:g}")
    if after and after[0] > own_threads + LOAD_MARGIN:
        reasons.append(f"load {after[0]:.2f} at the end > {own_threads} own threads + {LOAD_MARGIN:g}")
    return {"flagged": bool(reasons), "own_threads": int(own_threads), "reasons": reasons}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU features that decide the speed of float32 / bf16 kernels (x86 Linux only)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return sorted(have & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile",
                                      "avx512_vnni", "avx_vnni"})
    except OSError:
        pass
    return []


def machine_id() -> str:
    """A short file-name slug of the machine: CPU model and logical CPU count."""
    model = re.sub(r"\(.*?\)|processor|cpu|@.*$|\d+-core", " ", cpu_model(), flags=re.I)
    slug = "-".join(re.findall(r"[a-z0-9]+", model.lower())[:3]) or platform.machine()
    return f"{slug}-{os.cpu_count()}cpu"


def machine_info() -> dict:
    return {"id": machine_id(), "cpu": cpu_model(), "logical_cpus": os.cpu_count(),
            "cpu_flags": cpu_flags(), "platform": platform.platform(), "python": platform.python_version()}


def versions() -> dict:
    out = {"numpy": np.__version__}
    try:
        import PIL
        out["pillow"] = PIL.__version__
    except ImportError:  # pragma: no cover
        pass
    from simclr_xb import __version__
    out["simclr_xb"] = __version__
    for mod in ("torch", "mlx.core"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod.split(".")[0]] = getattr(m, "__version__", "?")
    if "torch" in sys.modules:
        import torch
        out["torch_num_threads"] = torch.get_num_threads()
        out["torch_parallel_info"] = torch.__config__.parallel_info().splitlines()[:4]
    return out


def report_dict(report: Report, command: str, started: float, load_before: list[float]) -> dict:
    after = load_average()
    own = report.settings.get("own_threads") or report.settings.get("threads") or os.cpu_count() or 1
    return {"schema": SCHEMA, "suite": report.suite, "machine": machine_info(), "versions": versions(),
            "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "wall_s": round(time.time() - started, 2),
            "load_avg": {"before": load_before, "after": after,
                         **load_flag(load_before, after, own)},
            "settings": report.settings, "rows": report.rows,
            "targets": [t.to_dict() for t in report.targets], **report.extra}


def write_report(data: dict, out_dir: str | Path, machine: str | None = None) -> Path:
    """Write ``<out_dir>/<suite>-<machine>.json`` (atomically) and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{data['suite']}-{machine or data['machine']['id']}.json"
    tmp = path.with_suffix(f".json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if hasattr(obj, "__dataclass_fields__"):
        return _jsonable(asdict(obj))
    return obj


def check_report(data: dict) -> None:
    """Raise ValueError naming the first missing or malformed part of a report dict."""
    for k in REPORT_KEYS:
        if k not in data:
            raise ValueError(f"benchmark report lacks the key {k!r}")
    if data["schema"] != SCHEMA:
        raise ValueError(f"benchmark report has schema {data['schema']}, expected {SCHEMA}")
    if not isinstance(data["rows"], list) or not data["rows"]:
        raise ValueError(f"benchmark report {data['suite']} has no rows")
    for t in data["targets"]:
        missing = [k for k in TARGET_KEYS if k not in t]
        if missing:
            raise ValueError(f"target {t.get('name')!r} of {data['suite']} lacks {missing}")


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A markdown table of ``rows``: columns are (header, key, format spec)."""
    head = "| " + " | ".join(h for h, _, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for _, key, fmt in columns:
            v = r.get(key)
            cells.append("" if v is None else (format(v, fmt) if fmt and not isinstance(v, str) else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_targets(targets: list[dict]) -> str:
    lines = []
    for t in targets:
        status = {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]
        op = "<=" if t.get("lower_is_better") else ">="
        v = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        lines.append(f"- {t['name']}: {v} (target {op} {t['target']:g}) {status}"
                     + (f" - {t['note']}" if t.get("note") else ""))
    return "\n".join(lines)
