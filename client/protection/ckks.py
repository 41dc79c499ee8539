"""``protection: ckks`` on the client (DESIGN §4.3): encrypt releases, open replies.

The client holds the federation's secret context. :meth:`CkksClientProtection.protect` encrypts a
privatized release (after clip → noise: the pipeline's last step) into an
:class:`EncryptedRepresentations`; :meth:`CkksClientProtection.open` decrypts the server's reply into
the plaintext message the contrastive step already understands (S and log α for the sum
form, or the peers' matrices from which the client forms S^n and log α^n itself for the
exact loss), so the loss code is the same in every mode.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedmuscle_secure.client.protection.base import ClientProtection
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
    Message,
    PeerSums,
    PeerTerms,
    SumTerms,
)


class CkksClientProtection(ClientProtection):
    """The federation's secret context and the pair matrices for opening exact replies."""

    reply_types = (EncryptedSumTerms, EncryptedSums, EncryptedPeers)

    def __init__(self, name: str, context: SecretContext, *, method: str, clients: list[str],
                 tau: torch.Tensor, gamma: torch.Tensor, gamma_uniform: float | None = None,
                 ) -> None:
        """``tau``/``gamma``: (N, N) pair matrices in ``clients`` order (the config's);
        ``gamma_uniform``: the sum form's uniform γ (default: the matrices' off-diagonal)."""
        self.name = name
        self.context = context
        self.method = method
        self.index = {c: i for i, c in enumerate(clients)}
        self.tau = tau.to(torch.float64)
        self.gamma = gamma.to(torch.float64)
        self.gamma_uniform = float(gamma[0, 1]) if gamma_uniform is None else gamma_uniform

    def protect(self, round_: int, epoch: int, batch: int | None, z: torch.Tensor) -> EncryptedRepresentations:
        """Enc(Z) per batch, and Enc(q) with q_k = ||z_k||² for the sum form."""
        zd = z.to(torch.float64)
        mats = tuple(encrypt_matrix(self.context, zd[b]) for b in range(zd.shape[0]))
        sq = ()
        if self.method == "muscle_sum":
            sq = tuple(encrypt_row_values(self.context, (zd[b] * zd[b]).sum(-1), cols=zd.shape[-1])
                       for b in range(zd.shape[0]))
        return EncryptedRepresentations(self.name, round_, epoch, batch, mats, sq)

    def seal(self, r: int, epoch: int, batch: int | None) -> Callable[[torch.Tensor], object]:
        return lambda z: self.protect(r, epoch, batch, z)

    def release_message(self, name: str, r: int, epoch: int, batch: int | None, out: object,
                        *, outputs: bool) -> tuple[Message, None]:
        """The sealed release is the message; the sum form under ckks excludes the client,
        so there is nothing for leave-one-out."""
        assert isinstance(out, EncryptedRepresentations)
        return out, None

    def open(self, reply: Message) -> SumTerms | PeerSums | PeerTerms:
        """Decrypt ``reply`` into the plaintext message of the same exchange (module docs)."""
        assert isinstance(reply, (EncryptedSumTerms, EncryptedSums, EncryptedPeers))
        ctx = self.context
        if isinstance(reply, EncryptedSumTerms):
            s = torch.stack([decrypt_matrix(ctx, e) for e in reply.scaled_sum])
            r = torch.stack([decrypt_row_values(ctx, e) for e in reply.sq_norm_minus])
            group = tuple(sorted(set().union(*reply.peers)))
            return SumTerms(reply.client, reply.round, reply.epoch, reply.batch, group, s,
                            -0.5 * self.gamma_uniform * r, includes_self=False)
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
