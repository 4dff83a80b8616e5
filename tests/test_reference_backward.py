"""The oracle's hand-written backward and training step against finite differences and torch.

Three independent checks of :func:`reference.loss_and_grads` and the layer backwards:
central finite differences in float64 (each layer alone, then whole networks), torch
autograd on a model built here from ``torch.nn.functional`` (skipped without torch), and
the behaviour of :func:`reference.train_step` (exactly one LARS step, loss going down).

Finite differences through a ReLU network are only valid while no ReLU changes sign and no
max-pool window changes its argmax between w - h and w + h: :func:`_loss_and_pattern`
records that pattern and an entry whose pattern moves is skipped (few are; the test asserts
most entries are used). The ResNet-50 check scales each block's last BN gamma down to 0.1
(near ``zero_init_residual``): with 4 views at 1x1 spatial size the default initialisation
makes the loss so sensitive (gradients ~1e4..1e5 that torch confirms) that no step size
gives a clean difference.

Measured worst relative errors (norm over the sampled entries of one parameter, h = 1e-6):
resnet18 6e-8, resnet50 1.3e-7 (tolerance 1e-6); heads < 1e-8; layers < 1e-10 (conv,
linear and max-pool are exact up to rounding). Torch autograd, max |diff| / max |grad| per
parameter: 3e-14 (resnet18), 2e-13 (resnet34), 1.1e-9 (resnet50: the same sensitivity;
tolerance 1e-8).
"""
from __future__ import annotations

import numpy as np
import pytest

from simclr_xb import reference as R
from simclr_xb.augment import identity_params, sample_pair
from simclr_xb.config import AugmentConfig, Config, LossConfig, ModelConfig, OptimConfig
from simclr_xb.resnet_spec import encoder_layout, head_dims, init_weights, last_bn_of_block, model_specs

H = 1e-6  # finite-difference step for the nonlinear checks


def rel_err(approx, exact) -> float:
    approx, exact = np.asarray(approx, float), np.asarray(exact, float)
    return float(np.linalg.norm(approx - exact) / max(np.linalg.norm(exact), 1e-300))


def fd_grad(f, a: np.ndarray, idx=None, h: float = H) -> np.ndarray:
    """Central differences of the scalar f() w.r.t. the entries ``idx`` of ``a`` (in place)."""
    idx = range(a.size) if idx is None else idx
    out = []
    for i in idx:
        old = a.flat[i]
        a.flat[i] = old + h
        fp = f()
        a.flat[i] = old - h
        fm = f()
        a.flat[i] = old
        out.append((fp - fm) / (2 * h))
    return np.array(out)


# --------------------------------------------------------------------------- layers alone


@pytest.mark.parametrize("stride,padding,k,hw", [
    (1, 0, 3, 6), (1, 1, 3, 6), (2, 1, 3, 7), (2, 0, 3, 8), (2, 0, 1, 5), (1, 3, 7, 5), (2, 3, 7, 9),
])
def test_conv2d_backward_matches_finite_differences(stride, padding, k, hw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, hw, hw, 3))
    w = rng.standard_normal((4, 3, k, k))
    y = R.conv2d(x, w, stride, padding)
    r = rng.standard_normal(y.shape)  # loss = sum(y * r), so dL/dy = r

    def loss():
        return float((R.conv2d(x, w, stride, padding) * r).sum())

    dx, dw = R.conv2d_backward(r, x, w, stride, padding)
    assert dx.shape == x.shape and dw.shape == w.shape
    # conv2d is linear in x and in w: the differences are exact up to rounding.
    assert rel_err(fd_grad(loss, x, h=1e-3).reshape(x.shape), dx) < 1e-9
    assert rel_err(fd_grad(loss, w, h=1e-3).reshape(w.shape), dw) < 1e-9


def test_conv2d_backward_gives_zero_to_pixels_no_window_reads():
    # 8 px, k 3, stride 2, no padding: windows start at 0, 2, 4 and the last column is unused.
    x = np.ones((1, 8, 8, 1))
    w = np.ones((1, 1, 3, 3))
    dx, _ = R.conv2d_backward(np.ones((1, 3, 3, 1)), x, w, 2, 0)
    assert (dx[0, 7, :, 0] == 0).all() and (dx[0, :, 7, 0] == 0).all()
    assert dx[0, 2, 2, 0] == 4  # shared by 2 x 2 windows


