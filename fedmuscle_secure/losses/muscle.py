"""The exact Muscle contrastive loss (DESIGN §2.1).

For an anchor z_i^n and M selected peers m_1..m_M, every tuple j = (j_1..j_M) ∈ [B]^M of
peer rows is a candidate "positive":

    logit[i, j] = Σ_k z_i^n · z_{j_k}^{m_k} / τ_{n,m_k}  +  log α[j]
    log α[j]    = − Σ_{k<l} γ_{m_k,m_l} · z_{j_k}^{m_k} · z_{j_l}^{m_l}
    L_i         = logsumexp_j logit[i, j] − logit[i, (i,..,i)]

The client never sees raw peers with their temperatures, only the server's output: the
scaled peers S^n (peer k's matrix divided by τ_{n,m_k}) and the M(M−1)/2 pairwise log-α
matrices (:func:`server_side_terms` builds both). Two implementations of the same number:

* :func:`muscle_loss_from_server` — the factorized form. exp(logit) is a product of
  pairwise kernels, so the B^M-term denominator is a tensor contraction of M anchor-peer
  kernels E_k and M(M−1)/2 peer-peer kernels K_kl; only O(M² B²) exponentials are taken
  and memory is O(B²) for M ≤ 2, O(B³) for M = 3.
* :func:`muscle_loss_broadcast` — the reference form: materialize all B^(M+1) logits by
  broadcasting and take a logsumexp. Any M; ``chunk_size`` bounds memory.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.losses.temperatures import check_positive

__all__ = [
    "REDUCTIONS",
    "muscle_loss",
    "muscle_loss_broadcast",
    "muscle_loss_from_server",
    "reduce_per_anchor",
    "server_side_terms",
]

REDUCTIONS = ("mean", "sum", "none")
METHODS = ("factorized", "broadcast")
# Largest M for which the factorized contraction is implemented (DESIGN §2.1: M ≤ 3 is
# the practical range); larger M falls back to the broadcast form.
MAX_FACTORIZED_M = 3


def check_reduction(reduction: str) -> None:
    """Refuse an unknown ``reduction`` before any work is done."""
    if reduction not in REDUCTIONS:
        raise ConfigError("reduction", f"must be one of {REDUCTIONS}, got {reduction!r}")


def reduce_per_anchor(losses: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` ("mean" | "sum" | "none") to a vector of per-anchor losses."""
    check_reduction(reduction)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def num_pairs(m: int) -> int:
    """Number of peer pairs k < l among ``m`` peers, M(M−1)/2."""
    return m * (m - 1) // 2


def _check_float(tensor: Tensor, name: str) -> None:
    if not torch.is_floating_point(tensor):
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {tensor.dtype}")


def check_server_terms(anchor: Tensor, scaled_peers: Tensor, log_alpha_pairs: Tensor) -> int:
    """Validate the shapes of the client's inputs and return M.

    anchor (B, d); scaled_peers (M, B, d) with M ≥ 1; log_alpha_pairs (M(M−1)/2, B, B).
    """
    for tensor, name in (
        (anchor, "anchor"),
        (scaled_peers, "scaled_peers"),
        (log_alpha_pairs, "log_alpha_pairs"),
    ):
        _check_float(tensor, name)
    if anchor.dim() != 2:
        raise ValueError(f"anchor: expected shape (B, d), got {tuple(anchor.shape)}")
    b, d = anchor.shape
    if scaled_peers.dim() != 3 or scaled_peers.shape[0] < 1 or scaled_peers.shape[1:] != (b, d):
        raise ValueError(
            f"scaled_peers: expected shape (M, {b}, {d}) with M >= 1, "
            f"got {tuple(scaled_peers.shape)}"
        )
    m = scaled_peers.shape[0]
    expected = (num_pairs(m), b, b)
    if tuple(log_alpha_pairs.shape) != expected:
        raise ValueError(
            f"log_alpha_pairs: expected shape {expected} (M(M-1)/2 pairs for M={m}), "
            f"got {tuple(log_alpha_pairs.shape)}"
        )
    return m


