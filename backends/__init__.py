"""Backends of simclr_xb: ``simclr_xb.backends.torch`` and ``simclr_xb.backends.mlx``.

This folder sits at the repository top level but is installed as ``simclr_xb.backends``;
importing it under any other name is refused so that no stray top-level name exists.
"""
if __name__ != "simclr_xb.backends":  # pragma: no cover - guard
    raise ImportError(
        f"'{__name__}' is not importable on its own: install the project and use simclr_xb.backends"
    )
