"""The backend-agnostic SimCLR pre-training loop.

For every global step s (0-based; the checkpoint after s steps stores ``step = s``)::

    images, labels = loader batch (epoch = s // steps_per_epoch, seeded shuffle, rank shard)
    p1, p2         = sample_pair(cfg.augment, n, hw, seed, epoch, s, rank)   # the only draws
    lr             = schedule(s)                                             # pure function
    metrics        = trainer.train_step(images, labels, p1, p2, lr)          # backend
    -> non-finite guard -> metrics.jsonl -> progress -> checkpoint every N steps and at the end

The phases are named functions, in order: :func:`open_resume`, :func:`prepare_out_dir`,
:func:`restore`, :func:`make_loader`, then :func:`run_steps` (the step through
:func:`_step_pipeline`, then :func:`skip_or_stop`, :func:`log_step`, :func:`save`) and
:func:`finish` (training.png, config.json).

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
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .augment import sample_pair
from .backend import get_backend
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_write,
    latest_good,
    library_versions,
    remove_stale_temp_files,
    save_rolling,
)
from .config import Config, ConfigError
from .monitor import KnnMonitor
from .progress import MetricsLog, Progress
from .resnet_spec import stage_sides
from .schedules import LRSchedule
from .state import split_state


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
RESUME_SAFE_FIELDS = {"train.max_steps", "train.checkpoint_every",
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
                          skip_bad_images=cfg.data.skip_bad_images, resample=stream_resample(cfg),
                          resize=cfg.data.resize)
    return loader


def small_image_warning(cfg: Config) -> str | None:
    """A warning when the ImageNet stem shrinks the feature map to 1x1 before the last stage."""
    if cfg.model.cifar_stem:
        return None
    sides = stage_sides(cfg.model, cfg.augment.image_size)
    collapsed = [k for k, v in sides.items() if v == 1]
    if not collapsed or collapsed[0] == "layer4":
        return None
    shown = ", ".join(f"{k} {v}" for k, v in sides.items())
    return (f"model.cifar_stem = false (ImageNet stem, total stride 32) with augment.image_size = "
            f"{cfg.augment.image_size} leaves 1x1 feature maps from {collapsed[0]} on (sides: {shown}); "
            f"it trains, but the 3x3 convolutions there see only their centre tap. For small images "
            f"use the CIFAR stem (--set model.cifar_stem=true) or an image_size >= 32")


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
    fresh, _ = split_state(trainer.state_dict())
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


def _quiet(message: str) -> None:
    pass


# ----------------------------------------------------------------------------- set-up phases
def open_resume(resume, cfg: Config, requested_fields, world: int, is_main: bool, log):
    """The checkpoint to resume from (None for a new run) and the config the run uses."""
    if resume is None:
        return None, cfg
    ckpt = latest_good(resume, warn=lambda m: log(f"warning: {m}"))
    ckpt.check_fits_config()
    cfg = resume_config(ckpt.config, cfg, requested_fields, where=str(ckpt.path))
    if is_main:
        log(f"resuming from {ckpt.path} (step {ckpt.step}, written by the {ckpt.backend or '?'} backend)")
        if int(ckpt.extra.get("world", world)) != world:
            log(f"warning: the checkpoint was written by {int(ckpt.extra['world'])} processes, this run "
                f"has {world}: the per-rank augmentation streams differ from an uninterrupted run")
    return ckpt, cfg


def prepare_out_dir(out_dir: Path, rank: int, ckpt, cfg: Config, log) -> None:
    """Rank 0, before reading any data (a bad --out fails at once): the folder is writable,
    temp files of a killed run are gone, the run identity is claimed."""
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


def check_batch(cfg: Config, dataset, world: int) -> int:
    """The per-rank batch size; the global batch must split evenly and fit the dataset."""
    n_images = len(dataset.labels)
    if cfg.train.batch_size % world:
        raise ConfigError(f"config field train.batch_size = {cfg.train.batch_size} must be divisible "
                          f"by the number of processes ({world})")
    if cfg.train.batch_size > n_images:
        raise ConfigError(f"config field train.batch_size = {cfg.train.batch_size} is larger than the "
                          f"dataset {dataset.name} ({n_images} training images): expected a batch "
                          f"size <= {n_images}")
    return cfg.train.batch_size // world


def restore(trainer, ckpt, cfg: Config, dataset, num_classes, log) -> int:
    """Load the resumed checkpoint (or ``--init-from`` weights) into ``trainer``; the first step."""
    if ckpt is None:
        if cfg.train.init_from:
            init_from_checkpoint(trainer, cfg, log)
        return 0
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
    return ckpt.step


def make_loader(cfg: Config, dataset, per_rank: int, rank: int, world: int, stream: bool):
    """Batches of one rank: views cut by the workers (stream) or whole images (in memory)."""
    if stream:
        return stream_train_loader(cfg, dataset, per_rank, rank, world)
    from .data import BatchLoader
    return BatchLoader(dataset.images, dataset.labels, per_rank, seed=cfg.train.seed, rank=rank,
                       world=world, drop_last=True, shuffle=True, prefetch=2,
                       num_workers=cfg.data.num_workers)


# ----------------------------------------------------------------------------- the loop's state
@dataclass
class _Run:
    """What the loop's phases share: fixed for the run, then the counters the loop advances."""
    cfg: Config
    backend: str
    out_dir: Path
    trainer: object
    dist: object
    rank: int
    world: int
    per_rank: int
    hw: tuple[int, int]
    stream: bool
    num_classes: int | None
    spe: int  # steps per epoch
    start: int
    end: int
    t_start: float
    log: object
    step: int = 0
    loss: float = float("nan")
    skips: int = 0
    recent: list = field(default_factory=list)  # wall time of the last 20 steps
    last_path: Path | None = None
    last_step: int | None = None
    stopped: str = "completed"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def kept(self) -> str:
        return (f"the last good checkpoint is {self.last_path} (step {self.last_step})" if self.last_path
                else "no checkpoint had been written yet")


