"""Pairwise InfoNCE alignment, the "pairwise" baseline (DESIGN §2.3).

Σ_k InfoNCE(anchor, Z^{m_k}, τ_k), one direction (anchor against peer):

    InfoNCE_i = logsumexp_a (z_i^n · z_a^{m_k} / τ_k) − z_i^n · z_i^{m_k} / τ_k

It is exactly the Muscle loss with γ = 0 (τ' = τ, DESIGN §2.1), which the tests check.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedmuscle_secure.losses.muscle import check_reduction, reduce_per_anchor
from fedmuscle_secure.losses.temperatures import check_positive

__all__ = ["pairwise_infonce_loss"]


def pairwise_infonce_loss(
    anchor: Tensor, peers: Tensor, tau: Tensor, *, reduction: str = "mean"
) -> Tensor:
    """Sum over the M peers of one-directional InfoNCE losses, per anchor then reduced.

    ``anchor`` (B, d), ``peers`` (M, B, d), ``tau`` (M,) positive temperatures.
    """
    check_reduction(reduction)
    if anchor.dim() != 2:
        raise ValueError(f"anchor: expected shape (B, d), got {tuple(anchor.shape)}")
    b, d = anchor.shape
    if peers.dim() != 3 or peers.shape[0] < 1 or peers.shape[1:] != (b, d):
        raise ValueError(
            f"peers: expected shape (M, {b}, {d}) with M >= 1, got {tuple(peers.shape)}"
        )
    m = peers.shape[0]
    tau = torch.as_tensor(tau, device=anchor.device)
    if tuple(tau.shape) != (m,):
        raise ValueError(f"tau: expected shape ({m},), got {tuple(tau.shape)}")
    check_positive(tau, "temperature")
    logits = torch.matmul(anchor, peers.transpose(1, 2)) / tau.to(anchor.dtype)[:, None, None]
    per_peer = torch.logsumexp(logits, dim=2) - logits.diagonal(dim1=1, dim2=2)  # (M, B)
    return reduce_per_anchor(per_peer.sum(dim=0), reduction)
