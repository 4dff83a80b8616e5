"""bfloat16 training on MLX: float32 master weights (state, momenta, LARS) and bf16 compute,
the losses in float32 (runs on MLX's CPU here; meant for the Metal GPU)."""
import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from simclr_xb.augment import sample_pair  # noqa: E402
from simclr_xb.backends.mlx.api import Trainer  # noqa: E402
from simclr_xb.config import preset  # noqa: E402


def _cfg(precision):
    return preset("tiny").with_overrides(["model.width=0.125", "augment.image_size=16",
                                          "train.batch_size=8", f"train.precision={precision}"])


def _steps(precision, k=3, labels=True):
    cfg = _cfg(precision)
    t = Trainer(cfg, 3)
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (8, 20, 20, 3), dtype=np.uint8)
    out = []
    for s in range(k):
        p1, p2 = sample_pair(cfg.augment, 8, (20, 20), 0, 0, s)
        out.append(t.train_step(u8, np.arange(8) % 3 if labels else None, p1, p2, 0.02))
    return t, out


def test_bf16_keeps_float32_masters_and_tracks_the_float32_loss():
    t16, m16 = _steps("bfloat16")
    t32, m32 = _steps("float32")
    assert t16.dtype == "float32" and t16.compute_dtype == mx.bfloat16
    sd16, sd32 = t16.state_dict(), t32.state_dict()
    for k, v in sd16.items():
        assert v.dtype == sd32[k].dtype, k  # masters, BN buffers and momenta stay float32
    for leaf in (t16.model.encoder.conv1.weight, t16.model.head.layers[0].linear.weight):
        assert leaf.dtype == mx.float32  # the model holds the masters between steps
    assert all(np.isfinite(m["loss"]) and set(m) == set(b) for m, b in zip(m16, m32))
    # step 0 (same weights, same views): bf16 rounding only (measured 0.14%, BN in float32)
    assert abs(m16[0]["loss"] - m32[0]["loss"]) < 0.01 * abs(m32[0]["loss"])
    assert m16[0]["loss"] != m32[0]["loss"]  # negative control: it does compute in bf16


def _momentum_deviation(backend):
    """max |bf16 - float32| / max |float32| of the momenta after one step (= lr * trust * g)."""
    from simclr_xb.backend import get_backend
    u8 = np.random.default_rng(0).integers(0, 256, (8, 20, 20, 3), dtype=np.uint8)
    mom = {}
    for prec in ("float32", "bfloat16"):
        cfg = _cfg(prec)
        t = get_backend(backend).Trainer(cfg, None)
        p1, p2 = sample_pair(cfg.augment, 8, (20, 20), 0, 0, 0)
        t.train_step(u8, None, p1, p2, 0.02)
        mom[prec] = {k: v.astype(np.float64) for k, v in t.state_dict().items() if k.startswith("momentum/")}
    return {k: np.abs(mom["bfloat16"][k] - v).max() / np.abs(v).max() for k, v in mom["float32"].items()}


def test_bf16_gradients_deviate_from_float32_as_torch_autocast_does():
    """At this tiny size the gradients cancel to ~1e-3 of their terms, so bf16 moves them by
    tens of percent in ANY implementation: measured 0.40-0.49 (MLX) and 0.43-0.63 (torch
    autocast) on conv1, layer4.1.conv2 and head.0. The MLX step must stay within 2x of torch's."""
    pytest.importorskip("torch")
    dm, dt = _momentum_deviation("mlx"), _momentum_deviation("torch")
    for k in ("momentum/encoder.conv1.weight", "momentum/head.0.linear.weight",
              "momentum/encoder.layer4.1.conv2.weight"):
        assert 0 < dm[k] <= 2 * dt[k] + 0.05, (k, dm[k], dt[k])


def test_bf16_step_without_labels_and_async():
    t, m = _steps("bfloat16", k=1, labels=False)
    assert set(m[0]) == {"loss"} and np.isfinite(m[0]["loss"])