def server_side_terms(peers: Tensor, tau: Tensor, gamma: Tensor) -> tuple[Tensor, Tensor]:
    """Compute what the server sends client n: (S^n, pairwise log α) (DESIGN §2.1).

    ``peers`` (M, B, d) are the raw selected matrices Z^{m_k}; ``tau`` (M,) the
    temperatures τ_{n,m_k}; ``gamma`` (M, M) symmetric with γ_{m_k,m_l} (diagonal unused).
    Returns ``scaled_peers`` = Z^{m_k} / τ_{n,m_k} (M, B, d) and ``log_alpha_pairs``
    (M(M−1)/2, B, B), entry p = (k, l) in ``itertools.combinations`` order being
    −γ_{m_k,m_l} Z^{m_k} Z^{m_l}ᵀ. Batched over pairs: one bmm, no Python loop.
    """
    _check_float(peers, "peers")
    if peers.dim() != 3 or peers.shape[0] < 1:
        raise ValueError(f"peers: expected shape (M, B, d) with M >= 1, got {tuple(peers.shape)}")
    m = peers.shape[0]
    tau = torch.as_tensor(tau, device=peers.device)
    gamma = torch.as_tensor(gamma, device=peers.device)
    if tuple(tau.shape) != (m,):
        raise ValueError(f"tau: expected shape ({m},), got {tuple(tau.shape)}")
    if tuple(gamma.shape) != (m, m):
        raise ValueError(f"gamma: expected shape ({m}, {m}), got {tuple(gamma.shape)}")
    check_positive(tau, "temperature")
    rows, cols = torch.triu_indices(m, m, offset=1, device=peers.device)
    upper, lower = gamma.detach()[rows, cols], gamma.detach()[cols, rows]
    if not bool(torch.isfinite(upper).all()):
        raise ConfigError("gamma", f"must be finite, got {gamma.detach().tolist()}")
    if not torch.equal(upper, lower):
        raise ConfigError("gamma", f"must be symmetric, got {gamma.detach().tolist()}")

    scaled_peers = peers / tau.to(peers.dtype)[:, None, None]
    grams = torch.bmm(peers[rows], peers[cols].transpose(1, 2))
    log_alpha_pairs = -gamma.to(peers.dtype)[rows, cols][:, None, None] * grams
    return scaled_peers, log_alpha_pairs


def _numerator(similarities: Tensor, log_alpha_pairs: Tensor) -> Tensor:
    """logit[i, (i,..,i)] = Σ_k A_k[i, i] + Σ_{k<l} L_kl[i, i]."""
    positive = similarities.diagonal(dim1=1, dim2=2).sum(0)
    if log_alpha_pairs.shape[0]:
        positive = positive + log_alpha_pairs.diagonal(dim1=1, dim2=2).sum(0)
    return positive