@pytest.mark.parametrize("shape,affine", [((3, 4, 4, 5), True), ((6, 5), True), ((4, 3, 3, 2), False)])
def test_batch_norm_backward_matches_finite_differences(shape, affine):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) * 2 + 0.5
    c = shape[-1]
    weight = 1 + 0.3 * rng.standard_normal(c) if affine else None
    bias = rng.standard_normal(c) if affine else None
    r = rng.standard_normal(shape)

    def loss():
        y, _, _ = R.batch_norm(x, weight, bias, np.zeros(c), np.ones(c), True, 0.1, 1e-5)
        return float((y * r).sum())

    dx, dweight, dbias = R.batch_norm_backward(r, x, weight, 1e-5)
    assert rel_err(fd_grad(loss, x).reshape(shape), dx) < 1e-7
    if affine:
        assert rel_err(fd_grad(loss, weight), dweight) < 1e-7
        assert rel_err(fd_grad(loss, bias), dbias) < 1e-7
    # The batch mean does not depend on any single x through the normalised output: the
    # gradient of each channel sums to zero.
    np.testing.assert_allclose(dx.reshape(-1, c).sum(axis=0), 0, atol=1e-10)


@pytest.mark.parametrize("hw", [4, 7, 8])
def test_max_pool_backward_matches_finite_differences(hw):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, hw, hw, 3))  # continuous values: no ties
    y = R.max_pool(x)
    r = rng.standard_normal(y.shape)

    def loss():
        return float((R.max_pool(x) * r).sum())

    dx = R.max_pool_backward(r, x)
    assert dx.shape == x.shape
    assert rel_err(fd_grad(loss, x).reshape(x.shape), dx) < 1e-9
    # Every output sends its gradient to exactly one input.
    np.testing.assert_allclose(dx.sum(), r.sum(), rtol=1e-12)


def test_max_pool_backward_ties_go_to_the_first_maximum():
    x = np.zeros((1, 4, 4, 1))
    x[0, :2, :2, 0] = [[1, 2], [2, 2]]
    dx = R.max_pool_backward(np.ones((1, 2, 2, 1)), x)
    # Windows (row-major first max): (0,0)->(0,1); (0,1)->(0,1); (1,0)->(1,0); (1,1)->(1,1).
    np.testing.assert_array_equal(dx[0, :2, :2, 0], [[0, 2], [1, 1]])
    assert dx.sum() == 4


def test_max_pool_backward_ties_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    for x in (np.zeros((1, 5, 5, 2)), rng.integers(0, 2, (2, 6, 6, 3)).astype(float),
              np.maximum(rng.standard_normal((2, 7, 7, 2)), 0.0)):
        r = rng.standard_normal(R.max_pool(x).shape)
        xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
        F.max_pool2d(xt, 3, 2, 1).backward(torch.tensor(r.transpose(0, 3, 1, 2)))
        # Same routing; only the order of summing two outputs into one input may differ.
        np.testing.assert_allclose(R.max_pool_backward(r, x), xt.grad.numpy().transpose(0, 2, 3, 1),
                                   rtol=1e-15, atol=1e-15)


def test_linear_relu_and_average_pool_backward():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 6))
    w = rng.standard_normal((3, 6))
    b = rng.standard_normal(3)
    r = rng.standard_normal((5, 3))

    def loss():
        return float(((x @ w.T + b) * r).sum())

    dx, dw, db = R.linear_backward(r, x, w)
    assert rel_err(fd_grad(loss, x, h=1e-3).reshape(x.shape), dx) < 1e-10
    assert rel_err(fd_grad(loss, w, h=1e-3).reshape(w.shape), dw) < 1e-10
    assert rel_err(fd_grad(loss, b, h=1e-3), db) < 1e-10

    a = rng.standard_normal((2, 3, 3, 4))
    ra = rng.standard_normal(a.shape)
    assert rel_err(fd_grad(lambda: float((R.relu(a) * ra).sum()), a).reshape(a.shape),
                   R.relu_backward(ra, a)) < 1e-9
    assert (R.relu_backward(ra, np.zeros_like(a)) == 0).all()  # derivative 0 at 0 (PyTorch)
    rp = rng.standard_normal((2, 4))
    assert rel_err(fd_grad(lambda: float((a.mean(axis=(1, 2)) * rp).sum()), a, h=1e-3).reshape(a.shape),
                   R.global_avg_pool_backward(rp, (3, 3))) < 1e-10


