"""Conformance suite: named cases that compare the backends with the float64 numpy oracle.

Installed as ``simclr_xb.conformance``; importing it under any other name is refused.
"""
if __name__ != "simclr_xb.conformance":  # pragma: no cover - guard
    raise ImportError(
        f"'{__name__}' is not importable on its own: install the project and use simclr_xb.conformance"
    )
