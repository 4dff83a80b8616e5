"""The tf2 crop sampler (tf.image.sample_distorted_bounding_box semantics) in the core.

The distribution against TensorFlow's own kernel is tests/test_tf2_reference.py (needs
tensorflow); these tests need numpy only.
"""
import numpy as np

from simclr_xb.augment import sample_crop_boxes, sample_crop_boxes_tf2, sample_view_params
from simclr_xb.config import AugmentConfig

ARGS = dict(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), tries=100, min_covered=0.1)


def test_boxes_fit_and_respect_the_official_constraints():
    rng = np.random.default_rng(0)
    b = sample_crop_boxes_tf2(rng, 5000, (224, 224), **ARGS)
    top, left, h, w = b.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 224).all() and (left + w <= 224).all()
    area = h * w / 224 ** 2
    full = (h == 224) & (w == 224)
    assert area[~full].min() >= 0.1 - 1e-6  # min_object_covered 0.1 beats area_range 0.08
    a = w[~full] / h[~full]
    assert a.min() >= 3 / 4 - 0.02 and a.max() <= 4 / 3 + 0.02  # up to the rounding of w
    # TF's Uniform(H - h): the top never reaches H - h unless h = H
    assert ((top == 224 - h) & (h < 224)).sum() == 0
    assert 0.40 < area.mean() < 0.44  # 0.42 measured from TensorFlow (issue 13)


def test_stream_is_a_function_of_n_alone():
    ends = []
    for hw in [(224, 224), (8, 300), (np.arange(10, 20), np.arange(30, 40))]:
        rng = np.random.default_rng(5)
        sample_crop_boxes_tf2(rng, 10, hw, **ARGS)
        ends.append(rng.random())
    assert ends[0] == ends[1] == ends[2]


def test_per_view_sizes():
    rng = np.random.default_rng(1)
    H = np.array([20, 300, 32, 7] * 50)
    W = np.array([40, 25, 32, 7] * 50)
    b = sample_crop_boxes_tf2(rng, 200, (H, W), **ARGS)
    assert (b[:, 0] + b[:, 2] <= H).all() and (b[:, 1] + b[:, 3] <= W).all()
    assert (b[:, 2] >= 1).all() and (b[:, 3] >= 1).all()


def test_impossible_constraints_fall_back_to_the_whole_image():
    rng = np.random.default_rng(2)
    # an aspect range no box of a 10x200 image can meet at >= 90% of its area
    b = sample_crop_boxes_tf2(rng, 50, (10, 200), scale=(0.9, 1.0), ratio=(0.5, 0.6), tries=100,
                              min_covered=0.1)
    assert (b == [0, 0, 10, 200]).all()


def test_recipe_dispatch():
    n, hw = 4000, (96, 96)
    tf2 = sample_view_params(np.random.default_rng(3), AugmentConfig(recipe="tf2", crop_tries=100), n, hw)
    tv = sample_view_params(np.random.default_rng(3), AugmentConfig(), n, hw)
    ref_tv = sample_crop_boxes(np.random.default_rng(3), n, hw, (0.08, 1.0), (3 / 4, 4 / 3), 10)
    assert (tv.crop == ref_tv).all()
    ref_tf2 = sample_crop_boxes_tf2(np.random.default_rng(3), n, hw, **ARGS)
    assert (tf2.crop == ref_tf2).all()
    # the two samplers differ: mean area 0.42 vs 0.48 at 224 px
    a_tf2 = (tf2.crop[:, 2] * tf2.crop[:, 3]).mean() / 96 ** 2
    a_tv = (tv.crop[:, 2] * tv.crop[:, 3]).mean() / 96 ** 2
    assert a_tv - a_tf2 > 0.03
