"""The server state machine behind a lock, one outbox per client, and stage deadlines (DESIGN §6).

The gRPC servicer (:mod:`fedmuscle_secure.server.grpc.process`) only moves messages; this
:class:`Coordinator` hands each received message to :class:`FedMuscleServer` under one lock
and routes the replies to their recipients' outboxes (DESIGN §13.1).

Stage deadlines. A member that keeps its connection open but stops answering would hold a
round until the round timeout (an hour by default). The coordinator keeps the clock of the
stage the server waits in (:meth:`FedMuscleServer.waiting`): the clock starts when the
first member answers that stage, and once ``stage_timeout_s`` has passed with members still
silent, the coordinator calls :meth:`FedMuscleServer.close_stage` under the lock. The state
machine decides what missing the deadline means (a secure sum drops the silent members
from that instance and they sit out the rest of the round, still connected; a missing
plain or encrypted release or round report is a Leave); members it let go are
disconnected with ``DEADLINE_EXCEEDED`` and the reason. Counting from the first answer
rather than from the stage's start keeps a round's first exchange, which follows every
member's LocalUpdate, from timing out on slow training alone: the deadline bounds how far
the slowest member may lag behind the fastest one. Deadlines are checked while
:meth:`Coordinator.wait` waits (every ``min(1 s, stage_timeout_s / 4)``).

Membership changes (:meth:`Coordinator.check_membership`). With a ``revocations`` check
(the server's :class:`~fedmuscle_secure.transport.trust_reload.LiveTrust`), the coordinator asks at
every stage boundary (the stage the server waits in changed, or a round starts) and on
every tick of :meth:`Coordinator.wait` whether the CRL now revokes a connected member's
certificate; such a member's stream is ended with ``PERMISSION_DENIED`` and the reason (its
client stops instead of retrying) and it is dropped as a ``Leave``, so a secure sum in
progress completes by its dropout path and the others go on. Whatever it still sends is
ignored: no receipt, no reply. :meth:`Coordinator.wait_for_members` starts a run with the
quorum of ``deployment.min_clients`` and bars the absent members; :meth:`Coordinator.bar`
refuses an organisation for the rest of the run (``server --resume --exclude``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from fedmuscle_secure.errors import FedMuscleError, IdentityError, ProtocolError
from fedmuscle_secure.messages import (
    Finish,
    Leave,
    Message,
    RoundReport,
    as_received,
    payload_bytes,
)
from fedmuscle_secure.server.receipts import carries_release, record_receipt
from fedmuscle_secure.server.state import FedMuscleServer

log = logging.getLogger("fedmuscle_secure.server")
CLOSE = object()  # an outbox item: end the stream normally


@dataclass(frozen=True)
class Abort:
    """An outbox item: end the stream with this status and reason."""

    code: grpc.StatusCode
    reason: str


class TransportError(FedMuscleError):
    """The deployment could not proceed (clients missing, a round timed out)."""


class Coordinator:
    """The server state machine behind a lock, with one outbox per connected client."""

    def __init__(self, server: FedMuscleServer, final_round: int, receipts=None, *,
                 stage_timeout_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 revocations: Callable[[Mapping[str, Any]], Mapping[str, str]] | None = None,
                 on_event: Callable[..., None] | None = None) -> None:
        if stage_timeout_s is not None and not stage_timeout_s > 0:
            raise ValueError(f"stage_timeout_s must be positive, got {stage_timeout_s!r}")
        self.server = server
        self.final_round = final_round
        self.receipts = receipts                     # the server's ReceiptLog (DESIGN §5.4)
        self.stage_timeout_s = stage_timeout_s       # None: no stage deadlines
        self.clock = clock
        self.cond = threading.Condition()
        self.outboxes: dict[str, queue.Queue] = {}
        self.gone: dict[str, str] = {}               # client -> why its stream ended
        self.finals: dict[str, dict[str, float]] = {}
        self.started = False                         # round 1 has been sent
        self.traffic = {c: {"bytes_sent": 0.0, "bytes_received": 0.0} for c in server.clients}
        self._stage: tuple | None = None             # the stage whose clock runs
        self._stage_since = 0.0                      # when its first answer came
        self.revocations = revocations               # {client: cert} -> {client: why revoked}
        self.on_event = on_event                     # RunDir.event: (kind, **fields)
        self.peers: dict[str, Any] = {}              # connected client -> its certificate
        self.barred: dict[str, str] = {}             # client -> why it may not (re)connect
        self._boundary: tuple | None = None          # the stage last checked for revocations

    def connect(self, client: str, cert: Any = None) -> queue.Queue:
        """Open ``client``'s outbox; ``cert`` (its TLS certificate) is checked against the
        CRL while it stays connected (module docs)."""
        with self.cond:
            if client in self.barred:
                raise IdentityError(f"client {client!r} may not take part in this run: "
                                    f"{self.barred[client]}")
            if client in self.outboxes:
                raise IdentityError(f"client {client!r} is already connected")
            if client in self.gone and self.started:
                raise IdentityError(f"client {client!r} left this run ({self.gone[client]})")
            self.gone.pop(client, None)  # before round 1 a client may reconnect
            box: queue.Queue = queue.Queue()
            self.outboxes[client] = box
            if cert is not None:
                self.peers[client] = cert
            self.cond.notify_all()
            return box

    def submit(self, client: str, msg: Message) -> None:
        """One message received from ``client``: the server's replies go to their outboxes."""
        with self.cond:
            if client not in self.outboxes:  # its stream was ended (revoked, deadline, ...)
                log.debug("ignored %s from %s: no longer connected", type(msg).__name__, client)
                return
            if getattr(msg, "client", None) != client:
                raise ProtocolError(client, "transport", f"{type(msg).__name__} names client "
                                    f"{getattr(msg, 'client', None)!r}, not the sender")
            self.traffic[client]["bytes_sent"] += payload_bytes(msg)
            if self.receipts is not None and carries_release(msg):
                record_receipt(self.receipts, msg)  # digested as it arrived, as in `run`
            if isinstance(msg, RoundReport) and msg.round == self.final_round:
                self.finals[client] = as_received(msg)
            else:
                self._deliver(self.server.handle(msg))
            self._track()
            self.cond.notify_all()

    def disconnect(self, client: str, reason: str, abort: Abort | None = None) -> None:
        """The stream of ``client`` ended: a Leave if the server still counts on it. With
        ``abort``, the stream is ended with that status, after the client is marked gone
        (so the peer never sees its error before the server has let it go)."""
        with self.cond:
            box = self.outboxes.pop(client, None)
            self.peers.pop(client, None)
            if box is not None:
                box.put(abort if abort is not None else CLOSE)
            if box is not None or client not in self.gone:  # keep why it was let go
                self.gone[client] = reason
            self._leave_if_active(client, reason)
            self._track()
            self.cond.notify_all()

    def _leave_if_active(self, client: str, reason: str) -> None:
        s = self.server
        if client in s.active and s.stage.value == "collecting":
            log.warning("client %s dropped in round %d: %s", client, s.round + 1, reason)
            self._deliver(s.handle(Leave(client, s.round + 1, f"transport: {reason}")))

    def _deliver(self, replies: list[Message]) -> None:
        """Route what the state machine answered; if its stage changed, first cut off the
        members the CRL now revokes: they get nothing of the next stage, whatever ended
        the last one (a message, another member's departure, a deadline)."""
        cut = self._revoked_at_boundary()
        self._route([m for m in replies if m.client not in cut])
        self._cut(cut)

    def _route(self, msgs: list[Message]) -> None:
        for m in msgs:
            box = self.outboxes.get(m.client)
            if box is None:
                continue  # disconnected: its Leave is (or was) submitted by disconnect
            self.traffic[m.client]["bytes_received"] += payload_bytes(m)
            box.put(m)

    def start_round(self, r: int) -> None:
        with self.cond:
            self.check_membership()  # a member revoked between rounds gets no plan
            self.started = True
            for t in self.traffic.values():
                t["bytes_sent"] = t["bytes_received"] = 0.0
            # Who left between rounds (revoked, stream lost) leaves before the round is
            # planned: the state machine then sees the members it really has, so a secure
            # sum too small to run stops the run here instead of opening sums over a group
            # that includes someone gone.
            for client in [c for c in self.server.active if c not in self.outboxes]:
                reason = self.gone.get(client, "not connected")
                log.warning("client %s dropped in round %d: %s", client, r, reason)
                self.server.remove(client, f"transport: {reason}")
            self._route(self.server.start_round(r))
            self._track()
            wait = self.server.waiting()  # the round's first stage: its end is a boundary
            self._boundary = (self.server.round, wait.key if wait is not None else None)

    def finish(self) -> list[str]:
        """Send :class:`Finish` to every connected client; returns who must answer."""
        with self.cond:
            for t in self.traffic.values():
                t["bytes_sent"] = t["bytes_received"] = 0.0
            who = list(self.outboxes)
            self._route([Finish(c, self.final_round) for c in who])
            return who

    def close_all(self) -> None:
        with self.cond:
            for box in self.outboxes.values():
                box.put(CLOSE)

    def abort_all(self, reason: str) -> None:
        """The run cannot go on (e.g. too few members for the protection): end every stream
        with ``FAILED_PRECONDITION`` and the reason, so the clients stop instead of retrying."""
        with self.cond:
            for box in self.outboxes.values():
                box.put(Abort(grpc.StatusCode.FAILED_PRECONDITION, reason))

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Until ``predicate`` holds (raises :class:`TransportError` after ``timeout``
        seconds), enforcing stage deadlines meanwhile (module docs)."""
        end = self.clock() + timeout
        tick = 1.0 if self.stage_timeout_s is None else min(1.0, self.stage_timeout_s / 4)
        with self.cond:
            while not predicate():
                left = end - self.clock()
                if left <= 0:
                    raise TransportError(f"timed out after {timeout:g} s waiting for {what}")
                self.cond.wait(min(tick, left))
                self.check_membership()  # first: a revoked member gets nothing more
                self.check_deadline()

    # -- stage deadlines ------------------------------------------------------------------
    def _track(self) -> None:
        """Restart the stage clock when the stage changed; it runs once someone answered."""
        wait = self.server.waiting()
        key = wait.key if wait is not None and wait.answered else None
        if key != self._stage:
            self._stage, self._stage_since = key, self.clock()

    def check_deadline(self) -> None:
        """Close the stage the server waits in if its deadline has passed (module docs)."""
        with self.cond:
            self._track()
            if self.stage_timeout_s is None or self._stage is None:
                return
            waited = self.clock() - self._stage_since
            if waited < self.stage_timeout_s:
                return
            wait = self.server.waiting()
            if wait is None or not wait.awaited:
                return
            r = self.server.round + 1
            reason = (f"no answer {waited:.0f} s after the first member answered (stage "
                      f"timeout {self.stage_timeout_s:g} s)")
            log.warning("stage %s: deadline passed, silent: %s", wait.key[0], list(wait.awaited))
            before = set(self.server.active)
            self._deliver(self.server.close_stage(reason))
            for client in sorted((before - set(self.server.active)) & set(self.outboxes)):
                self.disconnect(client, f"missed a stage deadline: {reason}",
                                Abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                      f"{client!r} missed the deadline of stage "
                                      f"{wait.key[0]!r} in round {r}: {reason}"))
            self._stage = None  # the next stage's clock starts with its first answer
            self._track()
            self.cond.notify_all()

    # -- membership changes ---------------------------------------------------------------
    def _emit(self, kind: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, **fields)

    def _revoked(self) -> dict[str, str]:
        """The connected members whose certificate the CRL now revokes, with why."""
        if self.revocations is None or not self.peers:
            return {}
        found = self.revocations(dict(self.peers))
        return {c: found[c] for c in sorted(found) if c in self.outboxes}

    def _revoked_at_boundary(self) -> dict[str, str]:
        """:meth:`_revoked` when the stage the server waits in has changed, else nothing."""
        wait = self.server.waiting()
        key = (self.server.round, wait.key if wait is not None else None)
        if key == self._boundary:
            return {}
        self._boundary = key
        return self._revoked()

    def _cut(self, revoked: dict[str, str]) -> None:
        """End the streams of ``revoked`` members with the reason; each is a Leave."""
        for client, why in revoked.items():
            if client not in self.outboxes:  # already cut while an earlier one left
                continue
            r = self.server.round + 1  # the round in flight, or the next one
            log.warning("client %s: certificate %s; dropping it (round %d)", client, why, r)
            self._emit("client_revoked", client=client, round=r, reason=why)
            self.barred[client] = f"its certificate was {why}"
            self.disconnect(client, f"certificate {why}", Abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{client!r} was dropped from the run in round {r}: its certificate was {why}"))

    def check_membership(self) -> None:
        """End the stream of every connected member whose certificate the CRL now revokes,
        and drop it as a Leave (module docs; also called between stage boundaries)."""
        with self.cond:
            if cut := self._revoked():
                self._cut(cut)
                self._track()
                self.cond.notify_all()

    def bar(self, client: str, reason: str) -> None:
        """Refuse ``client`` for the rest of this run (``server --resume --exclude``)."""
        with self.cond:
            self.barred[client] = reason

    def wait_for_members(self, quorum: int, timeout: float) -> list[str]:
        """Wait until every active member is connected, or ``timeout`` seconds; then go on
        if at least ``quorum`` of them are, removing and barring the absent ones (returned).
        Otherwise raise :class:`TransportError` naming only the missing organisations."""
        s = self.server
        try:
            self.wait(lambda: all(c in self.outboxes for c in s.active), timeout,
                      "every client to connect")
            return []
        except TransportError:
            pass
        with self.cond:
            missing = [c for c in s.active if c not in self.outboxes]
            present = len(s.active) - len(missing)
            if present < quorum:
                raise TransportError(
                    f"gave up after {timeout:g} s waiting for {missing} to connect: "
                    f"{present} of the {len(s.active)} organisations in the run are connected, "
                    f"the quorum (deployment.min_clients) is {quorum}")
            why = (f"not connected within the connect timeout ({timeout:g} s); the run "
                   f"started without it in round {s.round + 1}")
            for client in missing:
                if client in self.barred and client in self.gone:  # revoked before round 1
                    s.remove(client, f"transport: {self.gone[client]}")
                    continue
                log.warning("client %s: %s", client, why)
                s.remove(client, f"absent: {why}")
                self.barred[client] = why
            return missing