# ----------------------------------------------------------------------------- loop phases
def skip_or_stop(run: _Run, m: dict, lr: float, epoch: int, progress: Progress) -> bool:
    """After step ``run.step`` ran (``m``: its metrics): False if it was finite; True if it was
    skipped, while ``train.on_nonfinite = "skip"`` allows it; else the run stops with
    :class:`NonFiniteLossError`."""
    cfg = run.cfg
    run.loss = float(m["loss"])
    if not (bool(m.get("skipped")) or not math.isfinite(run.loss)):
        return False
    skip_mode = cfg.train.on_nonfinite == "skip"
    if skip_mode and run.skips < cfg.train.max_skips:
        run.skips += 1
        if run.is_main:
            progress.close()
            run.log(f"warning: non-finite loss or gradient at step {run.step} (epoch {epoch}); step "
                    f"skipped, model unchanged ({run.skips}/{cfg.train.max_skips} skips allowed by "
                    f"train.max_skips)")
        return True
    what = (f"loss became {run.loss}" if not m.get("skipped") else
            "the loss or a gradient became non-finite")
    limit = (f" after {run.skips} skipped step(s) (train.max_skips = {cfg.train.max_skips})"
             if skip_mode else "")
    hint = "raise train.max_skips" if skip_mode else "set train.on_nonfinite=skip"
    advice = (f"Lower optim.base_lr, raise loss.temperature, or {hint}" if run.step > run.start else
              "This is the first step of the run (the weights are as initialised or loaded), so the "
              "learning rate is not the cause: check the data (a batch of identical images, e.g. all "
              "black, gives z = 0, whose cosine similarity is undefined) and the checkpoint")
    raise NonFiniteLossError(f"{what} at step {run.step} (epoch {epoch}, lr {lr:.4g}){limit}; "
                             f"training stopped and {run.kept()}. {advice}")


def log_step(run: _Run, m: dict, lr: float, epoch: int, skipped: bool, metrics: MetricsLog,
             progress: Progress, monitor) -> None:
    """Rank 0, after step ``run.step``: one line of metrics.jsonl (and TensorBoard), the progress
    line, and the kNN monitor when it is due."""
    ips = run.cfg.train.batch_size / (sum(run.recent) / len(run.recent))
    rec = {"step": run.step, "epoch": epoch, "loss": run.loss, "lr": lr,
           "images_per_s": round(ips, 2), "time": round(time.perf_counter() - run.t_start, 3)}
    if skipped:
        rec.update(skipped=True, skips=run.skips)
    for k in ("probe_loss", "probe_acc"):
        if k in m:
            rec[k] = float(m[k])
    rec.update(monitor.after_step(run.trainer, run.step) if monitor else {})
    metrics.write(rec)
    shown = {"loss": run.loss, "lr": lr, "img/s": round(ips, 1)}
    if "probe_acc" in m:
        shown["probe"] = f"{100 * float(m['probe_acc']):.0f}%"
    shown.update(monitor.shown() if monitor else {})
    progress.update(run.step, epoch=epoch, **shown)


