"""The ``simclr-xb`` command line.

The repository's top-level cli.py is a shim that calls :func:`main`. Commands import their heavy modules lazily so that
``simclr-xb --help`` stays fast and never imports torch or mlx.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

if __name__ == "cli":  # pragma: no cover - guard against a stray top-level import
    raise ImportError("'cli' is not importable on its own: install the project and use simclr_xb.cli")

from simclr_xb import __version__
from simclr_xb.config import PRESETS, Config, ConfigError, load_config_file, preset

BACKEND_CHOICE = click.Choice(["torch", "mlx"])


class UserError(click.ClickException):
    """An error the user can fix; printed as ONE line without a traceback (a message of several
    lines is joined with '; ', an embedded traceback reduced to its exception line; the full
    text follows on stderr under --debug / SIMCLR_XB_DEBUG=1)."""

    def __init__(self, message):
        message = str(message)
        self.detail = message if "\n" in message.strip() else None
        self.debug = bool(self.detail) and _debug_on(click.get_current_context(silent=True))
        super().__init__(_single_line(message) if self.detail else message)

    def show(self, file=None):
        super().show(file)
        if self.debug:
            click.echo(f"details:\n{self.detail}", err=True)


def _single_line(text: str) -> str:
    """``text``'s lines as one: joined with '; ' (after a ':' with a space), each traceback
    (``Traceback (most recent call last):`` and its indented lines) left out but its final
    exception line kept."""
    out, skipping, tb = [], False, False
    for line in str(text).splitlines():
        if not line.strip():
            continue
        if "Traceback (most recent call last)" in line:
            head = line.split("Traceback (most recent call last)")[0].strip()
            if head:
                out.append(head)
            skipping = tb = True
            continue
        if skipping and line[:1] in (" ", "\t"):
            continue
        skipping = False
        out.append(line.strip())
    text = ""
    for part in out:
        text += part if not text else (" " if text.endswith(":") else "; ") + part
    return text + (" (its traceback: rerun with --debug)" if tb else "")


def _fail(e: Exception) -> None:
    raise UserError(str(e)) from e


def _known_errors():
    from simclr_xb.backend import BackendUnavailable
    from simclr_xb.checkpoint import CheckpointError
    from simclr_xb.outputs import OutputError
    errors = (ConfigError, CheckpointError, BackendUnavailable, FileNotFoundError, ValueError, OutputError)
    try:
        from simclr_xb.data import DataError, DataWorkerError  # type: ignore[attr-defined]
        errors += (DataError, DataWorkerError)
    except ImportError:
        pass
    try:
        from simclr_xb.train import NonFiniteLossError
        errors += (NonFiniteLossError,)
    except ImportError:
        pass
    return errors


def build_config(preset_name: str | None, config_file: str | None, overrides: tuple[str, ...],
                 **flags) -> Config:
    """preset -> config file -> --set overrides -> dedicated flags (the last one wins)."""
    cfg = preset(preset_name or "tiny")
    if config_file:
        cfg = load_config_file(config_file, base=cfg)
    cfg = cfg.with_overrides(list(overrides))
    for flag, dotted in FLAG_FIELDS.items():
        value = flags.get(flag)
        if value is not None:
            cfg = cfg.with_value(dotted, value)
    return cfg.validate()


# Dedicated options -> the config field each one sets.
FLAG_FIELDS = {"epochs": "train.epochs", "batch_size": "train.batch_size", "seed": "train.seed",
               "max_steps": "train.max_steps", "precision": "train.precision", "data": "data.name",
               "data_root": "data.root", "compile_": "train.compile", "lr": "optim.base_lr",
               "temperature": "loss.temperature", "arch": "model.arch", "width": "model.width",
               "image_size": "augment.image_size", "skip_bad_images": "data.skip_bad_images",
               "tensorboard": "train.tensorboard"}


def requested_fields(overrides: tuple[str, ...], flags: dict) -> list[str]:
    """The config fields the user set explicitly (--set and dedicated options)."""
    return [o.partition("=")[0].strip() for o in overrides] + \
        [FLAG_FIELDS[k] for k, v in flags.items() if v is not None and k in FLAG_FIELDS]


def config_options(f):
    """Options shared by commands that build a Config."""
    opts = [
        click.option("--preset", "preset_name", type=click.Choice(sorted(PRESETS)), default=None,
                     help="Base configuration (default: tiny)."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help="TOML or JSON file of [section] field = value tables."),
        click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
                     help="Override any config field, e.g. --set model.width=0.5 (repeatable)."),
        click.option("--data", default=None,
                     help="Dataset: shapes, fashion-mnist, mnist, cifar10, cifar100, folder:PATH, hdf5:PATH."),
        click.option("--data-root", default=None, help="Folder to read the dataset from."),
        click.option("--epochs", type=int, default=None),
        click.option("--batch-size", type=int, default=None, help="Global batch size N (2N views)."),
        click.option("--seed", type=int, default=None),
        click.option("--arch", default=None, help="resnet18 | resnet34 | resnet50"),
        click.option("--width", type=float, default=None, help="Width multiplier (0.25 = 16 channels)."),
        click.option("--image-size", type=int, default=None, help="Side of each augmented view."),
        click.option("--temperature", type=float, default=None, help="NT-Xent tau."),
        click.option("--lr", type=float, default=None, help="Base learning rate (before scaling)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


DEBUG_ENV = "SIMCLR_XB_DEBUG"


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _debug_on(ctx: click.Context | None) -> bool:
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and (root.obj or {}).get("debug"))


class _ErrorBoundary(click.Group):
    """The one error boundary of every command: an expected failure (a bad config field, file,
    tensor, output or device) becomes ``Error: <one line>`` and exit 1; anything else becomes
    one ``internal error`` line saying how to report it, exit 1, with the traceback only under
    ``--debug`` / ``SIMCLR_XB_DEBUG=1``. Click's own exits and Ctrl-C pass through."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit,
                SystemExit, KeyboardInterrupt, GeneratorExit):
            raise
        except _known_errors() as e:
            if _debug_on(ctx):
                import traceback
                traceback.print_exc()
            raise UserError(str(e)) from e
        except OSError as e:  # a file system failure the command did not name itself
            if _debug_on(ctx):
                import traceback
                traceback.print_exc()
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            raise UserError(f"{e.strerror or e}{where}") from e
        except MemoryError as e:
            raise UserError("not enough memory for this command (MemoryError); use a smaller "
                            "--batch-size, image size or dataset") from e
        except Exception as e:  # noqa: BLE001 - the boundary: one line, traceback on request
            if _debug_on(ctx):
                import traceback
                traceback.print_exc()
                hint = "the traceback is above"
            else:
                hint = f"rerun with --debug (simclr-xb --debug ...) or {DEBUG_ENV}=1 for the traceback"
            raise UserError(f"internal error ({type(e).__name__}: {_one_line(e, 200)}); this is a bug "
                            f"in simclr-xb {__version__}: {hint}, and report it to the project's issue "
                            f"tracker with the command line and that traceback") from e


