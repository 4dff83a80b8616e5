"""Conformance report: a fixed-width table for the terminal and a JSON document."""
from __future__ import annotations

import json
import platform
import re
from collections import Counter
from pathlib import Path

from .runner import Result


def _num(v) -> str:
    return "-" if v is None else f"{v:.1e}"


HEADER = (f"{'case':44s} {'pair':18s} {'devices':9s} {'dtype':7s} {'max abs':>8s} {'max rel':>8s} "
          f"{'atol':>8s} {'rtol':>8s}  status")


def _short_devices(r: Result) -> str:
    """"mlx-gpu=gpu, mlx-cpu=cpu" -> "gpu~cpu" (the devices of the pair, in its order)."""
    return "~".join(d.split("=", 1)[1] for d in r.devices.split(", ")) if r.devices else "-"


def row(r: Result) -> str:
    line = (f"{r.case:44s} {r.pair:18s} {_short_devices(r):9s} {r.dtype:7s} {_num(r.max_abs):>8s} "
            f"{_num(r.max_rel):>8s} {_num(r.atol):>8s} {_num(r.rtol):>8s}  {r.status}")
    if r.status in ("FAIL", "ERROR") and r.detail:
        line += f"  [{r.detail[:160]}]"
    return line


def summary(results: list[Result]) -> str:
    c = Counter(r.status for r in results)
    return ", ".join(f"{c[s]} {s}" for s in ("PASS", "FAIL", "ERROR", "SKIP") if c[s])


def failed(results: list[Result]) -> bool:
    return any(r.status in ("FAIL", "ERROR") for r in results)


def pair_members(pair: str) -> list[str]:
    """The implementation names of a row's pair ("a~b", "a->b", "a~*", "a<->*")."""
    return [n for n in re.split(r"<->|->|~", pair) if n not in ("*", "core")]


def environment(results: list[Result]) -> dict:
    """What produced the rows: OS, MLX_ENABLE_TF32 and the device of each implementation."""
    import os

    from .runner import device_of
    names = sorted({n for r in results for n in pair_members(r.pair)})
    return {"os": f"{platform.system()} {platform.release()}", "processor": platform.processor(),
            "mlx_enable_tf32": os.environ.get("MLX_ENABLE_TF32", "unset (MLX default: 1)"),
            "devices": {n: (device_of(n) if any(r.status != "SKIP" and n in pair_members(r.pair)
                                                for r in results) else "not available")
                        for n in names}}


def write_json(results: list[Result], path: str | Path, backends: dict[str, str]) -> None:
    from simclr_xb import __version__
    doc = {"simclr_xb": __version__, "python": platform.python_version(), "machine": platform.machine(),
           **environment(results),
           "backends": backends, "summary": dict(Counter(r.status for r in results)),
           "cases": sorted({r.case for r in results}),
           "results": [r.to_dict() for r in results]}
    Path(path).write_text(json.dumps(doc, indent=2, default=float))


# --------------------------------------------------------------------------- markdown
PAIRS = ("torch~oracle", "mlx-cpu~oracle", "torch~mlx-cpu")  # the GPU's pairs: "other pairs"


def family(case: str) -> str:
    """The group a case is summarised under: its name without the NT-Xent grid tag, e.g.
    ``nt_xent.grad.N4.d16.tau0.1`` -> ``nt_xent.grad`` (other names are their own group)."""
    return re.sub(r"\.N\d+\.d\d+\.tau[0-9.e+-]+?(\.chunk\d+)?$", "", case)


def markdown(doc: dict, by_family: bool = False) -> str:
    """A markdown table from a ``--json`` report: one row per case (or per family of cases),
    the worst max-abs error of each pair over the rows it covers, per dtype, and the tolerance.
    ``n`` counts the (case, pair, dtype) comparisons and how many passed."""
    groups: dict[str, list[dict]] = {}
    for r in doc["results"]:
        groups.setdefault(family(r["case"]) if by_family else r["case"], []).append(r)
    head = ("| case | n (pass) | " + " | ".join(f"f32 {p}" for p in PAIRS) + " | f32 atol | "
            + " | ".join(f"f64 {p}" for p in PAIRS) + " | f64 atol | other pairs |")
    lines = [head, "|" + "---|" * (5 + 2 * len(PAIRS))]
    for name, rows in groups.items():
        cells = []
        for dt in ("float32", "float64"):
            for p in PAIRS:
                errs = [r["max_abs"] for r in rows if r["dtype"] == dt and r["pair"] == p
                        and r["max_abs"] is not None]
                skipped = any(r["status"] == "SKIP" for r in rows if r["dtype"] == dt and r["pair"] == p)
                cells.append(_num(max(errs)) if errs else ("skip" if skipped else "-"))
            atols = {r["atol"] for r in rows if r["dtype"] == dt and r["atol"] is not None}
            cells.append("/".join(_num(a) for a in sorted(atols)) or "-")
        compared = [r for r in rows if r["status"] != "SKIP"]  # a SKIP compares nothing
        n, ok = len(compared), sum(r["status"] == "PASS" for r in compared)
        f32, f64 = cells[:len(PAIRS) + 1], cells[len(PAIRS) + 1:]
        other = {}
        for r in rows:
            if r["pair"] not in PAIRS and r["max_abs"] is not None:
                key = f"{r['pair']} {r['dtype'].replace('float', 'f')}"
                other[key] = max(other.get(key, 0.0), r["max_abs"])
        extra = ", ".join(f"{k}: {_num(v)}" for k, v in other.items()) or ""
        lines.append(f"| {name} | {n} ({ok}) | " + " | ".join(f32 + f64) + f" | {extra} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m simclr_xb.conformance.report report.json [--by-family]
    import sys
    print(markdown(json.loads(Path(sys.argv[1]).read_text()), by_family="--by-family" in sys.argv))
