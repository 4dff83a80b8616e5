"""loss.reduction = "tf2" (official objective.py: 2x eq. 1) in the oracle and its LARS consequence."""
from dataclasses import replace

import numpy as np
import pytest

from simclr_xb import reference as R
from simclr_xb.config import ConfigError, loss_scale


def _tf2_loop(z, tau):
    """objective.py's loss written as a loop: for image i, loss_a = CE over [ab_i., aa_i.]
    (self masked) and loss_b likewise; the loss is mean_i (loss_a + loss_b)."""
    n = len(z) // 2
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    a, b = u[:n], u[n:]
    total = 0.0
    for i in range(n):
        for x, y in ((a, b), (b, a)):
            logits = np.concatenate([y @ x[i], np.delete(x @ x[i], i)]) / tau
            total += np.log(np.exp(logits).sum()) - logits[i]
    return total / n


def test_tf2_reduction_is_the_official_sum_over_n():
    z = np.random.default_rng(0).normal(size=(10, 7))
    assert R.nt_xent(z, 0.5, "tf2") == pytest.approx(_tf2_loop(z, 0.5), rel=1e-12)
    assert R.nt_xent(z, 0.5, "mean") == pytest.approx(_tf2_loop(z, 0.5) / 2, rel=1e-12)
    np.testing.assert_allclose(R.nt_xent_grad(z, 0.5, "tf2"), 2 * R.nt_xent_grad(z, 0.5), rtol=1e-14)
    with pytest.raises(ConfigError, match="loss.reduction"):
        loss_scale("sum")


def test_lars_consequence_adapted_weights_same_bn_params_twice():
    """Without weight decay the trust ratio cancels the loss scale for adapted weights, but
    the excluded (BN, bias) parameters step lr * g: twice as far under "tf2"."""
    from simclr_xb.conformance.cases import TINY, _params
    from simclr_xb.resnet_spec import init_weights, model_specs
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 20, 20, 3), dtype=np.uint8)
    p1, p2 = _params(rng, 4, (20, 20), TINY.augment), _params(rng, 4, (20, 20), TINY.augment)
    cfg = replace(TINY, optim=replace(TINY.optim, weight_decay=0.0, momentum=0.0))
    w = init_weights(cfg.model, seed=3)
    out = {}
    for red in ("mean", "tf2"):
        c = replace(cfg, loss=replace(cfg.loss, reduction=red))
        loss, nw, _ = R.train_step(w, {}, images, p1, p2, 0.1, c)
        out[red] = (loss, nw)
    assert out["tf2"][0] == pytest.approx(2 * out["mean"][0], rel=1e-12)
    specs = [s for s in model_specs(cfg.model) if s.trainable]
    adapted = [s.name for s in specs if not s.lars_excluded]
    excluded = [s.name for s in specs if s.lars_excluded]
    for name in adapted:
        np.testing.assert_allclose(out["tf2"][1][name] - w[name], out["mean"][1][name] - w[name],
                                   rtol=1e-9, atol=1e-15)
    moved = [n for n in excluded if np.abs(out["mean"][1][n] - w[n]).max() > 1e-12]
    assert moved
    for name in moved:
        np.testing.assert_allclose(out["tf2"][1][name] - w[name], 2 * (out["mean"][1][name] - w[name]),
                                   rtol=1e-9, atol=1e-15)
