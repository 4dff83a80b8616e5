"""Learning-rate scaling and the warmup + cosine schedule (SimCLR sec. 4, B.1)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from simclr_xb.config import Config, ConfigError, OptimConfig, TrainConfig, preset
from simclr_xb.schedules import LRSchedule, scale_lr, warmup_cosine


def test_linear_and_sqrt_scaling():
    assert scale_lr(None, 256, "linear") == pytest.approx(0.3)
    assert scale_lr(None, 4096, "linear") == pytest.approx(4.8)  # 0.3 * 4096 / 256
    assert scale_lr(None, 512, "linear") == pytest.approx(0.6)
    assert scale_lr(None, 4096, "sqrt") == pytest.approx(0.075 * 64)  # 4.8 as well
    assert scale_lr(None, 256, "sqrt") == pytest.approx(1.2)
    assert scale_lr(None, 100, "sqrt") == pytest.approx(0.75)
    assert scale_lr(1.0, 512, "linear") == pytest.approx(2.0)
    assert scale_lr(0.5, 64, "sqrt") == pytest.approx(4.0)


def test_scaling_errors():
    with pytest.raises(ConfigError, match="cubic"):
        scale_lr(None, 256, "cubic")
    with pytest.raises(ConfigError, match="batch size 0"):
        scale_lr(None, 0, "linear")


TOTAL, WARM, PEAK = 1000, 100, 2.0


def test_warmup_starts_at_zero_and_ends_at_peak():
    assert warmup_cosine(0, TOTAL, WARM, PEAK) == 0.0
    assert warmup_cosine(WARM // 2, TOTAL, WARM, PEAK) == pytest.approx(PEAK / 2)
    assert warmup_cosine(WARM - 1, TOTAL, WARM, PEAK) == pytest.approx(PEAK * (WARM - 1) / WARM)
    assert warmup_cosine(WARM, TOTAL, WARM, PEAK) == pytest.approx(PEAK)


def test_cosine_midpoint_end_and_after_end():
    mid = WARM + (TOTAL - WARM) // 2
    assert warmup_cosine(mid, TOTAL, WARM, PEAK) == pytest.approx(PEAK / 2)
    quarter = WARM + (TOTAL - WARM) // 4
    want = PEAK * 0.5 * (1 + math.cos(math.pi / 4))
    assert warmup_cosine(quarter, TOTAL, WARM, PEAK) == pytest.approx(want)
    assert warmup_cosine(TOTAL, TOTAL, WARM, PEAK) == pytest.approx(0.0, abs=1e-15)
    assert warmup_cosine(TOTAL + 50, TOTAL, WARM, PEAK) == pytest.approx(0.0, abs=1e-15)


def test_increasing_during_warmup_and_monotone_decay_after():
    lrs = np.array([warmup_cosine(s, TOTAL, WARM, PEAK) for s in range(TOTAL + 1)])
    assert (np.diff(lrs[:WARM + 1]) > 0).all()
    assert (np.diff(lrs[WARM:]) <= 0).all() and (np.diff(lrs[WARM:]) < 0).sum() == TOTAL - WARM
    assert lrs.max() == pytest.approx(PEAK) and lrs.min() >= 0.0


def test_no_warmup_and_all_warmup():
    assert warmup_cosine(0, 10, 0, 1.0) == 1.0
    assert warmup_cosine(5, 10, 0, 1.0) == pytest.approx(0.5)
    # Warmup longer than the run: clamped to the run, so the last step reaches the peak.
    assert warmup_cosine(5, 10, 50, 1.0) == pytest.approx(0.5)
    assert warmup_cosine(10, 10, 50, 1.0) == 1.0
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(0, 0, 0, 1.0)


def test_schedule_from_config():
    cfg = Config(optim=OptimConfig(lr_scaling="linear", warmup_epochs=2.0),
                 train=TrainConfig(batch_size=512, epochs=10)).validate()
    sched = LRSchedule(cfg, steps_per_epoch=50)
    assert sched.peak == pytest.approx(0.6) and sched.total == 500 and sched.warmup == 100
    assert sched(0) == 0.0
    assert sched(50) == pytest.approx(0.3)
    assert sched(100) == pytest.approx(0.6)
    assert sched(300) == pytest.approx(0.3)
    assert sched(500) == pytest.approx(0.0, abs=1e-15)
    # An explicit base and the sqrt rule; fractional warmup epochs round to steps.
    cfg = cfg.with_overrides(["optim.lr_scaling=sqrt", "optim.base_lr=0.1", "optim.warmup_epochs=0.5"])
    sched = LRSchedule(cfg, steps_per_epoch=50)
    assert sched.peak == pytest.approx(0.1 * math.sqrt(512)) and sched.warmup == 25


def test_schedule_of_the_tiny_preset_reaches_its_peak():
    cfg = preset("tiny")
    sched = LRSchedule(cfg, steps_per_epoch=20)
    assert sched(sched.warmup) == pytest.approx(0.075 * math.sqrt(cfg.train.batch_size))
