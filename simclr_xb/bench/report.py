"""Markdown summary of benchmark JSON files (the tables of benchmarks/README.md).

    python -m simclr_xb.bench.report benchmarks/results [--machine ID]

prints, per suite found, the machine, versions, load average, command and a table of the
rows (median and spread of the runs), then the targets (met / not met).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import format_table, format_targets

COLUMNS = {
    "augment": [("setting", "setting", ""), ("pipeline", "pipeline", ""), ("workers/threads", "_par", ""),
                ("views/s (median)", "per_s", ",.0f"), ("spread", "spread", ".0%"),
                ("x Pillow DataLoader", "vs_pillow_dataloader", ".2f")],
    "train": [("arch", "arch", ""), ("backend", "backend", ""), ("precision", "precision", ""),
              ("mode", "mode", ""), ("img/s (median)", "images_per_s", ",.1f"), ("spread", "spread", ".0%"),
              ("GFLOP/s", "gflop_per_s", ",.1f"), ("of model-only", "of_model_ceiling", ".0%")],
    "ntxent": [("backend", "backend", ""), ("method", "method", ""), ("N", "n", "d"),
               ("ms (median)", "_ms", ",.1f"), ("spread", "spread", ".0%"), ("peak MB", "peak_mb", ",.1f"),
               ("(2N)^2 fp32 MB", "matrix_mb", ",.0f")],
    "quality": [("dataset", "dataset", ""), ("features", "features", ""), ("epoch", "epoch", "d"),
                ("linear top-1 %", "linear_top1", ".2f"), ("kNN top-1 %", "knn_top1", ".2f")],
}


def _prepare(suite: str, rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        r = dict(r)
        if suite == "augment":
            n = r.get("workers") or r.get("threads")
            kind = "worker" if r.get("workers") else "thread"
            r["_par"] = f"{n} {kind}{'s' if n != 1 else ''}" if n else ""
        if suite == "ntxent":
            r["_ms"] = 1e3 * r["median_s"]
        out.append(r)
    return out


def summarise(data: dict) -> str:
    suite = data["suite"]
    v = data["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in ("torch", "mlx", "numpy", "pillow") if k in v)
    m = data["machine"]
    lines = [f"### {suite}", "",
             f"- machine: {m['cpu']} ({m['logical_cpus']} logical CPUs, flags {', '.join(m['cpu_flags'])}),"
             f" {m['platform']}",
             f"- libraries: {libs}; torch threads {v.get('torch_num_threads', 'n/a')}",
             f"- command: `{data['command']}` ({data['started']}, {data['wall_s']:.0f} s)",
             f"- load average (1, 5, 15 min) before {data['load_avg']['before']}, after "
             f"{data['load_avg']['after']}", ""]
    lines.append(format_table(_prepare(suite, data["rows"]), COLUMNS[suite]))
    if data["targets"]:
        lines += ["", "Targets:", format_targets(data["targets"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    folder = Path(argv[0] if argv else "benchmarks/results")
    machine = argv[argv.index("--machine") + 1] if "--machine" in argv else None
    for suite in COLUMNS:
        for path in sorted(folder.glob(f"{suite}-{machine or '*'}.json")):
            print(summarise(json.loads(path.read_text())))
            print()


if __name__ == "__main__":
    main()
