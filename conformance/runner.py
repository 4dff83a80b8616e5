"""Run conformance cases over the oracle and the installed backends; one runner for pytest
and ``simclr-xb conformance``.

For every case and dtype, each implementation receives the same positional arguments (the
oracle receives them converted to float64) and the runner compares every pair: each backend
against the oracle, and the backends against each other. A backend that is not installed
gives SKIP rows, never PASS.

Implementations and devices: "torch" (on its api's DEVICE, "cpu" by default), and MLX as two
implementations, "mlx-cpu" and "mlx-gpu" (``--backends mlx`` means both): each calls the MLX
api with ``device=``, so a row says which device produced it (``Result.devices``), and the
pair "mlx-gpu~mlx-cpu" compares Metal with the CPU where a GPU exists. mlx-gpu has no float64
(SKIP rows say so) and, without a GPU, SKIP rows with the reason. Every run sets
``MLX_ENABLE_TF32=0`` (full float32 matmuls and convolutions; MLX's default lets M5-class
GPUs run them at reduced precision, docs/src/usage/precision.rst) and records the value.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from simclr_xb import reference
from simclr_xb.augment import ViewParams
from simclr_xb.backend import BACKENDS, BackendUnavailable, get_backend
from simclr_xb.state import merge_state, split_state

from . import tf2_ref
from .cases import Case, all_cases
from .compare import compare
from .tolerances import EXACT, tolerance_for

ORACLE = "oracle"

# implementation name -> (backend, device passed to its api); "mlx" expands to both
DEVICE_IMPLS = {"mlx-cpu": ("mlx", "cpu"), "mlx-gpu": ("mlx", "gpu")}
TF32_ENV = "MLX_ENABLE_TF32"


def full_float32() -> str:
    """Set ``MLX_ENABLE_TF32=0`` for this process (conformance compares full float32) and
    return the value now in force. MLX reads it at its first matmul-family op, so callers do
    this before any MLX work (the CLI command and tests/conftest.py do it first thing)."""
    os.environ[TF32_ENV] = "0"
    return os.environ[TF32_ENV]


def expand_backends(backends) -> list[str]:
    """["torch", "mlx"] -> ["torch", "mlx-cpu", "mlx-gpu"]; names already device-qualified
    are kept; order kept, duplicates dropped."""
    out = []
    for b in backends:
        for n in (("mlx-cpu", "mlx-gpu") if b == "mlx" else (b,)):
            if n not in out:
                out.append(n)
    return out


def _backend_of(name: str) -> tuple[str, str | None]:
    return DEVICE_IMPLS.get(name, (name, None))


def device_of(name: str) -> str:
    """The device an implementation computes on: "cpu", "gpu" (MLX Metal) or torch's DEVICE."""
    if name in (ORACLE, tf2_ref.NAME):
        return "cpu"
    backend, dev = _backend_of(name)
    if dev is not None:
        return dev
    try:
        return str(getattr(get_backend(backend), "DEVICE", "cpu"))
    except BackendUnavailable:
        return "cpu"


def unsupported(name: str, dtype: str) -> str | None:
    """Why implementation ``name`` cannot run ``dtype`` (None if it can)."""
    if dtype == "float64" and device_of(name) == "gpu":
        return "float64: MLX has no float64 on the GPU (Metal); float64 rows are mlx-cpu's"
    return None


def pair_device(a: str, b: str) -> str:
    """The device a pair's tolerance is keyed by: the first member not on the CPU, else cpu."""
    for n in (a, b):
        if device_of(n) != "cpu":
            return device_of(n)
    return "cpu"


@dataclass
class Result:
    case: str
    pair: str
    dtype: str
    status: str  # PASS | FAIL | SKIP | ERROR
    max_abs: float | None = None
    max_rel: float | None = None
    atol: float | None = None
    rtol: float | None = None
    tolerance_reason: str = ""
    detail: str = ""
    seconds: float = 0.0
    devices: str = ""  # "mlx-gpu=gpu, mlx-cpu=cpu": the device of each member of the pair

    def to_dict(self) -> dict:
        return asdict(self)


