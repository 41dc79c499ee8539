"""The sum form of the Muscle loss, "muscle-sum" (DESIGN §2.2).

Restricting the Muscle denominator (§2.1) to the diagonal tuples j = (k,..,k) with a
uniform temperature τ and exponent γ gives logits that depend on the peers only through
per-sample sums, which is what secure aggregation (§4.2) and CKKS (§4.3) can deliver:

    U_k = Σ_{m∈Q} z_k^m,   q_k = Σ_{m∈Q} ||z_k^m||²
    logit[i, k] = z_i^n · U_k / τ − (γ/2) (||U_k||² − q_k)
    L_i         = logsumexp_k logit[i, k] − logit[i, i]

since Σ_{l<m} z_k^l · z_k^m = (||U_k||² − q_k) / 2. It is a different objective from the
exact loss, not an approximation of it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.losses.muscle import check_reduction, reduce_per_anchor

__all__ = ["leave_one_out", "leave_one_out_terms", "muscle_sum_loss", "muscle_sum_loss_from_terms"]


def _check_sum_inputs(anchor: Tensor, peer_sum: Tensor, peer_sq_norm_sum: Tensor) -> None:
    if anchor.dim() != 2:
        raise ValueError(f"anchor: expected shape (B, d), got {tuple(anchor.shape)}")
    b, d = anchor.shape
    if tuple(peer_sum.shape) != (b, d):
        raise ValueError(f"peer_sum: expected shape ({b}, {d}), got {tuple(peer_sum.shape)}")
    if tuple(peer_sq_norm_sum.shape) != (b,):
        raise ValueError(
            f"peer_sq_norm_sum: expected shape ({b},), got {tuple(peer_sq_norm_sum.shape)}"
        )


def muscle_sum_loss(
    anchor: Tensor,
    peer_sum: Tensor,
    peer_sq_norm_sum: Tensor,
    *,
    tau: float,
    gamma: float,
    reduction: str = "mean",
) -> Tensor:
    """Muscle-sum loss of ``anchor`` (B, d) given U = ``peer_sum`` (B, d) and
    q = ``peer_sq_norm_sum`` (B,) (DESIGN §2.2). ``tau`` > 0; ``gamma`` any finite number.

    Differentiable w.r.t. all three tensors; computed in their promoted dtype.
    """
    check_reduction(reduction)
    _check_sum_inputs(anchor, peer_sum, peer_sq_norm_sum)
    tau = float(tau)
    gamma = float(gamma)
    if not (math.isfinite(tau) and tau > 0):
        raise ConfigError("temperature", f"must be finite and > 0, got {tau}")
    if not math.isfinite(gamma):
        raise ConfigError("gamma", f"must be finite, got {gamma}")
    log_alpha = -0.5 * gamma * ((peer_sum * peer_sum).sum(dim=1) - peer_sq_norm_sum)  # (B,)
    logits = (anchor @ peer_sum.T) / tau + log_alpha[None, :]
    losses = torch.logsumexp(logits, dim=1) - logits.diagonal()
    return reduce_per_anchor(losses, reduction)


def leave_one_out(peer_sum: Tensor, peer_sq_norm_sum: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
    """Remove client n's own rows from group sums that include it (DESIGN §2.2).

    Returns (U − own, q − ||own||²) with ``own`` = Z^n (B, d).
    """
    if own.dim() != 2:
        raise ValueError(f"own: expected shape (B, d), got {tuple(own.shape)}")
    _check_sum_inputs(own, peer_sum, peer_sq_norm_sum)
    return peer_sum - own, peer_sq_norm_sum - (own * own).sum(dim=1)


def muscle_sum_loss_from_terms(anchor: Tensor, scaled_sum: Tensor, log_alpha: Tensor, *,
                               reduction: str = "mean") -> Tensor:
    """The same loss from the server's terms S = U/τ (B, d) and log α (B,) (§2.2, §3)."""
    check_reduction(reduction)
    _check_sum_inputs(anchor, scaled_sum, log_alpha)
    logits = anchor @ scaled_sum.T.to(anchor.dtype) + log_alpha.to(anchor.dtype)[None, :]
    losses = torch.logsumexp(logits, dim=1) - logits.diagonal()
    return reduce_per_anchor(losses, reduction)


def leave_one_out_terms(scaled_sum: Tensor, log_alpha: Tensor, own: Tensor, own_sq_norm: Tensor, *,
                        tau: float, gamma: float) -> tuple[Tensor, Tensor]:
    """Leave-one-out on the terms: client n removes its own contribution (``own`` (B, d) to U,
    ``own_sq_norm`` (B,) to q) from S and log α computed over a group that includes it.

    With U = τS: ||U − z||² − (q − q_n) = (||U||² − q) − 2U·z + ||z||² + q_n, so
    S' = S − z/τ and log α' = log α + (γ/2)(2U·z − ||z||² − q_n).
    """
    _check_sum_inputs(own, scaled_sum, log_alpha)
    u = scaled_sum * tau
    own = own.to(scaled_sum.dtype)
    correction = 0.5 * gamma * (2 * (u * own).sum(dim=1) - (own * own).sum(dim=1)
                                - own_sq_norm.to(scaled_sum.dtype))
    return scaled_sum - own / tau, log_alpha + correction
