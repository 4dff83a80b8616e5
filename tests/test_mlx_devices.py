"""MLX's two devices: every api function and the Trainer take ``device``; float64 is pinned to
the CPU stream (Metal has no float64: "float64 is not supported on the GPU").

A Mac's default device is the GPU, so a float64 op issued outside a CPU stream fails there
and nowhere on Linux (mlx[cpu] has only the CPU). Two checks cover it:

* on every machine, statically (AST): every api function with a ``dtype`` has a ``device``
  parameter and runs its work inside ``convert.on_device(dtype, device)`` or hands ``device``
  to the api function / Trainer that does; every public Trainer / fine-tuner method that
  evaluates MLX arrays does so inside ``mx.stream(<its device>)``; every ``mx.float64`` in
  backends/mlx and tests is inside a CPU stream context (or is a dtype constant or a
  comparison, which run nothing);
* where a GPU exists (a Mac): the float64 paths run with the GPU as the DEFAULT device
  (``mx.set_default_device(mx.gpu)``), which is what a Mac user's process has.

MLX on Linux cannot make the GPU the default device (there is none), so the second check is
skipped here with that reason; the first one runs everywhere.
"""
from __future__ import annotations

import ast
import inspect
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from simclr_xb.backend import API_FUNCTIONS  # noqa: E402
from simclr_xb.backends.mlx import api, convert  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HAS_GPU = mx.is_available(mx.gpu)
DEVICES = ["cpu"] + (["gpu"] if HAS_GPU else [])


# --------------------------------------------------------------------------- static checks


def _with_contexts(node: ast.AST, parents: dict) -> list[str]:
    """The source text of every ``with`` context expression lexically around ``node``."""
    out = []
    p = parents.get(node)
    while p is not None:
        if isinstance(p, ast.With):
            out += [ast.unparse(item.context_expr) for item in p.items]
        p = parents.get(p)
    return out


def _parents(tree: ast.AST) -> dict:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _is_device_context(ctx: str) -> bool:
    return ctx.startswith(("mx.stream(", "convert.on_device(", "on_device("))


def _api_function_violations(tree: ast.Module) -> list[str]:
    names = set(API_FUNCTIONS) | {"_factor_op", "_run"}
    bad = []
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names):
        args = [a.arg for a in fn.args.args + fn.args.kwonlyargs]
        if "dtype" not in args:
            continue
        if "device" not in args:
            bad.append(f"{fn.name}: no device parameter")
            continue
        ctx_ok = any(isinstance(w, ast.With) and any(
            ast.unparse(i.context_expr) == "convert.on_device(dtype, device)" for i in w.items)
            for w in ast.walk(fn))
        if ctx_ok:
            continue
        # else it must delegate, handing ``device`` on to every api function / Trainer it calls
        delegated = False
        for call in (c for c in ast.walk(fn) if isinstance(c, ast.Call)):
            callee = ast.unparse(call.func)
            if callee in names or callee == "Trainer":
                delegated = True
                passed = [ast.unparse(a) for a in call.args] + [
                    f"{k.arg}={ast.unparse(k.value)}" for k in call.keywords]
                if "device" not in passed and "device=device" not in passed:
                    bad.append(f"{fn.name}: calls {callee} without device")
        if not delegated:
            bad.append(f"{fn.name}: computes outside convert.on_device(dtype, device)")
    return bad


def test_every_api_function_takes_a_device_and_runs_on_its_stream():
    tree = ast.parse((ROOT / "backends/mlx/api.py").read_text())
    assert _api_function_violations(tree) == []
    for name in API_FUNCTIONS:
        assert "device" in inspect.signature(getattr(api, name)).parameters, name
    assert "device" in inspect.signature(api.Trainer).parameters


def test_static_check_catches_a_function_outside_its_stream():
    """Negative control: a function that computes without the device context is reported."""
    bad = ast.parse('def nt_xent(z, tau, dtype="float32", device=None):\n'
                    '    return _nt_xent(_x(z, dtype), tau).item()\n'
                    'def conv2d(x, w, dtype="float32"):\n'
                    '    with convert.on_device(dtype):\n        return 1\n'
                    'def forward(x, w, cfg, train, dtype="float32", device=None):\n'
                    '    return encoder(x, w, cfg, train, dtype)\n')
    assert _api_function_violations(bad) == [
        "nt_xent: computes outside convert.on_device(dtype, device)",
        "conv2d: no device parameter",
        "forward: calls encoder without device"]


