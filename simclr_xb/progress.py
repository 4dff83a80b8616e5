"""Progress display and metric logging for long runs (no third-party dependency).

:class:`Progress` draws a one-line bar on a terminal (``\\r`` updates) and prints plain lines
every ``interval_s`` seconds and at epoch ends when the output is not a terminal (cluster and
CI logs, files).
:class:`MetricsLog` appends one JSON object per step to ``metrics.jsonl``; on resume it drops
lines from steps after the checkpoint, so the file always describes one trajectory; with
``tensorboard=True`` it also writes the records as TensorBoard scalars (:mod:`.tblog`).
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _now() -> float:
    """The progress clock (a module function, so tests can replace it with a fake one)."""
    return time.monotonic()


class Progress:
    """``Progress(total, start)``; call ``update(step, **fields)`` after each step.

    On a terminal the bar is redrawn in place at every update. Otherwise (a cluster's log
    file, CI) a plain line is written when ``interval_s`` seconds have passed since the last
    line, at the end of every epoch (``steps_per_epoch``; the interval then restarts) and at
    the last step: at most one line per ``interval_s`` within an epoch, however fast the steps.
    """

    def __init__(self, total: int, start: int = 0, stream=None, width: int = 24,
                 enabled: bool = True, interval_s: float = 30.0, steps_per_epoch: int | None = None,
                 clock=None):
        self.total, self.start = total, start
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = width
        self.enabled = enabled
        self.interval_s = float(interval_s)
        self.steps_per_epoch = steps_per_epoch
        self.clock = clock or (lambda: _now())
        self.t0 = self.clock()
        self._last_line = self.t0
        self._last_len = 0

    def rate_eta(self, step: int, now: float | None = None) -> tuple[float, float]:
        done = step - self.start
        elapsed = (self.clock() if now is None else now) - self.t0
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - step) / rate if rate and rate > 0 else float("nan")
        return rate, eta

    def line(self, step: int, fields: dict, now: float | None = None) -> str:
        rate, eta = self.rate_eta(step, now)
        frac = step / self.total if self.total else 1.0
        filled = int(self.width * frac)
        bar = "#" * filled + "-" * (self.width - filled)
        parts = [f"{step}/{self.total} [{bar}] {100 * frac:5.1f}%"]
        for k, v in fields.items():
            if isinstance(v, float):
                parts.append(f"{k} {v:.4g}")
            else:
                parts.append(f"{k} {v}")
        parts.append(f"ETA {format_duration(eta)}")
        return "  ".join(parts)

    def due(self, step: int, now: float) -> bool:
        """Not a terminal: is a line due at ``step`` (time ``now``)?"""
        epoch_end = bool(self.steps_per_epoch) and step % self.steps_per_epoch == 0
        return step == self.total or epoch_end or now - self._last_line >= self.interval_s

    def update(self, step: int, **fields) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self.tty:
            text = self.line(step, fields, now)
            pad = max(0, self._last_len - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._last_len = len(text)
            self.stream.flush()
        elif self.due(step, now):
            self.stream.write(self.line(step, fields, now) + "\n")
            self.stream.flush()
            self._last_line = now

    def close(self) -> None:
        if self.enabled and self.tty and self._last_len:
            self.stream.write("\n")
            self.stream.flush()


class MetricsLog:
    """Append-only JSON-lines metrics with truncation to a resume step."""

    def __init__(self, path: str | Path, resume_step: int | None = None, tensorboard: bool = False):
        self.path = Path(path)
        # TensorBoard events beside the file, the same records (simclr_xb/tblog.py)
        self._tb = None
        if tensorboard:
            from .tblog import TensorBoardLog
            self._tb = TensorBoardLog(self.path.parent, resume_step)
        if resume_step is not None and self.path.exists():
            kept = [l for l in self.path.read_text().splitlines()
                    if l.strip() and json.loads(l).get("step", 0) <= resume_step]
            self.path.write_text("".join(l + "\n" for l in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "a")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record, allow_nan=True) + "\n")
        self._f.flush()
        if self._tb is not None:
            self._tb.write(record)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()

    @staticmethod
    def read(path: str | Path) -> list[dict]:
        return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