@click.group(cls=_ErrorBoundary, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="simclr-xb")
@click.option("--debug", is_flag=True, help=f"Show the traceback of an internal error (also {DEBUG_ENV}=1).")
@click.pass_context
def main(ctx, debug):
    """SimCLR on MLX and PyTorch from one backend-agnostic core.

    \b
    Typical use:
      simclr-xb train --backend torch --data shapes --preset tiny --epochs 10 --out runs/a
      simclr-xb eval --checkpoint runs/a/last.h5 --data shapes
      simclr-xb conformance --backends torch,mlx
    """
    ctx.obj = dict(ctx.obj or {}, debug=debug)
    from simclr_xb.blas import use_openblas_for_mlx
    use_openblas_for_mlx()  # Linux + MLX: re-run once with OpenBLAS preloaded (simclr_xb/blas.py)


# --------------------------------------------------------------------------- info
@main.command()
def info():
    """Versions, which backends import, and their devices."""
    import platform

    import numpy as np

    from simclr_xb.backend import BACKENDS, BackendUnavailable, get_backend
    click.echo(f"simclr-xb {__version__}  python {platform.python_version()}  numpy {np.__version__}"
               f"  platform {platform.platform()}")
    for name in BACKENDS:
        try:
            api = get_backend(name)
            click.echo(f"  {name:6s} {api.version():12s} devices: {', '.join(api.devices())}")
        except BackendUnavailable as e:
            click.echo(f"  {name:6s} not available ({e.__cause__})")
    click.echo(f"  presets: {', '.join(sorted(PRESETS))}")


# --------------------------------------------------------------------------- train
@main.command()
@click.option("--backend", type=BACKEND_CHOICE, default="torch", show_default=True)
@config_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run folder: last.h5, ckpt-<step>.h5, metrics.jsonl, training.png, config.json.")
@click.option("--resume", type=click.Path(), default=None,
              help="Checkpoint file or run folder to continue from (exact trajectory).")
@click.option("--device", default=None, help="Backend device, e.g. cpu, cuda, cuda:1, gpu.")
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps.")
@click.option("--precision", type=click.Choice(["auto", "float32", "float64", "bfloat16"]), default="auto",
              show_default=True, help="auto: bfloat16 autocast where the hardware has it (torch on CUDA or "
              "a CPU with native bf16), else the config's (float32); never changes a resumed run or a "
              "precision set by --set / the config file.")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile / mx.compile.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--skip-bad-images", is_flag=True, default=None,
              help="Skip images that cannot be decoded (folder datasets) instead of failing.")
@click.option("--nproc", type=int, default=None,
              help="Data parallel on this machine: run this command in N processes (torchrun for "
                   "torch, mlx.launch for mlx). --batch-size stays the GLOBAL batch.")
@click.option("--hostfile", type=click.Path(dir_okay=False), default=None,
              help="mlx only: an mlx.launch hostfile to run on several machines (docs/distributed.md).")
@click.option("--init-from", "init_from", type=click.Path(), default=None,
              help="Start a NEW run (this command's config and schedule) from the weights of this "
                   "checkpoint file or run folder; recorded as train.init_from.")
@click.option("--tensorboard", is_flag=True, default=None,
              help="Also write TensorBoard event files into --out (needs simclr-xb[tensorboard]).")
def train(backend, preset_name, config_file, overrides, out_dir, resume, device, quiet, nproc, hostfile,
          init_from=None, **flags):
    """Pre-train SimCLR and write checkpoints, metrics and a plot into --out.

    \b
    Data parallel: --nproc N here, or start the ranks yourself, e.g.
      torchrun --nproc-per-node 4 -m simclr_xb.cli train --backend torch ...
      mlx.launch -n 2 --backend ring -- python -m simclr_xb.cli train --backend mlx ...
    (multi-node: docs/distributed.md, scripts/slurm_torchrun.sh). Rank 0 logs and checkpoints.
    """
    _train_preflight(backend, out_dir, resume, device, nproc, init_from, overrides)
    if init_from is not None:
        overrides = tuple(overrides) + (f"train.init_from={json.dumps(str(init_from))}",)
    if hostfile is not None or (nproc is not None and nproc != 1):
        _launch_ranks(backend, nproc or 1, hostfile)
    from simclr_xb.distributed import DistributedError, from_env, mark_done
    from simclr_xb.train import train as run_train
    dist = None
    try:
        dist = from_env(backend)
        auto = flags.get("precision") == "auto"
        flags["precision"] = None if auto else flags.get("precision")
        cfg = build_config(preset_name, config_file, overrides, **flags)
        if auto and resume is None:
            cfg = _auto_precision(cfg, backend, device, overrides, config_file)
        if resume is None and (Path(out_dir) / "last.h5").exists():
            raise UserError(f"{out_dir} already holds a run (last.h5): pass --resume {out_dir} to "
                            f"continue it, or choose another --out")
        from simclr_xb.outputs import check_output_dir, dataset_folders
        check_output_dir(out_dir, data_dirs=dataset_folders(cfg.data.name, root=cfg.data.root))
        res = run_train(cfg, out_dir, backend=backend, resume=resume, device=device,
                        show_progress=not quiet, dist=dist, log=lambda m: click.echo(m, err=True),
                        requested_fields=requested_fields(overrides, flags))
    except UserError as e:
        if dist is not None:
            dist.abort(1, f"Error: {_on_rank(dist, e.message)}")
        raise
    except (DistributedError,) + _known_errors() as e:
        if dist is not None:
            dist.abort(1, f"Error: {_on_rank(dist, _single_line(str(e)))}")
        raise UserError(str(e)) from e
    except Exception as e:
        if dist is not None:  # the launcher (or the collective timeout) stops the other ranks
            import traceback
            traceback.print_exc()
            dist.abort(1, _on_rank(dist, f"failed with {type(e).__name__}: {e}"))
        raise
    if dist is None or dist.is_main:
        click.echo(f"done: {res.stopped} at step {res.step}/{res.total_steps}, final loss "
                   f"{res.final_loss:.4f}, {res.wall_s:.0f} s; checkpoint {res.checkpoint}")
    if dist is not None:
        dist.shutdown()
    mark_done(dist)