# --------------------------------------------------------------------------- networks


def _cfg(tau=0.5, **model) -> Config:
    return Config(model=ModelConfig(**model), loss=LossConfig(temperature=tau))


def _weights(mcfg: ModelConfig, seed: int, last_gamma: float | None = None) -> dict:
    """init_weights with every BN gamma/beta and bias moved off 1/0, so that their gradients
    (and the BN backward's use of gamma) are exercised in general position."""
    w = init_weights(mcfg, seed)
    rng = np.random.default_rng(seed + 100)
    for s in model_specs(mcfg):
        if s.kind == "bn.weight":
            w[s.name] = 1 + 0.2 * rng.standard_normal(s.shape)
        elif s.kind in ("bn.bias", "linear.bias"):
            w[s.name] = 0.1 * rng.standard_normal(s.shape)
    if last_gamma is not None:
        for b in encoder_layout(mcfg).blocks:
            name = f"{last_bn_of_block(b)}.weight"
            w[name] = last_gamma * (1 + 0.2 * rng.standard_normal(w[name].shape))
    return w


def _loss_and_pattern(weights, x, cfg: Config):
    """The loss and the network's ReLU / max-pool pattern (where finite differences are valid)."""
    tape: dict = {}
    h, _ = R.encoder_train_forward(x, weights, cfg.model, tape)
    z, _ = R.head_train_forward(h, weights, cfg.model, tape)
    parts = []
    for value in tape.values():
        if isinstance(value, tuple) and isinstance(value[0], np.ndarray):
            parts.append(value[0] > 0)  # a conv's input: the image or a ReLU's output
        elif isinstance(value, np.ndarray):
            parts.append(value > 0)  # block sums before their ReLU, head inputs
    if encoder_layout(cfg.model).maxpool:
        xp = np.pad(tape["encoder.stem"], ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
        win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))[:, ::2, ::2]
        parts.append(win.reshape(*win.shape[:4], 9).argmax(axis=-1))
    return R.nt_xent(z, cfg.loss.temperature), np.concatenate([p.ravel() for p in parts])


def _check_network_grads(cfg: Config, weights, x, names, per_param: int, rng, tol=1e-6):
    loss, grads, _ = R.loss_and_grads(weights, x, cfg)
    trainable = {s.name: s.shape for s in model_specs(cfg.model) if s.trainable}
    assert set(grads) == set(trainable)
    assert all(grads[n].shape == tuple(trainable[n]) for n in trainable)
    loss0, pattern0 = _loss_and_pattern(weights, x, cfg)
    assert loss0 == loss
    used = tried = 0
    errors = {}
    for name in names:
        a = weights[name] = weights[name].copy()
        idx = rng.choice(a.size, size=min(per_param, a.size), replace=False)
        fd, exact = [], []
        for i in idx:
            tried += 1
            old = a.flat[i]
            a.flat[i] = old + H
            lp, pp = _loss_and_pattern(weights, x, cfg)
            a.flat[i] = old - H
            lm, pm = _loss_and_pattern(weights, x, cfg)
            a.flat[i] = old
            if (pp != pattern0).any() or (pm != pattern0).any():
                continue  # a ReLU or max-pool switched inside [w - h, w + h]
            used += 1
            fd.append((lp - lm) / (2 * H))
            exact.append(grads[name].flat[i])
        if fd:
            assert np.linalg.norm(exact) > 0, f"{name}: the sampled gradient entries are all 0"
            errors[name] = rel_err(fd, exact)
    assert used >= 0.75 * tried, f"only {used} of {tried} entries had a stable ReLU pattern"
    assert len(errors) >= len(names) - 1
    bad = {n: e for n, e in errors.items() if not e < tol}
    assert not bad, f"finite differences disagree: {bad}"
    return errors


