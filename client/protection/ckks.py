"""``protection: ckks`` on the client (DESIGN §4.3): encrypt releases, open replies.

The client holds the federation's secret context. :meth:`CkksClientProtection.protect` encrypts a
privatized release (after clip → noise: the pipeline's last step) into an
:class:`EncryptedRepresentations`; :meth:`CkksClientProtection.open` decrypts the server's reply into
the plaintext message the contrastive step already understands (S and log α for the sum
form, or the peers' matrices from which the client forms S^n and log α^n itself for the
exact loss), so the loss code is the same in every mode.

Weight sharing (DESIGN §2.7): :meth:`CkksClientProtection.seal_weights` encrypts
[clip(Δ), 1] of one shared part; :meth:`CkksClientProtection.open` decrypts the group's sum,
checks that its count is the number of members the server names, and divides by it:
the mean update the weight phase adds to the weights the round started from, after
:meth:`CkksClientProtection.check_mean_update`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from fedmuscle_secure.client.protection.base import ClientProtection
from fedmuscle_secure.client.weight_phase import clip_update
from fedmuscle_secure.config_weights import MIN_SUM_GROUP
from fedmuscle_secure.crypto.ckks import (
    SecretContext,
    decrypt_matrix,
    decrypt_row_values,
    decrypt_vector,
    encrypt_matrix,
    encrypt_row_values,
    encrypt_vector,
    update_sum_error_bound,
    vector_layout,
)
from fedmuscle_secure.crypto.secagg.sum_encoding import mean_update_bound
from fedmuscle_secure.errors import EncodingError, ProtocolError
from fedmuscle_secure.losses import server_side_terms
from fedmuscle_secure.messages import (
    EncryptedPeers,
    EncryptedRepresentations,
    EncryptedSums,
    EncryptedSumTerms,
    EncryptedWeightSum,
    EncryptedWeightUpdate,
    Message,
    PeerSums,
    PeerTerms,
    SumTerms,
    WeightAverage,
)

SERVER = "server"


class CkksClientProtection(ClientProtection):
    """The federation's secret context and the pair matrices for opening exact replies."""

    reply_types = (EncryptedSumTerms, EncryptedSums, EncryptedPeers, EncryptedWeightSum)
    weight_parts = True

    def __init__(self, name: str, context: SecretContext, *, method: str, clients: list[str],
                 tau: torch.Tensor, gamma: torch.Tensor, gamma_uniform: float | None = None,
                 groups: Mapping[str, tuple[str, ...]] | None = None,
                 update_clip: float | None = None) -> None:
        """``tau``/``gamma``: (N, N) pair matrices in ``clients`` order (the config's);
        ``gamma_uniform``: the sum form's uniform γ (default: the matrices' off-diagonal).
        Weight sharing: ``groups``, each shared part's configured averaging group (every
        client, or this client's task's clients), and ``update_clip``, the L2 bound of one
        part's update (``weight_sharing.update_clip``)."""
        self.name = name
        self.context = context
        self.method = method
        self.index = {c: i for i, c in enumerate(clients)}
        self.tau = tau.to(torch.float64)
        self.gamma = gamma.to(torch.float64)
        self.gamma_uniform = float(gamma[0, 1]) if gamma_uniform is None else gamma_uniform
        self.groups = dict(groups or {})
        self.update_clip = update_clip
        self._sealed: tuple[int, int, str, int] | None = None  # (round, k, part, length) out
        self.clipped_updates = 0             # updates cut to update_clip, over the run
        self._reported = 0                   # clipped_updates at the last report

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

    def open(self, reply: Message) -> SumTerms | PeerSums | PeerTerms | WeightAverage:
        """Decrypt ``reply`` into the plaintext message of the same exchange (module docs)."""
        if isinstance(reply, EncryptedWeightSum):
            return self._open_weight_sum(reply)
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

    # -- weight sharing (DESIGN §2.7) ------------------------------------------------------
    def seal_weights(self, r: int, k: int, part: str,
                     update: torch.Tensor) -> tuple[EncryptedWeightUpdate, dict[str, object]]:
        """Enc([clip(Δ), 1]) of part ``part`` (exchange (0, ``k``)): every client weighs 1,
        as under secagg (a private weight inside the sums would follow from two sums whose
        groups differ by one client)."""
        if part not in self.groups or self.update_clip is None:
            raise ProtocolError(self.name, "release", f"{self.name!r} does not share weight part "
                                f"{part!r} under ckks")
        delta, clipped = clip_update(self.name, part, update, self.update_clip, "release")
        length = int(delta.numel())
        enc = encrypt_vector(self.context, torch.cat([delta, delta.new_ones(1)]))
        self.clipped_updates += int(clipped)
        self._sealed = (r, k, part, length)
        return (EncryptedWeightUpdate(self.name, r, 0, k, part, length, enc),
                {"part": part, "protection": "ckks", "update_norm_clipped": clipped,
                 "server_learns": "ciphertexts only"})

    def _slot_error(self, members: int) -> float:
        """The most one decrypted slot of a sum over ``members`` fresh encryptions of
        values at most ``update_clip`` in magnitude differs from the exact sum
        (:func:`~fedmuscle_secure.crypto.ckks.update_sum_error_bound`)."""
        assert self.update_clip is not None
        return update_sum_error_bound(self.context.params, members, self.update_clip)

    def _open_weight_sum(self, reply: EncryptedWeightSum) -> WeightAverage:
        """The group's mean update from its encrypted sum: only the sum of the part this
        client released last, in that part's layout, over members of its configured group;
        its decrypted count must be the number of members named (a single member's
        ciphertext passed off as a sum counts 1). The count is then known exactly (the config
        keeps CKKS's error on it below 1/4: ``federation.ckks.COUNT_MARGIN``) and the sum
        divided by it. No decrypted value appears in an error: it would leave the client."""
        sealed = self._sealed
        want = (reply.round, reply.batch, reply.part, reply.length)
        if sealed is None or sealed != want:
            raise ProtocolError(SERVER, "reply", f"an encrypted weight sum (round {reply.round}, "
                                f"part {reply.part!r} at batch {reply.batch}, length "
                                f"{reply.length}) while {self.name!r} has "
                                + ("no release out" if sealed is None else
                                   f"part {sealed[2]!r} of round {sealed[0]} (batch {sealed[1]},"
                                   f" length {sealed[3]}) out"))
        layout = getattr(reply.total, "layout", None)
        if layout != vector_layout(reply.length + 1, self.context.params):
            raise ProtocolError(SERVER, "reply", f"the encrypted sum of part {reply.part!r} has "
                                f"layout {layout}, not that of its {reply.length} weights and "
                                "a count")
        peers = reply.peers[0] if len(reply.peers) == 1 else ()
        try:
            total = decrypt_vector(self.context, reply.total, reply.length + 1)
        except EncodingError as exc:
            raise ProtocolError(SERVER, "reply", f"the encrypted sum of part {reply.part!r} "
                                f"is not a ciphertext of this federation: {exc}") from None
        count, members = float(total[-1]), len(peers)
        if not (members >= 1 and round(count) == members
                and abs(count - members) <= self._slot_error(members)):
            # no decrypted value in the message: it would leave the client in logs
            raise ProtocolError(SERVER, "reply", f"the encrypted sum of part {reply.part!r} "
                                f"does not count the {members} members it names {list(peers)}: "
                                "not a sum over them (one member's ciphertext passed off as a "
                                "sum, or a member's malformed input); refusing it")
        mean = (total[:-1] / members).float().contiguous()
        return WeightAverage(reply.client, reply.round, reply.epoch, reply.batch, reply.peers,
                             mean)

    def check_mean_update(self, part: str, mean: torch.Tensor,
                          peers: tuple[str, ...]) -> None:
        """A mean update comes from a sum over distinct members of this part's configured
        group, at least :data:`MIN_SUM_GROUP` of them, this client among them (every client
        holds the secret key: a sum over two would show each the other's update); and a mean
        of updates clipped to ``update_clip`` has at most that norm, plus CKKS's error: at
        most :meth:`_slot_error` per slot of the sum, so √length times that over the members'
        count per coordinate of the mean."""
        group = self.groups.get(part, ())
        if self.name not in peers or not set(peers) <= set(group) \
                or len(set(peers)) != len(peers) or len(peers) < MIN_SUM_GROUP:
            raise ProtocolError(SERVER, "reply", f"a mean update of part {part!r} over "
                                f"{list(peers)}: it must be a sum over at least {MIN_SUM_GROUP} "
                                f"distinct members of the part's group {list(group)}, "
                                f"{self.name!r} included")
        assert self.update_clip is not None
        norm = float(mean.double().norm())
        bound = mean_update_bound(self.update_clip) \
            + math.sqrt(mean.numel()) * self._slot_error(len(peers)) / len(peers)
        if not norm <= bound:
            raise ProtocolError(SERVER, "reply", f"the mean update of part {part!r} is above "
                                f"weight_sharing.update_clip = {self.update_clip:g} (with "
                                f"CKKS's error, {bound:.6g}): no mean of clipped updates is "
                                "(a forged sum, or a member's malformed input); refusing it")

    def exchange_over(self) -> None:
        self._sealed = None

    def round_metrics(self) -> dict[str, float]:
        """Updates clipped since the last report (weight sharing)."""
        if not self.groups:
            return {}
        clipped, self._reported = self.clipped_updates - self._reported, self.clipped_updates
        return {"clipped_updates": float(clipped)}
