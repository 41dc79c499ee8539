"""``protection: ckks`` for the weight-sharing methods (DESIGN §2.7, §4.3): the means of the
shared parts from encrypted sums of the clients' updates.

Each round has one exchange per shared part, (0, k) for part k of the clients' layout: the
backbone (exchange (0, 0)), then, where the method averages it, the task head (exchange
(0, 1)). Every client sends Enc([clip(Δ), 1]) of the part
(:class:`~fedmuscle_secure.messages.EncryptedWeightUpdate`): its update since the round's
LocalUpdate started, L2-clipped to ``weight_sharing.update_clip``, and a count of 1 (every
client weighs 1, as under secagg). Once every active client has released (or sat the
exchange out), the server adds the ciphertexts of each configured averaging group
(:func:`~fedmuscle_secure.config_weights.averaging_groups`: the backbone over every client,
a task head over its task's clients) and sends the encrypted sum to each of the group's
members, naming them (:class:`~fedmuscle_secure.messages.EncryptedWeightSum`). It holds only
the public context and never decrypts; a client decrypts, divides by the count and applies
the mean update. A group with fewer than :data:`~fedmuscle_secure.config_weights.MIN_SUM_GROUP`
releasing members is not summed (its members keep their own weights for the part): every
client holds the secret key, so a sum over two would show each member the other's update.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmuscle_secure.config_weights import MIN_SUM_GROUP
from fedmuscle_secure.crypto.ckks import PublicContext, add, vector_layout
from fedmuscle_secure.errors import EncodingError, ProtocolError
from fedmuscle_secure.messages import (
    EncryptedWeightSum,
    EncryptedWeightUpdate,
    ExchangeAborted,
    Message,
)
from fedmuscle_secure.server.protection.base import Release, ServerProtection, WeightInputs


@dataclass(frozen=True)
class PartGroup:
    """One configured averaging group: part number ``part`` (named ``name``; its exchange is
    (0, part)) of ``length`` weights, over the clients ``members``."""

    part: int
    name: str
    members: tuple[str, ...]
    length: int


class CkksWeightProtection(ServerProtection):
    """Adds each group's encrypted updates (module docs)."""

    def __init__(self, context: PublicContext, groups: list[PartGroup]) -> None:
        self.context = context
        self.groups = list(groups)
        keys = [(g.part, c) for g in self.groups for c in g.members]
        if len(set(keys)) != len(keys):
            raise ValueError(f"a client in two groups of one part: {keys}")
        self._events: list[dict] = []

    @property
    def events(self) -> list[dict]:
        """Groups not summed for want of members, for ``events.jsonl``."""
        return self._events

    def release_types(self, method: str) -> tuple[type, ...]:
        return (EncryptedWeightUpdate,)

    def _group_of(self, part: int, client: str) -> PartGroup | None:
        return next((g for g in self.groups if g.part == part and client in g.members), None)

    def check_release(self, msg: Release, nb: int, rows: int, method: str, stage: str) -> None:
        """A part this client shares, at its exchange (0, part), of its group's length, in the
        layout that length gives: before a ciphertext is read."""
        if not isinstance(msg, EncryptedWeightUpdate):
            raise ProtocolError(msg.client, stage, f"a weight-sharing round under ckks takes "
                                f"EncryptedWeightUpdate releases, got {type(msg).__name__}")
        group = self._group_of(msg.batch, msg.client) if msg.epoch == 0 and \
            isinstance(msg.batch, int) else None
        if group is None or msg.part != group.name:
            known = sorted({(g.part, g.name) for g in self.groups if msg.client in g.members})
            raise ProtocolError(msg.client, stage, f"an encrypted update of part {msg.part!r} "
                                f"at exchange (epoch {msg.epoch}, batch {msg.batch}); "
                                f"{msg.client!r} shares (exchange batch, part) {known}")
        want = vector_layout(group.length + 1, self.context.params)
        layout = getattr(msg.update, "layout", None)
        if msg.length != group.length or layout != want \
                or len(getattr(msg.update, "ciphertexts", ())) != want.num_ciphertexts:
            raise ProtocolError(msg.client, stage, f"the encrypted update of part {msg.part!r} "
                                f"must hold its {group.length} weights and a count in "
                                f"{want.num_ciphertexts} ciphertexts ({want}); got length "
                                f"{msg.length!r} in {layout}")

    def weight_replies(self, inputs: WeightInputs) -> list[Message]:
        """Each group's encrypted sum to its releasing members; a group with fewer than
        :data:`MIN_SUM_GROUP` of them is told it was not summed."""
        i, part = inputs, inputs.batch
        assert isinstance(part, int)
        out: list[Message] = []
        for g in (g for g in self.groups if g.part == part):
            members = tuple(c for c in i.order if c in g.members)
            if not members:
                continue
            if len(members) < MIN_SUM_GROUP:
                reason = (f"only {len(members)} members of the {g.name!r} group {list(g.members)}"
                          f" released; an encrypted sum needs at least {MIN_SUM_GROUP} (every "
                          "client holds the secret key: a sum over two shows each member the "
                          "other's update); each keeps its own weights for the part")
                self._events.append({"event": "ckks_sum_skipped", "round": i.round,
                                     "epoch": i.epoch, "batch": part, "members": list(members),
                                     "reason": reason})
                out += [ExchangeAborted(c, i.round, i.epoch, part, reason) for c in members]
                continue
            total = self._sum(members, i.releases, part)
            out += [EncryptedWeightSum(c, i.round, i.epoch, part, (members,), g.name, g.length,
                                       total) for c in members]
        return out

    def _sum(self, members: tuple[str, ...], releases: dict[str, Release], part: int) -> object:
        """Σ of the members' ciphertexts; a ciphertext TenSEAL does not read as one of this
        context's (wrong size, scale or parameters) is a ProtocolError naming its sender."""
        try:
            return add(self.context, [releases[c].update for c in members])
        except EncodingError:
            for c in members:  # which one: each alone
                try:
                    add(self.context, [releases[c].update])
                except EncodingError as exc:
                    raise ProtocolError(c, "collecting", f"its encrypted update of part {part} "
                                        f"is not a ciphertext of this federation: {exc}") from None
            raise
