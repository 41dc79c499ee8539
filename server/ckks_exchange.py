"""The server's replies under ``protection: ckks`` (DESIGN §4 table, §4.3).

The server holds only the public/evaluation context: it adds ciphertexts, scales them and
(with Galois keys) squares and rotates, but never decrypts. Per client n and batch:

* sum form: Enc(U^n) = Σ_{m∈Q_n} Enc(Z^m); with Galois keys Enc(S^n) = Enc(U^n)/τ and
  Enc(||U_k||² − q_k) (depth 1), else Enc(U^n) and Enc(q^n) for the client to finish;
* exact Muscle / pairwise: the selected peers' Enc(Z^m), routed unchanged.

A group's sum is computed once and shared by every client with the same Q_n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from fedmuscle_secure.crypto.ckks import PublicContext, add, scale, sq_norm_minus

from fedmuscle_secure.messages import (
    EncryptedPeers,
    EncryptedRepresentations,
    EncryptedSums,
    EncryptedSumTerms,
    Message,
)


@dataclass(frozen=True)
class CkksServerSide:
    context: PublicContext
    tau: float           # uniform temperature of the sum form
    galois_keys: bool


def ckks_replies(ckks: CkksServerSide, method: str, r: int, epoch: int, batch: int | None,
                 order: list[str], pending: dict[str, EncryptedRepresentations],
                 selections: list[torch.Tensor]) -> list[Message]:
    """Every client's reply for one exchange; ``selections[b]`` is (N, M) indices into ``order``."""
    nb = len(selections)
    out: list[Message] = []
    cache: dict[tuple[int, tuple[int, ...]], tuple] = {}
    for n, c in enumerate(order):
        groups = [tuple(sorted(sel[n].tolist())) for sel in selections]
        peers = tuple(tuple(order[m] for m in sel[n].tolist()) for sel in selections)
        if method != "muscle_sum":
            mats = tuple(tuple(pending[order[m]].z[b] for m in selections[b][n].tolist())
                         for b in range(nb))
            out.append(EncryptedPeers(c, r, epoch, batch, peers, mats))
            continue
        first, second = [], []
        for b in range(nb):
            key = (b, groups[b])
            if key not in cache:
                u = add(ckks.context, [pending[order[m]].z[b] for m in groups[b]])
                q = add(ckks.context, [pending[order[m]].sq_norms[b] for m in groups[b]])
                if ckks.galois_keys:
                    cache[key] = (scale(ckks.context, u, 1.0 / ckks.tau), sq_norm_minus(ckks.context, u, q))
                else:
                    cache[key] = (u, q)
            first.append(cache[key][0])
            second.append(cache[key][1])
        cls = EncryptedSumTerms if ckks.galois_keys else EncryptedSums
        out.append(cls(c, r, epoch, batch, peers, tuple(first), tuple(second)))
    return out
