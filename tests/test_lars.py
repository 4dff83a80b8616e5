"""LARS (official SimCLR code, classic momentum) against numbers worked out by hand.

The worked example: w = (3, 4), |w| = 5, gradient g = (0.3, 0.4), weight decay 0.1,
eta = 0.5, lr = 0.1, momentum 0.9. Large wd and eta keep the arithmetic on paper exact.

Step 1 (v = 0):
  g' = g + wd w = (0.3 + 0.3, 0.4 + 0.4) = (0.6, 0.8),   |g'| = 1
  trust = eta |w| / |g'| = 0.5 * 5 / 1 = 2.5,            lr * trust = 0.25
  v = 0.9 * 0 + 0.25 * (0.6, 0.8) = (0.15, 0.2)
  w = (3, 4) - (0.15, 0.2) = (2.85, 3.8)
Step 2 (same gradient g):
  |w| = 4.75;  g' = (0.3 + 0.285, 0.4 + 0.38) = (0.585, 0.78),  |g'| = 0.975
  lr * trust = 0.1 * 0.5 * 4.75 / 0.975;   lr * trust * g' = 0.2375 * (0.6, 0.8) = (0.1425, 0.19)
  v = 0.9 * (0.15, 0.2) + (0.1425, 0.19) = (0.2775, 0.37)
  w = (2.85, 3.8) - (0.2775, 0.37) = (2.5725, 3.43)
"""
from __future__ import annotations

import numpy as np
import pytest

from simclr_xb.config import OptimConfig
from simclr_xb.reference import lars_step

CFG = OptimConfig(momentum=0.9, weight_decay=0.1, eta=0.5)
LR = 0.1
W = np.array([3.0, 4.0])
G = np.array([0.3, 0.4])


def step(w, g, v, excluded=False, cfg=CFG, lr=LR):
    p, m = lars_step({"w": w}, {"w": g}, {"w": v}, lr, cfg, {"w": excluded})
    return p["w"], m["w"]


def test_one_step_by_hand():
    w1, v1 = step(W, G, np.zeros(2))
    np.testing.assert_allclose(v1, [0.15, 0.2], rtol=1e-14)
    np.testing.assert_allclose(w1, [2.85, 3.8], rtol=1e-14)


def test_momentum_accumulates_over_two_steps():
    w1, v1 = step(W, G, np.zeros(2))
    w2, v2 = step(w1, G, v1)
    np.testing.assert_allclose(v2, [0.2775, 0.37], rtol=1e-14)
    np.testing.assert_allclose(w2, [2.5725, 3.43], rtol=1e-14)


def test_nonzero_initial_momentum():
    # v = 0.9 * (0.1, -0.1) + (0.15, 0.2) = (0.24, 0.11);  w = (3 - 0.24, 4 - 0.11)
    w1, v1 = step(W, G, np.array([0.1, -0.1]))
    np.testing.assert_allclose(v1, [0.24, 0.11], rtol=1e-14)
    np.testing.assert_allclose(w1, [2.76, 3.89], rtol=1e-14)


def test_nesterov():
    cfg = OptimConfig(momentum=0.9, weight_decay=0.1, eta=0.5, nesterov=True)
    # v as classic; update = 0.9 v + lr trust g'.
    # From v = 0: update = 0.9 (0.15, 0.2) + (0.15, 0.2) = (0.285, 0.38).
    w1, v1 = step(W, G, np.zeros(2), cfg=cfg)
    np.testing.assert_allclose(v1, [0.15, 0.2], rtol=1e-14)
    np.testing.assert_allclose(w1, [2.715, 3.62], rtol=1e-14)
    # From v = (0.1, -0.1): v = (0.24, 0.11), update = (0.216 + 0.15, 0.099 + 0.2) = (0.366, 0.299).
    w1, v1 = step(W, G, np.array([0.1, -0.1]), cfg=cfg)
    np.testing.assert_allclose(v1, [0.24, 0.11], rtol=1e-14)
    np.testing.assert_allclose(w1, [2.634, 3.701], rtol=1e-14)


def test_excluded_parameters_get_no_decay_and_trust_one():
    # v = lr * g = (0.03, 0.04); w = (2.97, 3.96): neither wd nor the trust ratio act.
    w1, v1 = step(W, G, np.zeros(2), excluded=True)
    np.testing.assert_allclose(v1, [0.03, 0.04], rtol=1e-14)
    np.testing.assert_allclose(w1, [2.97, 3.96], rtol=1e-14)


def test_zero_weight_norm_gives_trust_one():
    # |w| = 0: g' = g + 0.1 * 0 = g, trust = 1: v = (0.03, 0.04), w = (-0.03, -0.04).
    w1, v1 = step(np.zeros(2), G, np.zeros(2))
    np.testing.assert_allclose(v1, [0.03, 0.04], rtol=1e-14)
    np.testing.assert_allclose(w1, [-0.03, -0.04], rtol=1e-14)


def test_zero_gradient_norm_gives_trust_one():
    # wd = 0 and g = 0: g' = 0, trust = 1 (no division by 0): only momentum moves w.
    cfg = OptimConfig(momentum=0.9, weight_decay=0.0, eta=0.5)
    w1, v1 = step(W, np.zeros(2), np.array([0.1, 0.2]), cfg=cfg)
    np.testing.assert_allclose(v1, [0.09, 0.18], rtol=1e-14)
    np.testing.assert_allclose(w1, [2.91, 3.82], rtol=1e-14)
    assert np.isfinite(w1).all()


def test_trust_ratio_is_per_parameter_and_inputs_are_not_modified():
    w = {"a": W.copy(), "b": np.array([[1.0, -2.0], [2.0, 4.0]]), "bias": np.array([0.5])}
    g = {"a": G.copy(), "b": np.array([[0.01, 0.02], [-0.03, 0.0]]), "bias": np.array([1.0])}
    v = {k: np.zeros_like(a) for k, a in w.items()}
    excl = {"a": False, "b": False, "bias": True}
    snapshot = {k: a.copy() for k, a in w.items()}
    p, m = lars_step(w, g, v, LR, CFG, excl)
    for k in w:
        ps, ms = lars_step({k: w[k]}, {k: g[k]}, {k: v[k]}, LR, CFG, {k: excl[k]})
        np.testing.assert_array_equal(p[k], ps[k])
        np.testing.assert_array_equal(m[k], ms[k])
        np.testing.assert_array_equal(w[k], snapshot[k])
        assert p[k].shape == w[k].shape
    # For a non-excluded parameter the step length is lr * eta * |w| (first step, v = 0).
    assert np.linalg.norm(p["b"] - w["b"]) == pytest.approx(LR * CFG.eta * np.linalg.norm(w["b"]))
    assert np.linalg.norm(p["a"] - w["a"]) == pytest.approx(LR * CFG.eta * np.linalg.norm(w["a"]))


def test_paper_defaults_give_small_relative_steps():
    cfg = OptimConfig()  # m 0.9, eta 1e-3, wd 1e-6
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 3, 3, 3))
    g = rng.standard_normal(w.shape) * 100  # gradient scale does not matter
    p, _ = lars_step({"w": w}, {"w": g}, {"w": np.zeros_like(w)}, 1.0, cfg, {"w": False})
    assert np.linalg.norm(p["w"] - w) / np.linalg.norm(w) == pytest.approx(1e-3, rel=1e-9)
