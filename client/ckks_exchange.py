"""A client's side of ``protection: ckks`` (DESIGN §4.3): encrypt releases, open replies.

The client holds the federation's secret context. :meth:`CkksClient.protect` encrypts a
privatized release (after clip → noise: the pipeline's last step) into an
:class:`EncryptedRepresentations`; :meth:`CkksClient.open` decrypts the server's reply into
the plaintext message the contrastive step already understands (S and log α for the sum
form, or the peers' matrices from which the client forms S^n and log α^n itself for the
exact loss), so the loss code is the same in every mode.
"""

from __future__ import annotations

import torch
from fedmuscle_secure.crypto.ckks import (
    SecretContext,
    decrypt_matrix,
    decrypt_row_values,
    encrypt_matrix,
    encrypt_row_values,
)

from fedmuscle_secure.losses import server_side_terms
from fedmuscle_secure.messages import (
    EncryptedPeers,
    EncryptedRepresentations,
    EncryptedSums,
    EncryptedSumTerms,
    PeerSums,
    PeerTerms,
    SumTerms,
)


class CkksClient:
    def __init__(self, name: str, context: SecretContext, *, method: str, clients: list[str],
                 tau: torch.Tensor, gamma: torch.Tensor) -> None:
        """``tau``/``gamma``: (N, N) pair matrices in ``clients`` order (the config's)."""
        self.name = name
        self.context = context
        self.method = method
        self.index = {c: i for i, c in enumerate(clients)}
        self.tau = tau.to(torch.float64)
        self.gamma = gamma.to(torch.float64)

    def protect(self, round_: int, epoch: int, batch: int | None, z: torch.Tensor) -> EncryptedRepresentations:
        """Enc(Z) per batch, and Enc(q) with q_k = ||z_k||² for the sum form."""
        zd = z.to(torch.float64)
        mats = tuple(encrypt_matrix(self.context, zd[b]) for b in range(zd.shape[0]))
        sq = ()
        if self.method == "muscle_sum":
            sq = tuple(encrypt_row_values(self.context, (zd[b] * zd[b]).sum(-1), cols=zd.shape[-1])
                       for b in range(zd.shape[0]))
        return EncryptedRepresentations(self.name, round_, epoch, batch, mats, sq)

    def open(self, reply: EncryptedSumTerms | EncryptedSums | EncryptedPeers, *,
             gamma_uniform: float) -> SumTerms | PeerSums | PeerTerms:
        ctx = self.context
        if isinstance(reply, EncryptedSumTerms):
            s = torch.stack([decrypt_matrix(ctx, e) for e in reply.scaled_sum])
            r = torch.stack([decrypt_row_values(ctx, e) for e in reply.sq_norm_minus])
            group = tuple(sorted(set().union(*reply.peers)))
            return SumTerms(reply.client, reply.round, reply.epoch, reply.batch, group, s,
                            -0.5 * gamma_uniform * r, includes_self=False)
        if isinstance(reply, EncryptedSums):
            u = torch.stack([decrypt_matrix(ctx, e) for e in reply.peer_sum])
            q = torch.stack([decrypt_row_values(ctx, e) for e in reply.peer_sq_norm_sum])
            return PeerSums(reply.client, reply.round, reply.epoch, reply.batch, reply.peers,
                            u.float(), q.float(), includes_self=False)
        scaled, alphas = [], []
        me = self.index[self.name]
        for b, mats in enumerate(reply.matrices):
            peers = torch.stack([decrypt_matrix(ctx, e) for e in mats])  # (M, B, d)
            idx = torch.tensor([self.index[p] for p in reply.peers[b]])
            s, la = server_side_terms(peers, self.tau[me, idx], self.gamma[idx][:, idx])
            scaled.append(s)
            alphas.append(la if self.method == "muscle" else la[:0])
        return PeerTerms(reply.client, reply.round, reply.epoch, reply.batch, reply.peers,
                         torch.stack(scaled).float(), torch.stack(alphas).float())
