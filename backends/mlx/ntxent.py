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

from functools import lru_cache

import mlx.core as mx

from simclr_xb.config import loss_scale
from simclr_xb.state import NORM_EPS  # rows are divided by max(|z_i|, NORM_EPS)

from .layers import exp, logsumexp


def positive_index(n2: int) -> mx.array:
    """(2N,) index of each row's positive in the [view1; view2] layout."""
    return (mx.arange(n2) + n2 // 2) % n2


def safe_norm(z: mx.array) -> mx.array:
    """(2N, 1) max(|z_i|, NORM_EPS) as sqrt(max(|z_i|^2, NORM_EPS^2)): an all-zero row gives
    a finite loss and gradient (mx.linalg.norm's vjp is 0/0 at a zero row)."""
    return mx.sqrt(mx.maximum(mx.sum(z * z, axis=1, keepdims=True), NORM_EPS ** 2))


def nt_xent(z: mx.array, tau: float, reduction: str = "mean") -> mx.array:
    """NT-Xent of z (2N, d) at temperature tau -> scalar (mean over the 2N rows; ``reduction``
    "tf2": the official objective.py's 2x, :func:`simclr_xb.config.loss_scale`).

    Raises ValueError if tau <= 0 or the number of rows is odd or < 2.
    """
    if not tau > 0:
        raise ValueError(f"NT-Xent temperature tau = {tau!r} must be > 0")
    n2 = z.shape[0]
    if z.ndim != 2 or n2 < 2 or n2 % 2:
        raise ValueError(f"NT-Xent expects z of shape (2N, d) with N >= 1, got {tuple(z.shape)}")
    u = z / safe_norm(z)
    s = (u @ u.T) / tau
    s = mx.where(mx.eye(n2, dtype=mx.bool_), mx.array(-mx.inf, dtype=s.dtype), s)
    lse = logsumexp(s, axis=1)
    pos = mx.take_along_axis(s, positive_index(n2)[:, None], axis=1)[:, 0]
    scale = loss_scale(reduction)
    return mx.mean(lse - pos) * scale if scale != 1.0 else mx.mean(lse - pos)


# --------------------------------------------------------------------------- chunked


def _self_mask(a: int, b: int, n2: int) -> mx.array:
    """(b - a, 2N) bool: True at each row's own column (row i of the block is row a + i)."""
    return (mx.arange(a, b)[:, None] == mx.arange(n2)[None, :])


def _check_chunked(z: mx.array, tau: float, chunk: int) -> None:
    if not tau > 0:
        raise ValueError(f"NT-Xent temperature tau = {tau!r} must be > 0")
    if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
        raise ValueError(f"nt_xent_chunked chunk must be an integer >= 1, got {chunk!r}")
    n2 = z.shape[0]
    if z.ndim != 2 or n2 < 2 or n2 % 2:
        raise ValueError(f"NT-Xent expects z of shape (2N, d) with N >= 1, got {tuple(z.shape)}")


def _block_lse(u: mx.array, tau: float, chunk: int, eager: bool) -> mx.array:
    """(2N,) log-sum-exp over k != i of u_i.u_k / tau, ``chunk`` rows of S at a time; with
    ``eager`` each block is evaluated before the next is built (only one block alive)."""
    n2 = u.shape[0]
    lse = []
    for a in range(0, n2, chunk):
        b = min(a + chunk, n2)
        s = (u[a:b] @ u.T) / tau
        s = mx.where(_self_mask(a, b, n2), mx.array(-mx.inf, dtype=s.dtype), s)
        lse.append(logsumexp(s, axis=1))
        if eager:
            mx.eval(lse[-1])
    return mx.concatenate(lse)


def _block_grad_u(u: mx.array, lse: mx.array, tau: float, chunk: int, eager: bool) -> mx.array:
    """dL/du (2N, d) from the per-row ``lse``: with G = (P - Y) / 2N, (G + G^T) u / tau,
    accumulated one (chunk, 2N) block of P = exp(S - lse) (P_ii = 0) at a time."""
    n2 = u.shape[0]
    scale = 1.0 / (n2 * tau)
    cols = mx.take(u, positive_index(n2), axis=0) * (-2.0 * scale)  # the -Y and -Y^T terms
    rows = []
    for a in range(0, n2, chunk):
        b = min(a + chunk, n2)
        p = exp((u[a:b] @ u.T) / tau - lse[a:b, None])
        p = mx.where(_self_mask(a, b, n2), mx.array(0.0, dtype=p.dtype), p)
        rows.append((p @ u) * scale)  # P_B u
        cols = cols + (p.T @ u[a:b]) * scale  # P_B^T u_B
        if eager:
            mx.eval(rows[-1], cols)
    return cols + mx.concatenate(rows)


def _grad_z(z: mx.array, norm: mx.array, u: mx.array, du: mx.array) -> mx.array:
    """dL/dz_i = (I - u_i u_i^T) dL/du_i / |z_i| (0 radial part for a zero row)."""
    radial = mx.where(norm > NORM_EPS, mx.sum(u * du, axis=1, keepdims=True), 0.0)
    return (du - u * radial) / norm


def _positive_term(u: mx.array, tau: float) -> mx.array:
    return mx.sum(u * mx.take(u, positive_index(u.shape[0]), axis=0), axis=1) / tau


@lru_cache(maxsize=64)
def _chunked(tau: float, chunk: int):
    """The custom-vjp function z -> (loss, lse) for one (tau, chunk); lse (2N,) is an output
    so that the backward reuses it instead of recomputing it."""

    @mx.custom_function
    def f(z):
        u = z / safe_norm(z)
        lse = _block_lse(u, tau, chunk, eager=False)
        return mx.mean(lse - _positive_term(u, tau)), mx.stop_gradient(lse)

    @f.vjp
    def f_vjp(primals, cotangents, outputs):
        z = primals[0] if isinstance(primals, (tuple, list)) else primals
        norm = safe_norm(z)
        u = z / norm
        du = _block_grad_u(u, outputs[1], tau, chunk, eager=False)
        return (_grad_z(z, norm, u, du) * cotangents[0],)

    return f


def nt_xent_chunked(z: mx.array, tau: float, chunk: int, reduction: str = "mean") -> mx.array:
    """NT-Xent of z (2N, d) computed ``chunk`` rows at a time -> scalar.

    Same value and gradient as :func:`nt_xent` (the exact formula, summed in another order),
    but no (2N, 2N) array is ever built: the forward takes (chunk, 2N) similarity blocks one
    after another and keeps only each row's log-sum-exp; the custom vjp recomputes each
    block's softmax P_B = exp(S_B - lse_B) (P_ii = 0) and accumulates, with G = (P - Y) / 2N,
    dL/du = (G + G^T) u / tau block by block, then dL/dz_i = (I - u_i u_i^T) dL/du_i / |z_i|.
    ``chunk`` need not divide 2N.

    Memory on MLX's CPU stream (measured, mlx 0.32): the evaluation of a lazy graph dispatches
    every block, each allocating its (chunk, 2N) buffer, before the first block has run, so
    the peak is about 1.3 (2N)^2 floats whatever ``chunk`` is: about a quarter of the exact
    loss's (~4.6 (2N)^2), not linear in N as in the torch backend. Evaluating block by block
    bounds it, but MLX refuses ``mx.eval`` under ``mx.compile`` and, under ``mx.grad``, keeps
    every evaluated intermediate alive for the backward (measured: worse); so the trainer takes
    the loss gradient outside the transform with :func:`nt_xent_chunked_value_and_grad`
    (linear in N) and this function serves where a transformable loss is needed.
    """
    _check_chunked(z, tau, chunk)
    scale = loss_scale(reduction)
    loss = _chunked(float(tau), int(chunk))(z)[0]
    return loss * scale if scale != 1.0 else loss


def nt_xent_chunked_value_and_grad(z: mx.array, tau: float, chunk: int,
                                   reduction: str = "mean") -> tuple[mx.array, mx.array]:
    """(loss, dL/dz) of :func:`nt_xent_chunked`, computed EAGERLY block by block: each
    (chunk, 2N) block is evaluated (``mx.eval``) before the next one is built, so at most one
    block is alive and the peak memory is O(chunk * 2N + 2N * d), linear in N.

    This is what the MLX trainer uses with ``loss.chunk`` (see :meth:`.step.Trainer._step_fn`:
    the loss gradient is taken here, outside any transform, and the model's backward is the vjp
    of z with this cotangent). It cannot run inside ``mx.grad``/``mx.compile`` (it evaluates);
    :func:`nt_xent_chunked` is the transformable form, whose lazy graph MLX allocates all at
    once (peak ~1.3 (2N)^2 floats, measured). Same formulas, so the two agree to rounding.
    """
    _check_chunked(z, tau, chunk)
    tau, chunk = float(tau), int(chunk)
    norm = safe_norm(z)
    u = z / norm
    mx.eval(u, norm)
    lse = _block_lse(u, tau, chunk, eager=True)
    loss = mx.mean(lse - _positive_term(u, tau))
    du = _block_grad_u(u, lse, tau, chunk, eager=True)
    grad = _grad_z(z, norm, u, du)
    scale = loss_scale(reduction)
    if scale != 1.0:
        loss, grad = loss * scale, grad * scale
    mx.eval(loss, grad)
    return loss, grad
