"""Training-throughput benchmark: end-to-end images/s and achieved GFLOP/s of SimCLR steps
per backend, architecture and precision, against the model-only ceiling and the usual loop,
all measured in one run on the same cores.

For every (architecture, precision) the SAME ``Trainer`` is timed three ways:

* ``e2e``: the real step, ``Trainer.train_step(images, None, p1, p2, lr)`` with the view
  parameters drawn per step (:func:`simclr_xb.augment.sample_pair`): batched augmentation
  on the device, forward over 2N views, NT-Xent, backward, LARS;
* ``model``: the same step with the augmentation replaced by views made once beforehand
  (``Trainer._views`` / ``Trainer.augment_pair`` return a fixed tensor): the ceiling the
  end-to-end step can reach at that precision;
* ``usual`` (torch, float32, NCHW, eager): the loop of most public SimCLR code: a
  ``DataLoader`` of per-image Pillow views (:mod:`.augment`, one worker per core) feeding the
  same step; its images/s is what the batched pipeline is compared with.

Timing is round-robin (:func:`_time_interleaved`): e2e and model-only of one setting alternate
run by run, and so do the usual loop and the best batched setting, so that a load change on a
shared machine falls on both sides of each ratio (the first two runs of the suite timed each
side's repeats back to back, and a burst of load during one side moved a ratio by ~15%).

Precisions (torch): "float32" (NCHW), "float32+channels_last", "bf16+channels_last"
(``torch.autocast`` bf16 around the model, float32 master weights); MLX: "float32".
GFLOP/s use the analytic count of :mod:`.flops` (conv + linear, x3 for forward + backward).
Images/s count source images: each step makes 2N views of N images.
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from simclr_xb.augment import sample_pair
from simclr_xb.config import AugmentConfig, Config, LossConfig, ModelConfig, OptimConfig, TrainConfig

from .common import Report, Target, Timing, installed, rate
from .flops import model_flops, step_flops

# name -> (model, augment, batch N, source side). Sized for a 2-core CPU: the tiny preset's
# network at 32 px (CIFAR setting) and a narrow ResNet-50 at 224 px with blur (ImageNet setting,
# where the augmentation costs the most per image).
ARCHS = {
    "full": {
        "resnet18-w16-cifar-32px": (ModelConfig(arch="resnet18", width=0.25, cifar_stem=True, head_out=64),
                                    AugmentConfig(image_size=32, strength=0.5, blur_p=0.0), 256, 32),
        "resnet50-w0.25-224px-blur": (ModelConfig(arch="resnet50", width=0.25, cifar_stem=False),
                                      AugmentConfig(image_size=224, strength=1.0, blur_p=0.5), 16, 256),
    },
    "tiny": {
        "resnet18-w8-cifar-16px": (ModelConfig(arch="resnet18", width=0.125, cifar_stem=True, head_out=16),
                                   AugmentConfig(image_size=16, strength=0.5, blur_p=0.5), 8, 20),
    },
}
# precision name -> (train.precision, channels_last)
TORCH_PRECISIONS = {"float32": ("float32", False), "float32+channels_last": ("float32", True),
                    "bf16+channels_last": ("bfloat16", True)}
USUAL_ARCH = {"full": "resnet18-w16-cifar-32px", "tiny": "resnet18-w8-cifar-16px"}
E2E_TARGET = 0.85
USUAL_TARGET = 2.5


def _config(model: ModelConfig, aug: AugmentConfig, batch: int, precision: str, channels_last: bool) -> Config:
    return Config(model=model, augment=aug, loss=LossConfig(temperature=0.5),
                  optim=OptimConfig(lr_scaling="sqrt", probe=False),
                  train=TrainConfig(batch_size=batch, precision=precision, channels_last=channels_last)
                  ).validate()


def _time_interleaved(fns: dict, steps: int, repeats: int, warmup: int = 1,
                      before: dict | None = None) -> dict[str, Timing]:
    """Seconds per step of each ``fns[name](k)``: ``repeats`` rounds, each timing ``steps``
    consecutive steps of every function in turn (after ``warmup`` untimed rounds). Round-robin,
    so that a change of the machine's load during the run (other users of a shared machine)
    falls on all of them alike and the ratios between them stay fair. ``before[name]()``, if
    given, runs untimed before each of that function's runs."""
    k = {name: 0 for name in fns}
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, step in fns.items():
            if before and name in before:
                before[name]()
            t0 = time.perf_counter()
            for _ in range(steps):
                step(k[name])
                k[name] += 1
            if r >= warmup:
                runs[name].append((time.perf_counter() - t0) / steps)
    return {name: Timing(v) for name, v in runs.items()}


def _batches(images: np.ndarray, cfg: Config, count: int = 8):
    """``count`` batches of N images and a parameter sampler for step k (cycled)."""
    n, side = cfg.train.batch_size, images.shape[1]
    picks = [images[(i * n) % len(images):][:n] for i in range(count)]
    picks = [p if len(p) == n else images[:n] for p in picks]
    return picks, lambda k: sample_pair(cfg.augment, n, (side, side), seed=0, epoch=0, step=k)


