"""What only the MLX backend has: its BatchNorm module against torch's, its module tree and
name conversion, the LARS exclusion tree, the compiled step, the float64 CPU stream, and the
chunked NT-Xent's custom vjp, peak memory and failure recovery. The per-component tests against
the float64 oracle and the Trainer behaviour both backends share are in tests/test_backends.py;
tolerances against the oracle come from conformance/tolerances.py (tolerance_for), as there.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from test_backends import R18, images_u8, max_err  # noqa: E402

from simclr_xb.augment import sample_pair  # noqa: E402
from simclr_xb.backends.mlx import api, convert  # noqa: E402
from simclr_xb.backends.mlx.step import SimCLRModel  # noqa: E402
from simclr_xb.config import AugmentConfig, Config, LossConfig, OptimConfig, TrainConfig  # noqa: E402
from simclr_xb.resnet_spec import model_specs  # noqa: E402

R50_IN = replace(R18, arch="resnet50", cifar_stem=False)


def tiny_cfg(precision="float32", compile=False, seed=0):
    return Config(model=R18, augment=AugmentConfig(image_size=16, strength=0.5, blur_p=0.5),
                  loss=LossConfig(temperature=0.5), optim=OptimConfig(eta=0.02),
                  train=TrainConfig(batch_size=4, seed=seed, precision=precision, compile=compile))


def batch(seed=0, n=4, hw=(20, 20), step=0, cfg=None):
    cfg = cfg or tiny_cfg()
    rng = np.random.default_rng(seed)
    p1, p2 = sample_pair(cfg.augment, n, hw, seed, 0, step)
    return images_u8(rng, n, *hw), np.arange(n) % 3, p1, p2


def test_batch_norm_module_agrees_with_torch():
    torch = pytest.importorskip("torch")
    from simclr_xb.backends.mlx.layers import BatchNorm
    rng = np.random.default_rng(6)
    x = rng.normal(1.0, 2.0, (4, 3, 3, 5)).astype(np.float32)
    tb = torch.nn.BatchNorm2d(5)
    mb = BatchNorm(5)
    for _ in range(2):
        tb.train()(torch.from_numpy(x).permute(0, 3, 1, 2))
        mb.train()
        mx.eval(mb(mx.array(x)))
    np.testing.assert_allclose(np.array(mb.running_var), tb.running_var.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.array(mb.running_mean), tb.running_mean.numpy(), atol=1e-6)
    assert int(mb.num_batches_tracked.item()) == int(tb.num_batches_tracked) == 2
    y_t = tb.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    mb.eval()
    np.testing.assert_allclose(np.array(mb(mx.array(x))), y_t, atol=1e-5)


def test_trainer_lars_exclusion_follows_param_kinds():
    t = api.Trainer(tiny_cfg(), num_classes=3)
    from mlx.utils import tree_flatten
    flags = {convert.to_canonical_name(k): v for k, v in tree_flatten(t.optimizer.excluded)}
    specs = {s.name: s for s in model_specs(t.cfg.model, 3) if s.trainable}
    assert set(flags) == set(specs)
    assert all(flags[n] == s.lars_excluded for n, s in specs.items())
    assert flags["encoder.bn1.weight"] and flags["probe.weight"] and flags["head.0.bn.bias"]
    assert not flags["encoder.conv1.weight"] and not flags["head.1.linear.weight"]


@pytest.mark.parametrize("cfg", [R18, R50_IN, replace(R18, head_bn=False, head_layers=3)],
                         ids=["r18", "r50_in", "r18_plain3"])
def test_module_tree_is_canonical(cfg):
    from mlx.utils import tree_flatten
    m = SimCLRModel(cfg, num_classes=5)
    names = [convert.to_canonical_name(p) for p, _ in tree_flatten(m.parameters())]
    specs = model_specs(cfg, 5)
    assert sorted(names) == sorted(s.name for s in specs)
    for s in specs:
        assert convert.to_canonical_name(convert.to_mlx_path(s.name)) == s.name
    w = np.arange(2 * 3 * 5 * 7).reshape(2, 3, 5, 7)
    assert convert.relayout(w, "OIHW", "OHWI").shape == (2, 5, 7, 3)
    np.testing.assert_array_equal(convert.relayout(convert.relayout(w, "OIHW", "OHWI"), "OHWI", "OIHW"), w)


@pytest.fixture(scope="module")
def compiled_and_eager():
    """Three steps with the compiled step and the same three eagerly (lr changes every step).
    The first compiled call JIT-builds C++ kernels on Linux (tens of seconds on a cold cache)."""
    u8, y, p1, p2 = batch()
    out = {}
    for compiled in (True, False):
        t = api.Trainer(tiny_cfg(compile=compiled), num_classes=3)
        states, losses = [t.state_dict()], []
        for lr in (0.5, 0.4, 0.3):
            losses.append(t.train_step(u8, y, p1, p2, lr))
            states.append(t.state_dict())
        out[compiled] = (t, states, losses)
    return out


def test_running_stats_update_across_compiled_steps(compiled_and_eager):
    t, states, _ = compiled_and_eager[True]
    assert t.compiled and t.traces == 1  # traced once although lr changed every step
    bn = ["encoder.bn1", "encoder.layer4.1.bn2", "encoder.layer2.0.downsample.1", "head.1.bn"]
    for i in range(1, 4):
        for p in bn:
            assert int(states[i][f"{p}.num_batches_tracked"]) == i, p
            assert max_err(states[i][f"{p}.running_mean"], states[i - 1][f"{p}.running_mean"]) > 0, p
            assert max_err(states[i][f"{p}.running_var"], states[i - 1][f"{p}.running_var"]) > 0, p
        assert max_err(states[i]["momentum/encoder.conv1.weight"],
                       states[i - 1]["momentum/encoder.conv1.weight"]) > 0


def test_compiled_step_equals_eager_step(compiled_and_eager):
    _, s_c, l_c = compiled_and_eager[True]
    _, s_e, l_e = compiled_and_eager[False]
    for a, b in zip(l_c, l_e):
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(b[k])), k
    for k in s_e[1]:  # after one step: float32 rounding only
        assert max_err(s_c[1][k], s_e[1][k]) <= 1e-4 * max(1.0, np.abs(s_e[1][k]).max()), k


def test_float64_runs_on_the_cpu_stream():
    """float64 is CPU-only in MLX: asking for the GPU is refused, the default device is the CPU
    (DistContext and the float64 state: tests/test_backends.py)."""
    with pytest.raises(ValueError, match="float64 runs only on the CPU"):
        api.Trainer(tiny_cfg("float64"), device="gpu")
    assert api.Trainer(tiny_cfg("float64")).device == "cpu"


@pytest.mark.parametrize("n,d,tau,chunk", [(5, 6, 0.5, 3), (4, 8, 0.05, 1), (3, 4, 0.2, 6)])
def test_eager_chunked_equals_custom_vjp_and_exact(n, d, tau, chunk):
    """nt_xent_chunked_value_and_grad (eager, what the trainer uses) == mx.value_and_grad of
    the custom-vjp nt_xent_chunked == the exact loss, float64."""
    from simclr_xb.backends.mlx.ntxent import nt_xent, nt_xent_chunked, nt_xent_chunked_value_and_grad
    z = mx.array(np.random.default_rng(n * 10 + d).normal(size=(2 * n, d)), dtype=mx.float64)
    with mx.stream(mx.cpu):
        le, ge = nt_xent_chunked_value_and_grad(z, tau, chunk)
        lc, gc = mx.value_and_grad(lambda t: nt_xent_chunked(t, tau, chunk))(z)
        lx, gx = mx.value_and_grad(lambda t: nt_xent(t, tau))(z)
        ge, gc, gx = (np.array(g) for g in (ge, gc, gx))
        for l_, g_ in ((lc, gc), (lx, gx)):
            assert abs(le.item() - l_.item()) <= 1e-12 * abs(l_.item())
            np.testing.assert_allclose(ge, g_, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="chunk"):
        nt_xent_chunked_value_and_grad(z, tau, 0)


def _peak(fn) -> int:
    """Bytes allocated by ``fn`` at its peak, above what was alive before (earlier tests' arrays)."""
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    fn()
    return mx.get_peak_memory() - base


def test_eager_chunked_peak_memory_is_linear():
    """Memory is an allocation count, not a timing: the eager chunked loss + gradient never
    holds more than one (chunk, 2N) block, so at N = 512 its peak is a small fraction of the
    exact loss's and doubling N doubles it (measured, mlx 0.32.4: 0.93 MB vs 19.8 MB exact,
    ratio 0.047; N = 1024: 1.87 MB, 2.00x)."""
    from simclr_xb.backends.mlx.ntxent import nt_xent, nt_xent_chunked_value_and_grad

    def z_of(n):
        z = mx.array(np.random.default_rng(0).normal(size=(2 * n, 32)).astype(np.float32))
        mx.eval(z)
        return z

    def exact(z):
        mx.eval(*mx.value_and_grad(lambda t: nt_xent(t, 0.5))(z))

    with mx.stream(mx.cpu):
        z1, z2 = z_of(512), z_of(1024)
        p_exact = _peak(lambda: exact(z1))
        p1 = _peak(lambda: nt_xent_chunked_value_and_grad(z1, 0.5, 64))
        p2 = _peak(lambda: nt_xent_chunked_value_and_grad(z2, 0.5, 64))
    assert p1 < 0.25 * p_exact, (p1, p_exact)
    assert p2 < 3.0 * p1, (p1, p2)  # linear (quadratic would be 4x)


def test_chunked_extra_forward_failure_leaves_the_bn_buffers(monkeypatch):
    """If the extra forward of loss.chunk fails (e.g. out of memory), the BN buffers it replaced
    are put back: the trainer stays usable and its state is what it was."""
    cfg = tiny_cfg()
    t = api.Trainer(replace(cfg, loss=replace(cfg.loss, chunk=3)), num_classes=3)
    u8, y, p1, p2 = batch()
    t.train_step(u8, y, p1, p2, 0.5)
    before = t.state_dict()

    def out_of_memory(*a, **k):
        raise MemoryError("simulated")
    monkeypatch.setattr(mx, "eval", out_of_memory)
    with pytest.raises(MemoryError):
        t.train_step(u8, y, p1, p2, 0.5)
    monkeypatch.undo()
    after = t.state_dict()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert "loss" in t.train_step(u8, y, p1, p2, 0.5)
    assert int(t.state_dict()["encoder.bn1.num_batches_tracked"]) == 2
