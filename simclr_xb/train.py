"""The backend-agnostic SimCLR pre-training loop.

For every global step s (0-based; the checkpoint after s steps stores ``step = s``)::

    images, labels = loader batch (epoch = s // steps_per_epoch, seeded shuffle, rank shard)
    p1, p2         = sample_pair(cfg.augment, n, hw, seed, epoch, s, rank)   # the only draws
    lr             = schedule(s)                                             # pure function
    metrics        = trainer.train_step(images, labels, p1, p2, lr)          # backend
    -> non-finite guard -> metrics.jsonl -> progress -> checkpoint every N steps and at the end

Because every random draw is a function of (seed, epoch, step, rank), a resumed run replays
exactly the trajectory of an uninterrupted one. SIGINT/SIGTERM finish the current step, write a
checkpoint and return; a non-finite loss stops the run (or skips the step when the config says
``train.on_nonfinite = "skip"``) without touching the last good checkpoint.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .augment import sample_pair
from .backend import get_backend
from .checkpoint import Checkpoint, CheckpointError, latest_good, library_versions, save_rolling
from .config import Config, ConfigError
from .progress import MetricsLog, Progress
from .schedules import LRSchedule


class NonFiniteLossError(RuntimeError):
    """The loss (or a gradient) became NaN/Inf; the message says where and what was kept."""


class TrainingInterrupted(RuntimeError):
    pass


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    total_steps: int
    final_loss: float
    checkpoint: Path | None
    stopped: str  # "completed" | "max_steps" | "signal"
    wall_s: float


# Fields a resumed run may change without changing its trajectory.
RESUME_SAFE_FIELDS = {"train.max_steps", "train.log_every", "train.checkpoint_every",
                      "train.keep_last", "data.num_workers", "data.root", "train.compile"}


def resume_config(ckpt_cfg: Config, requested: Config) -> Config:
    """The checkpoint's config, with only trajectory-neutral fields taken from ``requested``."""
    cfg = ckpt_cfg
    for dotted in RESUME_SAFE_FIELDS:
        section, key = dotted.split(".")
        cfg = cfg.with_value(dotted, getattr(getattr(requested, section), key))
    return cfg.validate()


