"""Linear probe (L-BFGS) and weighted kNN against slow, independent implementations."""
import numpy as np
import pytest

from simclr_xb.evaluate import _softmax_loss_grad, knn_classify, lbfgs, linear_probe, raw_pixel_features, topk_accuracy


def _blobs(seed, n, d=12, c=6, sep=1.0):
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(c, d)) * sep
    y = rng.integers(0, c, n)
    return means[y] + rng.normal(size=(n, d)), y


def test_lbfgs_reaches_the_optimum_of_gradient_descent():
    x, y = _blobs(0, 600, sep=0.7)
    y1h = np.eye(6)[y]
    fun = lambda w: _softmax_loss_grad(w, x, y1h, 1e-3)  # noqa: E731
    w_lbfgs, _ = lbfgs(fun, np.zeros((13, 6)), max_iter=500, tol=1e-12)
    w = np.zeros((13, 6))
    for _ in range(20000):  # plain gradient descent, slow but certain (strongly convex)
        w -= 0.5 * fun(w)[1]
    assert fun(w_lbfgs)[0] <= fun(w)[0] + 1e-8
    assert np.abs(fun(w_lbfgs)[1]).max() < 1e-5


def test_softmax_gradient_matches_finite_differences():
    x, y = _blobs(1, 50, d=4, c=3)
    y1h = np.eye(3)[y]
    w = np.random.default_rng(2).normal(size=(5, 3))
    _, g = _softmax_loss_grad(w, x, y1h, 0.1)
    fd = np.zeros_like(w)
    for i in np.ndindex(w.shape):
        e = np.zeros_like(w)
        e[i] = 1e-6
        fd[i] = (_softmax_loss_grad(w + e, x, y1h, 0.1)[0] - _softmax_loss_grad(w - e, x, y1h, 0.1)[0]) / 2e-6
    np.testing.assert_allclose(g, fd, atol=1e-8)


def test_linear_probe_separable_vs_noise():
    x, y = _blobs(3, 2000, sep=2.0)
    xt, yt = _blobs(4, 500, sep=2.0)
    r = linear_probe(x, y, xt, yt)
    assert r.top1 > 95 and r.top5 == 100.0
    noise = np.random.default_rng(5).normal(size=x.shape)
    r0 = linear_probe(noise, y, np.random.default_rng(6).normal(size=xt.shape), yt)
    assert r0.top1 < 30  # chance is 16.7%


def test_linear_probe_rejects_mismatched_features():
    with pytest.raises(ValueError, match="same d"):
        linear_probe(np.zeros((10, 3)), np.zeros(10, int), np.zeros((5, 4)), np.zeros(5, int))


def test_knn_matches_a_loop_implementation():
    x, y = _blobs(7, 300, sep=0.8)
    xt, yt = _blobs(8, 40, sep=0.8)
    k, t = 25, 0.1
    got = knn_classify(x, y, xt, yt, k=k, temperature=t, num_classes=6, chunk=7)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    correct = 0
    for q, label in zip(xt / np.linalg.norm(xt, axis=1, keepdims=True), yt):
        sims = xn @ q
        nn = np.argsort(-sims)[:k]
        votes = np.zeros(6)
        for j in nn:
            votes[y[j]] += np.exp(sims[j] / t)
        correct += int(np.argmax(votes) == label)
    assert got["top1"] == pytest.approx(100 * correct / len(yt))


def test_topk_and_raw_pixels():
    scores = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    assert topk_accuracy(scores, np.array([2, 0]), 1) == 50.0
    assert topk_accuracy(scores, np.array([2, 0]), 2) == 100.0
    f = raw_pixel_features(np.full((2, 4, 4, 3), 255, np.uint8))
    assert f.shape == (2, 48) and f.max() == 1.0
