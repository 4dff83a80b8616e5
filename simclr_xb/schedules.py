"""Learning-rate scaling and schedule: pure functions of the step (written every step).

SimCLR (Chen et al. 2020, sec. 4 and B.1): learning rate ``0.3 * B / 256`` (linear scaling)
or ``0.075 * sqrt(B)`` (square-root scaling, better for small batches), linear warmup for
10 epochs, then cosine decay to 0 without restarts.
"""
from __future__ import annotations

import math

from .config import Config, ConfigError

DEFAULT_BASE_LR = {"linear": 0.3, "sqrt": 0.075}


def scale_lr(base_lr: float | None, batch_size: int, rule: str) -> float:
    """Peak learning rate for a global batch: ``base * B / 256`` or ``base * sqrt(B)``.

    ``base_lr=None`` takes the paper's base for the rule (0.3 linear, 0.075 sqrt).
    """
    if rule not in DEFAULT_BASE_LR:
        raise ConfigError(f"lr scaling rule {rule!r} is unknown: expected 'linear' or 'sqrt'")
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be >= 1")
    base = DEFAULT_BASE_LR[rule] if base_lr is None else base_lr
    return base * batch_size / 256 if rule == "linear" else base * math.sqrt(batch_size)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then cosine decay to 0.

    lr(s) = peak * s / warmup                                       for s < warmup
    lr(s) = peak * 0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))  otherwise
    (the official code's formula; lr(total) = 0, and steps past the end stay at 0).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps = {total_steps} must be >= 1")
    warmup_steps = min(max(int(warmup_steps), 0), total_steps)
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    decay = total_steps - warmup_steps
    if decay <= 0:
        return peak_lr
    progress = min(max((step - warmup_steps) / decay, 0.0), 1.0)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class LRSchedule:
    """The run's schedule bound to its config: ``lr(step)`` with the step counted globally."""

    def __init__(self, cfg: Config, steps_per_epoch: int):
        self.peak = scale_lr(cfg.optim.base_lr, cfg.train.batch_size, cfg.optim.lr_scaling)
        self.total = max(1, cfg.train.epochs * steps_per_epoch)
        self.warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.total, self.warmup, self.peak)
