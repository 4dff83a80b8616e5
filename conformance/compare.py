"""Compare two outputs of any structure (arrays, floats, tuples, dicts) element by element."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tolerances import Tolerance


def flatten(out, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested tuples/lists/dicts of arrays or scalars -> {path: float64 array}."""
    if isinstance(out, dict):
        items = {}
        for k in sorted(out):
            items.update(flatten(out[k], f"{prefix}{k}/"))
        return items
    if isinstance(out, (tuple, list)):
        items = {}
        for i, v in enumerate(out):
            items.update(flatten(v, f"{prefix}{i}/"))
        return items
    return {prefix.rstrip("/") or "out": np.asarray(out, dtype=np.float64)}


@dataclass
class Comparison:
    max_abs: float
    max_rel: float
    worst: str  # which output had the largest violation (or the largest error)
    passed: bool
    detail: str = ""


def compare(a, b, tol: Tolerance) -> Comparison:
    fa, fb = flatten(a), flatten(b)
    if set(fa) != set(fb):
        missing = sorted(set(fa) ^ set(fb))
        return Comparison(float("inf"), float("inf"), missing[0], False,
                          f"outputs differ in structure: {missing[:4]}")
    max_abs = max_rel = 0.0
    worst, worst_excess, passed, detail = "", -np.inf, True, ""
    for key in fa:
        x, y = fa[key], fb[key]
        if x.shape != y.shape:
            return Comparison(float("inf"), float("inf"), key, False,
                              f"{key}: shape {x.shape} vs {y.shape}")
        if x.size == 0:
            continue
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            same = np.array_equal(x, y, equal_nan=True)
            if not same:
                return Comparison(float("inf"), float("inf"), key, False, f"{key}: non-finite values")
            continue
        err = np.abs(x - y)
        rel = err / np.maximum(np.abs(y), 1e-30)
        excess = err - (tol.atol + tol.rtol * np.abs(y))
        max_abs = max(max_abs, float(err.max()))
        max_rel = max(max_rel, float(np.where(err > 0, rel, 0).max()))
        e = float(excess.max())
        if e > worst_excess:
            worst, worst_excess = key, e
        if e > 0:
            passed = False
            i = int(np.argmax(excess))
            detail = detail or f"{key}[{np.unravel_index(i, x.shape)}]: {x.flat[i]!r} vs {y.flat[i]!r}"
    return Comparison(max_abs, max_rel, worst, passed, detail)
