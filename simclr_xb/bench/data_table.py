"""The markdown table of a ``bench data`` report, laid out as benchmarks/README.md's
"data: the rows of the suite" table:

    python -m simclr_xb.bench.data_table benchmarks/results/data-<machine>.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

SIZES = (224, 96, 32)


def _fmt(v, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def table(data: dict) -> str:
    """Rows: steady CPU-ms per pair of ours and of each torchvision side, the ratios, and the
    end-to-end img/s; a line on the load average and whether the run is flagged."""
    if data.get("suite") != "data":
        raise ValueError(f"expected a bench data report, got suite {data.get('suite')!r}")
    rows = data["rows"]
    loader = {(r["size"], r["side"]): r for r in rows if r.get("bench") == "loader_cpu_per_pair"}
    ratio = {r["size"]: r for r in rows if r.get("bench") == "loader_ratio"}
    lines = ["| measurement | " + " | ".join(f"{s} px" for s in SIZES) + " |", "|---|---|---|---|"]
    names = {"ours": "ours, StreamLoader 2 workers", "torchvision-full": "torchvision full, DataLoader 2 workers",
             "torchvision-crop-flip": "torchvision crop+flip, DataLoader 2 workers"}
    for side, name in names.items():
        if any((s, side) in loader for s in SIZES):
            cells = [f"{_fmt(loader[(s, side)].get('steady_cpu_ms_per_pair'))} ms "
                     f"({_fmt(loader[(s, side)].get('pairs_per_s'), '.0f')} pairs/s)" if (s, side) in loader else ""
                     for s in SIZES]
            lines.append(f"| {name}, steady CPU-ms per pair | " + " | ".join(cells) + " |")
    for key, name in (("vs_torchvision_full", "torchvision full / ours (goal >= 2.5 at 224)"),
                      ("vs_torchvision_crop_flip", "torchvision crop+flip / ours (goal > 1 at 224, >= 1.6 at 96, 32)")):
        if any(key in ratio.get(s, {}) for s in SIZES):
            lines.append(f"| {name} | " + " | ".join(_fmt(ratio.get(s, {}).get(key)) + "x" for s in SIZES) + " |")
    e2e = {r["mode"]: r for r in rows if r.get("bench") == "e2e"}
    if e2e:
        lines.append("| end to end / in-memory / model-only img/s (" + e2e["e2e"]["arch"] + ") | "
                     + " / ".join(_fmt(e2e[m]["images_per_s"], ".1f") for m in ("e2e", "in-memory", "model"))
                     + " | | |")
    load = data.get("load_avg", {})
    lines += ["", f"load average {load.get('before')} -> {load.get('after')}"
              + (f", FLAGGED: {'; '.join(load.get('reasons', []))}" if load.get("flagged") else ", not flagged")
              + f"; targets from {data['settings'].get('targets_from')}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m simclr_xb.bench.data_table DATA_REPORT.json")
    print(table(json.loads(Path(argv[0]).read_text())))


if __name__ == "__main__":
    main()