def _method_violations(path: Path) -> list[str]:
    """Public methods of the trainer-like classes in ``path`` that evaluate MLX arrays outside
    ``with mx.stream(...)``."""
    tree = ast.parse(path.read_text())
    parents = _parents(tree)
    bad = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        if not any(k in cls.name for k in ("Trainer", "Finetune", "FineTune", "Pending")):
            continue
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            if fn.name.startswith("_") and fn.name != "__init__":
                continue
            for call in (c for c in ast.walk(fn) if isinstance(c, ast.Call)):
                callee = ast.unparse(call.func)
                if callee not in ("mx.eval", "mx.async_eval"):
                    continue
                if not any(_is_device_context(c) for c in _with_contexts(call, parents)):
                    bad.append(f"{path.name}:{cls.name}.{fn.name}:{call.lineno} {callee} outside mx.stream")
    return bad


@pytest.mark.parametrize("module", ["step.py", "finetune.py"])
def test_trainer_methods_evaluate_on_their_stream(module):
    assert _method_violations(ROOT / "backends/mlx" / module) == []


def _float64_violations(path: Path) -> list[str]:
    """``mx.float64`` used to BUILD or compute outside a CPU stream. Allowed outside one: a
    comparison (``x.dtype == mx.float64``), a dict/tuple of dtype constants, and
    ``mx.array(numpy, dtype=mx.float64)`` (a copy of host data: no kernel runs)."""
    tree = ast.parse(path.read_text())
    parents = _parents(tree)
    bad = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr == "float64"
                and isinstance(node.value, ast.Name) and node.value.id == "mx"):
            continue
        parent = parents.get(node)
        if isinstance(parent, (ast.Compare, ast.Dict, ast.Tuple, ast.Set)):
            continue
        if isinstance(parent, ast.keyword) and ast.unparse(parents[parent].func) == "mx.array":
            continue
        ctxs = _with_contexts(node, parents)
        if any(c in ("mx.stream(mx.cpu)", "mx.stream(cpu)") or c.startswith("convert.on_device(")
               for c in ctxs):
            continue
        # inside a function that only runs under a CPU stream its caller set (layers.py)
        fn = parents.get(node)
        while fn is not None and not isinstance(fn, ast.FunctionDef):
            fn = parents.get(fn)
        src = ast.unparse(fn) if fn is not None else ""
        if fn is not None and "x.dtype == mx.float64" in src:
            continue  # float64 branch of a helper on an input already float64 (its stream)
        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return bad


def test_every_float64_mlx_use_is_on_the_cpu_stream():
    files = sorted((ROOT / "backends/mlx").glob("*.py")) + sorted((ROOT / "tests").glob("*.py"))
    bad = [v for f in files for v in _float64_violations(f)]
    assert bad == [], "mx.float64 outside `with mx.stream(mx.cpu)`: " + ", ".join(bad)