def _train_preflight(backend, out_dir, resume, device, nproc, init_from, overrides) -> None:
    """train's checks before any work: --nproc, --device, --out, --init-from vs --resume."""
    from simclr_xb.inputs import check_device, positive_int
    from simclr_xb.outputs import check_output_dir
    try:
        positive_int(nproc, "--nproc")
        if init_from is not None and resume is not None:
            raise UserError(f"--init-from {init_from} and --resume {resume} exclude each other: "
                            f"--resume continues a run, --init-from starts a new one from its weights")
        if init_from is not None and any(o.partition("=")[0].strip() == "train.init_from" for o in overrides):
            raise UserError("give --init-from or --set train.init_from=..., not both")
        check_output_dir(out_dir)
        check_device(backend, device)
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from e


def _on_rank(dist, message: str) -> str:
    return message if dist is None else f"rank {dist.rank} of {dist.world}: {message}"


def _launch_ranks(backend: str, nproc: int, hostfile: str | None) -> None:
    """Re-run the current ``train`` command (minus --nproc/--hostfile) under torchrun or
    mlx.launch in ``nproc`` processes, then exit with the launcher's status."""
    import subprocess
    import tempfile

    from click.core import ParameterSource

    from simclr_xb.distributed import STATUS_ENV, DistributedError, failed_ranks, launch_argv
    ctx = click.get_current_context()
    args = [ctx.info_name, "--backend", backend]
    for p in ctx.command.params:
        if not isinstance(p, click.Option) or p.name in ("nproc", "hostfile", "backend") or \
                ctx.get_parameter_source(p.name) in (None, ParameterSource.DEFAULT):
            continue
        opt = max(p.opts, key=len)
        for value in (ctx.params[p.name] if p.multiple else [ctx.params[p.name]]):
            if p.is_flag and p.secondary_opts:
                args.append(opt if value else max(p.secondary_opts, key=len))
            elif p.is_flag:
                args += [opt] if value else []
            else:
                args += [opt, str(value)]
    try:
        argv = launch_argv(backend, nproc, args, hostfile=hostfile)
    except DistributedError as e:
        raise UserError(str(e)) from e
    click.echo(f"launching: {' '.join(argv)}", err=True)
    with tempfile.TemporaryDirectory(prefix="simclr-xb-ranks-") as status:
        code = subprocess.run(argv, env=dict(os.environ, **{STATUS_ENV: status})).returncode
        failed = failed_ranks(status, nproc) if hostfile is None else []
    if code == 0 and failed:  # mlx.launch exits 0 even when a rank failed
        click.echo(f"error: rank(s) {', '.join(map(str, failed))} of {nproc} did not finish (see above)",
                   err=True)
        code = 1
    sys.exit(code)


# ------------------------------------------------- shared checks before long work (issue 14)
def _counts(**counts) -> None:
    """Each CLI count (``--knn-k``, ``--batch-size``, ...) must be an integer >= 1."""
    from simclr_xb.inputs import positive_int
    for option, value in counts.items():
        positive_int(value, option)


def _inputs(*items) -> tuple:
    """The paths a command reads: checkpoint arguments, loaded checkpoints, file data specs."""
    out = []
    for it in items:
        if it is None:
            continue
        if getattr(it, "path", None) is not None:
            out.append(it.path)
        elif isinstance(it, str) and it.partition(":")[0] in ("hdf5", "folder"):
            out.append(os.path.expanduser(it.partition(":")[2]))
        else:
            out.append(it)
    return tuple(out)


def _outputs_first(files: dict, inputs=(), device=None, data=(), root=None) -> None:
    """Before any long work: every output file ({option: path}) is absent or a regular file,
    not one of ``inputs``, not inside the folder of a dataset spec in ``data`` (read under
    ``root``), in a writable folder; ``device`` = (backend, --device) exists."""
    from simclr_xb.inputs import check_device
    from simclr_xb.outputs import check_output_file, dataset_folders
    dirs = dataset_folders(*data, root=root)
    for option, path in files.items():
        if path is not None:  # a --json result goes into an existing folder
            check_output_file(path, option, inputs=inputs, parent_must_exist=option == "--json",
                              data_dirs=dirs)
    if device is not None:
        check_device(*device)


def _write_text(path, text: str) -> None:
    """A small output file (JSON results), written atomically (never a FIFO or device)."""
    from simclr_xb.checkpoint import atomic_write
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# --------------------------------------------------------------------------- eval
@main.command(name="eval")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Checkpoint file or run folder (newest good checkpoint).")
@click.option("--data", default=None, help="Dataset (default: the one the checkpoint trained on).")
@click.option("--data-root", default=None)
@click.option("--backend", type=BACKEND_CHOICE, default=None,
              help="Backend that computes features (default: the checkpoint's, else any installed).")
