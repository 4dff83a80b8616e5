"""The shared conventions of simclr_xb.state, and the Trainer protocol both backends meet."""
import inspect

import numpy as np
import pytest

from simclr_xb.augment import identity_params, sample_pair
from simclr_xb.backend import BACKENDS, BackendUnavailable, Trainer, get_backend
from simclr_xb.config import preset
from simclr_xb.state import MOMENTUM_PREFIX, check_images, check_pair, identity_batches, merge_state, split_state


def test_split_and_merge_are_inverse():
    state = {"encoder.conv1.weight": 1, "head.0.linear.weight": 2,
             MOMENTUM_PREFIX + "encoder.conv1.weight": 3}
    w, m = split_state(state)
    assert w == {"encoder.conv1.weight": 1, "head.0.linear.weight": 2}
    assert m == {"encoder.conv1.weight": 3}
    assert merge_state(w, m) == state


def test_check_images_names_the_tensor_and_reads_no_pixels():
    assert check_images(np.zeros((2, 5, 7, 3), np.uint8)) == (2, 5, 7)
    with pytest.raises(ValueError, match=r"images must be NHWC \(N, H, W, 3\), got shape \(2, 5, 7\)"):
        check_images(np.zeros((2, 5, 7), np.uint8), "images")
    with pytest.raises(ValueError, match="images_u8 must have dtype uint8, got float32"):
        check_images(np.zeros((2, 5, 7, 3), np.float32))

    class Lazy:  # an HDF5-like array: shape and dtype only; reading it is an error
        shape, dtype = (4, 8, 8, 3), np.dtype(np.uint8)

        def __array__(self, *a, **k):
            raise AssertionError("read")
    assert check_images(Lazy()) == (4, 8, 8)


def test_check_pair():
    cfg = preset("tiny").augment
    p1, p2 = sample_pair(cfg, 4, (16, 16), 0, 0, 0, 0)
    images = np.zeros((4, 16, 16, 3), np.uint8)
    assert check_pair(images, p1, p2) == (4, 16, 16)
    assert check_pair(np.zeros((8, 16, 16, 3), np.uint8), p1, p2, cropped=True)[0] == 4
    with pytest.raises(ValueError, match="p2 has 3 views for 4 images"):
        check_pair(images, p1, p2[:3], cropped=False)


def test_identity_batches_cover_the_images_in_order():
    images = np.arange(5 * 2 * 3 * 3, dtype=np.uint8).reshape(5, 2, 3, 3)
    got = list(identity_batches(images, 2))
    assert [len(c) for c, _ in got] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([c for c, _ in got]), images)
    assert got[-1][1].crop.tolist() == identity_params(1, (2, 3)).crop.tolist()
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        identity_batches(images, 0)  # at once, not at the first batch


def api_of(name):
    try:
        return get_backend(name)
    except BackendUnavailable:
        pytest.skip(f"{name} not installed")


@pytest.mark.parametrize("name", BACKENDS)
def test_both_trainers_meet_the_protocol(name):
    api = api_of(name)
    cfg = preset("tiny")
    t = api.Trainer(cfg, None, device="cpu")
    assert isinstance(t, Trainer)
    for method in ("train_step", "augment_pair", "state_dict", "load_state_dict", "encode"):
        want = [p.name for p in inspect.signature(getattr(Trainer, method)).parameters.values()]
        have = [p.name for p in inspect.signature(getattr(api.Trainer, method)).parameters.values()]
        assert have == want, f"{name} Trainer.{method}{have} differs from the protocol {want}"


@pytest.mark.parametrize("name", BACKENDS)
def test_an_encode_only_trainer_has_no_optimizer_and_encodes_the_same(name):
    api = api_of(name)
    cfg = preset("tiny").with_value("model.width", 0.125).with_value("augment.image_size", 16).validate()
    full, enc = api.Trainer(cfg, None, device="cpu"), api.Trainer(cfg, None, device="cpu", encode_only=True)
    assert enc.optimizer is None and full.optimizer is not None
    weights, _ = split_state(full.state_dict())
    enc.load_state_dict(full.state_dict())  # momenta in the state are not kept
    assert set(enc.state_dict()) == set(weights)
    images = np.random.default_rng(0).integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)
    np.testing.assert_array_equal(enc.encode(images, batch_size=2), full.encode(images, batch_size=2))
    p1, p2 = sample_pair(cfg.augment, 5, (20, 20), 0, 0, 0, 0)
    with pytest.raises(RuntimeError, match="encode_only=True"):
        enc.train_step(images, None, p1, p2, 0.1)