def test_float64_static_check_catches_a_default_device_op(tmp_path):
    """Negative control: the unfixed distributed test's float64 grad (the default device, a
    Mac's GPU) is reported; the fixed form is not."""
    f = tmp_path / "x.py"
    f.write_text("import mlx.core as mx\n"
                 "x = mx.arange(3, dtype=mx.float64)\n"
                 "with mx.stream(mx.cpu):\n    y = mx.arange(3, dtype=mx.float64)\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert _float64_violations(f) == ["x.py:2"]
    finally:
        ROOT = saved


def test_device_for_pins_float64_to_the_cpu():
    assert convert.device_for("float64") == mx.cpu
    assert convert.device_for("float64", "cpu") == mx.cpu
    with pytest.raises(ValueError, match="float64 runs only on the CPU"):
        convert.device_for("float64", "gpu")
    with pytest.raises(ValueError, match="not an MLX device"):
        convert.device_for("float32", "metal")
    if not HAS_GPU:
        with pytest.raises(ValueError, match="no GPU"):
            convert.device_for("float32", "gpu")


# --------------------------------------------------------------------------- every device


def _inputs():
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 6)), rng.normal(size=(2, 6, 6, 3)), rng.normal(0, 0.3, (4, 3, 3, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_api_functions_run_on_each_device(device):
    """float32 api functions on each device agree with the CPU (on Linux: cpu only)."""
    z, x, w = _inputs()
    ref = (api.nt_xent(z, 0.5, device="cpu"), api.conv2d(x, w, 1, 1, device="cpu"))
    got = (api.nt_xent(z, 0.5, device=device), api.conv2d(x, w, 1, 1, device=device))
    assert abs(got[0] - ref[0]) < 1e-4
    np.testing.assert_allclose(got[1], ref[1], atol=1e-3)
    # float64 always lands on the CPU whatever the default device
    assert api.conv2d(x, w, 1, 1, dtype="float64").dtype == np.float64


@pytest.mark.skipif(not HAS_GPU, reason="MLX has no GPU here: the GPU cannot be made the default "
                                        "device (the static checks above cover float64 instead)")
def test_float64_paths_with_the_gpu_as_default_device():
    """A Mac's process: the GPU is the default device. Every float64 api function (through the
    conformance cases), a float64 Trainer step and the distributed worker's float64 grad must
    run (on the CPU stream) without "float64 is not supported on the GPU"."""
    from simclr_xb.conformance.runner import run
    old = mx.default_device()
    mx.set_default_device(mx.gpu)
    try:
        results = run(["mlx-cpu"], None, ("float64",))
        bad = [r for r in results if r.status in ("FAIL", "ERROR")]
        assert not bad, [(r.case, r.pair, r.detail) for r in bad[:5]]
    finally:
        mx.set_default_device(old)


def test_bench_peak_rss_without_proc(monkeypatch):
    """macOS has no /proc: the NT-Xent benchmark's peak RSS falls back to getrusage."""
    import builtins

    from simclr_xb.bench import ntxent
    real_open = builtins.open

    def no_proc(path, *a, **k):
        if str(path).startswith("/proc"):
            raise FileNotFoundError(path)
        return real_open(path, *a, **k)
    monkeypatch.setattr(builtins, "open", no_proc)
    peak = ntxent._vm_hwm()
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert peak == (ru if sys.platform == "darwin" else ru * 1024) and peak > 0


@pytest.mark.parametrize("recipe", ["torchvision", "tf2"])
@pytest.mark.parametrize("length,kernel_size", [(16, 5), (24, 23), (7, 13)])
def test_blur_matrices_built_on_the_device_match_the_host_ones(recipe, length, kernel_size):
    """The per-step blur matrices come from cached taps on the device (no float64 matrices
    built on the host): exactly the host's in float64, to float32 rounding in float32."""
    from simclr_xb.backends.mlx import augment as aug
    if recipe == "torchvision" and kernel_size // 2 >= length:
        with pytest.raises(ValueError, match="reflect padding"):
            aug.device_blur_matrices(np.array([1.0]), length, kernel_size, recipe, mx.float32)
        return
    sigma = np.array([0.1, 0.7, 1.3, 2.0])
    host = aug.blur_matrices(sigma, length, kernel_size, recipe)
    with mx.stream(mx.cpu):
        d64 = np.array(aug.device_blur_matrices(sigma, length, kernel_size, recipe, mx.float64))
        d32 = np.array(aug.device_blur_matrices(sigma, length, kernel_size, recipe, mx.float32))
    np.testing.assert_array_equal(d64, host)
    np.testing.assert_allclose(d32, host, rtol=2e-7, atol=1e-9)
    assert (length, kernel_size, recipe, str(mx.float32)) in aug._TAPS  # cached for the next step


@pytest.mark.parametrize("device", DEVICES)
def test_trainer_step_on_each_device_matches_the_cpu(device):
    """One float32 Trainer step per available device (here: cpu) against the CPU's, and the
    async form gives the synchronous numbers."""
    from simclr_xb.augment import sample_pair
    from simclr_xb.config import preset
    cfg = preset("tiny").with_overrides(["model.width=0.125", "augment.image_size=16",
                                         "train.batch_size=4"])
    u8 = np.random.default_rng(0).integers(0, 256, (4, 20, 20, 3), dtype=np.uint8)
    p1, p2 = sample_pair(cfg.augment, 4, (20, 20), 0, 0, 0)
    ref = api.Trainer(cfg, None, device="cpu").train_step(u8, None, p1, p2, 0.1)["loss"]
    t = api.Trainer(cfg, None, device=device)
    assert t.device == device
    got = t.train_step_async(u8, None, p1, p2, 0.1).result()["loss"]
    assert abs(got - ref) <= (0 if device == "cpu" else 1e-3) * max(1.0, abs(ref))
    t64 = api.Trainer(replace(cfg, train=replace(cfg.train, precision="float64")), None)
    assert t64.device == "cpu"  # float64 lands on the CPU whatever the default device


def test_bench_device_option_is_checked(tmp_path):
    from click.testing import CliRunner

    from simclr_xb.cli import main
    r = CliRunner().invoke(main, ["bench", "ntxent", "--size", "tiny", "--device", "metal",
                                  "--out", str(tmp_path)])
    assert r.exit_code != 0 and "not an MLX device" in r.output
    if not HAS_GPU:
        r = CliRunner().invoke(main, ["bench", "ntxent", "--size", "tiny", "--device", "gpu",
                                      "--out", str(tmp_path)])
        assert r.exit_code != 0 and "no GPU" in r.output


def test_bench_records_the_mlx_device(tmp_path):
    from simclr_xb.bench import ntxent
    rep = ntxent.run(size="tiny", backends=("mlx",), memory=False, device="cpu", log=lambda m: None)
    assert rep.settings["device"] == {"torch": "cpu", "mlx": "cpu"}
