"""The optional TensorFlow reference (conformance/tf2_ref.py, extra [tf2]).

Without tensorflow: the suite reports tf2 as SKIP (tested here). With it: the crop sampler's
distribution against tf.image.sample_distorted_bounding_box (a two-sample KS test that the
torchvision sampler must FAIL), and the tf2 conformance rows.
"""
import math

import numpy as np
import pytest

from simclr_xb.augment import sample_crop_boxes, sample_crop_boxes_tf2
from simclr_xb.conformance import runner, tf2_ref

N_DRAWS = 20_000


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: (D, asymptotic p-value). Conservative for discrete data."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                            - np.searchsorted(b, grid, side="right") / len(b))))
    ne = len(a) * len(b) / (len(a) + len(b))
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(max(p, 0.0), 1.0)


def test_ks_helper_negative_control():
    rng = np.random.default_rng(0)
    assert ks_two_sample(rng.random(5000), rng.random(5000))[1] > 0.01
    assert ks_two_sample(rng.random(5000), rng.random(5000) ** 1.2)[1] < 1e-6


def test_suite_skips_tf2_cleanly_without_tensorflow(monkeypatch):
    def missing():
        raise ImportError("tensorflow is not installed (test); install it with: pip install 'simclr-xb[tf2]'")
    monkeypatch.setattr(tf2_ref, "load", missing)
    impls, skipped = runner.implementations(["tf2"])
    assert "tf2" not in impls and "simclr-xb[tf2]" in skipped["tf2"]
    rows = runner.run(["tf2"], "augment.tf2.grayscale", ("float32",))
    assert {r.status for r in rows} == {"SKIP"}


def _tf_boxes(tf, hw, n):
    H, W = hw
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4])

    @tf.function
    def draw(k):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            [H, W, 3], bbox, seed=[k, 7], min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0), max_attempts=100, use_image_if_no_bounding_boxes=True)
        return tf.concat([begin[:2], size[:2]], 0)

    return np.stack([draw(tf.constant(k)).numpy() for k in range(n)]).astype(np.int64)


@pytest.mark.parametrize("hw", [(224, 224), (180, 240)])
def test_crop_sampler_distribution_matches_tensorflow(hw):
    tf = pytest.importorskip("tensorflow")
    H, W = hw
    theirs = _tf_boxes(tf, hw, N_DRAWS)
    rng = np.random.default_rng(0)
    ours = sample_crop_boxes_tf2(rng, N_DRAWS, hw, (0.08, 1.0), (3 / 4, 4 / 3), 100, 0.1)
    tv = sample_crop_boxes(rng, N_DRAWS, hw, (0.08, 1.0), (3 / 4, 4 / 3), 10)

    def stats(b):
        return b[:, 2] * b[:, 3] / (H * W), b[:, 3] / b[:, 2], (b[:, 0] + b[:, 2] / 2) / H

    for name, t, o, v in zip(("area", "aspect", "centre_y"), stats(theirs), stats(ours), stats(tv)):
        d, p = ks_two_sample(o, t)
        assert p > 0.01, f"tf2 sampler vs TensorFlow, {name} at {hw}: KS D={d:.4f} p={p:.2g}"
        # negative control: the torchvision sampler must fail on area (both sizes) and aspect
        # (square: at 180x240 its aspect distribution measured p = 0.1, too close to tell)
        if name == "area" or (name == "aspect" and H == W):
            d_tv, p_tv = ks_two_sample(v, t)
            assert p_tv < 1e-6, f"negative control: torchvision sampler vs TensorFlow {name} p={p_tv:.2g}"
    full_theirs = ((theirs[:, 2] == H) & (theirs[:, 3] == W)).mean()
    full_ours = ((ours[:, 2] == H) & (ours[:, 3] == W)).mean()
    assert abs(full_theirs - full_ours) < 0.01


def test_tf2_rows_pass_and_catch_a_wrong_recipe():
    pytest.importorskip("tensorflow")
    rows = runner.run(["tf2"], "augment.tf2.adjust_saturation,augment.tf2.resized_crop,nt_xent.tf2.*n8*,"
                      "lars.step.classic", ("float32",))
    tf2_rows = [r for r in rows if "tf2" in r.pair]
    assert tf2_rows and all(r.status == "PASS" for r in tf2_rows), [(r.case, r.pair, r.status) for r in tf2_rows]
    for r in tf2_rows:
        if r.case.startswith("augment.tf2"):
            assert r.max_abs <= 1e-6  # measured 1.7e-7 (bicubic) and 4.3e-7 (saturation)
    # negative control: TensorFlow's saturation against the torchvision op fails
    from simclr_xb import reference as R
    call = tf2_ref.caller()
    rng = np.random.default_rng(0)
    x = rng.random((4, 8, 8, 3)).astype(np.float32)
    f = np.array([0.2, 0.5, 1.5, 1.8], np.float32)
    ours_tv = R.adjust_saturation(x.astype(np.float64), f.astype(np.float64))
    theirs = call("adjust_saturation", x, f, dtype="float32", recipe="tf2")
    assert np.abs(theirs - ours_tv).max() > 0.05