def test_loss_and_grads_resnet18_cifar_stem_matches_finite_differences():
    cfg = _cfg(arch="resnet18", width=0.125, cifar_stem=True, head_out=16)
    w = _weights(cfg.model, 0)
    rng = np.random.default_rng(10)
    x = rng.random((4, 8, 8, 3))  # 2 images -> 4 views
    names = ["encoder.conv1.weight", "encoder.bn1.weight", "encoder.layer1.0.conv2.weight",
             "encoder.layer2.0.downsample.0.weight", "encoder.layer2.0.downsample.1.bias",
             "encoder.layer3.1.bn1.bias", "encoder.layer3.1.conv2.weight", "encoder.layer4.1.bn2.weight",
             "head.0.linear.weight", "head.0.bn.bias", "head.1.linear.weight", "head.1.bn.weight"]
    _check_network_grads(cfg, w, x, names, 4, rng)


def test_encoder_backward_input_gradient_matches_finite_differences():
    cfg = _cfg(arch="resnet18", width=0.125, cifar_stem=True, head_out=16)
    w = _weights(cfg.model, 5)
    rng = np.random.default_rng(15)
    x = rng.random((4, 8, 8, 3))
    tape: dict = {}
    h, _ = R.encoder_train_forward(x, w, cfg.model, tape)
    z, _ = R.head_train_forward(h, w, cfg.model, tape)
    dh = R.head_backward(R.nt_xent_grad(z, cfg.loss.temperature), w, cfg.model, tape, {})
    dx = R.encoder_backward(dh, w, cfg.model, tape, {})
    assert dx.shape == x.shape
    idx = rng.choice(x.size, 24, replace=False)
    fd = fd_grad(lambda: _loss_and_pattern(w, x, cfg)[0], x, idx)
    assert rel_err(fd, dx.flat[idx]) < 1e-6


def test_loss_and_grads_resnet50_imagenet_stem_matches_finite_differences():
    cfg = _cfg(arch="resnet50", width=0.0625, cifar_stem=False, head_out=16, tau=0.2)
    w = _weights(cfg.model, 1, last_gamma=0.1)
    rng = np.random.default_rng(11)
    x = rng.random((4, 16, 16, 3))
    names = ["encoder.conv1.weight", "encoder.bn1.bias", "encoder.layer1.0.conv1.weight",
             "encoder.layer1.0.downsample.0.weight", "encoder.layer1.2.bn3.weight",
             "encoder.layer2.0.conv2.weight", "encoder.layer3.3.conv3.weight", "encoder.layer3.5.bn2.bias",
             "encoder.layer4.0.downsample.1.weight", "encoder.layer4.2.conv1.weight", "head.1.linear.weight"]
    _check_network_grads(cfg, w, x, names, 3, rng)


@pytest.mark.parametrize("head_bn,layers", [(True, 2), (False, 2), (True, 3), (False, 1)])
def test_head_backward_matches_finite_differences(head_bn, layers):
    cfg = _cfg(arch="resnet18", width=0.125, head_bn=head_bn, head_layers=layers, head_hidden=12,
               head_out=6)
    w = _weights(cfg.model, 2)
    rng = np.random.default_rng(12)
    for i, (din, dout) in enumerate(head_dims(cfg.model)):  # O(1) outputs, not N(0, 0.01)'s tiny ones
        w[f"head.{i}.linear.weight"] = rng.standard_normal((dout, din)) / np.sqrt(din)
    h = np.abs(rng.standard_normal((8, head_dims(cfg.model)[0][0])))  # 4 images, post-ReLU h

    def loss():
        return R.nt_xent(R.head(h, w, cfg.model, True)[0], cfg.loss.temperature)

    tape: dict = {}
    z, _ = R.head_train_forward(h, w, cfg.model, tape)
    assert loss() == R.nt_xent(z, cfg.loss.temperature)
    grads: dict = {}
    dh = R.head_backward(R.nt_xent_grad(z, cfg.loss.temperature), w, cfg.model, tape, grads)
    want = {s.name for s in model_specs(cfg.model) if s.trainable and s.name.startswith("head.")}
    assert set(grads) == want
    if head_bn:
        assert f"head.{layers - 1}.bn.bias" not in want  # the last BN has no beta
    assert rel_err(fd_grad(loss, h).reshape(h.shape), dh) < 1e-7
    for name in sorted(want):
        w[name] = w[name].copy()
        assert rel_err(fd_grad(loss, w[name]).reshape(w[name].shape), grads[name]) < 1e-7, name


