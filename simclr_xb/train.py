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

Non-finite values. ``on_nonfinite = "skip"`` calls ``train_step(..., skip_nonfinite=True)``: the
backend checks the loss and every gradient BEFORE the optimizer step and, if one is NaN/Inf,
leaves the model, BN statistics and momenta as they were; the loop counts the skip (logged,
and ``"skipped": true`` in metrics.jsonl) and stops with :class:`NonFiniteLossError` after
``train.max_skips`` of them. ``"stop"`` (default) raises at the first non-finite loss. A
gradient that is non-finite while the loss is finite shows up as non-finite weights: they are
checked before every checkpoint, which is then not written (the error names the step), so a
checkpoint on disk never holds NaN/Inf weights.

Crash safety: checkpoints are atomic (:mod:`.checkpoint`); on start the loop removes temporary
files left by a killed process and, on resume, a partial last line of metrics.jsonl, so a run
killed at any moment (SIGKILL included) resumes from its newest complete checkpoint and ends
with exactly the weights of an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
import re
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
from .monitor import KnnMonitor
from .progress import MetricsLog, Progress
from .schedules import LRSchedule


def _step_pipeline(trainer, cfg, per_rank, hw, rank, spe, schedule, num_classes, end, dist, stop,
                   stream=False):
    """The loop's steps through :class:`.pipeline.StepPipeline`: with an MLX trainer each
    loss is read one step late (the next step already launched), see :mod:`.pipeline`."""
    from .pipeline import StepPipeline
    skip = cfg.train.on_nonfinite == "skip"

    def args(batch, step):
        if stream:  # views already cut by the workers, from the boxes drawn for them
            images, labels, (p1, p2) = batch.views, batch.labels, batch.params
            kw = {"cropped": True}
        else:
            images, labels, kw = batch.images, batch.labels, {}
            p1, p2 = sample_pair(cfg.augment, per_rank, hw, cfg.train.seed, step // spe, step, rank)
        if skip:
            kw["skip_nonfinite"] = True
        return (images, labels if num_classes else None, p1, p2, schedule(step)), kw

    def launch(batch, step, keep_before):
        a, kw = args(batch, step)
        return trainer.train_step_async(*a, keep_before=keep_before, **kw)

    def run_sync(batch, step):
        a, kw = args(batch, step)
        return trainer.train_step(*a, **kw)

    def may_launch(step):
        return (step < end and step % cfg.train.checkpoint_every != 0 and dist is None
                and stop.signum is None)

    return StepPipeline(trainer, launch, run_sync, schedule, may_launch)


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
    config: Config | None = None  # the config the run used (the checkpoint's when resumed)


# Fields a resumed run may change without changing its trajectory.
RESUME_SAFE_FIELDS = {"train.max_steps", "train.log_every", "train.checkpoint_every",
                      "train.keep_last", "data.num_workers", "data.root", "train.compile",
                      "train.monitor_every", "train.monitor_train", "train.monitor_eval",
                      "train.tensorboard", "train.progress_every_s"}


def resume_config(ckpt_cfg: Config, requested: Config, requested_fields=(), where: str = "") -> Config:
    """The checkpoint's config, with only trajectory-neutral fields taken from ``requested``.

    ``requested_fields``: dotted fields the user set explicitly (CLI ``--set``, ``--arch``, ...);
    any of them outside :data:`RESUME_SAFE_FIELDS` whose value differs from the checkpoint's
    is a ConfigError (a resumed run cannot change its architecture, schedule, data, ...).
    """
    clashes = []
    for dotted in sorted(set(requested_fields) - RESUME_SAFE_FIELDS):
        section, _, key = dotted.partition(".")
        try:
            have = getattr(getattr(ckpt_cfg, section), key)
            want = getattr(getattr(requested, section), key)
        except AttributeError:
            continue
        if have != want:
            clashes.append(f"{dotted} = {have!r} in the checkpoint, {want!r} requested")
    if clashes:
        raise ConfigError(f"cannot resume from {where or 'the checkpoint'} with a different config: "
                          f"{'; '.join(clashes)}. A resumed run keeps its checkpoint's config (only "
                          f"{', '.join(sorted(RESUME_SAFE_FIELDS))} may change); to train with "
                          f"other values start a new run with another --out")
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
    """The training split: in memory, or a StreamDataset (folder:, wds:) read by index."""
    from .data import open_dataset
    return open_dataset(cfg.data.name, "train", root=cfg.data.root,
                        skip_bad_images=cfg.data.skip_bad_images)


def stream_resample(cfg: Config) -> str:
    """The workers' resize filter: bicubic for the official (tf2) recipe, else bilinear."""
    return "bicubic" if getattr(cfg.augment, "recipe", None) == "tf2" else "bilinear"


def stream_train_loader(cfg: Config, dataset, per_rank: int, rank: int, world: int):
    """A StreamLoader whose batches are the two views of every image, cut by the workers from
    the original image with the boxes ``sample_pair`` draws from each image's own (H, W) at
    (seed, epoch, global step, rank): the same draws an in-memory run makes."""
    from .data import StreamLoader

    def make_params(epoch, step, idx, hw):
        return list(sample_pair(cfg.augment, len(idx), hw, cfg.train.seed, epoch,
                                epoch * loader.steps_per_epoch + step, rank))

    loader = StreamLoader(dataset, per_rank, make_params, cfg.augment.image_size, seed=cfg.train.seed,
                          rank=rank, world=world, drop_last=True, shuffle=True,
                          num_workers=cfg.data.num_workers, prefetch=2,
                          skip_bad_images=cfg.data.skip_bad_images, resample=stream_resample(cfg))
    return loader


def stage_sides(cfg: Config) -> dict[str, int]:
    """Side of the encoder's feature map after the stem and after each stage, for
    ``cfg.augment.image_size`` (padding keeps every side >= 1, so any size >= 1 runs)."""
    from .resnet_spec import encoder_layout
    lay = encoder_layout(cfg.model)
    side = (cfg.augment.image_size + 2 * lay.stem_pad - lay.stem_kernel) // lay.stem_stride + 1
    if lay.maxpool:
        side = (side - 1) // 2 + 1  # 3x3, stride 2, padding 1
    out = {"stem": side}
    for b in lay.blocks:
        side = (side - 1) // b.stride + 1  # 3x3 (or 1x1 shortcut) with padding: ceil(side / stride)
        out[b.prefix.split(".")[1]] = side
    return out


def small_image_warning(cfg: Config) -> str | None:
    """A warning when the ImageNet stem shrinks the feature map to 1x1 before the last stage."""
    if cfg.model.cifar_stem:
        return None
    sides = stage_sides(cfg)
    collapsed = [k for k, v in sides.items() if v == 1]
    if not collapsed or collapsed[0] == "layer4":
        return None
    shown = ", ".join(f"{k} {v}" for k, v in sides.items())
    return (f"model.cifar_stem = false (ImageNet stem, total stride 32) with augment.image_size = "
            f"{cfg.augment.image_size} leaves 1x1 feature maps from {collapsed[0]} on (sides: {shown}); "
            f"it trains, but the 3x3 convolutions there see only their centre tap. For small images "
            f"use the CIFAR stem (--set model.cifar_stem=true) or an image_size >= 32")


_TEMP_RE = re.compile(r"^\.(?:ckpt-\d+\.h5|last\.h5)\.tmp-(\d+)$|^\.write-test-\d+$")


def _stale_pid(pid: int) -> bool:
    """True if no process ``pid`` exists, or it is this one (nothing written yet; pids repeat
    across container restarts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def remove_stale_temp_files(out_dir: Path, log=None) -> list[Path]:
    """Delete temporary files that a killed run left in ``out_dir`` (a checkpoint's temp file
    whose writer process is gone, the write-test file); returns what was removed."""
    removed = []
    for f in out_dir.iterdir() if out_dir.is_dir() else []:
        m = _TEMP_RE.match(f.name)
        if m is None or (m.group(1) and not _stale_pid(int(m.group(1)))):
            continue
        try:
            f.unlink()
            removed.append(f)
        except OSError:
            pass
    if removed and log:
        log(f"removed {len(removed)} temporary file(s) left by an interrupted run: "
            f"{', '.join(f.name for f in removed)}")
    return removed


def drop_partial_metrics(path: Path) -> int:
    """Drop lines of metrics.jsonl that do not parse (a write cut by a kill); returns how many."""
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    good = []
    for line in lines:
        try:
            json.loads(line)
            good.append(line)
        except ValueError:
            pass
    dropped = sum(1 for l in lines if l.strip()) - len(good)
    if dropped:
        path.write_text("".join(l + "\n" for l in good))
    return dropped


def claim_run(out_dir: Path, ckpt, cfg: Config) -> str:
    """The run identity of ``out_dir`` (run.json, :func:`simclr_xb.outputs.claim_run_folder`):
    a new run needs a folder without another run in it; a resumed one continues its own run."""
    from .outputs import OutputError, claim_run_folder
    try:
        return claim_run_folder(out_dir, resume_from=ckpt.path if ckpt is not None else None,
                                init_from=cfg.train.init_from)
    except OutputError as e:
        raise CheckpointError(str(e)) from None


def init_from_checkpoint(trainer, cfg: Config, log=print) -> None:
    """Load the encoder and head weights of ``cfg.train.init_from`` (a checkpoint file or run
    folder; the exact file named, never another) into a fresh ``trainer``: momenta start at
    zero, the online probe keeps its fresh initialisation, the step count starts at 0."""
    src = latest_good(cfg.train.init_from, warn=lambda m: log(f"warning: {m}"))
    src.check_fits_config()
    fresh = {k: v for k, v in trainer.state_dict().items() if not k.startswith("momentum/")}
    theirs = {k: v for k, v in src.weights.items() if not k.startswith("probe.")}
    state = dict(fresh)
    state.update(theirs)
    try:
        from .resnet_spec import check_weights, model_specs
        check_weights(theirs, model_specs(cfg.model), "its weights")  # exactly this model's entries
        trainer.load_state_dict(state)
    except ValueError as e:
        m = src.config.model
        raise CheckpointError(f"--init-from {src.path}: its weights ({m.arch} x{m.width:g}, "
                              f"{'CIFAR' if m.cifar_stem else 'ImageNet'} stem) do not fit this run's "
                              f"model ({cfg.model.arch} x{cfg.model.width:g}): {e}") from None
    log(f"initialised the weights from {src.path} (step {src.step}); a new run with its own "
        f"schedule starts at step 0")


def _nonfinite_entries(state: dict[str, np.ndarray]) -> list[str]:
    return [k for k, v in state.items()
            if np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all()]


def train(cfg: Config, out_dir: str | Path, backend: str = "torch", resume: str | Path | None = None,
          device: str | None = None, show_progress: bool = True, dataset=None, dist=None,
          log=print, requested_fields=()) -> TrainResult:
    """Pre-train SimCLR; write checkpoints, metrics.jsonl and a plot into ``out_dir``.

    ``resume``: a checkpoint file or run folder; its config replaces ``cfg`` except for
    :data:`RESUME_SAFE_FIELDS` (``requested_fields``: fields the user set explicitly, which must
    then agree with the checkpoint, see :func:`resume_config`). ``dataset``: an already loaded
    training Dataset (else read from ``cfg.data``). ``dist``: the distributed context
    (rank/world) or None.
    """
    from .data import BatchLoader

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    is_main = rank == 0

    ckpt = None
    if resume is not None:
        ckpt = latest_good(resume, warn=lambda m: log(f"warning: {m}"))
        ckpt.check_fits_config()
        cfg = resume_config(ckpt.config, cfg, requested_fields, where=str(ckpt.path))
        if is_main:
            log(f"resuming from {ckpt.path} (step {ckpt.step}, written by the {ckpt.backend or '?'} backend)")
            if int(ckpt.extra.get("world", world)) != world:
                log(f"warning: the checkpoint was written by {int(ckpt.extra['world'])} processes, this run "
                    f"has {world}: the per-rank augmentation streams differ from an uninterrupted run")
    cfg.validate()
    from .inputs import check_train_memory
    check_train_memory(cfg, world)  # before any data, model or loader is allocated

    if is_main:  # before reading any data: a bad --out fails at once
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            probe_file = out_dir / f".write-test-{rank}"
            probe_file.write_text("")
            probe_file.unlink()
        except OSError as e:
            raise CheckpointError(f"output folder {out_dir} is not writable ({e.strerror}: "
                                  f"{e.filename}): choose another --out") from None
        remove_stale_temp_files(out_dir, log=log)
        claim_run(out_dir, ckpt, cfg)
        warning = small_image_warning(cfg)
        if warning:
            log(f"warning: {warning}")

    if dataset is None:
        dataset = load_train_data(cfg)
    if is_main and getattr(dataset, "skipped", 0):
        log(f"warning: skipped {dataset.skipped} undecodable image(s) in {dataset.source or dataset.name}")
    n_images = len(dataset.labels)
    per_rank = cfg.train.batch_size // world
    if cfg.train.batch_size % world:
        raise ConfigError(f"config field train.batch_size = {cfg.train.batch_size} must be divisible "
                          f"by the number of processes ({world})")
    if cfg.train.batch_size > n_images:
        raise ConfigError(f"config field train.batch_size = {cfg.train.batch_size} is larger than the "
                          f"dataset {dataset.name} ({n_images} training images): expected a batch "
                          f"size <= {n_images}")
    stream = getattr(dataset, "is_stream", False)
    hw = tuple(int(v) for v in np.median(dataset.hw, axis=0)) if stream else tuple(dataset.images.shape[1:3])
    num_classes = len(dataset.classes) if (cfg.optim.probe and dataset.labels is not None) else None

    api = get_backend(backend)
    trainer = api.Trainer(cfg, num_classes, device=device, dist=dist)
    start = 0
    if ckpt is not None:
        if ckpt.extra.get("num_classes") is not None and int(ckpt.extra["num_classes"]) != int(num_classes or 0):
            raise CheckpointError(
                f"checkpoint {ckpt.path} has an online probe for {int(ckpt.extra['num_classes'])} "
                f"classes, but the dataset {dataset.name} has {len(dataset.classes)}: resume with "
                f"the data it was trained on")
        try:
            trainer.load_state_dict(ckpt.state_dict())
        except ValueError as e:
            raise CheckpointError(f"checkpoint {ckpt.path} does not fit the model of its own config "
                                  f"({cfg.model.arch} x{cfg.model.width}, cifar_stem "
                                  f"{cfg.model.cifar_stem}): {e}") from None
        start = ckpt.step
    elif cfg.train.init_from:
        init_from_checkpoint(trainer, cfg, log if is_main else (lambda m: None))

    loader = stream_train_loader(cfg, dataset, per_rank, rank, world) if stream else \
        BatchLoader(dataset.images, dataset.labels, per_rank, seed=cfg.train.seed, rank=rank,
                    world=world, drop_last=True, shuffle=True, prefetch=2,
                    num_workers=cfg.data.num_workers)
    spe = loader.steps_per_epoch
    schedule = LRSchedule(cfg, spe)
    total = cfg.train.epochs * spe
    end = total if cfg.train.max_steps is None else min(total, cfg.train.max_steps)

    if is_main and ckpt is not None:
        drop_partial_metrics(out_dir / "metrics.jsonl")
    metrics = MetricsLog(out_dir / "metrics.jsonl", resume_step=start if ckpt is not None else None,
                         tensorboard=cfg.train.tensorboard) if is_main else None
    progress = Progress(end, start, enabled=show_progress and is_main, steps_per_epoch=spe,
                        interval_s=cfg.train.progress_every_s)
    monitor = KnnMonitor.for_run(cfg, backend, trainer.device, dataset, spe, end, log) if is_main else None
    if is_main:
        log(f"simclr-xb: {backend} on {trainer.device}, {cfg.model.arch} x{cfg.model.width}, "
            f"{n_images} images of {'median ' if stream else ''}{hw[0]}x{hw[1]} from {dataset.name}, batch {cfg.train.batch_size}, "
            f"{spe} steps/epoch, steps {start}->{end} of {total}, peak lr {schedule.peak:.4g}")

    last_path = ckpt.path if ckpt is not None else None
    last_step = ckpt.step if ckpt is not None else None

    def kept() -> str:
        return (f"the last good checkpoint is {last_path} (step {last_step})" if last_path else
                "no checkpoint had been written yet")

    def save(step: int) -> Path | None:
        if not is_main:
            return None
        state = trainer.state_dict()
        bad = _nonfinite_entries(state)
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise NonFiniteLossError(
                f"the weights hold NaN/Inf ({bad[0]}{more}) at step {step}, so no checkpoint was "
                f"written; a gradient became non-finite while the loss was finite. Training "
                f"stopped and {kept()}. Lower optim.base_lr, raise loss.temperature, or set "
                f"train.on_nonfinite=skip")
        weights = {k: v for k, v in state.items() if not k.startswith("momentum/")}
        momentum = {k[len("momentum/"):]: v for k, v in state.items() if k.startswith("momentum/")}
        extra = {"rng_seed": np.int64(cfg.train.seed), "rng_epoch": np.int64(step // spe),
                 "rng_step": np.int64(step), "world": np.int64(world),
                 "num_classes": np.int64(num_classes or 0)}
        versions = library_versions()
        if stream:  # the decoder decides the pixels of every view
            from .data.decode import decoder_versions
            versions.update(decoder_versions())
        ck = Checkpoint(config=cfg, weights=weights, momentum=momentum, extra=extra,
                        epoch=step // spe, step=step, backend=backend, versions=versions)
        return save_rolling(out_dir, ck, cfg.train.keep_last)

    skip_mode = cfg.train.on_nonfinite == "skip"
    step = start
    loss = float("nan")
    stopped = "completed" if end == total else "max_steps"
    skips = 0
    recent: list[float] = []
    try:
        with _StopFlag() as stop:
            epoch = step // spe
            pipe = _step_pipeline(trainer, cfg, per_rank, hw, rank, spe, schedule, num_classes, end,
                                  dist, stop, stream)
            while step < end:
                for t0, lr, m in pipe.run(loader.epoch(epoch, start_step=step % spe), step):
                    loss = float(m["loss"])
                    skipped = bool(m.get("skipped")) or not math.isfinite(loss)
                    if skipped:
                        if skip_mode and skips < cfg.train.max_skips:
                            skips += 1
                            if is_main:
                                progress.close()
                                log(f"warning: non-finite loss or gradient at step {step} (epoch "
                                    f"{epoch}); step skipped, model unchanged ({skips}/"
                                    f"{cfg.train.max_skips} skips allowed by train.max_skips)")
                        else:
                            what = (f"loss became {loss}" if not m.get("skipped") else
                                    "the loss or a gradient became non-finite")
                            limit = (f" after {skips} skipped step(s) (train.max_skips = "
                                     f"{cfg.train.max_skips})" if skip_mode else "")
                            hint = ("raise train.max_skips" if skip_mode else
                                    "set train.on_nonfinite=skip")
                            advice = (f"Lower optim.base_lr, raise loss.temperature, or {hint}"
                                      if step > start else
                                      "This is the first step of the run (the weights are as "
                                      "initialised or loaded), so the learning rate is not the "
                                      "cause: check the data (a batch of identical images, e.g. "
                                      "all black, gives z = 0, whose cosine similarity is "
                                      "undefined) and the checkpoint")
                            raise NonFiniteLossError(
                                f"{what} at step {step} (epoch {epoch}, lr {lr:.4g}){limit}; "
                                f"training stopped and {kept()}. {advice}")
                    step += 1
                    dt = time.perf_counter() - t0
                    recent = (recent + [dt])[-20:]
                    ips = cfg.train.batch_size / (sum(recent) / len(recent))
                    if is_main:
                        rec = {"step": step, "epoch": epoch, "loss": loss, "lr": lr,
                               "images_per_s": round(ips, 2), "time": round(time.perf_counter() - t_start, 3)}
                        if skipped:
                            rec.update(skipped=True, skips=skips)
                        for k in ("probe_loss", "probe_acc"):
                            if k in m:
                                rec[k] = float(m[k])
                        rec.update(monitor.after_step(trainer, step) if monitor else {})
                        metrics.write(rec)
                        shown = {"loss": loss, "lr": lr, "img/s": round(ips, 1)}
                        if "probe_acc" in m:
                            shown["probe"] = f"{100 * float(m['probe_acc']):.0f}%"
                        shown.update(monitor.shown() if monitor else {})
                        progress.update(step, epoch=epoch, **shown)
                    if step % cfg.train.checkpoint_every == 0 and step < end:
                        last_path = save(step) or last_path
                        last_step = step
                    if dist is not None and dist.any(stop.signum is not None) and stop.signum is None:
                        stop.signum = signal.SIGTERM  # another rank was signalled: all stop at this step
                    if stop.signum is not None or step >= end:
                        break
                if stop.signum is not None:
                    stopped = "signal"
                    if is_main:
                        progress.close()
                        log(f"received signal {stop.signum} ({signal.Signals(stop.signum).name}): "
                            f"writing a checkpoint at step {step} and stopping; continue with --resume "
                            f"{out_dir}")
                    break
                epoch += 1
            last_path = save(step) or last_path
            last_step = step
            if dist is not None:
                dist.barrier()  # every rank returns once rank 0's last checkpoint is written
    finally:
        progress.close()
        loader.close()
        if metrics is not None:
            metrics.close()
    if is_main:
        if skips:
            log(f"warning: {skips} step(s) skipped for non-finite values (train.max_skips = "
                f"{cfg.train.max_skips})")
        try:
            from .plot import training_plot
            records = MetricsLog.read(out_dir / "metrics.jsonl")
            if records:
                training_plot(records, out_dir / "training.png")
        except Exception as e:  # noqa: BLE001 - a plot must never fail a run
            log(f"warning: could not draw training.png: {e}")
    return TrainResult(out_dir=out_dir, step=step, total_steps=total, final_loss=loss,
                       checkpoint=last_path, stopped=stopped, wall_s=time.perf_counter() - t_start,
                       config=cfg)
