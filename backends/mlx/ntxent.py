"""NT-Xent, the normalised temperature-scaled cross-entropy loss (SimCLR, Chen et al. 2020, eq. 1).

    sim(u, v) = u.v / (|u| |v|)
    l(i, j)   = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) )
    loss      = mean of l over the 2N ordered positive pairs

z is laid out [view 1 of images 0..N-1; view 2 of the same], so the positive of row i is row
(i + N) mod 2N (as :func:`simclr_xb.reference.nt_xent`). The official tf2 code returns twice
this value (it sums both directions and divides by N). Closed form: all z equal gives
log(2N - 1).

Numerics: rows are L2-normalised, the self-similarity is masked to -inf BEFORE the
log-sum-exp (so it neither dominates the max nor enters the sum), and the log-sum-exp
subtracts the row max (:func:`.layers.logsumexp`, float64-accurate); with tau = 0.05 float32
stays within ~1e-7 (relative) of the float64 oracle.
Gradients come from autodiff (``mx.grad``); masked entries get exactly zero gradient.

Distributed training (later): :func:`.step.contrastive_loss` is the one call site to change;
the negatives must come from a gather of every rank's z whose backward sums gradients across
ranks (MLX's ``all_gather`` keeps only the local slice), see SIMCLR-FACTS.md.
"""
from __future__ import annotations

import mlx.core as mx

from .layers import logsumexp


def positive_index(n2: int) -> mx.array:
    """(2N,) index of each row's positive in the [view1; view2] layout."""
    return (mx.arange(n2) + n2 // 2) % n2


def nt_xent(z: mx.array, tau: float) -> mx.array:
    """NT-Xent of z (2N, d) at temperature tau -> scalar (mean over the 2N rows).

    Raises ValueError if tau <= 0 or the number of rows is odd or < 2.
    """
    if not tau > 0:
        raise ValueError(f"NT-Xent temperature tau = {tau!r} must be > 0")
    n2 = z.shape[0]
    if z.ndim != 2 or n2 < 2 or n2 % 2:
        raise ValueError(f"NT-Xent expects z of shape (2N, d) with N >= 1, got {tuple(z.shape)}")
    u = z / mx.linalg.norm(z, axis=1, keepdims=True)
    s = (u @ u.T) / tau
    s = mx.where(mx.eye(n2, dtype=mx.bool_), mx.array(-mx.inf, dtype=s.dtype), s)
    lse = logsumexp(s, axis=1)
    pos = mx.take_along_axis(s, positive_index(n2)[:, None], axis=1)[:, 0]
    return mx.mean(lse - pos)
