"""``protection: plain`` on the server (DESIGN §3): the math on the releases themselves.

Each client's release arrives as one message; once every active client's release of an
exchange is in, every client's reply is computed in batched torch
(:mod:`fedmuscle_secure.server.computation`, :func:`~fedmuscle_secure.baselines.fedhenn.peer_kernels`).
"""

from __future__ import annotations

import torch

from fedmuscle_secure.baselines.fedhenn import peer_kernels
from fedmuscle_secure.messages import (
    Message,
    PeerKernel,
    PeerSums,
    PeerTerms,
    Representations,
    TaskOutputs,
    WeightRelease,
)
from fedmuscle_secure.methods import OUTPUT_RELEASING, WEIGHT_SHARING
from fedmuscle_secure.server.computation import membership_matrix, peer_sums, peer_terms
from fedmuscle_secure.server.protection.base import ReplyInputs, ServerProtection


class PlainServerProtection(ServerProtection):
    """No protection: representations (or, for cofed/feddf, task outputs) in the clear."""

    def release_types(self, method: str) -> tuple[type, ...]:
        if method in WEIGHT_SHARING:
            return (WeightRelease,)
        return (TaskOutputs,) if method in OUTPUT_RELEASING else (Representations,)

    def replies(self, inputs: ReplyInputs) -> list[Message]:
        per_batch = self._per_batch(inputs)
        out: list[Message] = []
        for n, c in enumerate(inputs.order):
            exchange = (c, inputs.round, inputs.epoch, inputs.batch,
                        tuple(tuple(inputs.order[m] for m in sel[n].tolist())
                              for sel in inputs.selections))
            if inputs.method == "fedhenn":
                out.append(PeerKernel(*exchange, torch.stack([pb[n] for pb in per_batch])))
            elif inputs.method == "muscle_sum":
                u = torch.stack([pb[0][n] for pb in per_batch])
                q = torch.stack([pb[1][n] for pb in per_batch])
                out.append(PeerSums(*exchange, u, q, includes_self=False))
            else:
                sp = torch.stack([pb.scaled_peers[n] for pb in per_batch])
                la = torch.stack([pb.log_alpha_pairs[n] for pb in per_batch])
                out.append(PeerTerms(*exchange, sp, la))
        return out

    @staticmethod
    def _per_batch(inputs: ReplyInputs) -> list:
        """The method's batched math for each batch of the exchange (DESIGN §3)."""
        z = torch.stack([inputs.releases[c].z for c in inputs.order], dim=0)  # (N, nb, B, d)
        method, dev, n = inputs.method, inputs.device, len(inputs.order)
        out = []
        for b, sel in enumerate(inputs.selections):
            if method == "fedhenn":
                out.append(peer_kernels(z[:, b], sel, device=dev))
            elif method == "muscle_sum":
                out.append(peer_sums(z[:, b], membership_matrix(sel, n), device=dev))
            else:
                out.append(peer_terms(z[:, b], sel, inputs.inv_tau, inputs.gamma, device=dev,
                                      with_alpha=method == "muscle"))
        return out