def test_train_forward_equals_the_plain_forward():
    """The taped forward is the same computation as reference.forward(train=True)."""
    for cfg, hw in ((_cfg(arch="resnet18", width=0.125, cifar_stem=True), 8),
                    (_cfg(arch="resnet50", width=0.0625, head_bn=False), 16)):
        w = _weights(cfg.model, 3)
        x = np.random.default_rng(13).random((4, hw, hw, 3))
        _, z, up = R.forward(x, w, cfg, True)
        tape: dict = {}
        h2, up2 = R.encoder_train_forward(x, w, cfg.model, tape)
        z2, up3 = R.head_train_forward(h2, w, cfg.model, tape)
        np.testing.assert_array_equal(z, z2)
        up2.update(up3)
        assert set(up) == set(up2)
        for k in up:
            np.testing.assert_array_equal(up[k], up2[k])
        loss, _, up4 = R.loss_and_grads(w, x, cfg)
        assert loss == R.nt_xent(z, cfg.loss.temperature)
        assert set(up4) == set(up)


# --------------------------------------------------------------------------- torch autograd


def _torch_loss(torch, x, W, mcfg: ModelConfig, tau: float):
    """The SimCLR network and NT-Xent from torch.nn.functional, NCHW; BN buffers update in place."""
    F = torch.nn.functional
    lay = encoder_layout(mcfg)

    def bn(t, p):
        return F.batch_norm(t, W[f"{p}.running_mean"], W[f"{p}.running_var"], W.get(f"{p}.weight"),
                            W.get(f"{p}.bias"), True, mcfg.bn_momentum, mcfg.bn_eps)

    out = x.permute(0, 3, 1, 2)
    out = F.relu(bn(F.conv2d(out, W["encoder.conv1.weight"], stride=lay.stem_stride,
                             padding=lay.stem_pad), "encoder.bn1"))
    if lay.maxpool:
        out = F.max_pool2d(out, 3, 2, 1)
    for b in lay.blocks:
        p = b.prefix
        if b.kind == "basic":
            o = F.relu(bn(F.conv2d(out, W[f"{p}.conv1.weight"], stride=b.stride, padding=1), f"{p}.bn1"))
            o = bn(F.conv2d(o, W[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
        else:
            o = F.relu(bn(F.conv2d(out, W[f"{p}.conv1.weight"]), f"{p}.bn1"))
            o = F.relu(bn(F.conv2d(o, W[f"{p}.conv2.weight"], stride=b.stride, padding=1), f"{p}.bn2"))
            o = bn(F.conv2d(o, W[f"{p}.conv3.weight"]), f"{p}.bn3")
        short = bn(F.conv2d(out, W[f"{p}.downsample.0.weight"], stride=b.stride),
                   f"{p}.downsample.1") if b.downsample else out
        out = F.relu(o + short)
    z = out.mean(dim=(2, 3))
    n_layers = len(head_dims(mcfg))
    for i in range(n_layers):
        z = z @ W[f"head.{i}.linear.weight"].T
        z = bn(z, f"head.{i}.bn") if mcfg.head_bn else z + W[f"head.{i}.linear.bias"]
        if i < n_layers - 1:
            z = F.relu(z)
    u = F.normalize(z, dim=1)
    n2 = len(z)
    s = (u @ u.T / tau).masked_fill(torch.eye(n2, dtype=torch.bool), float("-inf"))
    return F.cross_entropy(s, (torch.arange(n2) + n2 // 2) % n2)


@pytest.mark.parametrize("model,hw", [
    (dict(arch="resnet18", width=0.125, cifar_stem=True, head_out=16), 8),
    (dict(arch="resnet50", width=0.0625, head_bn=False, head_layers=3, head_hidden=24), 16),
    (dict(arch="resnet34", width=0.125, head_bn=True, head_layers=1), 16),
])
def test_loss_and_grads_match_torch_autograd(model, hw):
    torch = pytest.importorskip("torch")
    cfg = _cfg(tau=0.3, **model)
    w = _weights(cfg.model, 4, last_gamma=0.3)
    x = np.random.default_rng(14).random((6, hw, hw, 3))
    loss, grads, updates = R.loss_and_grads(w, x, cfg)

    trainable = {s.name for s in model_specs(cfg.model) if s.trainable}
    W = {k: torch.tensor(np.array(v, dtype=np.float64), requires_grad=k in trainable)
         for k, v in w.items() if not k.endswith("num_batches_tracked")}
    t_loss = _torch_loss(torch, torch.tensor(x), W, cfg.model, cfg.loss.temperature)
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    worst = 0.0
    for name in trainable:
        tg = W[name].grad.numpy()
        worst = max(worst, float(np.abs(grads[name] - tg).max() / np.abs(tg).max()))
    assert worst < 1e-8, worst
    for name, value in updates.items():
        if name.endswith("num_batches_tracked"):
            assert value == w[name] + 1
        else:  # torch updated its running buffers in place (unbiased variance)
            np.testing.assert_allclose(value, W[name].detach().numpy(), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- training step


def _step_cfg(**optim) -> Config:
    return Config(model=ModelConfig(arch="resnet18", width=0.125, cifar_stem=True, head_out=16),
                  augment=AugmentConfig(image_size=8, blur_p=0.5, strength=0.5),
                  loss=LossConfig(temperature=0.5), optim=OptimConfig(**optim))


def _batch(n=4, hw=10, seed=5):
    return np.random.default_rng(seed).integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)


def test_train_step_is_one_lars_step_on_loss_and_grads():
    cfg = _step_cfg()
    images = _batch()
    p1, p2 = sample_pair(cfg.augment, len(images), images.shape[1:3], seed=0, epoch=0, step=0)
    w = init_weights(cfg.model, 0, num_classes=3)  # the probe must ride along untouched
    specs = [s for s in model_specs(cfg.model) if s.trainable]
    rng = np.random.default_rng(6)
    momenta = {s.name: rng.standard_normal(s.shape) * 1e-3 for s in specs[::2]}  # others missing
    loss, new_w, new_m = R.train_step(w, momenta, images, p1, p2, 0.3, cfg)

    x = np.concatenate([R.augment(images, p1, cfg.augment), R.augment(images, p2, cfg.augment)])
    loss2, grads, updates = R.loss_and_grads(w, x, cfg)
    assert loss == loss2
    params = {s.name: w[s.name] for s in specs}
    full_m = {s.name: momenta.get(s.name, np.zeros(s.shape)) for s in specs}
    want_p, want_m = R.lars_step(params, grads, full_m, 0.3, cfg.optim,
                                 {s.name: s.lars_excluded for s in specs})
    assert set(new_w) == set(w)
    for s in specs:
        np.testing.assert_array_equal(new_w[s.name], want_p[s.name])
        np.testing.assert_array_equal(new_m[s.name], want_m[s.name])
        assert not np.array_equal(new_w[s.name], w[s.name]), s.name  # every parameter moved
    for name, value in updates.items():
        np.testing.assert_array_equal(new_w[name], value)
    tracked = [n for n in w if n.endswith("num_batches_tracked")]
    assert tracked and all(new_w[n] == w[n] + 1 for n in tracked)
    assert all(not np.array_equal(new_w[n], w[n]) for n in w if n.endswith("running_var"))
    for name in ("probe.weight", "probe.bias"):
        assert new_w[name] is w[name]


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    cfg = _step_cfg()
    images = _batch(n=4)
    p1, p2 = sample_pair(cfg.augment, len(images), images.shape[1:3], seed=1, epoch=0, step=0)
    w = init_weights(cfg.model, 1)
    momenta: dict = {}
    losses = []
    for _ in range(10):
        loss, w, momenta = R.train_step(w, momenta, images, p1, p2, 1.0, cfg)
        losses.append(loss)
    # Measured: 2.06 (about log 7, chance for 8 views) -> 0.40 after 10 steps.
    assert losses[0] == pytest.approx(np.log(7), abs=0.2)
    assert losses[-1] < 0.6 * losses[0], losses
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


def test_train_step_with_identity_views_and_nesterov():
    """Identical views still train (the positive is the same image) and Nesterov differs."""
    images = _batch(n=3, hw=8)
    p = identity_params(3, (8, 8))
    w = init_weights(_step_cfg().model, 2)
    out = {}
    for nesterov in (False, True):
        cfg = _step_cfg(nesterov=nesterov)
        m = {}
        loss1, w1, m = R.train_step(w, m, images, p, p, 0.5, cfg)
        loss2, w2, m = R.train_step(w1, m, images, p, p, 0.5, cfg)
        assert np.isfinite(loss2)
        out[nesterov] = w2
    assert not np.array_equal(out[False]["encoder.conv1.weight"], out[True]["encoder.conv1.weight"])