def save(run: _Run, step: int) -> None:
    """Rank 0 writes ``ckpt-<step>.h5`` and points last.h5 at it; never a checkpoint with NaN/Inf."""
    if not run.is_main:
        run.last_step = step
        return
    cfg, spe = run.cfg, run.spe
    state = run.trainer.state_dict()
    bad = _nonfinite_entries(state)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise NonFiniteLossError(
            f"the weights hold NaN/Inf ({bad[0]}{more}) at step {step}, so no checkpoint was "
            f"written; a gradient became non-finite while the loss was finite. Training "
            f"stopped and {run.kept()}. Lower optim.base_lr, raise loss.temperature, or set "
            f"train.on_nonfinite=skip")
    weights, momentum = split_state(state)
    extra = {"rng_seed": np.int64(cfg.train.seed), "rng_epoch": np.int64(step // spe),
             "rng_step": np.int64(step), "world": np.int64(run.world),
             "num_classes": np.int64(run.num_classes or 0)}
    versions = library_versions()
    if run.stream:  # the decoder decides the pixels of every view
        from .data.decode import decoder_versions
        versions.update(decoder_versions(cfg.data.resize))
    ck = Checkpoint(config=cfg, weights=weights, momentum=momentum, extra=extra,
                    epoch=step // spe, step=step, backend=run.backend, versions=versions)
    run.last_path = save_rolling(run.out_dir, ck, cfg.train.keep_last)
    run.last_step = step


def stop_requested(run: _Run, stop: _StopFlag) -> bool:
    """True once this rank (or, distributed, any rank) was signalled: all stop at the same step."""
    if run.dist is not None and run.dist.any(stop.signum is not None) and stop.signum is None:
        stop.signum = signal.SIGTERM  # another rank was signalled
    return stop.signum is not None


def run_steps(run: _Run, loader, schedule: LRSchedule, metrics, progress: Progress, monitor) -> None:
    """The loop from ``run.step`` to ``run.end``: step (through :func:`_step_pipeline`), skip or
    stop, log, save; a signal (on any rank) ends it after the current step with a checkpoint."""
    cfg, spe = run.cfg, run.spe
    with _StopFlag() as stop:
        epoch = run.step // spe
        pipe = _step_pipeline(run.trainer, cfg, run.per_rank, run.hw, run.rank, spe, schedule,
                              run.num_classes, run.end, run.dist, stop, run.stream)
        while run.step < run.end:
            for t0, lr, m in pipe.run(loader.epoch(epoch, start_step=run.step % spe), run.step):
                skipped = skip_or_stop(run, m, lr, epoch, progress)
                run.step += 1
                run.recent = (run.recent + [time.perf_counter() - t0])[-20:]
                if run.is_main:
                    log_step(run, m, lr, epoch, skipped, metrics, progress, monitor)
                if run.step % cfg.train.checkpoint_every == 0 and run.step < run.end:
                    save(run, run.step)
                if stop_requested(run, stop) or run.step >= run.end:
                    break
            if stop.signum is not None:
                run.stopped = "signal"
                if run.is_main:
                    progress.close()
                    run.log(f"received signal {stop.signum} ({signal.Signals(stop.signum).name}): "
                            f"writing a checkpoint at step {run.step} and stopping; continue with "
                            f"--resume {run.out_dir}")
                break
            epoch += 1
        save(run, run.step)
        if run.dist is not None:
            run.dist.barrier()  # every rank returns once rank 0's last checkpoint is written


def finish(run: _Run) -> None:
    """Rank 0, after the loop: the skip count, training.png and config.json."""
    if run.skips:
        run.log(f"warning: {run.skips} step(s) skipped for non-finite values (train.max_skips = "
                f"{run.cfg.train.max_skips})")
    try:
        from .plot import training_plot
        records = MetricsLog.read(run.out_dir / "metrics.jsonl")
        if records:
            training_plot(records, run.out_dir / "training.png")
    except Exception as e:  # noqa: BLE001 - a plot must never fail a run
        run.log(f"warning: could not draw training.png: {e}")
    text = json.dumps(run.cfg.to_dict(), indent=2)
    atomic_write(run.out_dir / "config.json", lambda tmp: Path(tmp).write_text(text))


# ----------------------------------------------------------------------------- train()
def train(cfg: Config, out_dir: str | Path, backend: str = "torch", resume: str | Path | None = None,
          device: str | None = None, show_progress: bool = True, dataset=None, dist=None,
          log=print, requested_fields=()) -> TrainResult:
    """Pre-train SimCLR; write checkpoints, metrics.jsonl, training.png and config.json into
    ``out_dir``.

    ``resume``: a checkpoint file or run folder; its config replaces ``cfg`` except for
    :data:`RESUME_SAFE_FIELDS` (``requested_fields``: fields the user set explicitly, which must
    then agree with the checkpoint, see :func:`resume_config`). ``dataset``: an already loaded
    training Dataset (else read from ``cfg.data``). ``dist``: the distributed context
    (rank/world) or None.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    is_main = rank == 0

    # resume: the checkpoint and its config, the output folder, the data, the model
    ckpt, cfg = open_resume(resume, cfg, requested_fields, world, is_main, log)
    cfg.validate()
    from .inputs import check_train_memory
    check_train_memory(cfg, world)  # before any data, model or loader is allocated
    if is_main:
        prepare_out_dir(out_dir, rank, ckpt, cfg, log)
    if dataset is None:
        dataset = load_train_data(cfg)
    if is_main and getattr(dataset, "skipped", 0):
        big = len(getattr(getattr(dataset, "index", None), "too_large", None) or ())
        what = f"{dataset.skipped - big} undecodable image(s)" + (f" and {big} over the pixel limit" if big else "")
        log(f"warning: skipped {what} in {dataset.source or dataset.name}")
    per_rank = check_batch(cfg, dataset, world)
    stream = getattr(dataset, "is_stream", False)
    hw = tuple(int(v) for v in np.median(dataset.hw, axis=0)) if stream else tuple(dataset.images.shape[1:3])
    num_classes = len(dataset.classes) if (cfg.optim.probe and dataset.labels is not None) else None
    trainer = get_backend(backend).Trainer(cfg, num_classes, device=device, dist=dist)
    start = restore(trainer, ckpt, cfg, dataset, num_classes, log if is_main else _quiet)

    loader = make_loader(cfg, dataset, per_rank, rank, world, stream)
    spe = loader.steps_per_epoch
    schedule = LRSchedule(cfg, spe)
    total = cfg.train.epochs * spe
    end = total if cfg.train.max_steps is None else min(total, cfg.train.max_steps)
    run = _Run(cfg=cfg, backend=backend, out_dir=out_dir, trainer=trainer, dist=dist, rank=rank,
               world=world, per_rank=per_rank, hw=hw, stream=stream, num_classes=num_classes, spe=spe,
               start=start, end=end, t_start=t_start, log=log, step=start,
               last_path=ckpt.path if ckpt is not None else None,
               last_step=ckpt.step if ckpt is not None else None,
               stopped="completed" if end == total else "max_steps")

    if is_main and ckpt is not None:
        drop_partial_metrics(out_dir / "metrics.jsonl")
    metrics = MetricsLog(out_dir / "metrics.jsonl", resume_step=start if ckpt is not None else None,
                         tensorboard=cfg.train.tensorboard) if is_main else None
    progress = Progress(end, start, enabled=show_progress and is_main, steps_per_epoch=spe,
                        interval_s=cfg.train.progress_every_s)
    monitor = KnnMonitor.for_run(cfg, backend, trainer.device, dataset, spe, end, log) if is_main else None
    if is_main:
        log(f"simclr-xb: {backend} on {trainer.device}, {cfg.model.arch} x{cfg.model.width}, "
            f"{len(dataset.labels)} images of {'median ' if stream else ''}{hw[0]}x{hw[1]} from "
            f"{dataset.name}, batch {cfg.train.batch_size}, {spe} steps/epoch, steps {start}->{end} "
            f"of {total}, peak lr {schedule.peak:.4g}")

    try:
        run_steps(run, loader, schedule, metrics, progress, monitor)
    finally:
        progress.close()
        loader.close()
        if metrics is not None:
            metrics.close()
    if is_main:
        finish(run)
    return TrainResult(out_dir=out_dir, step=run.step, total_steps=total, final_loss=run.loss,
                       checkpoint=run.last_path, stopped=run.stopped, wall_s=time.perf_counter() - t_start,
                       config=cfg)