def _torch_rows(arch: str, model, aug, batch: int, images, steps: int, repeats: int, log,
                precisions: tuple[str, ...]) -> list[dict]:
    from simclr_xb.backends.torch.api import Trainer
    rows = []
    for pname in precisions:
        precision, cl = TORCH_PRECISIONS[pname]
        cfg = _config(model, aug, batch, precision, cl)
        tr = Trainer(cfg, None, device="cpu")
        batches, params = _batches(images, cfg)

        p1, p2 = params(0)
        x = tr.augment_pair(batches[0], p1, p2)
        t = _time_interleaved({"e2e": _e2e_step(tr, batches, params),
                               "model": _model_step(tr, batches, params, x)}, steps, repeats)
        rows += _pair_rows(arch, "torch", pname, cfg, t["e2e"], t["model"], log)
    return rows


def _e2e_step(tr, batches, params):
    """The real step: view parameters drawn per step, batched augmentation inside."""
    def e2e(k):
        p1, p2 = params(k)
        tr.train_step(batches[k % len(batches)], None, p1, p2, 0.1)
    return e2e


def _model_step(tr, batches, params, x):
    """The same step on views ``x`` made once (``train_step(..., views=x)``, ``x`` from the
    trainer's ``augment_pair``): the views stay fixed, the weights move."""
    p1, p2 = params(0)

    def model(k):
        tr.train_step(batches[0], None, p1, p2, 0.1, views=x)
    return model


def _mlx_rows(arch: str, model, aug, batch: int, images, steps: int, repeats: int, log, precisions=(),
              device: str = "cpu") -> list[dict]:
    import mlx.core as mx

    from simclr_xb.backends.mlx.api import Trainer
    cfg = _config(model, aug, batch, "float32", False)
    tr = Trainer(cfg, None, device=device)
    batches, params = _batches(images, cfg)

    p1, p2 = params(0)
    x = tr.augment_pair(batches[0], p1, p2)
    with mx.stream(tr._dev):
        mx.eval(x)
    t = _time_interleaved({"e2e": _e2e_step(tr, batches, params),
                           "model": _model_step(tr, batches, params, x)}, steps, repeats)
    return _pair_rows(arch, "mlx", "float32", cfg, t["e2e"], t["model"], log)


def _pair_rows(arch, backend, pname, cfg: Config, t_e2e: Timing, t_model: Timing, log) -> list[dict]:
    n, S = cfg.train.batch_size, cfg.augment.image_size
    flops = step_flops(cfg.model, S, n)
    out = []
    for mode, t in (("e2e", t_e2e), ("model", t_model)):
        out.append({"arch": arch, "backend": backend, "precision": pname, "mode": mode, "batch": n,
                    "image_size": S, "step_gflop": flops / 1e9, "gflop_per_s": flops / 1e9 / t.median,
                    "images_per_s": n / t.median, **t.to_dict(), **rate(n, t)})
    out[0]["of_model_ceiling"] = t_model.median / t_e2e.median
    log(f"train {arch} {backend} {pname:22s}: e2e {out[0]['images_per_s']:7.1f} img/s "
        f"({out[0]['gflop_per_s']:6.1f} GFLOP/s), model-only {out[1]['images_per_s']:7.1f} img/s "
        f"-> {100 * out[0]['of_model_ceiling']:.0f}% of the ceiling")
    return out


