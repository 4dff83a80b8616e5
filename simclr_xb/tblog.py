"""TensorBoard event files beside metrics.jsonl (``--tensorboard`` / ``train.tensorboard = true``).

Written with tensorboardX (the optional extra: ``pip install 'simclr-xb[tensorboard]'``), which
needs neither torch nor TensorFlow, so both backends log the same way; view them with
``tensorboard --logdir runs/`` (the ``tensorboard`` package, in the same extra). Every
metrics.jsonl record becomes these scalars at its ``step`` (non-finite values are left out):

    train/loss, train/lr, train/images_per_s   every step
    probe/loss, probe/top1 (percent)            with the online probe
    knn/top1, knn/top5 (percent), knn/seconds   at the kNN monitor's checks (simclr_xb/monitor.py)

On resume the writer purges the events after the checkpoint's step (tensorboardX
``purge_step``), so TensorBoard shows one trajectory, as metrics.jsonl does.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

from .config import ConfigError

# metrics.jsonl key -> (TensorBoard tag, scale)
TAGS = {"loss": ("train/loss", 1.0), "lr": ("train/lr", 1.0), "images_per_s": ("train/images_per_s", 1.0),
        "probe_loss": ("probe/loss", 1.0), "probe_acc": ("probe/top1", 100.0),
        "knn_top1": ("knn/top1", 1.0), "knn_top5": ("knn/top5", 1.0), "knn_s": ("knn/seconds", 1.0)}


class TensorBoardLog:
    """``write(record)`` for each metrics record; ``close()`` flushes the event file."""

    def __init__(self, log_dir: str | Path, resume_step: int | None = None):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ConfigError("config field train.tensorboard = true needs the tensorboardX package: "
                              "pip install 'simclr-xb[tensorboard]' (or run without --tensorboard)") from None
        purge = None if resume_step is None else int(resume_step) + 1
        # tensorboardX names the file by the second it starts: a resume within the same second
        # would overwrite the first run's events, so the nanoseconds go into the name too
        suffix = f".{time.time_ns() % 10**9:09d}.{os.getpid()}"
        self._w = SummaryWriter(logdir=str(log_dir), purge_step=purge, flush_secs=30, filename_suffix=suffix)

    def write(self, record: dict) -> None:
        step = int(record["step"])
        for key, (tag, scale) in TAGS.items():
            v = record.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self._w.add_scalar(tag, scale * float(v), step)

    def close(self) -> None:
        self._w.close()