def _factorized_log_denominator(similarities: Tensor, log_alpha_pairs: Tensor) -> tuple[Tensor, Tensor]:
    """log Σ_j exp(logit[i, j]) for M ≤ 3 by contracting pairwise kernels (float64), and a
    mask of the anchors whose contraction underflowed (their value is then a lower bound).

    ``similarities`` is A (M, B, B) with A_k = anchor @ S_kᵀ. Each factor is shifted by its
    own (detached) max before exp, so every kernel lies in (0, 1]; the shifts are added
    back in log space. Pair p of ``log_alpha_pairs`` is (0,1), (0,2), (1,2) for M = 3.
    """
    m = similarities.shape[0]
    if m == 1:
        return torch.logsumexp(similarities[0], dim=1), similarities.new_zeros(
            similarities.shape[1], dtype=torch.bool)
    row_shift = similarities.detach().amax(dim=2, keepdim=True)  # (M, B, 1)
    anchor_kernels = torch.exp(similarities - row_shift)  # E_k[i, a]
    pair_shift = log_alpha_pairs.detach().amax(dim=(1, 2), keepdim=True)  # (P, 1, 1)
    pair_kernels = torch.exp(log_alpha_pairs - pair_shift)  # K_kl[a, b]
    e1, e2 = anchor_kernels[0], anchor_kernels[1]
    if m == 2:
        # Σ_{a,b} E1[i,a] E2[i,b] K12[a,b] = Σ_a E1[i,a] (E2 K12ᵀ)[i,a]
        total = (e1 * (e2 @ pair_kernels[0].T)).sum(dim=1)
    else:
        e3 = anchor_kernels[2]
        k12, k13, k23 = pair_kernels[0], pair_kernels[1], pair_kernels[2]
        # 'ia,ib,ic,ab,ac,bc->i' in O(B^3) memory, O(B^4) time:
        per_c = e3[:, None, :] * k13[None, :, :]  # X[i,a,c] = E3[i,c] K13[a,c]
        per_b = torch.matmul(per_c, k23.T)  # T[i,a,b] = Σ_c X[i,a,c] K23[b,c]
        per_a = torch.bmm(per_b * k12, e2[:, :, None]).squeeze(2)  # Σ_b T K12[a,b] E2[i,b]
        total = (e1 * per_a).sum(dim=1)
    # A row whose every tuple sits > ~700 nats below the product of the factors' maxima
    # underflows to 0 even in float64; clamp so its gradient stays finite (zero), and let
    # the caller recompute it in log space.
    tiny = torch.finfo(total.dtype).tiny
    return torch.log(total.clamp_min(tiny)) + row_shift.sum(dim=0).squeeze(1) + pair_shift.sum(), \
        total.detach() <= tiny


