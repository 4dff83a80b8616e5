"""The tf2 recipe's ops in the oracle, by closed forms (numpy only; TensorFlow itself is
compared in tests/test_tf2_reference.py), and a negative control for their conformance cases."""
import numpy as np
import pytest

from simclr_xb import reference as R
from simclr_xb.recipe import bicubic_taps, keys_cubic


def test_bicubic_taps_identity_constant_and_keys_weights():
    idx, w = bicubic_taps(np.array([3]), np.array([10]), 10)  # scale 1: the identity
    assert (idx[0, :, 1] == np.arange(3, 13)).all() and np.allclose(w[0, :, 1], 1.0)
    idx, w = bicubic_taps(np.array([0, 5]), np.array([7, 13]), 16)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-14)
    assert idx.min() >= 0 and (idx[0] < 7).all() and (idx[1] >= 5).all() and (idx[1] < 18).all()
    # interior weights: Keys a = -0.5 at the table's 1/1024 steps
    assert keys_cubic(np.array(0.0)) == 1.0 and keys_cubic(np.array(1.0)) == 0.0
    assert keys_cubic(np.array(0.5)) == pytest.approx(0.5625) and keys_cubic(np.array(1.5)) == pytest.approx(-0.0625)


def test_bicubic_resize_not_clamped_and_constant_preserved():
    x = np.zeros((1, 8, 8, 3))
    x[:, :, 4:] = 1.0  # a step edge rings under a cubic with negative lobes
    y = R.resized_crop(x, np.array([[0, 0, 8, 8]]), 16, "tf2")
    assert y.max() > 1.0 and y.min() < 0.0
    flat = np.full((1, 9, 7, 3), 0.3)
    np.testing.assert_allclose(R.resized_crop(flat, np.array([[1, 2, 5, 4]]), 11, "tf2"), 0.3, rtol=1e-14)


def test_contrast_per_channel_mean_and_saturation_in_hsv():
    rng = np.random.default_rng(0)
    x = rng.random((3, 6, 6, 3))
    c = np.array([0.5, 1.0, 1.5])
    y = R.adjust_contrast(x, np.array([0.5, 1.0, 1.0]), "tf2")
    np.testing.assert_allclose(y.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-12)  # factor <= 1: no clip
    assert not np.allclose(R.adjust_contrast(x, c, "tf2"), R.adjust_contrast(x, c))
    s0 = R.adjust_saturation(x, np.zeros(3), "tf2")  # S = 0: every channel = V = max(RGB)
    np.testing.assert_allclose(s0, np.repeat(x.max(-1, keepdims=True), 3, -1), rtol=1e-12)
    s = R.adjust_saturation(x, np.array([0.2, 1.0, 3.0]), "tf2")
    np.testing.assert_allclose(s.max(-1), x.max(-1), rtol=1e-12)  # V kept
    np.testing.assert_allclose(s[1], x[1], rtol=1e-12)
    np.testing.assert_allclose(R.rgb_to_hue(s[:2]), R.rgb_to_hue(x[:2]), atol=1e-12)  # H kept


def test_blur_zero_padding_darkens_the_edge():
    x = np.full((1, 64, 64, 3), 0.5)
    sig, on = np.array([2.0]), np.array([True])
    zero = R.gaussian_blur(x, sig, on, 23, "tf2")
    refl = R.gaussian_blur(x, sig, on, 23)
    np.testing.assert_allclose(refl, 0.5, rtol=1e-12)
    assert zero[0, 32, 32, 0] == pytest.approx(0.5)
    assert 0.29 < zero[0, 0, 32, 0] < 0.31  # mid-edge: 0.5 x the half-kernel's mass, 0.30 (issue 13)
    assert 0.17 < zero[0, 0, 0, 0] < 0.19  # corner: 0.5 x that mass squared


def test_grayscale_weights_per_recipe():
    x = np.eye(3)[None, None]  # pure R, G, B pixels
    np.testing.assert_allclose(R.rgb_to_gray(x, "tf2")[0, 0, :, 0], [0.2989, 0.5870, 0.1140])
    np.testing.assert_allclose(R.rgb_to_gray(x)[0, 0, :, 0], [0.299, 0.587, 0.114])
    with pytest.raises(ValueError, match="recipe"):
        R.rgb_to_gray(x, "pil")


def test_tf2_cases_fail_when_a_backend_ignores_the_recipe():
    """Negative control: the tf2 conformance cases catch a backend that applies torchvision ops."""
    pytest.importorskip("torch")
    from simclr_xb.backend import get_backend
    from simclr_xb.conformance import runner
    api = get_backend("torch")

    def torchvision_only(fn, *args, dtype, **kw):
        kw.pop("recipe", None)
        return getattr(api, fn)(*args, dtype=dtype, **kw)

    rows = runner.run(["torch"], "augment.tf2.resized_crop,augment.tf2.adjust_contrast,"
                      "augment.tf2.adjust_saturation,augment.tf2.grayscale,augment.tf2.gaussian_blur.k5",
                      ("float64",), override={"torch": torchvision_only})
    fails = {r.case for r in rows if r.status == "FAIL"}
    assert fails == {r.case for r in rows}  # every selected case (and its variants) fails
    assert fails >= {"augment.tf2.resized_crop", "augment.tf2.adjust_contrast", "augment.tf2.adjust_saturation",
                     "augment.tf2.grayscale", "augment.tf2.gaussian_blur.k5"}, fails
    good = runner.run(["torch"], "augment.tf2.grayscale", ("float64",))
    assert {r.status for r in good} == {"PASS"}
