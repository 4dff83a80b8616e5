"""Tolerances as data: one default per dtype, per-case overrides each with its reason.

A comparison passes when every element satisfies ``|a - b| <= atol + rtol * |b|``
(numpy.allclose's rule, b being the second member of the pair: the oracle when there is one).

Each override records the error measured when it was set (``measured``), so it can be
tightened when the implementation improves. Cross-load cases use exact equality.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    reason: str = "default"

    def to_dict(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol, "reason": self.reason}


DEFAULT = {
    # float32 has a unit roundoff of 6e-8; 1e-5 leaves room for a few hundred roundings on
    # values of order 1, which is what every single op here does.
    "float32": Tolerance(1e-5, 1e-5, "default float32: ~100x the roundoff of O(1) values"),
    # float64 backends against the float64 oracle: only summation order differs.
    "float64": Tolerance(1e-10, 1e-10, "default float64"),
}

EXACT = Tolerance(0.0, 0.0, "exact: a copy must not change a single bit")

# case name (or prefix ending in '*') -> dtype -> Tolerance. Filled in from measurements.
OVERRIDES: dict[str, dict[str, Tolerance]] = {}


def tolerance_for(case: str, dtype: str) -> Tolerance:
    if case in OVERRIDES and dtype in OVERRIDES[case]:
        return OVERRIDES[case][dtype]
    for key, per_dtype in OVERRIDES.items():
        if key.endswith("*") and case.startswith(key[:-1]) and dtype in per_dtype:
            return per_dtype[dtype]
    return DEFAULT[dtype]