def _to64(obj):
    """Deep-convert floating arrays to float64 (the oracle always computes in float64)."""
    if isinstance(obj, np.ndarray):
        return obj.astype(np.float64) if obj.dtype.kind == "f" else obj
    if isinstance(obj, dict):
        return {k: _to64(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to64(v) for v in obj)
    if isinstance(obj, ViewParams):
        return ViewParams.from_dict({k: _to64(v) for k, v in obj.to_dict().items()})
    return obj


Caller = Callable[..., object]


def implementations(backends: list[str], with_oracle: bool = True,
                    override: dict[str, Caller] | None = None):
    """-> ({name: call(fn_name, *args, dtype=...)}, {name: reason unavailable}).

    ``backends`` may name "mlx" (both MLX devices) or "mlx-cpu" / "mlx-gpu" alone."""
    impls: dict[str, Caller] = {}
    skipped: dict[str, str] = {}
    if with_oracle:
        impls[ORACLE] = lambda fn, *args, dtype, **kw: getattr(reference, fn)(*_to64(args), **kw)
    for name in expand_backends(backends):
        if override and name in override:
            impls[name] = override[name]
            continue
        if name == tf2_ref.NAME:  # optional TensorFlow reference (extra [tf2]), see tf2_ref.py
            try:
                impls[name] = tf2_ref.caller()
            except ImportError as e:
                skipped[name] = str(e)
            continue
        backend, dev = _backend_of(name)
        try:
            api = get_backend(backend)
        except BackendUnavailable as e:
            skipped[name] = str(e.__cause__ or e)
            continue
        if dev == "gpu" and "gpu" not in api.devices():
            skipped[name] = "MLX has no GPU on this machine (Metal needs Apple silicon)"
            continue
        impls[name] = _api_call(api, dev)
    return impls, skipped


def _api_call(api, dev: str | None):
    """``call(fn, *args, dtype, **kw)``: ``api.fn`` (on MLX device ``dev`` when given)."""
    if dev is None:
        return lambda fn, *args, dtype, **kw: getattr(api, fn)(*args, dtype=dtype, **kw)
    return lambda fn, *args, dtype, **kw: getattr(api, fn)(*args, dtype=dtype, device=dev, **kw)


def _bind(call, dtype: str, kwargs: dict):
    """``call`` with the case's dtype and keyword arguments bound: ``bound(fn, *args)``."""
    return lambda fn, *a: call(fn, *a, dtype=dtype, **kwargs)


def _pairs(names: list[str], oracle: bool) -> list[tuple[str, str]]:
    backends = [n for n in names if n != ORACLE]
    pairs = [(b, ORACLE) for b in backends] if oracle else []
    pairs += [(a, b) for i, a in enumerate(backends) for b in backends[i + 1:]]
    # the GPU is compared with the CPU (the reference member second): mlx-gpu~mlx-cpu
    return [(b, a) if (a, b) == ("mlx-cpu", "mlx-gpu") else (a, b) for a, b in pairs]


def _devices(*names: str) -> str:
    return ", ".join(f"{n}={device_of(n)}" for n in names)


def _crossload(call_a_name, api_a, api_b, cfg, dev_a="cpu", dev_b="cpu") -> tuple[dict, dict]:
    """A's Trainer state -> HDF5 checkpoint -> B's Trainer -> B's state."""
    from simclr_xb.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    ta = api_a.Trainer(cfg, 10, device=dev_a) if api_a is not None else None
    if ta is not None:
        state = ta.state_dict()
    else:  # the oracle side: canonical init weights in float32, zero momenta
        from simclr_xb.resnet_spec import init_weights, model_specs
        w = init_weights(cfg.model, cfg.train.seed, 10)
        state = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in w.items()}
        state = merge_state(state, {s.name: np.zeros(s.shape, np.float32)
                                    for s in model_specs(cfg.model, 10) if s.trainable})
    weights, mom = split_state(state)
    with tempfile.TemporaryDirectory() as d:
        path = save_checkpoint(Path(d) / "x.h5", Checkpoint(cfg, weights, mom, backend=call_a_name))
        ck = load_checkpoint(path)
    tb = api_b.Trainer(cfg, 10, device=dev_b)
    tb.load_state_dict(ck.state_dict())
    return state, tb.state_dict()


