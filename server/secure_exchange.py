"""The server's secure exchanges of one round under ``protection: secagg`` (DESIGN §3, §4.2).

One :class:`SecAggServer` instance per exchange (per CL epoch, or per batch in
``per_batch``), over every active client that has not dropped earlier in the round (a
client that drops stays out for the rest of the round). When the instance completes, the
unmasked int64 sum is decoded into U and q, the §2.2 terms S = U/τ and log α are computed
once in batched torch on the server's device, and every survivor receives them. An
instance that aborts (fewer than t clients reached a stage) is recorded in
:attr:`SecureExchanges.events` and every client still in it is told, so it skips that
step; the round goes on with the next exchange.

Stage deadlines (DESIGN §6): the transport calls :meth:`SecureExchanges.close_stage` when
a stage has waited too long (:meth:`waiting` says what it waits for). The members that did
not answer are dropped from the instance, as a vanished client would be, but they are still
connected and still in the federation: they sit out the rest of the round. Each gets an
:class:`ExchangeAborted` for the exchange it missed and for every later exchange of the
round, so its own state machine stays in step and reports the round; whatever it still
sends for this round arrives too late and is ignored. It takes part again next round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fedmuscle_secure.crypto.secagg_messages import SecAggStage
from fedmuscle_secure.crypto.secagg_server import SecAggAborted, SecAggServer
from fedmuscle_secure.crypto.sum_encoding import SumEncoding
from fedmuscle_secure.server.computation import sum_form_terms

from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.messages import ExchangeAborted, Message, SecAggEnvelope, SumTerms

MIN_GROUP = 3  # with two clients each would learn the other's release from the sum


class SecureExchanges:
    """Drives the secure exchanges of a round; owned by :class:`FedMuscleServer`."""

    def __init__(self, *, threshold: int, identities: Mapping[str, Ed25519PublicKey],
                 encoding_for: Callable[[int, int], SumEncoding], tau: float, gamma: float,
                 device: torch.device | str) -> None:
        self.threshold = threshold
        self.identities = dict(identities)
        self.encoding_for = encoding_for  # (batches per exchange, group size) → SumEncoding
        self.tau, self.gamma = tau, gamma
        self.device = device
        self.events: list[dict] = []      # aborts and dropouts, for events.jsonl
        self.instance: SecAggServer | None = None
        self._round = 0
        self._queue: list[tuple[int, int | None]] = []
        self._current: tuple[int, int | None, SumEncoding] | None = None
        self._dropped: set[str] = set()
        self._sitting_out: set[str] = set()  # missed a stage deadline this round
        self._batches = 1

    @property
    def busy(self) -> bool:
        return self.instance is not None or bool(self._queue)

    def start_round(self, r: int, plan: torch.Tensor, exchange: str, active: list[str]) -> list[Message]:
        t, nb = int(plan.shape[0]), int(plan.shape[1]) if plan.dim() > 1 else 0
        self._round, self._dropped, self._sitting_out = r, set(), set()
        if exchange == "per_batch":
            self._queue, self._batches = [(e, b) for e in range(t) for b in range(nb)], 1
        else:
            self._queue, self._batches = [(e, None) for e in range(t)], nb
        return self._begin_next(active)

    def _begin_next(self, active: list[str]) -> list[Message]:
        out: list[Message] = []
        self.instance, self._current = None, None
        while self._queue:
            epoch, batch = self._queue.pop(0)
            out += [ExchangeAborted(c, self._round, epoch, batch, f"{c!r} sits out the rest of "
                                    f"round {self._round} after missing a stage deadline")
                    for c in active if c in self._sitting_out]
            group = [c for c in active if c not in self._dropped]
            need = max(MIN_GROUP, self.threshold)
            if len(group) < need:
                reason = (f"only {len(group)} clients are left for the secure sum; it needs at least "
                          f"{need} (threshold t={self.threshold}, and never fewer than {MIN_GROUP})")
                out += self._abort_notices(group, epoch, batch, reason, stage="setup")
                continue
            enc = self.encoding_for(self._batches, len(group))
            self.instance = SecAggServer(group, self.threshold, enc.vector_length,
                                         identities=self.identities, device=self.device)
            self._current = (epoch, batch, enc)
            out += [SecAggEnvelope(s.recipient, self._round, epoch, batch, s, enc)
                    for s in self.instance.start()]
            break
        return out

    def _abort_notices(self, group: list[str], epoch: int, batch: int | None, reason: str,
                       stage: str) -> list[Message]:
        self.events.append({"event": "secagg_aborted", "round": self._round, "epoch": epoch,
                            "batch": batch, "stage": stage, "reason": reason})
        return [ExchangeAborted(c, self._round, epoch, batch, reason) for c in group]

    def handle(self, msg: SecAggEnvelope, active: list[str]) -> list[Message]:
        if self._late(msg):
            return []
        if self.instance is None or self._current is None:
            raise ProtocolError(msg.client, "idle", "secure-aggregation message while no exchange runs")
        epoch, batch, _ = self._current
        if (msg.round, msg.epoch, msg.batch) != (self._round, epoch, batch):
            raise ProtocolError(msg.client, self.instance.stage.value,
                                f"message for exchange (round {msg.round}, epoch {msg.epoch}, batch "
                                f"{msg.batch}) while running (round {self._round}, epoch {epoch}, "
                                f"batch {batch})")
        if getattr(msg.body, "sender", None) != msg.client:
            raise ProtocolError(msg.client, self.instance.stage.value, "envelope and body name "
                                "different senders")
        return self._step(lambda inst: inst.receive(msg.body), active)

    def _late(self, msg: SecAggEnvelope) -> bool:
        """A message of this round from a member sitting it out: too late, ignored."""
        return msg.client in self._sitting_out and msg.round == self._round

    def drop(self, client: str, active: list[str]) -> list[Message]:
        """``client`` left the federation: it drops out of the running instance."""
        if self.instance is None:
            return []
        return self._step(lambda inst: inst.drop(client), active)

    def waiting(self) -> tuple[tuple, tuple[str, ...], tuple[str, ...]] | None:
        """(stage key, who answered, who is awaited) of the running instance, or None."""
        inst = self.instance
        if inst is None or self._current is None:
            return None
        epoch, batch, _ = self._current
        key = ("secagg", self._round, epoch, batch, inst.instance_id, inst.stage.value)
        return key, inst.answered, inst.awaited

    def close_stage(self, active: list[str]) -> list[Message]:
        """A stage deadline passed (module docs): the silent members sit out the round."""
        if self.instance is None:
            return []
        return self._step(lambda inst: inst.close_stage(), active)

    def _step(self, action, active: list[str]) -> list[Message]:
        inst = self.instance
        assert inst is not None and self._current is not None
        epoch, batch, enc = self._current
        try:
            replies = action(inst)
        except SecAggAborted as exc:
            self._dropped |= set(inst.dropped_at)
            group = [c for c in inst.participants if c in active and c not in inst.dropped_at]
            out = self._sit_out(inst, active, epoch, batch)
            out += self._abort_notices(group, epoch, batch, str(exc), stage=exc.stage)
            return out + self._begin_next(active)
        sitting = self._sit_out(inst, active, epoch, batch)
        if inst.stage is not SecAggStage.DONE:
            return sitting + [SecAggEnvelope(m.recipient, self._round, epoch, batch, m)
                              for m in replies]
        if inst.dropped_at:
            self.events.append({"event": "secagg_dropouts", "round": self._round, "epoch": epoch,
                                "batch": batch, "dropped": dict(inst.dropped_at)})
        self._dropped |= set(inst.dropped_at)
        u, q = enc.decode(inst.result)
        scaled, log_alpha = sum_form_terms(u, q, tau=self.tau, gamma=self.gamma, device=self.device)
        survivors = inst.survivors
        out: list[Message] = [SumTerms(c, self._round, epoch, batch, survivors, scaled, log_alpha)
                              for c in survivors if c in active]
        return sitting + out + self._begin_next(active)

    def _sit_out(self, inst: SecAggServer, active: list[str], epoch: int, batch: int | None,
                 ) -> list[Message]:
        """Members still in the federation that this instance dropped (only a stage deadline
        does that; a client that left is not active) sit out the round from here."""
        fresh = [c for c in inst.participants
                 if c in inst.dropped_at and c in active and c not in self._sitting_out]
        self._sitting_out.update(fresh)
        return [ExchangeAborted(c, self._round, epoch, batch, f"{c!r} missed the deadline of "
                                f"stage {inst.dropped_at[c]!r}; it sits out the rest of round "
                                f"{self._round}") for c in fresh]
