"""``protection: secagg`` on the server: the secure sums of a round (DESIGN §3, §4.2).

One :class:`SecAggServer` instance per exchange (per CL epoch, or per batch in
``per_batch``), over every active client that has not dropped earlier in the round (a
client that drops stays out for the rest of the round). When the instance completes, the
unmasked int64 sum is decoded into U and q, the §2.2 terms S = U/τ and log α are computed
once in batched torch on the server's device, and every survivor receives them. An
instance that aborts (fewer than t clients reached a stage) is recorded in
:attr:`SecAggServerProtection.events` and every client still in it is told, so it skips that
step; the round goes on with the next exchange. A client the instance blamed for revealing
wrong shares (:attr:`SecAggServer.blamed`) is recorded by name and, like a dropped client,
stays out for the rest of the round.

Stage deadlines (DESIGN §6): the transport calls :meth:`SecAggServerProtection.close_stage` when
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

from fedmuscle_secure.crypto.secagg.messages import SecAggStage, exchange_label, min_group
from fedmuscle_secure.crypto.secagg.server import SecAggAborted, SecAggServer
from fedmuscle_secure.crypto.secagg.sum_encoding import SumEncoding
from fedmuscle_secure.errors import ProtocolError, QuorumLost
from fedmuscle_secure.messages import ExchangeAborted, Message, SecAggEnvelope, SitOut, SumTerms
from fedmuscle_secure.server.computation import sum_form_terms
from fedmuscle_secure.server.protection.base import ServerProtection


class SecAggServerProtection(ServerProtection):
    """Drives the secure sums of a round; owned by :class:`FedMuscleServer`."""

    stage_types = (SecAggEnvelope, SitOut)

    def __init__(self, *, threshold: int, identities: Mapping[str, Ed25519PublicKey],
                 encoding_for: Callable[[int, int], SumEncoding], tau: float, gamma: float,
                 device: torch.device | str) -> None:
        self.threshold = threshold
        self.identities = dict(identities)
        self.encoding_for = encoding_for  # (batches per exchange, group size) → SumEncoding
        self.tau, self.gamma = tau, gamma
        self.device = device
        self._events: list[dict] = []     # aborts and dropouts, for events.jsonl
        self.instance: SecAggServer | None = None
        self._round = 0
        self._queue: list[tuple[int, int | None, tuple[str, ...] | None]] = []  # + members
        self._current: tuple[int, int | None, SumEncoding] | None = None
        self._dropped: set[str] = set()
        self._sat_out: set[str] = set()   # clients sitting out the current exchange only
        self._out_for_round: set[str] = set()  # missed a stage deadline (or blamed) this round
        self._batches = 1

    @property
    def min_group(self) -> int:
        """The fewest members a secure sum may have: max(3, t)."""
        return min_group(self.threshold)

    @property
    def busy(self) -> bool:
        return self.instance is not None or bool(self._queue)

    @property
    def events(self) -> list[dict]:
        """Aborts, dropouts, blames and sit-outs of the run, for ``events.jsonl``."""
        return self._events

    @property
    def encoding(self) -> SumEncoding | None:
        """The fixed-point encoding of the running instance, or None between instances."""
        return self._current[2] if self._current is not None else None

    def release_types(self, method: str) -> tuple[type, ...]:
        return ()  # a release is the masked input of a secure sum: one of its stages

    def check_quorum(self, r: int, active: list[str], completed: int) -> None:
        """A round needs at least :attr:`min_group` members, else no exchange could run."""
        if 0 < len(active) < self.min_group:
            raise QuorumLost(f"round {r}: only {len(active)} clients are left "
                             f"({active}); a secure sum needs at least {self.min_group} "
                             f"(threshold t={self.threshold}, never fewer than 3), so no later "
                             "exchange could run; the run stops here (its ledgers and checkpoints "
                             f"up to round {completed} stand)")

    def on_stage(self, msg: SecAggEnvelope | SitOut, active: list[str]) -> list[Message]:
        """A stage message of the running instance, or a member sitting the exchange out."""
        if isinstance(msg, SitOut):
            return self.sit_out(msg, active)
        return self.handle(msg, active)

    def start_round(self, r: int, plan: torch.Tensor, exchange: str, active: list[str]) -> list[Message]:
        self._round, self._dropped, self._out_for_round = r, set(), set()
        self._queue, self._batches = self._round_queue(plan, exchange)
        return self._begin_next(active)

    # -- what an instance sums: the sum form's rows (overridden for weight parts) --------
    def _round_queue(self, plan: torch.Tensor, exchange: str,
                     ) -> tuple[list[tuple[int, int | None, tuple[str, ...] | None]], int]:
        """The round's secure sums in order, as (epoch, batch, members; None: every active
        client), and the batches each covers: one sum per CL epoch, or per batch."""
        t, nb = int(plan.shape[0]), int(plan.shape[1]) if plan.dim() > 1 else 0
        if exchange == "per_batch":
            return [(e, b, None) for e in range(t) for b in range(nb)], 1
        return [(e, None, None) for e in range(t)], nb

    def _threshold(self, members: tuple[str, ...] | None) -> int:
        """t of an instance over ``members`` (None: every active client)."""
        return self.threshold

    def _encoding(self, epoch: int, batch: int | None, members: tuple[str, ...] | None,
                  group_size: int) -> SumEncoding:
        return self.encoding_for(self._batches, group_size)

    def _results(self, inst: SecAggServer, enc: SumEncoding, epoch: int, batch: int | None,
                 to: list[str]) -> list[Message]:
        """The replies to the survivors ``to`` once an instance's sum is unmasked: the §2.2
        terms S = U/τ and log α, computed once."""
        u, q = enc.decode(inst.result)
        scaled, log_alpha = sum_form_terms(u, q, tau=self.tau, gamma=self.gamma, device=self.device)
        return [SumTerms(c, self._round, epoch, batch, inst.survivors, scaled, log_alpha) for c in to]

    def _begin_next(self, active: list[str]) -> list[Message]:
        out: list[Message] = []
        self.instance, self._current, self._sat_out = None, None, set()
        while self._queue:
            epoch, batch, members = self._queue.pop(0)
            within = [c for c in active if members is None or c in members]
            out += [ExchangeAborted(c, self._round, epoch, batch, f"{c!r} sits out the rest of "
                                    f"round {self._round} (dropped from an earlier exchange: a "
                                    "missed stage deadline or wrong shares)")
                    for c in within if c in self._out_for_round]
            group = [c for c in within if c not in self._dropped]
            t = self._threshold(members)
            need = min_group(t)
            if len(group) < need:
                reason = (f"only {len(group)} clients are left for the secure sum; it needs at least "
                          f"{need} (threshold t={t}, and never fewer than 3)")
                out += self._abort_notices(group, epoch, batch, reason, stage="setup")
                continue
            enc = self._encoding(epoch, batch, members, len(group))
            self.instance = SecAggServer(group, t, enc.vector_length,
                                         identities=self.identities, device=self.device,
                                         label=exchange_label(self._round, epoch, batch))
            self._current = (epoch, batch, enc)
            out += [SecAggEnvelope(s.recipient, self._round, epoch, batch, s, enc)
                    for s in self.instance.start()]
            break
        return out

    def _abort_notices(self, group: list[str], epoch: int, batch: int | None, reason: str,
                       stage: str) -> list[Message]:
        self._events.append({"event": "secagg_aborted", "round": self._round, "epoch": epoch,
                            "batch": batch, "stage": stage, "reason": reason})
        return [ExchangeAborted(c, self._round, epoch, batch, reason) for c in group]

    def _check_current(self, msg: SecAggEnvelope | SitOut) -> SecAggServer:
        """The running instance, if ``msg`` belongs to its exchange; else ProtocolError."""
        what = type(msg).__name__
        if self.instance is None or self._current is None:
            raise ProtocolError(msg.client, "idle", f"{what} while no exchange runs")
        epoch, batch, _ = self._current
        if (msg.round, msg.epoch, msg.batch) != (self._round, epoch, batch):
            raise ProtocolError(msg.client, self.instance.stage.value,
                                f"{what} for exchange (round {msg.round}, epoch {msg.epoch}, batch "
                                f"{msg.batch}) while running (round {self._round}, epoch {epoch}, "
                                f"batch {batch})")
        return self.instance

    def handle(self, msg: SecAggEnvelope, active: list[str]) -> list[Message]:
        if self._late(msg):
            return []
        instance = self._check_current(msg)
        if getattr(msg.body, "sender", None) != msg.client:
            raise ProtocolError(msg.client, instance.stage.value, "envelope and body name "
                                "different senders")
        return self._step(lambda inst: inst.receive(msg.body), active)

    def sit_out(self, msg: SitOut, active: list[str]) -> list[Message]:
        """``msg.client`` already released for this exchange (a re-run round): it takes no
        part in this instance (a drop for this exchange only) and is told when it is over."""
        self._check_current(msg)
        assert self.instance is not None
        if msg.client not in self.instance.participants or msg.client in self._sat_out:
            raise ProtocolError(msg.client, self.instance.stage.value,
                                "SitOut from a client outside this instance, or twice")
        self._sat_out.add(msg.client)
        return self._step(lambda inst: inst.drop(msg.client), active)

    def _sitters_told(self, epoch: int, batch: int | None, active: list[str]) -> list[Message]:
        if not self._sat_out:
            return []
        self._events.append({"event": "exchange_sat_out", "round": self._round, "epoch": epoch,
                            "batch": batch, "clients": sorted(self._sat_out)})
        return [ExchangeAborted(c, self._round, epoch, batch, f"{c!r} sat out this exchange")
                for c in sorted(self._sat_out) if c in active]

    def _late(self, msg: SecAggEnvelope) -> bool:
        """A message of this round from a member sitting it out: too late, ignored."""
        return msg.client in self._out_for_round and msg.round == self._round

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
            self._dropped |= set(inst.dropped_at) - self._sat_out
            group = [c for c in inst.participants if c in active and c not in inst.dropped_at]
            out = self._out_for_the_round(inst, active, epoch, batch)
            out += self._abort_notices(group, epoch, batch, str(exc), stage=exc.stage)
            out += self._sitters_told(epoch, batch, active)
            return out + self._begin_next(active)
        sitting = self._out_for_the_round(inst, active, epoch, batch)
        if inst.stage is not SecAggStage.DONE:
            return sitting + [SecAggEnvelope(m.recipient, self._round, epoch, batch, m)
                              for m in replies]
        if inst.blamed:  # revealed wrong shares: corrected, named, out for the round
            self._events.append({"event": "secagg_blamed", "round": self._round, "epoch": epoch,
                                "batch": batch, "blamed": {c: str(e) for c, e in inst.blamed.items()}})
        dropped = {c: s for c, s in inst.dropped_at.items() if c not in self._sat_out}
        if dropped:
            self._events.append({"event": "secagg_dropouts", "round": self._round, "epoch": epoch,
                                "batch": batch, "dropped": dropped})
        self._dropped |= set(dropped)
        out = self._results(inst, enc, epoch, batch, [c for c in inst.survivors if c in active
                                                      and c not in self._out_for_round])
        out += self._sitters_told(epoch, batch, active)
        return sitting + out + self._begin_next(active)

    def _out_for_the_round(self, inst: SecAggServer, active: list[str], epoch: int, batch: int | None,
                 ) -> list[Message]:
        """Members still in the federation that this instance dropped (a stage deadline, or
        wrong shares revealed; a client that left is not active, and one that sits this
        exchange out because it already released for it is not dropped for the round) sit
        out the round from here."""
        fresh = [c for c in inst.participants if c in inst.dropped_at and c in active
                 and c not in self._out_for_round and c not in self._sat_out]
        self._out_for_round.update(fresh)
        return [ExchangeAborted(c, self._round, epoch, batch, (
            f"{c!r} revealed wrong shares" if c in inst.blamed else
            f"{c!r} missed the deadline of stage {inst.dropped_at[c]!r}")
            + f"; it sits out the rest of round {self._round}") for c in fresh]
