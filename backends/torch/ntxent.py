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

from simclr_xb.config import loss_scale
from simclr_xb.state import NORM_EPS  # rows are divided by max(|z_i|, NORM_EPS)


def positive_index(n2: int, device=None) -> torch.Tensor:
    """Index of each row's positive in the [view1; view2] layout: (i + N) mod 2N, (2N,)."""
    return (torch.arange(n2, device=device) + n2 // 2) % n2


def safe_norm(z: torch.Tensor) -> torch.Tensor:
    """(2N, 1) max(|z_i|, NORM_EPS) as sqrt(max(|z_i|^2, NORM_EPS^2)): an all-zero row gives
    a finite loss and a zero-free gradient path instead of 0/0 (as F.normalize)."""
    return (z * z).sum(dim=1, keepdim=True).clamp_min(NORM_EPS ** 2).sqrt()


def nt_xent(z: torch.Tensor, tau: float, reduction: str = "mean") -> torch.Tensor:
    """NT-Xent loss of z (2N, d) at temperature ``tau`` -> scalar tensor (differentiable).
    ``reduction`` "mean" (eq. 1) or "tf2" (the official objective.py: 2x eq. 1).

    No loop over the batch: one (2N, 2N) similarity matrix, the diagonal (self-similarity)
    masked with -inf before a row-wise logsumexp (stable in float32 too), and the positive
    logit picked per row. Computed in z's dtype (callers pass float32 or float64).
    """
    if not (tau > 0):
        raise ValueError(f"nt_xent temperature tau must be > 0, got {tau!r}")
    if z.ndim != 2 or z.shape[0] < 2 or z.shape[0] % 2:
        raise ValueError(f"nt_xent expects z of shape (2N, d) with N >= 1, got {tuple(z.shape)}")
    n2 = z.shape[0]
    u = z / safe_norm(z)
    s = (u @ u.T) / tau
    self_mask = torch.eye(n2, dtype=torch.bool, device=z.device)
    s = s.masked_fill(self_mask, float("-inf"))
    lse = torch.logsumexp(s, dim=1)
    pos = s.gather(1, positive_index(n2, z.device)[:, None])[:, 0]
    return (lse - pos).mean() * loss_scale(reduction)


# --------------------------------------------------------------------------- chunked


def _check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
        raise ValueError(f"nt_xent_chunked chunk must be an integer >= 1, got {chunk!r}")
    return int(chunk)


class _ChunkedNTXent(torch.autograd.Function):
    """NT-Xent over row blocks of ``chunk`` rows: no (2N, 2N) matrix is ever held.

    Forward: u = z / |z|; for each block B of rows, S_B = u_B u^T / tau (chunk, 2N) with the
    self-similarities at -inf, lse_B = logsumexp(S_B) and pos_B = u_B . u_p(B) / tau; the
    loss is mean(lse - pos). Saved for backward: u, |z| and lse (2N values), not S.

    Backward (the analytic gradient of reference.nt_xent_grad): with P the row-softmax of S
    (P_ii = 0) and Y the positives, G = (P - Y) / 2N and dL/du = (G + G^T) u / tau. Each
    block recomputes P_B = exp(S_B - lse_B) and adds P_B u to its rows and P_B^T u_B to all
    rows; the -Y terms give -(u_p(i) + u_p(i)) / (2N tau) per row (p is an involution).
    Finally dL/dz_i = (du_i - u_i (u_i . du_i)) / |z_i|.
    Peak extra memory: one (chunk, 2N) block plus O(2N d).
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, tau: float, chunk: int) -> torch.Tensor:
        n2 = z.shape[0]
        norm = safe_norm(z)
        u = z / norm
        pos_idx = positive_index(n2, z.device)
        lse = torch.empty(n2, dtype=z.dtype, device=z.device)
        for a in range(0, n2, chunk):
            b = min(a + chunk, n2)
            s = torch.mm(u[a:b], u.T).div_(tau)
            s.diagonal(offset=a).fill_(float("-inf"))  # row i of the block is row a + i
            lse[a:b] = torch.logsumexp(s, dim=1)
            del s
        pos = (u * u[pos_idx]).sum(dim=1) / tau
        ctx.save_for_backward(u, norm, lse)
        ctx.tau, ctx.chunk = tau, chunk
        return (lse - pos).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        u, norm, lse = ctx.saved_tensors
        tau, chunk = ctx.tau, ctx.chunk
        n2 = u.shape[0]
        scale = 1.0 / (n2 * tau)
        du = u[positive_index(n2, u.device)].mul(-2.0 * scale)  # the -Y and -Y^T terms
        for a in range(0, n2, chunk):
            b = min(a + chunk, n2)
            p = torch.mm(u[a:b], u.T).div_(tau).sub_(lse[a:b, None]).exp_()
            p.diagonal(offset=a).zero_()
            du[a:b].addmm_(p, u, alpha=scale)  # P_B u
            du.addmm_(p.T, u[a:b], alpha=scale)  # P_B^T u_B
            del p
        radial = (u * du).sum(dim=1, keepdim=True).masked_fill_(norm <= NORM_EPS, 0.0)
        dz = (du - u * radial) / norm
        return dz * grad_out, None, None


def nt_xent_chunked(z: torch.Tensor, tau: float, chunk: int, reduction: str = "mean") -> torch.Tensor:
    """NT-Xent of z (2N, d) computed ``chunk`` rows at a time -> scalar tensor.

    Same value and gradient as :func:`nt_xent` (the exact formula, summed in another order);
    peak memory grows linearly in N: one (chunk, 2N) similarity block in the forward and one
    in the backward (which recomputes the blocks), never the (2N, 2N) matrix. ``chunk`` need
    not divide 2N. Differentiable once (no double backward).
    """
    if not (tau > 0):
        raise ValueError(f"nt_xent temperature tau must be > 0, got {tau!r}")
    if z.ndim != 2 or z.shape[0] < 2 or z.shape[0] % 2:
        raise ValueError(f"nt_xent expects z of shape (2N, d) with N >= 1, got {tuple(z.shape)}")
    scale = loss_scale(reduction)
    loss = _ChunkedNTXent.apply(z, float(tau), _check_chunk(chunk))
    return loss * scale if scale != 1.0 else loss
