"""What the two data-parallel tests share (tests/test_distributed.py for torch,
tests/test_distributed_mlx.py for MLX): the "2 ranks x batch 4 == 1 rank x batch 8" setting,
its per-step batches and view parameters, and the comparison. A plain module (not a test
file): the rank processes run those files as scripts, with tests/ first on sys.path.

Measured when written (largest difference vs the 1-process run over all steps and entries,
|ours - ref| / max(1, |ref|); torch 2.13 / mlx 0.32.4, float64, 2 CPU cores):
  equivalence:           loss 7.5e-14 / 1.3e-13, gradients 8.6e-12 / 1.1e-11, state after 3
                         steps 3.4e-12 / 4.2e-12                                   -> <= TOL_EQUAL
  local-gradient gather: step-0 loss equal, step-0 gradients exactly 0.5x (ratio 0.49999999999997);
                         over 3 steps: loss 9.5e-2, gradients 1.4e0, state 8.0e-1  -> >= MIN_BROKEN
  per-rank BN:           loss 1.0e-1, gradients 1.8e0, state 1.7e0                 -> >= MIN_BROKEN
(the same numbers on both backends; float64 rounding grows over the 3 steps: step-0
differences are ~1e-14.)
"""
from __future__ import annotations

import numpy as np

from simclr_xb.augment import ViewParams, sample_pair
from simclr_xb.config import AugmentConfig, Config, LossConfig, ModelConfig, OptimConfig, TrainConfig

STEPS = 3
NEG_STEPS = 1  # the negative controls break at the first step already
N_GLOBAL, WORLD, HW = 8, 2, (20, 20)
LRS = (0.5, 0.4, 0.3)
TIMEOUT_S = 240  # generous: 2 shared CPU cores
TOL_EQUAL = 1e-9
MIN_BROKEN = {"grad": 1e-2, "loss": 1e-3, "state": 1e-3}


def make_cfg(**train) -> Config:
    """The tiny float64 setting of both tests (``train`` adds TrainConfig fields)."""
    return Config(model=ModelConfig(arch="resnet18", width=0.125, cifar_stem=True, head_out=16),
                  augment=AugmentConfig(image_size=16, strength=0.5, blur_p=0.5),
                  loss=LossConfig(temperature=0.5), optim=OptimConfig(lr_scaling="sqrt"),
                  train=TrainConfig(batch_size=N_GLOBAL, seed=5, precision="float64", **train))


def batch(step: int, cfg: Config):
    """The global batch of ``step``: 8 images, labels, and per-rank view parameters."""
    rng = np.random.default_rng(100 + step)
    images = rng.integers(0, 256, (N_GLOBAL, *HW, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, N_GLOBAL)
    per = N_GLOBAL // WORLD
    views = [sample_pair(cfg.augment, per, HW, cfg.train.seed, 0, step, rank=r) for r in range(WORLD)]
    return images, labels, views


def rank_batch(step: int, cfg: Config, rank: int, world: int):
    """(images, labels, p1, p2) of ``rank``: its slice of the global batch with its own view
    parameters; with world 1 the whole batch with every rank's parameters concatenated."""
    images, labels, views = batch(step, cfg)
    if world == 1:
        return (images, labels, ViewParams.concat([v[0] for v in views]),
                ViewParams.concat([v[1] for v in views]))
    per = N_GLOBAL // world
    sl = slice(rank * per, (rank + 1) * per)
    return (images[sl], labels[sl], *views[rank])


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b))))) if a.size else 0.0


def diffs(ours: dict, ref: dict) -> dict[str, float]:
    """Largest difference per kind of entry: loss (with probe metrics), grad, state."""
    assert set(ours) == set(ref), sorted(set(ours) ^ set(ref))[:5]
    out = {"loss": 0.0, "grad": 0.0, "state": 0.0}
    for k in ref:
        kind = "grad" if k.startswith("grad/") else "state" if k.startswith("state/") else "loss"
        out[kind] = max(out[kind], rel_err(ours[k], ref[k]))
    return out
