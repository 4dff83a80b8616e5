"""The ``simclr-xb`` command line.

This file sits at the repository top level and is installed as ``simclr_xb.cli``
(through the link simclr_xb/cli.py). Commands import their heavy modules lazily so that
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
    """An error the user can fix; printed without a traceback."""


def _fail(e: Exception) -> None:
    raise UserError(str(e)) from e


def _known_errors():
    from simclr_xb.backend import BackendUnavailable
    from simclr_xb.checkpoint import CheckpointError
    errors = (ConfigError, CheckpointError, BackendUnavailable, FileNotFoundError, ValueError)
    try:
        from simclr_xb.data import DataError  # type: ignore[attr-defined]
        errors += (DataError,)
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
    mapping = {"epochs": "train.epochs", "batch_size": "train.batch_size", "seed": "train.seed",
               "max_steps": "train.max_steps", "precision": "train.precision", "data": "data.name",
               "data_root": "data.root", "compile_": "train.compile", "lr": "optim.base_lr",
               "temperature": "loss.temperature", "arch": "model.arch", "width": "model.width",
               "image_size": "augment.image_size"}
    for flag, dotted in mapping.items():
        value = flags.get(flag)
        if value is not None:
            cfg = cfg.with_value(dotted, value)
    return cfg.validate()


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="simclr-xb")
def main():
    """SimCLR on MLX and PyTorch from one backend-agnostic core.

    \b
    Typical use:
      simclr-xb train --backend torch --data shapes --preset tiny --epochs 10 --out runs/a
      simclr-xb eval --checkpoint runs/a/last.h5 --data shapes
      simclr-xb conformance --backends torch,mlx
    """


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
@click.option("--precision", type=click.Choice(["float32", "float64", "bfloat16"]), default=None)
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile / mx.compile.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(backend, preset_name, config_file, overrides, out_dir, resume, device, quiet, **flags):
    """Pre-train SimCLR and write checkpoints, metrics and a plot into --out."""
    from simclr_xb.train import train as run_train
    try:
        cfg = build_config(preset_name, config_file, overrides, **flags)
        if resume is None and (Path(out_dir) / "last.h5").exists():
            raise UserError(f"{out_dir} already holds a run (last.h5): pass --resume {out_dir} to "
                            f"continue it, or choose another --out")
        res = run_train(cfg, out_dir, backend=backend, resume=resume, device=device,
                        show_progress=not quiet, log=lambda m: click.echo(m, err=True))
    except UserError:
        raise
    except _known_errors() as e:
        _fail(e)
    (Path(out_dir) / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    click.echo(f"done: {res.stopped} at step {res.step}/{res.total_steps}, final loss "
               f"{res.final_loss:.4f}, {res.wall_s:.0f} s; checkpoint {res.checkpoint}")


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
        ck = latest_good(checkpoint, warn=lambda m: click.echo(f"warning: {m}", err=True)) \
            if checkpoint else None
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
        Path(json_out).write_text(json.dumps(res, indent=2))


# --------------------------------------------------------------------------- demo
@main.command()
@click.option("--backend", type=BACKEND_CHOICE, default="torch", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--epochs", type=int, default=None, help="Epochs of the tiny preset (default: its own).")
@click.option("--device", default=None)
def demo(backend, out_dir, epochs, device):
    """The main job end to end: pre-train the tiny preset on the built-in `shapes` dataset,
    then score the linear probe against a random-init encoder of the same architecture."""
    from simclr_xb.evaluate import evaluate, format_result
    from simclr_xb.train import train as run_train
    try:
        cfg = preset("tiny")
        if epochs:
            cfg = cfg.with_value("train.epochs", epochs).validate()
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
    Path(out_dir, "eval.json").write_text(json.dumps({"simclr": trained, "random_init": baseline},
                                                     indent=2))


# --------------------------------------------------------------------------- conformance
@main.command()
@click.option("--backends", default="torch,mlx", show_default=True,
              help="Comma-separated backends to compare with the oracle and with each other.")
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
    from simclr_xb.conformance.runner import run, select
    names = [b.strip() for b in backends.split(",") if b.strip()]
    for b in names:
        if b not in ("torch", "mlx"):
            raise UserError(f"unknown backend {b!r} in --backends: expected torch and/or mlx")
    if list_only:
        for c in select(all_cases(), pattern):
            click.echo(f"{c.name:44s} {c.doc}")
        return
    dtypes = ("float32", "float64") if dtype == "all" else (dtype,)
    click.echo(HEADER)
    results = run(names, pattern, dtypes, on_result=lambda r: click.echo(row(r)))
    if not results:
        raise UserError(f"no case matches --cases {pattern!r}; see simclr-xb conformance --list")
    click.echo(f"\n{summary(results)}")
    if json_out:
        write_json(results, json_out, {k: v for k, v in available_backends().items() if k in names})
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
    """Print the splits, shapes and classes of a dataset SPEC."""
    from simclr_xb.data import load_dataset
    try:
        for split in ("train", "test"):
            try:
                ds = load_dataset(spec, split, root=root)
            except _known_errors() as e:
                click.echo(f"{split}: {e}")
                continue
            counts = dict(zip(*[a.tolist() for a in __import__("numpy").unique(ds.labels, return_counts=True)]))
            click.echo(f"{split}: images {ds.images.shape} {ds.images.dtype}, {len(ds.classes)} classes, "
                       f"per class {counts}")
        click.echo(f"classes: {', '.join(ds.classes)}")
    except _known_errors() as e:
        _fail(e)


@data.command("pack")
@click.argument("src")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--root", default=None, help="Folder to read SRC from.")
def data_pack(src, out, root):
    """Convert dataset SRC (any reader) into one HDF5 file OUT (images, labels per split)."""
    from simclr_xb.data import pack
    try:
        result = pack(src, out, root=root)
    except _known_errors() as e:
        _fail(e)
    click.echo(f"wrote {out}: {result}")


if __name__ == "__main__":  # pragma: no cover
    main()