@click.option("--device", default=None)
@click.option("--random-init", is_flag=True,
              help="Evaluate an untrained encoder of the same architecture (the baseline).")
@click.option("--raw-pixels", is_flag=True, help="Evaluate raw pixels (the other baseline).")
@click.option("--preset", "preset_name", type=click.Choice(sorted(PRESETS)), default=None,
              help="Architecture when no --checkpoint is given (with --random-init / --raw-pixels).")
@click.option("--knn-k", type=int, default=200, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the results here as JSON.")
def eval_(checkpoint, data, data_root, backend, device, random_init, raw_pixels, preset_name, knn_k,
          batch_size, json_out):
    """Linear probe and weighted kNN (k=200, tau=0.1) on frozen h: train split -> test split."""
    from simclr_xb.checkpoint import latest_good
    from simclr_xb.evaluate import evaluate, format_result
    try:
        if checkpoint is None and not (random_init or raw_pixels):
            raise UserError("give --checkpoint (or --random-init / --raw-pixels with --preset)")
        _counts(**{"--knn-k": knn_k, "--batch-size": batch_size})
        ck = latest_good(checkpoint, warn=lambda m: click.echo(f"warning: {m}", err=True)) \
            if checkpoint else None
        _outputs_first({"--json": json_out}, _inputs(checkpoint, ck, data), device=(backend, device),
                       data=(data or (ck.config.data.name if ck else None),),
                       root=data_root or (ck.config.data.root if ck else None))
        if ck is not None and not random_init:
            ck.check_fits_config()
        cfg = ck.config if ck else preset(preset_name or "tiny")
        weights = None if (random_init or ck is None) else ck.weights
        res = evaluate(cfg, weights, data_spec=data, backend=backend or (ck.backend if ck else None),
                       device=device, knn_k=knn_k, batch_size=batch_size, root=data_root,
                       raw_pixels=raw_pixels, log=lambda m: click.echo(m, err=True))
    except UserError:
        raise
    except _known_errors() as e:
        _fail(e)
    label = "raw pixels" if raw_pixels else ("random-init encoder" if weights is None else
                                            f"SimCLR encoder (step {ck.step})")
    res.update(checkpoint=str(ck.path) if ck else None, step=ck.step if ck else 0, label=label)
    click.echo(format_result(res, label))
    if json_out:
        _write_text(json_out, json.dumps(res, indent=2))


# --------------------------------------------------------------------------- demo
def _fast_bf16(device: str | None) -> bool:
    """True on a CUDA device, or a CPU whose flags list native bfloat16 (avx512_bf16, amx_bf16)."""
    if device and device.startswith("cuda"):
        return True
    try:
        import torch
        if device is None and torch.cuda.is_available():
            return True
    except ImportError:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _auto_precision(cfg, backend: str, device: str | None, overrides, config_file):
    """``train --precision auto``: bfloat16 as ``demo`` picks it, unless the precision was set
    by --set or the config file (then that one stays)."""
    if any(o.partition("=")[0].strip() == "train.precision" for o in overrides):
        return cfg
    if config_file is not None and "precision" in Path(config_file).read_text(errors="replace"):
        return cfg
    if backend == "torch" and cfg.train.precision == "float32" and _fast_bf16(device):
        from simclr_xb.train import small_image_warning
        if small_image_warning(cfg):
            # torch 2.13's CPU bf16 convolution backward returns NaN weight gradients, at random,
            # for a stride-2 3x3 conv on a 1x1 input (measured: 17 of 320 tries); the ImageNet stem
            # on small images has exactly that (the warning's 1x1 maps), so auto keeps float32.
            click.echo("precision auto: float32 (bfloat16 autocast is unreliable with 1x1 feature "
                       "maps under a stride-2 convolution)")
            return cfg
        return cfg.with_value("train.precision", "bfloat16").validate()
    return cfg


@main.command()
@click.option("--backend", type=BACKEND_CHOICE, default="torch", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--epochs", type=int, default=None, help="Epochs of the tiny preset (default: its own).")
@click.option("--device", default=None)
@click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto",
              show_default=True,
              help="auto: bfloat16 autocast for torch on a GPU or on a CPU with native bf16 "
                   "(AVX512-BF16/AMX: ~2x faster), else float32.")
def demo(backend, out_dir, epochs, device, precision):
    """The main job end to end: pre-train the tiny preset on the built-in `shapes` dataset,
    then score the linear probe against a random-init encoder of the same architecture."""
    from simclr_xb.evaluate import evaluate, format_result
    from simclr_xb.train import train as run_train
    try:
        from simclr_xb.outputs import check_output_dir
        check_output_dir(out_dir)
        _outputs_first({}, device=(backend, device))
        cfg = preset("tiny")
        if epochs:
            cfg = cfg.with_value("train.epochs", epochs).validate()
        if precision == "auto":
            precision = "bfloat16" if backend == "torch" and _fast_bf16(device) else "float32"
        cfg = cfg.with_value("train.precision", precision).validate()
        click.echo(f"demo: {backend} backend, {precision}, {cfg.train.epochs} epochs of the tiny "
                   f"preset on shapes -> {out_dir}", err=True)
        resume = out_dir if (Path(out_dir) / "last.h5").exists() else None
        res = run_train(cfg, out_dir, backend=backend, resume=resume, device=device,
                        log=lambda m: click.echo(m, err=True))
        from simclr_xb.checkpoint import latest_good
        ck = latest_good(out_dir)
        trained = evaluate(ck.config, ck.weights, backend=backend, device=device,
                           log=lambda m: click.echo(m, err=True))
        baseline = evaluate(ck.config, None, backend=backend, device=device,
                            log=lambda m: click.echo(m, err=True))
    except _known_errors() as e:
        _fail(e)
    click.echo(f"trained {res.step} steps in {res.wall_s:.0f} s ({out_dir})")
    click.echo(format_result(baseline, "random-init encoder"))
    click.echo(format_result(trained, "SimCLR encoder     "))
    gain = trained["linear"]["top1"] - baseline["linear"]["top1"]
    click.echo(f"SimCLR linear-probe accuracy: {trained['linear']['top1']:.2f}% "
               f"({gain:+.2f} points over random init)")
    _write_text(Path(out_dir, "eval.json"), json.dumps({"simclr": trained, "random_init": baseline},
                                                       indent=2))


# --------------------------------------------------------------------------- conformance
@main.command()
@click.option("--backends", default="torch,mlx", show_default=True,
              help="Comma-separated implementations to compare with the oracle and with each other: "
                   "torch, mlx (both MLX devices), mlx-cpu, mlx-gpu.")
@click.option("--cases", "pattern", default=None,
              help="Only cases matching these comma-separated globs/substrings (e.g. 'nt_xent,bn.*').")
@click.option("--dtype", type=click.Choice(["float32", "float64", "all"]), default="all", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
@click.option("--list", "list_only", is_flag=True, help="List the cases and exit.")
def conformance(backends, pattern, dtype, json_out, list_only):
    """Prove numerically that the backends and the float64 oracle compute the same SimCLR.

    Prints one row per (case, pair, dtype) and exits non-zero on any FAIL or ERROR. A backend
    that is not installed is reported as SKIP, never as PASS.
    """
    from simclr_xb.backend import available_backends
    from simclr_xb.conformance.cases import all_cases
    from simclr_xb.conformance.report import HEADER, failed, row, summary, write_json
    from simclr_xb.conformance.runner import expand_backends, full_float32, run, select
    tf32 = full_float32()  # before any MLX op: conformance compares full float32
    names = [b.strip() for b in backends.split(",") if b.strip()]
    for b in names:
        if b not in ("torch", "mlx", "mlx-cpu", "mlx-gpu", "tf2"):  # tf2: TensorFlow's own ops (extra [tf2])
            raise UserError(f"unknown backend {b!r} in --backends: expected torch, mlx (= mlx-cpu "
                            "and mlx-gpu), mlx-cpu, mlx-gpu and/or tf2")
    if list_only:
        for c in select(all_cases(), pattern):
            click.echo(f"{c.name:44s} {c.doc}")
        return
    dtypes = ("float32", "float64") if dtype == "all" else (dtype,)
    _outputs_first({"--json": json_out})
    click.echo(f"MLX_ENABLE_TF32={tf32} (full float32); implementations: "
               f"{', '.join(expand_backends(names))}")
    click.echo(HEADER)
    results = run(names, pattern, dtypes, on_result=lambda r: click.echo(row(r)))
    if not results:
        raise UserError(f"no case matches --cases {pattern!r}; see simclr-xb conformance --list")
    click.echo(f"\n{summary(results)}")
    if json_out:
        wanted = {n.split("-")[0] for n in names}
        write_json(results, json_out, {k: v for k, v in available_backends().items() if k in wanted})
        click.echo(f"wrote {json_out}")
    if failed(results):
        sys.exit(1)


# --------------------------------------------------------------------------- data
@main.group()
def data():
    """Inspect and convert datasets."""


@data.command("show")
@click.argument("spec")
@click.option("--root", default=None)
def data_show(spec, root):
    """Print the splits, shapes and classes of a dataset SPEC (folders and shards: counts,
    classes and the image size distribution, read from the index)."""
    from simclr_xb.data import open_dataset
    from simclr_xb.data.index import size_summary
    try:
        ds, failures = None, []
        for split in ("train", "test"):
            try:
                ds = open_dataset(spec, split, root=root)
            except _known_errors() as e:
                click.echo(f"{split}: {e}")
                failures.append(f"{split}: {e}")
                continue
            counts = dict(zip(*[a.tolist() for a in __import__("numpy").unique(ds.labels, return_counts=True)]))
            if getattr(ds, "is_stream", False):
                ix = ds.index
                rate = f", {ix.headers_read / ix.build_s:.0f} headers/s" if ix.headers_read and ix.build_s else ""
                click.echo(f"{split}: {len(ds)} images of mixed sizes in {ds.source}, {len(ds.classes)} classes, "
                           f"per class {counts}\n  {size_summary(ds.hw)}\n  index: {ix.headers_read} headers "
                           f"read in {ix.build_s:.2f} s{rate} (the rest from the cache)")
                continue
            click.echo(f"{split}: images {ds.images.shape} {ds.images.dtype}, {len(ds.classes)} classes, "
                       f"per class {counts}")
        if ds is None:
            raise UserError(f"dataset {spec} has no readable split: {' | '.join(failures)}")
        click.echo(f"classes: {', '.join(ds.classes)}")
    except _known_errors() as e:
        _fail(e)


@data.command("pack")
@click.argument("src")
@click.argument("out", type=click.Path())
@click.option("--root", default=None, help="Folder to read SRC from.")
@click.option("--format", "fmt", type=click.Choice(["hdf5", "wds"]), default="hdf5", show_default=True,
              help="hdf5: one file of decoded arrays; wds: WebDataset tar shards (OUT is a folder) of "
                   "the original image files of a folder: SRC.")
@click.option("--shard-size", type=int, default=1000, show_default=True, help="Samples per tar shard (wds).")
@click.option("--force", is_flag=True, help="Replace existing shards in OUT (wds).")
def data_pack(src, out, root, fmt, shard_size, force):
    """Convert dataset SRC into one HDF5 file OUT, or (--format wds) into tar shards in folder OUT."""
    from simclr_xb.data import pack
    try:
        if fmt == "wds":
            from simclr_xb.data import available_splits, open_dataset
            from simclr_xb.data.shards import write_shards
            from simclr_xb.outputs import check_output_dir, dataset_folders
            check_output_dir(out, "OUT", data_dirs=dataset_folders(src, root=root))  # before any read
            parts = {s: open_dataset(src, s, root=root) for s in available_splits(src, root)}
            if not all(getattr(d, "is_stream", False) for d in parts.values()):
                raise ValueError(f"--format wds packs image folders (folder:PATH), not {src}")
            written = write_shards({s: d.index for s, d in parts.items()}, out, shard_size, overwrite=force)
            for s, files in written.items():
                click.echo(f"wrote {len(files)} {s} shard(s) of {len(parts[s])} images to {out}")
            return
        _outputs_first({"OUT": out}, _inputs(src, None if root is None else root), data=(src,), root=root)
        result = pack(src, out, root=root)
    except _known_errors() as e:
        _fail(e)
    click.echo(f"wrote {out}: {result}")


# --------------------------------------------------------------------------- finetune
@main.command()
@click.option("--checkpoint", type=click.Path(), required=True,
              help="Pre-trained checkpoint file or run folder (newest good checkpoint).")
@click.option("--data", default=None, help="Dataset (default: the one the checkpoint trained on).")
@click.option("--data-root", default=None)
@click.option("--label-fraction", type=float, default=0.1, show_default=True,
              help="Fraction of the training labels used, class-balanced (paper: 0.01, 0.1).")
@click.option("--epochs", type=int, required=True, help="Fine-tuning epochs (paper: 60 for 1%, 30 for 10%).")
@click.option("--backend", type=BACKEND_CHOICE, default=None,
              help="Default: the checkpoint's backend, else any installed.")
@click.option("--device", default=None)
@click.option("--batch-size", type=int, default=256, show_default=True, help="Capped at the subset size.")
@click.option("--lr", type=float, default=0.05, show_default=True,
              help="Base learning rate: peak lr = LR * batch / 256 (paper: 0.05).")
@click.option("--optimizer", type=click.Choice(["momentum", "lars"]), default="momentum", show_default=True,
              help="Nesterov momentum SGD (paper) or LARS (official code's flag default).")
@click.option("--seed", type=int, default=0, show_default=True, help="Label subset, batch order, views.")
@click.option("--precision", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True)
@click.option("--subset", "subset_file", type=click.Path(dir_okay=False), default=None,
              help="Reuse the labelled subset of an earlier result JSON (or an .npy of indices).")
@click.option("--no-baseline", is_flag=True, help="Skip the random-init run.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for result.json and the fine-tuned weights (finetuned-<run>.npz).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the result (with the subset's indices) here as JSON.")
def finetune(checkpoint, data, data_root, label_fraction, epochs, backend, device, batch_size, lr,
             optimizer, seed, precision, subset_file, no_baseline, out_dir, json_out):
    """Semi-supervised fine-tuning (SimCLR appendix B.5): encoder + a new linear layer trained end
    to end on a class-balanced label subset, against the same recipe from random init."""
    from simclr_xb.checkpoint import latest_good
    from simclr_xb.finetune import FinetuneConfig, FinetuneError, format_table, load_subset, result_json, save_finetuned
    from simclr_xb.finetune import finetune as run_finetune
    try:
        _counts(**{"--epochs": epochs, "--batch-size": batch_size})
        ck = latest_good(checkpoint, warn=lambda m: click.echo(f"warning: {m}", err=True))
        spec = (data or ck.config.data.name,)
        _outputs_first({"--json": json_out}, _inputs(checkpoint, ck, data, subset_file), device=(backend, device),
                       data=spec, root=data_root or ck.config.data.root)
        if out_dir is not None:
            from simclr_xb.outputs import check_output_dir, dataset_folders
            check_output_dir(out_dir, data_dirs=dataset_folders(*spec, root=data_root or ck.config.data.root))
        ft = FinetuneConfig(label_fraction=label_fraction, epochs=epochs, batch_size=batch_size,
                            base_lr=lr, optimizer=optimizer, seed=seed, precision=precision).validate()
        subset = load_subset(subset_file) if subset_file else None
        runs = ("simclr",) if no_baseline else ("simclr", "random_init")
        res = run_finetune(ck.config, ck.weights, ft, data_spec=data, backend=backend, device=device,
                           root=data_root, subset=subset, runs=runs, log=lambda m: click.echo(m, err=True),
                           keep_weights=out_dir is not None, fallback_backend=ck.backend or None)
        res.update(checkpoint=str(ck.path), step=ck.step)
        text = result_json(res)
        if out_dir:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            for run, r in res["runs"].items():
                save_finetuned(Path(out_dir) / f"finetuned-{run}.npz", r.pop("weights"), ck.config, run,
                               str(ck.path))
            _write_text(Path(out_dir) / "result.json", text)
        if json_out:
            _write_text(json_out, text)
    except _known_errors() + (FinetuneError, NotImplementedError, OSError) as e:
        _fail(e)
    click.echo(format_table(res))
    if "gain_top1" in res:
        click.echo(f"SimCLR pre-training: {res['gain_top1']:+.2f} top-1 points over random init")


# --------------------------------------------------------------------------- features
@main.command()
@click.option("--checkpoint", type=click.Path(), required=True, help="Checkpoint file or run folder.")
@click.option("--data", default=None, help="Dataset (default: the one the checkpoint trained on).")
@click.option("--data-root", default=None)
@click.option("--out", "out_file", type=click.Path(dir_okay=False), required=True, help="HDF5 file to write.")
@click.option("--split", type=click.Choice(["train", "test", "both"]), default="both", show_default=True)
@click.option("--with-z", is_flag=True, help="Also store z = g(h), the projection head's output.")
@click.option("--backend", type=BACKEND_CHOICE, default=None)
@click.option("--device", default=None)
@click.option("--batch-size", type=int, default=256, show_default=True)
def features(checkpoint, data, data_root, out_file, split, with_z, backend, device, batch_size):
    """Frozen h (and optionally z) with labels for every image, in one HDF5 file (/<split>/h, ...)."""
    from simclr_xb.checkpoint import latest_good
    from simclr_xb.features import extract_features
    try:
        _counts(**{"--batch-size": batch_size})
        ck = latest_good(checkpoint, warn=lambda m: click.echo(f"warning: {m}", err=True))
        _outputs_first({"--out": out_file}, _inputs(checkpoint, ck, data or ck.config.data.name),
                       device=(backend, device), data=(data or ck.config.data.name,),
                       root=data_root or ck.config.data.root)
        res = extract_features(ck, out_file, data_spec=data, split=split, with_z=with_z, backend=backend,
                               device=device, batch_size=batch_size, root=data_root,
                               log=lambda m: click.echo(m, err=True))
    except _known_errors() + (OSError,) as e:
        _fail(e)
    sizes = ", ".join(f"{s} {n}" for s, n in res["splits"].items())
    z = f", z {res['z_dim']}" if res["z_dim"] else ""
    click.echo(f"wrote {res['path']}: {sizes} images, h {res['feature_dim']}{z} ({res['wall_s']:.0f} s)")


# --------------------------------------------------------------------------- views
@main.command()
@config_options
@click.option("--out", "out_file", type=click.Path(dir_okay=False), required=True, help="PNG file to write.")
@click.option("--n", "n_images", type=int, default=8, show_default=True,
              help="Images drawn: the first N of the training step's batch.")
@click.option("--step", type=int, default=0, show_default=True, help="Training step whose batch and views are drawn.")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--backends", default="torch", show_default=True,
              help="torch, mlx, or torch,mlx: both side by side with their max abs difference.")
def views(preset_name, config_file, overrides, out_file, n_images, step, split, backends, **flags):
    """Draw images beside their two augmented views at a training step, with the sampled
    parameters (crop box, flip, jitter factors and order, gray, blur sigma): the same sampler
    and backend augment code training uses (simclr_xb/views.py)."""
    from simclr_xb.views import views_command
    try:
        cfg = build_config(preset_name, config_file, overrides, **flags)
        from simclr_xb.data import parse_spec
        try:
            parse_spec(cfg.data.name)
        except ValueError as e:
            raise UserError(f"config field data.name = {cfg.data.name!r} is invalid: {e}") from e
        names = tuple(b.strip() for b in backends.split(",") if b.strip())
        for b in names:
            if b not in ("torch", "mlx"):
                raise UserError(f"unknown backend {b!r} in --backends: expected torch and/or mlx")
        pic = views_command(cfg, out_file, n=n_images, step=step, backends=names, split=split,
                            inputs=[config_file])
    except UserError:
        raise
    except _known_errors() + (OSError,) as e:
        _fail(e)
    diff = f"; max |{names[0]} - {names[1]}| {max(pic.max_abs_diff):.2e}" if len(names) == 2 else ""
    click.echo(f"wrote {out_file}: {n_images} images x 2 views, step {step}, {', '.join(names)}{diff}")


# --------------------------------------------------------------------------- export
@main.command(name="export")
@click.option("--checkpoint", type=click.Path(), required=True, help="Checkpoint file or run folder.")
@click.option("--format", "fmt", type=click.Choice(["torchvision", "safetensors", "npz"]), required=True,
              help="torchvision: torch.save state_dict (needs torch); safetensors / npz: numpy only.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), required=True)
def export_(checkpoint, fmt, out_file):
    """The encoder without the head, with torchvision parameter names (conv1.weight, layer1.0...)."""
    from simclr_xb.checkpoint import latest_good
    from simclr_xb.export import export_encoder
    try:
        ck = latest_good(checkpoint, warn=lambda m: click.echo(f"warning: {m}", err=True))
        _outputs_first({"--out": out_file}, _inputs(checkpoint, ck))
        res = export_encoder(ck.weights, ck.config, fmt, out_file, checkpoint=str(ck.path), step=ck.step)
    except _known_errors() + (OSError,) as e:
        _fail(e)
    click.echo(f"wrote {res.path} ({res.format}, {res.tensors} tensors, {ck.config.model.arch} "
               f"x{ck.config.model.width:g}, step {ck.step})" + (f"; metadata {res.sidecar}" if res.sidecar else ""))
    if fmt == "torchvision":
        for note in res.notes:
            click.echo(f"note: {note}", err=True)


# --------------------------------------------------------------------------- selfcheck
@main.command()
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default="selfcheck.json",
              show_default=True, help="The report to send back (one JSON file).")
@click.option("--steps", type=int, default=20, show_default=True,
              help="Tiny-preset training steps per device and mode (eager, compiled).")
@click.option("--batch-size", type=int, default=None, help="Default: the tiny preset's (128).")
@click.option("--image-size", type=int, default=None, help="Default: the tiny preset's (32).")
@click.option("--width", type=float, default=None, help="Default: the tiny preset's (0.25).")
@click.option("--cases", "pattern", default=None,
              help="Only these conformance cases (globs/substrings; default: all).")
@click.option("--no-ring", is_flag=True, help="Skip the 2-rank loopback ring test.")
def selfcheck(json_out, steps, batch_size, image_size, width, pattern, no_ring):
    """Check this machine's MLX (docs/apple-silicon.md): OS and chip, MLX devices, the TF32
    setting, conformance on CPU and GPU, tiny-preset steps eager vs compiled with peak memory,
    a 2-rank ring over loopback. Writes one JSON file; exits 1 if anything failed."""
    from simclr_xb.selfcheck import failed, run_selfcheck, summary
    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    _outputs_first({"--json": json_out})  # before minutes of checks
    try:
        doc = run_selfcheck(steps=steps, cases=pattern, batch_size=batch_size, image_size=image_size,
                            width=width, ring=not no_ring, log=lambda m: click.echo(m, err=True))
    except _known_errors() as e:
        _fail(e)
    _write_text(json_out, json.dumps(doc, indent=2, default=str))
    click.echo(summary(doc))
    click.echo(f"wrote {json_out}: send this file (docs/apple-silicon.md says how)")
    if failed(doc):
        sys.exit(1)


# --------------------------------------------------------------------------- bench
def _bench_device(device: str) -> str:
    """``bench --device``: "cpu" or "gpu" (MLX's two devices); one-line error otherwise."""
    if device not in ("cpu", "gpu"):
        raise UserError(f"--device {device!r} is not an MLX device: expected cpu or gpu")
    if device == "gpu":
        import mlx.core as mx
        if not mx.is_available(mx.gpu):
            raise UserError("--device gpu: MLX has no GPU on this machine (Metal needs Apple silicon)")
    return device


@main.command()
@click.argument("suite", type=click.Choice(["augment", "train", "ntxent", "quality", "data", "all"]))
@click.option("--size", type=click.Choice(["full", "tiny"]), default="full", show_default=True,
              help="tiny: every suite in seconds, written under runs/bench-tiny (a smoke test; its "
                   "timings mean nothing).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for <suite>-<machine>.json (default: benchmarks/results).")
@click.option("--machine", default=None, help="Machine id in the file name (default: CPU model and count).")
@click.option("--backends", default="torch,mlx", show_default=True,
              help="Comma-separated backends to measure (quality trains with the first).")
@click.option("--threads", type=int, default=None,
              help="torch intra-op threads (default: torch's own, one per core).")
@click.option("--repeats", type=int, default=None, help="Timed runs per measurement (default 5; tiny 2).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="quality: the accuracy-vs-epochs PNG (default: benchmarks/quality.png).")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None,
              help="quality: run folders with the checkpoints, resumed when the config matches "
                   "(default: runs/bench-quality).")
@click.option("--device", default=None,
              help="MLX device: cpu (default) or gpu (Metal, on a Mac); torch stays on the CPU. "
                   "Recorded in each JSON.")
@click.option("--files", "n_files", type=int, default=None,
              help="data: JPEG files in the generated folder (default 20000; tiny 120).")
@click.option("--torchvision-python", "torchvision_python", type=click.Path(dir_okay=False), default=None,
              help="data: a Python with torchvision (e.g. /work/tvenv/bin/python, benchmarks/README.md) "
                   "for the real ImageFolder + DataLoader baseline rows (default: "
                   "$SIMCLR_XB_TORCHVISION_PYTHON; none: the Pillow stand-in only).")
def bench(suite, size, out_dir, machine, backends, threads, repeats, plot_path, work_dir, device, n_files,
          torchvision_python):
    """Benchmarks, written as JSON (benchmarks/README.md summarises them).

    \b
    augment  views/s of the batched pipelines vs a per-image Pillow DataLoader, 32 and 224 px
    train    end-to-end images/s and GFLOP/s vs the model-only ceiling and the usual loop
    ntxent   NT-Xent time and peak memory vs batch size, exact and chunked
    quality  linear-probe and kNN accuracy vs epochs (shapes, Fashion-MNIST) with baselines
    data     CPU-ms per image pair: streaming JPEG folder path vs the usual per-image one
    all      the four, one after another
    Measure on an idle machine (the load average is recorded). On Linux, MLX wants
    LD_PRELOAD of OpenBLAS (see the Makefile).
    """
    import shlex

    from simclr_xb.bench import SUITES, run_suite
    from simclr_xb.bench.common import format_targets
    names = [b.strip() for b in backends.split(",") if b.strip()]
    for b in names:
        if b not in ("torch", "mlx"):
            raise UserError(f"unknown backend {b!r} in --backends: expected torch and/or mlx")
    if not names:
        raise UserError("--backends is empty: expected torch and/or mlx")
    if n_files is not None and n_files < 1:
        raise UserError(f"--files must be >= 1, got {n_files}")
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be >= 1, got {threads}")
        import torch
        torch.set_num_threads(threads)
    tiny = size == "tiny"
    out_dir = out_dir or ("runs/bench-tiny" if tiny else "benchmarks/results")
    plot_path = plot_path or ("runs/bench-tiny/quality.png" if tiny else "benchmarks/quality.png")
    data_dir = work_dir  # data: where the generated JPEG folder goes (default runs/bench-data-N)
    work_dir = work_dir or ("runs/bench-tiny/quality" if tiny else "runs/bench-quality")
    from simclr_xb.outputs import check_output_dir, check_output_file
    try:  # before any measurement
        check_output_dir(out_dir)
        check_output_dir(work_dir, "--work-dir")
        check_output_file(plot_path, "--plot")
    except ValueError as e:
        raise UserError(str(e)) from e
    argv = sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv else [suite]
    for name in (SUITES if suite == "all" else (suite,)):
        opts = {"backend": names[0], "plot_path": plot_path, "work_dir": work_dir} if name == "quality" \
            else {"backends": tuple(names), "repeats": repeats}
        if name == "data":
            opts = {"work_dir": data_dir, "n_files": n_files, "repeats": repeats,
                    "torchvision_python": torchvision_python}
        elif device is not None:
            opts["device"] = _bench_device(device)
        command = "simclr-xb bench " + " ".join(shlex.quote(a) for a in ([name] + argv[1:]))
        try:
            data, path = run_suite(name, size, out_dir, machine, command,
                                   log=lambda m: click.echo(m, err=True), **opts)
        except _known_errors() as e:
            _fail(e)
        load = data["load_avg"]
        click.echo(f"{name}: wrote {path} (load average {load['before']} -> {load['after']}, "
                   f"{data['wall_s']:.0f} s)")
        if load.get("flagged"):
            click.echo(f"{name}: FLAGGED, other jobs on the cores ({'; '.join(load['reasons'])}): "
                       f"do not report these figures", err=True)
        if data["targets"]:
            click.echo(format_targets(data["targets"]))


if __name__ == "__main__":  # pragma: no cover
    main()