def muscle_loss_from_server(
    anchor: Tensor,
    scaled_peers: Tensor,
    log_alpha_pairs: Tensor,
    *,
    reduction: str = "mean",
) -> Tensor:
    """Exact Muscle loss of ``anchor`` given the server's output (DESIGN §2.1, factorized).

    ``anchor`` (B, d) is client n's Z^n; ``scaled_peers`` (M, B, d) is S^n;
    ``log_alpha_pairs`` (M(M−1)/2, B, B) the pairwise log-α matrices. The contraction runs
    in float64 (float32 products of kernels underflow at small temperatures); the result
    comes back in ``anchor``'s dtype. Differentiable w.r.t. all three inputs. For M > 3
    this dispatches to :func:`muscle_loss_broadcast`.
    """
    check_reduction(reduction)
    m = check_server_terms(anchor, scaled_peers, log_alpha_pairs)
    if m > MAX_FACTORIZED_M:
        return muscle_loss_broadcast(anchor, scaled_peers, log_alpha_pairs, reduction=reduction)
    anchor64 = anchor.to(torch.float64)
    similarities = torch.matmul(anchor64, scaled_peers.to(torch.float64).transpose(1, 2))
    log_alpha64 = log_alpha_pairs.to(torch.float64)
    log_den, underflow = _factorized_log_denominator(similarities, log_alpha64)
    if bool(underflow.any()):
        # Far outside the paper's range (e.g. noisy, non-unit peers under DP noise): redo the
        # affected anchors exactly in log space (broadcast form), a few rows at a time.
        rows = underflow.nonzero().squeeze(1)
        log_alpha = log_alpha_tensor(log_alpha64, m, anchor.shape[0])
        step = max(1, (1 << 22) // max(1, anchor.shape[0] ** m))
        exact = torch.cat([_broadcast_log_denominator(similarities[:, rows[i:i + step]], log_alpha)
                           for i in range(0, rows.numel(), step)])
        log_den = log_den.index_put((rows,), exact)
    losses = log_den - _numerator(similarities, log_alpha64)
    return reduce_per_anchor(losses.to(anchor.dtype), reduction)


def log_alpha_tensor(log_alpha_pairs: Tensor, m: int, b: int) -> Tensor:
    """Broadcast the pairwise matrices into the full log α tensor of shape (B,)*M."""
    log_alpha = log_alpha_pairs.new_zeros((b,) * m)
    for p, (k, l) in enumerate(itertools.combinations(range(m), 2)):
        shape = [1] * m
        shape[k] = shape[l] = b
        log_alpha = log_alpha + log_alpha_pairs[p].reshape(shape)
    return log_alpha


def _broadcast_log_denominator(similarities: Tensor, log_alpha: Tensor) -> Tensor:
    """logsumexp over tuples of Σ_k A_k[i, j_k] + log α[j] for a chunk of anchors."""
    m, chunk, b = similarities.shape
    logits = log_alpha.unsqueeze(0)
    for k in range(m):
        shape = [chunk] + [1] * m
        shape[1 + k] = b
        logits = logits + similarities[k].reshape(shape)
    return torch.logsumexp(logits.reshape(chunk, -1), dim=1)


def muscle_loss_broadcast(
    anchor: Tensor,
    scaled_peers: Tensor,
    log_alpha_pairs: Tensor,
    *,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Exact Muscle loss by materializing all B^(M+1) logits (DESIGN §2.1, reference form).

    Works for any M ≥ 1 and is what the factorized form is tested against. Computes in
    the promoted dtype of the inputs (logsumexp is shift-stable, so float32 is safe).
    ``chunk_size`` anchors are processed at a time (None: all at once); under autograd each
    chunk is checkpointed, so peak memory is about chunk_size · B^M logits, at the price
    of recomputing each chunk's forward during backward.
    """
    check_reduction(reduction)
    m = check_server_terms(anchor, scaled_peers, log_alpha_pairs)
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ConfigError("chunk_size", f"must be a positive int or None, got {chunk_size!r}")
    b = anchor.shape[0]
    dtype = torch.promote_types(
        torch.promote_types(anchor.dtype, scaled_peers.dtype), log_alpha_pairs.dtype
    )
    similarities = torch.matmul(anchor.to(dtype), scaled_peers.to(dtype).transpose(1, 2))
    log_alpha = log_alpha_tensor(log_alpha_pairs.to(dtype), m, b)
    step = b if chunk_size is None else min(int(chunk_size), b)
    if step >= b:
        log_den = _broadcast_log_denominator(similarities, log_alpha)
    else:
        use_checkpoint = torch.is_grad_enabled() and (
            similarities.requires_grad or log_alpha.requires_grad
        )
        parts = []
        for start in range(0, b, step):
            chunk = similarities[:, start : start + step]
            if use_checkpoint:
                parts.append(
                    checkpoint(_broadcast_log_denominator, chunk, log_alpha, use_reentrant=False)
                )
            else:
                parts.append(_broadcast_log_denominator(chunk, log_alpha))
        log_den = torch.cat(parts)
    losses = log_den - _numerator(similarities, log_alpha_pairs.to(dtype))
    return reduce_per_anchor(losses.to(anchor.dtype), reduction)


def muscle_loss(
    anchor: Tensor,
    peers: Tensor,
    tau: Tensor,
    gamma: Tensor,
    *,
    reduction: str = "mean",
    method: str = "factorized",
) -> Tensor:
    """Muscle loss from raw peers: :func:`server_side_terms` then the chosen ``method``.

    ``peers`` (M, B, d) raw Z^{m_k}; ``tau`` (M,) τ_{n,m_k}; ``gamma`` (M, M) symmetric γ.
    ``method`` is "factorized" (default, fast) or "broadcast" (reference).
    """
    if method not in METHODS:
        raise ConfigError("method", f"must be one of {METHODS}, got {method!r}")
    check_reduction(reduction)
    scaled_peers, log_alpha_pairs = server_side_terms(peers, tau, gamma)
    if method == "factorized":
        return muscle_loss_from_server(anchor, scaled_peers, log_alpha_pairs, reduction=reduction)
    return muscle_loss_broadcast(anchor, scaled_peers, log_alpha_pairs, reduction=reduction)
