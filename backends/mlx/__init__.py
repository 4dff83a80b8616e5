"""MLX backend (Apple silicon / Metal; also runs on the Linux CPU build ``mlx[cpu]``).

Modules, file for file and name for name like the torch backend: ``convert`` (dtypes, devices,
names, the OIHW <-> OHWI layout function), ``augment``, ``layers`` (PyTorch-convention BN,
conv), ``resnet``, ``head``, ``ntxent``, ``lars``, ``step`` (model, Trainer) and ``api`` (the
numpy boundary of :mod:`simclr_xb.backend`). Nothing is imported here, so importing
``simclr_xb.backends.mlx`` does not import MLX.
"""