class _StopFlag:
    """Sets itself on SIGINT/SIGTERM while installed (main thread only)."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: give up at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def load_train_data(cfg: Config):
    from .data import load_dataset
    return load_dataset(cfg.data.name, "train", root=cfg.data.root,
                        skip_bad_images=cfg.data.skip_bad_images)


def train(cfg: Config, out_dir: str | Path, backend: str = "torch", resume: str | Path | None = None,
          device: str | None = None, show_progress: bool = True, dataset=None, dist=None,
          log=print) -> TrainResult:
    """Pre-train SimCLR; write checkpoints, metrics.jsonl and a plot into ``out_dir``.

    ``resume``: a checkpoint file or run folder; its config replaces ``cfg`` except for
    :data:`RESUME_SAFE_FIELDS`. ``dataset``: an already loaded training Dataset (else read from
    ``cfg.data``). ``dist``: the distributed context (rank/world) or None.
    """
    from .data import BatchLoader

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    is_main = rank == 0

    ckpt = None
    if resume is not None:
        ckpt = latest_good(resume, warn=lambda m: log(f"warning: {m}"))
        cfg = resume_config(ckpt.config, cfg)
        if is_main:
            log(f"resuming from {ckpt.path} (step {ckpt.step}, written by the {ckpt.backend or '?'} backend)")
    cfg.validate()

    if dataset is None:
        dataset = load_train_data(cfg)
    n_images = len(dataset.labels)
    per_rank = cfg.train.batch_size // world
    if cfg.train.batch_size % world:
        raise ConfigError(f"config field train.batch_size = {cfg.train.batch_size} must be divisible "
                          f"by the number of processes ({world})")
    if cfg.train.batch_size > n_images:
        raise ConfigError(f"config field train.batch_size = {cfg.train.batch_size} is larger than the "
                          f"dataset {dataset.name} ({n_images} training images)")
    hw = tuple(dataset.images.shape[1:3])
    num_classes = len(dataset.classes) if (cfg.optim.probe and dataset.labels is not None) else None

    if is_main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            probe_file = out_dir / f".write-test-{rank}"
            probe_file.write_text("")
            probe_file.unlink()
        except OSError as e:
            raise CheckpointError(f"output folder {out_dir} is not writable: {e.strerror}") from None

    api = get_backend(backend)
    trainer = api.Trainer(cfg, num_classes, device=device, dist=dist)
    start = 0
    if ckpt is not None:
        trainer.load_state_dict(ckpt.state_dict())
        start = ckpt.step

    loader = BatchLoader(dataset.images, dataset.labels, per_rank, seed=cfg.train.seed, rank=rank,
                         world=world, drop_last=True, shuffle=True, prefetch=2,
                         num_workers=cfg.data.num_workers)
    spe = loader.steps_per_epoch
    schedule = LRSchedule(cfg, spe)
    total = cfg.train.epochs * spe
    end = total if cfg.train.max_steps is None else min(total, cfg.train.max_steps)

    metrics = MetricsLog(out_dir / "metrics.jsonl", resume_step=start if ckpt is not None else None) \
        if is_main else None
    progress = Progress(end, start, every=cfg.train.log_every, enabled=show_progress and is_main)
    if is_main:
        log(f"simclr-xb: {backend} on {trainer.device}, {cfg.model.arch} x{cfg.model.width}, "
            f"{n_images} images of {hw[0]}x{hw[1]} from {dataset.name}, batch {cfg.train.batch_size}, "
            f"{spe} steps/epoch, steps {start}->{end} of {total}, peak lr {schedule.peak:.4g}")

    def save(step: int) -> Path | None:
        if not is_main:
            return None
        state = trainer.state_dict()
        weights = {k: v for k, v in state.items() if not k.startswith("momentum/")}
        momentum = {k[len("momentum/"):]: v for k, v in state.items() if k.startswith("momentum/")}
        extra = {"rng_seed": np.int64(cfg.train.seed), "rng_epoch": np.int64(step // spe),
                 "rng_step": np.int64(step), "world": np.int64(world),
                 "num_classes": np.int64(num_classes or 0)}
        ck = Checkpoint(config=cfg, weights=weights, momentum=momentum, extra=extra,
                        epoch=step // spe, step=step, backend=backend, versions=library_versions())
        return save_rolling(out_dir, ck, cfg.train.keep_last)

    last_path = ckpt.path if ckpt is not None else None
    step = start
    loss = float("nan")
    stopped = "completed" if end == total else "max_steps"
    skips = 0
    recent: list[float] = []
    try:
        with _StopFlag() as stop:
            epoch = step // spe
            while step < end:
                for images, labels, _ in loader.epoch(epoch, start_step=step % spe):
                    t0 = time.perf_counter()
                    p1, p2 = sample_pair(cfg.augment, per_rank, hw, cfg.train.seed, epoch, step, rank)
                    lr = schedule(step)
                    m = trainer.train_step(images, labels if num_classes else None, p1, p2, lr)
                    loss = float(m["loss"])
                    if not math.isfinite(loss) or m.get("skipped"):
                        if cfg.train.on_nonfinite == "skip" and skips < cfg.train.max_skips:
                            skips += 1
                            if is_main:
                                log(f"warning: non-finite loss at step {step} (epoch {epoch}); step "
                                    f"skipped ({skips}/{cfg.train.max_skips} allowed)")
                        else:
                            where = f"the last good checkpoint is {last_path}" if last_path else \
                                "no checkpoint had been written yet"
                            raise NonFiniteLossError(
                                f"loss became {loss} at step {step} (epoch {epoch}, lr {lr:.4g}); "
                                f"training stopped and {where}. Lower optim.base_lr, raise "
                                f"loss.temperature, or set train.on_nonfinite=skip")
                    step += 1
                    dt = time.perf_counter() - t0
                    recent = (recent + [dt])[-20:]
                    ips = cfg.train.batch_size / (sum(recent) / len(recent))
                    if is_main:
                        rec = {"step": step, "epoch": epoch, "loss": loss, "lr": lr,
                               "images_per_s": round(ips, 2), "time": round(time.perf_counter() - t_start, 3)}
                        for k in ("probe_loss", "probe_acc"):
                            if k in m:
                                rec[k] = float(m[k])
                        metrics.write(rec)
                        shown = {"loss": loss, "lr": lr, "img/s": round(ips, 1)}
                        if "probe_acc" in m:
                            shown["probe"] = f"{100 * float(m['probe_acc']):.0f}%"
                        progress.update(step, epoch=epoch, **shown)
                    if step % cfg.train.checkpoint_every == 0 and step < end:
                        last_path = save(step) or last_path
                    if stop.signum is not None or step >= end:
                        break
                if stop.signum is not None:
                    stopped = "signal"
                    if is_main:
                        progress.close()
                        log(f"received signal {stop.signum}: writing a checkpoint at step {step} and "
                            f"stopping")
                    break
                epoch += 1
            last_path = save(step) or last_path
    finally:
        progress.close()
        loader.close()
        if metrics is not None:
            metrics.close()
    if is_main:
        try:
            from .plot import training_plot
            records = MetricsLog.read(out_dir / "metrics.jsonl")
            if records:
                training_plot(records, out_dir / "training.png")
        except Exception as e:  # noqa: BLE001 - a plot must never fail a run
            log(f"warning: could not draw training.png: {e}")
    return TrainResult(out_dir=out_dir, step=step, total_steps=total, final_loss=loss,
                       checkpoint=last_path, stopped=stopped, wall_s=time.perf_counter() - t_start)

