"""``protection: secagg`` on the client: its side of each secure sum (DESIGN §4.2, §5.1).

Owned by :class:`~fedmuscle_secure.client.state.FedMuscleClient`; one pipeline owns the
order clip → noise share → encode → mask: :meth:`SecAggClientProtection.begin` takes the
batch's representations, privatizes and encodes them, and starts a fresh
:class:`SecAggClient` (new keys and seed) for the instance; :meth:`handle` forwards the
later stages. The release is recorded in the ledger when the masked input is produced,
the point from which the server can learn a sum that contains it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedmuscle_secure.client.privacy import collusion_allowance
from fedmuscle_secure.client.protection.base import ClientProtection
from fedmuscle_secure.client.weight_phase import clip_update
from fedmuscle_secure.crypto.secagg.client import SecAggClient
from fedmuscle_secure.crypto.secagg.messages import (
    MaskedInput,
    SecAggSetup,
    exchange_label,
    min_group,
)
from fedmuscle_secure.crypto.secagg.sum_encoding import SumEncoding
from fedmuscle_secure.dp.noise import clip_rows
from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.messages import Message, SecAggEnvelope, SumTerms, WeightAverage

if TYPE_CHECKING:
    from fedmuscle_secure.client.privacy import ClientPrivacy

SERVER = "server"


@dataclass(frozen=True)
class OwnContribution:
    """What this client put into the group sum (decoded), for leave-one-out."""

    z: torch.Tensor        # (nb, B, d) float64
    sq_norm: torch.Tensor  # (nb, B) float64


class SecAggParams(Protocol):
    """The public secagg parameters a client derives from the config (DESIGN §4.2)."""

    threshold: int
    t_collude: int

    @property
    def expected_sq_norm(self) -> float: ...

    def encoding(self, batches: int, group_size: int) -> SumEncoding: ...

    def weight_encoding(self, length: int, group_size: int) -> SumEncoding: ...

    def group_threshold(self, group_size: int) -> int: ...

    @property
    def update_clip(self) -> float: ...

    def mean_update_bound(self, length: int, members: int) -> float: ...


class SecAggClientProtection(ClientProtection):
    """One secure sum per exchange; the server opens each with a setup (module docs)."""

    server_opens_exchange = True
    weight_parts = True
    reply_types = (SumTerms, WeightAverage)
    stage_types = (SecAggEnvelope,)

    def __init__(self, name: str, identity: Ed25519PrivateKey,
                 peer_identities: Mapping[str, Ed25519PublicKey], params: SecAggParams,
                 privacy: ClientPrivacy | None,
                 groups: Mapping[str, tuple[str, ...]] | None = None) -> None:
        """``groups``: weight sharing (DESIGN §2.7), each shared part's configured averaging
        group (every client, or this client's task's clients)."""
        self.name = name
        self.groups = dict(groups or {})
        self._identity = identity
        self._peers = dict(peer_identities)
        self.params = params
        self.privacy = privacy
        self._seen: set[bytes] = set()       # instance ids: a replayed setup is refused
        self.instance: SecAggClient | None = None
        self._event = None
        self._clipped = 0
        self.masked_sent = False
        self.clipped_values = 0              # over the run, reported in the ledger per release
        self.aborted_count = 0               # exchanges that ended without a sum
        self._own: OwnContribution | None = None
        self._egress: dict = {}              # what the ledger says of the release in flight
        self.clipped_updates = 0             # weight sharing: updates cut to update_clip
        self._reported = (0, 0, 0)           # (aborted, clipped, clipped updates) at the last report

    # -- the state machine's hooks (ClientProtection) ------------------------------------
    @property
    def in_progress(self) -> bool:
        return self.instance is not None

    def is_setup(self, msg: Message) -> bool:
        """A setup carries the instance's encoding; the later stages do not."""
        assert isinstance(msg, SecAggEnvelope)
        return msg.encoding is not None

    def step(self, msg: Message) -> tuple[Message, bool]:
        assert isinstance(msg, SecAggEnvelope)
        reply = self.handle(msg)
        return reply, isinstance(reply.body, MaskedInput)  # the masked input is the release

    def aborted(self, recorded: bool) -> bool:
        """Count the abort; the release left if the masked input was sent."""
        self.aborted_count += 1
        return self.masked_sent

    def own_sq_norm(self, index: int) -> torch.Tensor | None:
        return self._own.sq_norm[index] if self._own is not None else None

    def exchange_over(self) -> None:
        self.end()

    def round_metrics(self) -> dict[str, float]:
        """Exchanges aborted and coordinates clipped since the last report."""
        aborted, clipped, updates = self._reported
        self._reported = (self.aborted_count, self.clipped_values, self.clipped_updates)
        out = {"secagg_aborted": float(self.aborted_count - aborted),
               "clipped_values": float(self.clipped_values - clipped)}
        if self.groups:
            out["clipped_updates"] = float(self.clipped_updates - updates)
        return out

    # -- one secure sum -------------------------------------------------------------------
    def begin(self, env: Message, z: torch.Tensor) -> tuple[SecAggEnvelope, torch.Tensor]:
        """Start the instance of ``env`` (a setup) with representations ``z`` (nb, B, d);
        returns the advertisement and the own contribution (decoded) for leave-one-out."""
        assert isinstance(env, SecAggEnvelope)
        setup = env.body
        if not isinstance(setup, SecAggSetup):
            raise ProtocolError(SERVER, "setup", f"expected a SecAggSetup to open the secure "
                                f"sum, got {type(setup).__name__}")
        nb = int(z.shape[0])
        expected = self.params.encoding(nb, len(setup.participants))
        if env.encoding != expected or setup.threshold != self.params.threshold:
            raise ProtocolError(SERVER, "setup", f"the server's encoding {env.encoding} or threshold "
                                f"{setup.threshold} differ from this client's {expected}, t="
                                f"{self.params.threshold} (configs out of sync?)")
        ex = (env.epoch, env.batch)
        if self.privacy is not None:  # may raise PrivacyBudgetExceeded (refusal recorded)
            z, self._event = self.privacy.secagg_release(
                env.round, ex, z, threshold=self.params.threshold, t_collude=self.params.t_collude)
        else:
            z, self._event = clip_rows(z, 1.0)[0], None
        z = z.to(torch.float64)
        if self._event is not None:  # public expectation: the realised norms are not accounted
            q = torch.full(z.shape[:2], self.params.expected_sq_norm, dtype=torch.float64)
        else:
            q = (z * z).sum(-1)
        vector, self._clipped = expected.encode(z, q)
        self.clipped_values += self._clipped
        own_z, own_q = expected.decode(vector)
        self.instance = SecAggClient(self.name, self._identity, self._peers, setup, vector,
                                     seen_instances=self._seen,
                                     label=exchange_label(env.round, env.epoch, env.batch))
        self.masked_sent = False
        self._own = OwnContribution(own_z, own_q)
        self._egress = {}
        return self._wrap(env, self.instance.advertise()), own_z

    def begin_weights(self, env: Message, part: str, update: torch.Tensor) -> SecAggEnvelope:
        """Start the instance of ``env`` (a setup) for weight part ``part`` (DESIGN §2.7):
        this client's ``update`` of the part, L2-clipped to ``update_clip``, goes in as
        ``[Δ, 1]`` (every client weighs 1: a private weight inside the sums would follow
        from two sums whose groups differ by one client). The setup must be the part's: its
        encoding, its group's threshold, members of its configured group only."""
        assert isinstance(env, SecAggEnvelope)
        setup = env.body
        if not isinstance(setup, SecAggSetup):
            raise ProtocolError(SERVER, "setup", f"expected a SecAggSetup to open the secure sum "
                                f"of part {part!r}, got {type(setup).__name__}")
        group = self.groups.get(part)
        if group is None:
            raise ProtocolError(SERVER, "setup", f"a secure sum for weight part {part!r}, which "
                                f"{self.name!r} does not share")
        expected = self.params.weight_encoding(int(update.numel()), len(setup.participants))
        t = self.params.group_threshold(len(group))
        if env.encoding != expected or setup.threshold != t:
            raise ProtocolError(SERVER, "setup", f"the server's encoding {env.encoding} or threshold "
                                f"{setup.threshold} for part {part!r} differ from this client's "
                                f"{expected}, t={t} (configs out of sync?)")
        outside = sorted(set(setup.participants) - set(group))
        if outside:
            raise ProtocolError(SERVER, "setup", f"the secure sum of part {part!r} lists "
                                f"{outside}, outside the part's group {list(group)}")
        event = None
        if self.privacy is not None and self.privacy.noises_updates:  # its share (§5.1)
            delta, event = self.privacy.secagg_update_share(
                env.round, (env.epoch, env.batch), part, update, threshold=t,
                t_collude=self.params.t_collude)
            clipped = False  # counted by the privacy officer, never in the ledger
        else:
            delta, clipped = clip_update(self.name, part, update, self.params.update_clip,
                                         "setup")
        vector, values = expected.encode(delta.view(1, 1, -1),
                                         torch.ones((1, 1), dtype=torch.float64))
        self.instance = SecAggClient(self.name, self._identity, self._peers, setup, vector,
                                     seen_instances=self._seen,
                                     label=exchange_label(env.round, env.epoch, env.batch))
        self._clipped = values  # counted once the setup is accepted
        self.clipped_values += values
        self.clipped_updates += int(clipped)
        self.masked_sent, self._event, self._own = False, event, None
        self._egress = {"content": "weights", "part": part, "samples": 1}
        if event is None:  # with update noise, whether Δ was cut is data without noise
            self._egress["update_norm_clipped"] = clipped
        return self._wrap(env, self.instance.advertise())

    def check_mean_update(self, part: str, mean: torch.Tensor,
                          peers: tuple[str, ...]) -> None:
        """A mean update is the result of this client's secure sum: it answered the sum's
        setup and sent its masked input, ``peers`` (the survivors) are members of that sum,
        at least max(3, t) of them, this client among them; and a mean of updates clipped to
        ``update_clip`` has at most that norm (to the encoding's rounding). Otherwise it was
        not made by honest members and the server (a reply with no sum behind it, a member's
        forged input, a server pushing weights) and is refused."""
        inst = self.instance
        if inst is None or not self.masked_sent or self.name not in peers \
                or not set(peers) <= set(inst.participants) or len(set(peers)) != len(peers) \
                or len(peers) < min_group(inst.threshold):
            raise ProtocolError(SERVER, "reply", f"a mean update of part {part!r} over "
                                f"{list(peers)} that no secure sum of this client's gave (it "
                                "must follow this client's masked input and name at least "
                                "max(3, t) of the sum's members, this client included)")
        norm = float(mean.double().norm())
        bound = self.params.mean_update_bound(int(mean.numel()), len(peers))
        if not norm <= bound:
            raise ProtocolError(SERVER, "reply", f"the mean update of part {part!r} has norm "
                                f"{norm:.6g}, above {bound:.6g} (weight_sharing.update_clip = "
                                f"{self.params.update_clip:g}, plus the tail of the update "
                                "noise where it is on): no mean of clipped updates is; "
                                "refusing it")

    def handle(self, env: SecAggEnvelope) -> SecAggEnvelope:
        if self.instance is None:
            raise ProtocolError(SERVER, "idle", f"{type(env.body).__name__} before any setup")
        reply = self.instance.handle(env.body)
        if isinstance(reply, MaskedInput):
            self.masked_sent = True
            if self.privacy is not None:
                self.privacy.record_secagg_release(
                    env.round, (env.epoch, env.batch), self._event, reply.masked,
                    group=len(self.instance.participants), threshold=self.instance.threshold,
                    t_collude=collusion_allowance(self.params.t_collude,
                                                  self.instance.threshold),
                    clipped_values=self._clipped,
                    **self._egress)
        return self._wrap(env, reply)

    def end(self) -> None:
        """The exchange is over (sum received or aborted): forget the instance."""
        self.instance, self._event, self.masked_sent, self._own = None, None, False, None
        self._egress = {}

    def _wrap(self, env: SecAggEnvelope, body: object) -> SecAggEnvelope:
        return SecAggEnvelope(self.name, env.round, env.epoch, env.batch, body)
