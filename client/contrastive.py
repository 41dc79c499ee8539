"""The client's side of the contrastive phase: the loss from the server's reply.

The client builds its logits from what the server returned (S^n and log α^n, or the sums
U and q) and its own anchor Z^n, which never has to pass through the server's math
(DESIGN §2.1: "the client computes the logits itself").
"""

from __future__ import annotations

import torch

from fedmuscle_secure.baselines.fedhenn import fedhenn_loss
from fedmuscle_secure.baselines.gram import gram_loss
from fedmuscle_secure.losses import (
    leave_one_out,
    leave_one_out_terms,
    muscle_loss_from_server,
    muscle_sum_loss,
    muscle_sum_loss_from_terms,
    pairwise_infonce_loss,
)
from fedmuscle_secure.messages import PeerKernel, PeerSums, PeerTerms, SumTerms


def contrastive_loss(method: str, anchor: torch.Tensor,
                     reply: PeerTerms | PeerSums | SumTerms | PeerKernel,
                     index: int, *, tau: float, gamma: float, released: torch.Tensor,
                     released_sq_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss over the batch's anchors for the server's reply at batch ``index``.

    ``tau``/``gamma`` are used by the sum form only (uniform temperature, §2.2); the exact
    and pairwise forms receive S^n already scaled by 1/τ_{n,m}. ``released`` is the (B, d)
    matrix this client sent for the batch: what leave-one-out must subtract from a sum
    that includes the client itself (under ``secagg`` with its q contribution
    ``released_sq_norm``, (B,)).
    """
    if isinstance(reply, SumTerms):
        s, la = reply.scaled_sum[index], reply.log_alpha[index]
        if reply.includes_self:
            assert released_sq_norm is not None
            s, la = leave_one_out_terms(s, la, released, released_sq_norm, tau=tau, gamma=gamma)
        return muscle_sum_loss_from_terms(anchor, s, la)
    if method == "muscle":
        assert isinstance(reply, PeerTerms)
        return muscle_loss_from_server(anchor, reply.scaled_peers[index],
                                       reply.log_alpha_pairs[index])
    if method == "pairwise":
        assert isinstance(reply, PeerTerms)
        s = reply.scaled_peers[index]
        return pairwise_infonce_loss(anchor, s, torch.ones(s.shape[0], dtype=s.dtype))
    if method == "gram":  # DESIGN §2.3: S^n rows re-normalised, uniform τ
        assert isinstance(reply, PeerTerms)
        return gram_loss(anchor, reply.scaled_peers[index], tau)
    if method == "fedhenn":
        assert isinstance(reply, PeerKernel)
        return fedhenn_loss(anchor, reply.kernel[index])
    if method == "muscle_sum":
        assert isinstance(reply, PeerSums)
        u, q = reply.peer_sum[index], reply.peer_sq_norm_sum[index]
        if reply.includes_self:
            u, q = leave_one_out(u, q, released)
        return muscle_sum_loss(anchor, u, q, tau=tau, gamma=gamma)
    raise ValueError(f"no contrastive loss for method {method!r}")