def run_case(case: Case, impls: dict[str, Caller], dtype: str, skipped: dict[str, str] | None = None,
             apis: dict | None = None) -> list[Result]:
    skipped = skipped or {}
    results: list[Result] = []
    # an implementation may cover only some cases (the tf2 reference: ``supports``)
    impls = {n: c for n, c in impls.items() if getattr(c, "supports", None) is None or c.supports(case, dtype)}
    # implementations that cannot run this dtype (mlx-gpu in float64) give SKIP rows
    cannot = {n: why for n in impls if (why := unsupported(n, dtype))}
    names = [n for n in impls if n not in cannot]
    skipped = {**skipped, **cannot}
    if case.kind == "core":
        need = case.impls.get("requires")
        if need and importlib.util.find_spec(need) is None:
            return [Result(case.name, "core~oracle", dtype, "SKIP", detail=f"{need} is not installed")]
        t0 = time.perf_counter()
        args = case.make(np.random.default_rng(case.seed), dtype)
        a, b = (case.impls["core"](*args), case.impls["reference"](*args))
        tol = tolerance_for(case.name, dtype)
        c = compare(a, b, tol)
        return [Result(case.name, "core~oracle", dtype, "PASS" if c.passed else "FAIL", c.max_abs,
                       c.max_rel, tol.atol, tol.rtol, tol.reason, c.detail, time.perf_counter() - t0,
                       "core=cpu (numpy), oracle=cpu")]
    if case.kind == "crossload":
        backends = [n for n in names if n != ORACLE]
        apis = apis or {}
        order = [(a, b) for a in backends + [ORACLE] for b in backends if a != b]
        for a, b in order:
            t0 = time.perf_counter()
            try:
                args = case.make(np.random.default_rng(case.seed), dtype)
                src, dst = _crossload(a, _api(a, apis) if a != ORACLE else None, _api(b, apis), *args,
                                      dev_a=device_of(a), dev_b=device_of(b))
                c = compare(dst, src, EXACT)
                results.append(Result(case.name, f"{a}->{b}", dtype, "PASS" if c.passed else "FAIL",
                                      c.max_abs, c.max_rel, 0.0, 0.0, EXACT.reason, c.detail,
                                      time.perf_counter() - t0, _devices(a, b)))
            except Exception as e:  # noqa: BLE001 - reported as ERROR with its message
                results.append(Result(case.name, f"{a}->{b}", dtype, "ERROR",
                                      detail=f"{type(e).__name__}: {e}", devices=_devices(a, b)))
        for s, why in skipped.items():
            results.append(Result(case.name, f"{s}<->*", dtype, "SKIP", detail=f"{s} unavailable: {why}"))
        return results

    outputs, errors, times = {}, {}, {}
    for name, call in impls.items():
        if (name == ORACLE and not case.oracle) or name in cannot:
            continue
        t0 = time.perf_counter()
        try:
            args = case.make(np.random.default_rng(case.seed), dtype)
            bound = _bind(call, dtype, case.kwargs)
            outputs[name] = bound(case.fn, *args) if isinstance(case.fn, str) else case.fn(bound, *args)
        except Exception as e:  # noqa: BLE001
            errors[name] = f"{type(e).__name__}: {e}"
            tb = traceback.extract_tb(e.__traceback__)
            if tb:
                errors[name] += f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})"
        times[name] = time.perf_counter() - t0
    for a, b in _pairs(names, case.oracle):
        pair = f"{a}~{b}"
        if a in errors or b in errors:
            who = a if a in errors else b
            results.append(Result(case.name, pair, dtype, "ERROR", detail=f"{who}: {errors[who]}",
                                  devices=_devices(a, b)))
            continue
        tol = tolerance_for(case.name, dtype, pair_device(a, b))
        c = compare(outputs[a], outputs[b], tol)
        results.append(Result(case.name, pair, dtype, "PASS" if c.passed else "FAIL", c.max_abs,
                              c.max_rel, tol.atol, tol.rtol, tol.reason, c.detail,
                              times.get(a, 0) + times.get(b, 0), _devices(a, b)))
    for s, why in skipped.items():
        results.append(Result(case.name, f"{s}~*", dtype, "SKIP", detail=f"{s} unavailable: {why}"))
    return results


def _api(name: str, apis: dict | None):
    """The api module of implementation ``name`` (from ``apis`` when given there)."""
    if apis and name in apis:
        return apis[name]
    return get_backend(_backend_of(name)[0])


def select(cases: list[Case], pattern: str | None) -> list[Case]:
    if not pattern:
        return cases
    pats = [p.strip() for p in pattern.split(",") if p.strip()]
    pats = [p if any(ch in p for ch in "*?[") else f"*{p}*" for p in pats]
    return [c for c in cases if any(fnmatch.fnmatch(c.name, p) for p in pats)]


def run(backends: list[str] | None = None, pattern: str | None = None,
        dtypes: tuple[str, ...] = ("float32", "float64"), on_result=None,
        override: dict[str, Caller] | None = None) -> list[Result]:
    """Run the selected cases; ``on_result(result)`` is called as each row completes."""
    full_float32()
    backends = list(backends or BACKENDS)
    impls, skipped = implementations(backends, override=override)
    apis = {}
    for n in impls:
        if _backend_of(n)[0] in BACKENDS:
            try:
                apis[n] = get_backend(_backend_of(n)[0])
            except BackendUnavailable:
                pass
    results = []
    for case in select(all_cases(), pattern):
        for dt in dtypes:
            if dt not in case.dtypes:
                continue
            for r in run_case(case, impls, dt, skipped, apis):
                results.append(r)
                if on_result:
                    on_result(r)
    return results
