"""``protection: ckks`` on the server: replies computed on ciphertexts (DESIGN §4 table, §4.3).

The server holds only the public/evaluation context: it adds ciphertexts, scales them and
(with Galois keys) squares and rotates, but never decrypts. Per client n and batch:

* sum form: Enc(U^n) = Σ_{m∈Q_n} Enc(Z^m); with Galois keys Enc(S^n) = Enc(U^n)/τ and
  Enc(||U_k||² − q_k) (depth 1), else Enc(U^n) and Enc(q^n) for the client to finish;
* exact Muscle / pairwise: the selected peers' Enc(Z^m), routed unchanged.

A group's sum is computed once and shared by every client with the same Q_n.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmuscle_secure.crypto.ckks import PublicContext, add, scale, sq_norm_minus
from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.messages import (
    EncryptedPeers,
    EncryptedRepresentations,
    EncryptedSums,
    EncryptedSumTerms,
    Message,
)
from fedmuscle_secure.server.protection.base import Release, ReplyInputs, ServerProtection


@dataclass(frozen=True)
class CkksServerProtection(ServerProtection):
    """The public/evaluation context and the sum form's uniform τ (module docs)."""

    context: PublicContext
    tau: float           # uniform temperature of the sum form
    galois_keys: bool

    def release_types(self, method: str) -> tuple[type, ...]:
        return (EncryptedRepresentations,)

    def check_release(self, msg: Release, nb: int, rows: int, method: str, stage: str) -> None:
        """nb ciphertext matrices of B rows, plus nb squared-norm vectors for the sum form."""
        if not isinstance(msg, EncryptedRepresentations):
            super().check_release(msg, nb, rows, method, stage)
            return
        want_q = nb if method == "muscle_sum" else 0
        shapes = {enc.shape[0] for enc in (*msg.z, *msg.sq_norms)}
        if len(msg.z) != nb or len(msg.sq_norms) != want_q or shapes != {rows}:
            raise ProtocolError(msg.client, stage,
                                f"encrypted release must hold nb={nb} matrices of B="
                                f"{rows} rows and {want_q} squared-norm "
                                f"vectors; got {len(msg.z)} and {len(msg.sq_norms)}")

    def replies(self, inputs: ReplyInputs) -> list[Message]:
        """Every client's reply for one exchange; ``selections[b]`` is (N, M) indices into
        ``order``. A group's sums are computed once for every client with that group."""
        order, selections = inputs.order, inputs.selections
        out: list[Message] = []
        cache: dict[tuple[int, tuple[int, ...]], tuple] = {}
        for n, c in enumerate(order):
            peers = tuple(tuple(order[m] for m in sel[n].tolist()) for sel in selections)
            exchange = (c, inputs.round, inputs.epoch, inputs.batch, peers)
            if inputs.method != "muscle_sum":
                mats = tuple(tuple(inputs.releases[order[m]].z[b] for m in sel[n].tolist())
                             for b, sel in enumerate(selections))
                out.append(EncryptedPeers(*exchange, mats))
                continue
            first, second = [], []
            for b, sel in enumerate(selections):
                key = (b, tuple(sorted(sel[n].tolist())))
                if key not in cache:
                    cache[key] = self._group_sums(inputs.releases, [order[m] for m in key[1]], b)
                first.append(cache[key][0])
                second.append(cache[key][1])
            cls = EncryptedSumTerms if self.galois_keys else EncryptedSums
            out.append(cls(*exchange, tuple(first), tuple(second)))
        return out

    def _group_sums(self, releases: dict[str, Release], group: list[str], b: int) -> tuple:
        """Enc(S)/Enc(||U_k||² − q_k) of ``group`` at batch b with Galois keys, else Enc(U), Enc(q)."""
        u = add(self.context, [releases[m].z[b] for m in group])
        q = add(self.context, [releases[m].sq_norms[b] for m in group])
        if self.galois_keys:
            return scale(self.context, u, 1.0 / self.tau), sq_norm_minus(self.context, u, q)
        return u, q