def _usual_row(arch: str, model, aug, batch: int, images, steps: int, repeats: int, workers: int, log,
               best: str) -> dict:
    """Pillow DataLoader (per-image views, ``workers`` processes) + eager float32 NCHW step,
    timed round-robin with the batched end-to-end step at precision ``best`` (the comparison
    of the target, ``vs_best_*`` in the row).

    The DataLoader's workers run ahead (``lead`` = 2 batches per worker queued); left running
    between rounds they would fill that queue while the other side is timed, taking its cores
    and handing the usual side ready-made batches. So each usual run starts a fresh pass over
    exactly ``lead + run_steps`` batches (persistent workers: the same processes), takes the
    first ``lead`` untimed (the pipeline is then full and the workers busy, its steady state),
    times ``run_steps`` >= 2 ``lead`` steps, and ends with the sampler exhausted and the workers
    idle before the other side runs."""
    import torch

    from simclr_xb.backends.torch.api import Trainer

    from .augment import pillow_loader
    cfg = _config(model, aug, batch, "float32", False)
    tr = Trainer(cfg, None, device="cpu")
    side = images.shape[1]
    lead = 2 * workers
    run_steps = max(steps, 2 * lead)
    total = batch * (lead + run_steps)
    imgs = np.concatenate([images] * (-(-total // len(images))))[:total]
    params = [sample_pair(cfg.augment, batch, (side, side), seed=0, epoch=0, step=k)
              for k in range(total // batch)]
    loader = pillow_loader(imgs, params, batch, aug.image_size, workers)
    current = {}

    def fresh_pass():
        current["it"] = iter(loader)
        for _ in range(lead):
            next(current["it"])

    def step(k):
        x1, x2 = next(current["it"])
        current["x"] = torch.cat([x1, x2])
        p1, p2 = params[lead + k % run_steps]
        tr.train_step(imgs[:batch], None, p1, p2, 0.1, views=current["x"])
    precision, cl = TORCH_PRECISIONS[best]
    ours_cfg = _config(model, aug, batch, precision, cl)
    ours = Trainer(ours_cfg, None, device="cpu")
    batches, ours_params = _batches(images, ours_cfg)
    timed = _time_interleaved({"usual": step, "ours": _e2e_step(ours, batches, ours_params)},
                              run_steps, repeats, before={"usual": fresh_pass})
    t = timed["usual"]
    current.clear()
    loader = None  # ends the DataLoader and its workers (the closures above share this variable)
    n, S = batch, aug.image_size
    flops = step_flops(cfg.model, S, n)
    row = {"arch": arch, "backend": "torch", "precision": "float32", "mode": "usual", "batch": n,
           "image_size": S, "workers": workers, "step_gflop": flops / 1e9, "gflop_per_s": flops / 1e9 / t.median,
           "images_per_s": n / t.median, **t.to_dict(), **rate(n, t),
           "steps_per_run": run_steps, "lead_batches_untimed": lead, "vs_best_precision": best,
           "vs_best_images_per_s": n / timed["ours"].median,
           "vs_best_runs_s": timed["ours"].runs}
    log(f"train {arch} usual loop (Pillow DataLoader, {workers} workers, eager float32): "
        f"{row['images_per_s']:7.1f} img/s; batched {best} end to end in the same rounds: "
        f"{row['vs_best_images_per_s']:7.1f} img/s")
    return row


def run(size: str = "full", backends: tuple[str, ...] = ("torch", "mlx"), repeats: int | None = None,
        steps: int | None = None, archs: tuple[str, ...] | None = None, workers: int | None = None,
        usual: bool = True, precisions: tuple[str, ...] | None = None, device: str = "cpu", log=print,
        **_) -> Report:
    """``device``: the MLX trainer's device ("cpu" | "gpu"); torch runs on the CPU."""
    import torch

    from .augment import source_images
    repeats = repeats or (2 if size == "tiny" else 5)
    steps = steps or (1 if size == "tiny" else 2)
    workers = (0 if size == "tiny" else os.cpu_count()) if workers is None else workers
    precisions = tuple(precisions or (("float32",) if size == "tiny" else TORCH_PRECISIONS))
    rows, targets, skipped = [], [], {}
    for arch, (model, aug, batch, side) in ARCHS[size].items():
        if archs and arch not in archs:
            continue
        images = source_images(max(4 * batch, 64), side)
        for backend in installed(backends, skipped):
            if backend == "torch":
                rows += _torch_rows(arch, model, aug, batch, images, steps, repeats, log, precisions)
            else:
                rows += _mlx_rows(arch, model, aug, batch, images, steps, repeats, log, precisions, device)
        if usual and "torch" in backends and arch == USUAL_ARCH[size] and "torch" not in skipped:
            best = max((r for r in rows if r["arch"] == arch and r["mode"] == "e2e" and r["backend"] == "torch"),
                       key=lambda r: r["images_per_s"])["precision"]
            rows.append(_usual_row(arch, model, aug, batch, images, steps, repeats, workers, log, best))
    for r in rows:
        if r["mode"] == "e2e":
            targets.append(Target(f"{r['backend']} {r['arch']} {r['precision']}: end-to-end / model-only "
                                  "images/s", r["of_model_ceiling"], E2E_TARGET,
                                  note=f"{r['images_per_s']:.1f} img/s end to end"))
    for u in (r for r in rows if r["mode"] == "usual"):
        targets.append(Target(f"torch {u['arch']}: best end-to-end ({u['vs_best_precision']}) / usual loop "
                              "images/s, timed in the same rounds",
                              u["vs_best_images_per_s"] / u["images_per_s"], USUAL_TARGET,
                              note=f"{u['vs_best_images_per_s']:.1f} vs {u['images_per_s']:.1f} img/s"))
    settings = {"size": size, "backends": list(backends), "precisions": list(precisions),
                "repeats": repeats, "steps_per_run": steps,
                "workers": workers, "torch_threads": torch.get_num_threads(),
                "device": {"torch": "cpu", "mlx": device},
                "archs": {a: {"model": dataclasses.asdict(m), "augment": dataclasses.asdict(g), "batch": b,
                              "source_side": s, "flops_per_image": model_flops(m, g.image_size)}
                          for a, (m, g, b, s) in ARCHS[size].items() if not archs or a in archs},
                "images_per_s": "source images per second; each step makes and trains on 2N views",
                "flops": "analytic conv + linear (x2 per MAC, x3 for forward + backward), simclr_xb.bench.flops",
                "skipped": skipped}
    return Report("train", settings, rows, targets)
