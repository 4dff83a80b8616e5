"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, eq. 1).

    sim(u, v) = u.v / (|u| |v|)
    l(i, j)   = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) )
    L         = mean of l over the 2N ordered positive pairs

z is laid out [view 1 of images 0..N-1; view 2 of the same], so the positive of row i is row
(i + N) mod 2N (as :func:`simclr_xb.reference.nt_xent`). The official tf2 code returns 2x
this value (it sums both directions and divides by N); we follow the paper. With all z equal
every row gives log(2N - 1).
"""
from __future__ import annotations

import torch


def positive_index(n2: int, device=None) -> torch.Tensor:
    """Index of each row's positive in the [view1; view2] layout: (i + N) mod 2N, (2N,)."""
    return (torch.arange(n2, device=device) + n2 // 2) % n2


def nt_xent(z: torch.Tensor, tau: float) -> torch.Tensor:
    """NT-Xent loss of z (2N, d) at temperature ``tau`` -> scalar tensor (differentiable).

    No loop over the batch: one (2N, 2N) similarity matrix, the diagonal (self-similarity)
    masked with -inf before a row-wise logsumexp (stable in float32 too), and the positive
    logit picked per row. Computed in z's dtype (callers pass float32 or float64).
    """
    if not (tau > 0):
        raise ValueError(f"nt_xent temperature tau must be > 0, got {tau!r}")
    if z.ndim != 2 or z.shape[0] < 2 or z.shape[0] % 2:
        raise ValueError(f"nt_xent expects z of shape (2N, d) with N >= 1, got {tuple(z.shape)}")
    n2 = z.shape[0]
    u = z / torch.linalg.vector_norm(z, dim=1, keepdim=True)
    s = (u @ u.T) / tau
    self_mask = torch.eye(n2, dtype=torch.bool, device=z.device)
    s = s.masked_fill(self_mask, float("-inf"))
    lse = torch.logsumexp(s, dim=1)
    pos = s.gather(1, positive_index(n2, z.device)[:, None])[:, 0]
    return (lse - pos).mean()
