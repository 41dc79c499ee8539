"""The server state machine (DESIGN §2, §3): plans rounds, collects releases, replies.

No I/O: ``start_round`` and ``handle`` return the messages to send. Stages: ``IDLE``
(between rounds) → ``COLLECTING`` (waiting for every active client's release of the
current exchange, then for their round reports) → ``IDLE``. The math of a reply is the
batched torch code of :mod:`server.computation`.

Stage deadlines (DESIGN §6) are the transport's clock and this machine's decision:
:meth:`FedMuscleServer.waiting` says what the server waits for now (a key that changes
with the stage, who answered, who has not) and :meth:`FedMuscleServer.close_stage` is what
the transport calls once that has lasted too long. Inside a secure sum the silent members
are dropped from that instance and sit out the rest of the round (they stay in the
federation, :mod:`server.protection.secagg`); a member that owes a plain or encrypted release
or its round report is treated as a :class:`Leave`.

The mode-specific part (plain / secagg / ckks) is one strategy,
:class:`~fedmuscle_secure.server.protection.ServerProtection`, chosen when the server is
built; this machine never asks which mode is on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from fedmuscle_secure.baselines.group_outputs import group_output_replies
from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.messages import (
    ExchangeAborted,
    Leave,
    Message,
    RoundPlan,
    RoundReport,
    SitOut,
)
from fedmuscle_secure.methods import OUTPUT_RELEASING, WEIGHT_SHARING
from fedmuscle_secure.seeding import derive_seed, public_batches
from fedmuscle_secure.server.protection import (
    PlainServerProtection,
    ReplyInputs,
    ServerProtection,
)
from fedmuscle_secure.server.protection.base import Release, WeightInputs
from fedmuscle_secure.server.selection import select_peers, selection_tensor


class ServerStage(enum.Enum):
    IDLE = "idle"
    COLLECTING = "collecting"


@dataclass(frozen=True)
class StageWait:
    """What the server waits for: ``key`` names the stage and changes when the stage does;
    ``answered`` have answered it, ``awaited`` have not."""

    key: tuple
    answered: tuple[str, ...]
    awaited: tuple[str, ...]


@dataclass(frozen=True)
class ServerSettings:
    method: str
    exchange: str
    num_selected: int
    batch_size: int
    public_size: int
    cl_epochs: int
    inv_tau: torch.Tensor  # (N, N) 1/τ per pair, in client order
    gamma: torch.Tensor    # (N, N) γ per pair
    seed: int
    device: torch.device
    #: the mode's strategy (DESIGN §4), chosen when the federation is built; None: plain
    protection: ServerProtection | None = None
    output_spaces: tuple[str, ...] = ()     # per client (order of ``clients``): its task name;
    #                                          cofed/feddf aggregate within one output space
    mira_beta: float = 0.5                  # mira: the step towards the neighbours (DESIGN §2.7)


class FedMuscleServer:
    """Coordinates one round at a time over the active clients."""

    def __init__(self, clients: list[str], settings: ServerSettings) -> None:
        self.clients = list(clients)
        self.index = {c: i for i, c in enumerate(self.clients)}
        self.settings = settings
        self.protection = settings.protection or PlainServerProtection()  # fixed for the run
        self._release_types = self.protection.release_types(settings.method)
        self.active: list[str] = list(clients)
        self.stage = ServerStage.IDLE
        self.round = 0
        self._plan: torch.Tensor | None = None
        self._pending: dict[str, Release] = {}
        self._sitting: dict[str, SitOut] = {}  # clients that sit out the current exchange
        self.sat_out: list[dict[str, object]] = []  # (round, epoch, batch, clients), for events
        self.reports: dict[str, RoundReport] = {}
        self.last_selection: dict[str, list[str]] = {}
        self.departures: list[dict[str, object]] = []  # who left, in which round, why
        self.deadlines: list[dict[str, object]] = []   # stage deadlines that passed

    # -- rounds -----------------------------------------------------------------------
    def round_seed(self, r: int) -> int:
        return derive_seed(self.settings.seed, "server", r)

    def public_batches(self, r: int) -> torch.Tensor:
        """(T, nb, B) public indices of round r; every client encodes the same rows."""
        s = self.settings
        return public_batches(s.seed, r, public_size=s.public_size, batch_size=s.batch_size,
                              cl_epochs=s.cl_epochs)

    def start_round(self, r: int) -> list[Message]:
        if self.stage is not ServerStage.IDLE:
            raise ProtocolError("server", self.stage.value, f"round {r} started before round "
                                f"{self.round + 1} finished")
        if r != self.round + 1:
            raise ProtocolError("server", self.stage.value, f"expected round {self.round + 1}, got {r}")
        self.protection.check_quorum(r, self.active, self.round)
        self._plan = self.public_batches(r)
        if len(self.active) < 2:  # nobody to align with: LocalUpdate only
            self._plan = self._plan[:0]
        self._pending, self._sitting, self.reports = {}, {}, {}
        self.stage = ServerStage.COLLECTING
        members = tuple(self.active)
        plans: list[Message] = [RoundPlan(c, r, self.settings.exchange, self._plan, members)
                                for c in self.active]
        return plans + self.protection.start_round(r, self._plan, self.settings.exchange, self.active)

    @property
    def round_complete(self) -> bool:
        return self.stage is ServerStage.IDLE and self.round > 0

    # -- messages ---------------------------------------------------------------------
    def handle(self, msg: Message) -> list[Message]:
        sender = getattr(msg, "client", "?")
        if sender not in self.active:
            raise ProtocolError(sender, self.stage.value, "message from a client that is not active "
                                f"in this federation (active: {self.active})")
        if self.stage is not ServerStage.COLLECTING:
            raise ProtocolError(sender, self.stage.value, f"{type(msg).__name__} arrived between rounds")
        if isinstance(msg, self.protection.stage_types):
            return self.protection.on_stage(msg, self.active)
        if isinstance(msg, (SitOut, *self._release_types)):
            return self._on_representations(msg)
        if isinstance(msg, RoundReport):
            return self._on_report(msg)
        if isinstance(msg, Leave):
            return self._on_leave(msg)
        raise ProtocolError(sender, self.stage.value, f"server cannot accept a {type(msg).__name__}")

    def _on_representations(self, msg: Release | SitOut) -> list[Message]:
        r = self.round + 1
        if msg.round != r:
            raise ProtocolError(msg.client, self.stage.value, f"release for round {msg.round} during round {r}")
        if msg.client in self._pending or msg.client in self._sitting:
            raise ProtocolError(msg.client, self.stage.value, "duplicate release for exchange "
                                f"(epoch {msg.epoch}, batch {msg.batch})")
        first = next(iter({**self._pending, **self._sitting}.values()), None)
        if first is not None and (first.epoch, first.batch) != (msg.epoch, msg.batch):
            raise ProtocolError(msg.client, self.stage.value,
                                f"release for (epoch {msg.epoch}, batch {msg.batch}) while collecting "
                                f"(epoch {first.epoch}, batch {first.batch})")
        if isinstance(msg, SitOut):
            self._sitting[msg.client] = msg
        else:
            assert self._plan is not None
            nb = 1 if msg.batch is not None else self._plan.shape[1]
            self.protection.check_release(msg, nb, self.settings.batch_size,
                                          self.settings.method, self.stage.value)
            self._pending[msg.client] = msg
        return self._maybe_reply()

    def _maybe_reply(self) -> list[Message]:
        """Reply once every active client that still owes a release has sent it (or sits the
        exchange out: those are told the exchange is over, with ExchangeAborted)."""
        owing = [c for c in self.active if c not in self.reports]
        waiting = {**self._pending, **self._sitting}
        if not waiting or any(c not in waiting for c in owing):
            return []
        first = next(iter(waiting.values()))
        r, epoch, batch = self.round + 1, first.epoch, first.batch
        releasers = [c for c in self.active if c in self._pending]
        if len(releasers) >= 2:
            replies = self._reply(epoch, batch)
            told = set(releasers)
        else:  # nobody to align with for this exchange
            replies, told = [], set()
        why = {c: f"{c!r} sat out this exchange" if c in self._sitting else
               "no other client released for this exchange" for c in waiting}
        replies += [ExchangeAborted(c, r, epoch, batch, why[c])
                    for c in self.active if c in waiting and c not in told]
        if self._sitting:
            self.sat_out.append({"round": r, "epoch": epoch, "batch": batch,
                                 "clients": sorted(self._sitting)})
        self._pending, self._sitting = {}, {}
        return replies

    def _on_leave(self, msg: Leave) -> list[Message]:
        """A client leaves for good: drop it and finish whatever was waiting on it."""
        self.active.remove(msg.client)
        self._pending.pop(msg.client, None)
        self._sitting.pop(msg.client, None)
        self.reports.pop(msg.client, None)
        self.departures.append({"client": msg.client, "round": msg.round, "reason": msg.reason})
        out = self._maybe_reply() + self.protection.drop(msg.client, self.active)
        self._maybe_finish_round()
        return out

    def remove(self, client: str, reason: str) -> None:
        """Take ``client`` out of the federation between rounds: it was absent when the
        deployment started, the operator excluded it at a restart, or its stream ended
        (its certificate revoked, its connection lost) between rounds. Recorded like a
        :class:`Leave`, in the round that comes next; no round is in flight to finish."""
        if self.stage is not ServerStage.IDLE:
            raise ProtocolError("server", self.stage.value, f"cannot remove {client!r} mid-round")
        if client not in self.active:
            raise ProtocolError("server", self.stage.value, f"{client!r} is not an active client "
                                f"(active: {self.active})")
        self.active.remove(client)
        self.departures.append({"client": client, "round": self.round + 1, "reason": reason})

    # -- stage deadlines --------------------------------------------------------------
    def waiting(self) -> StageWait | None:
        """The stage the server waits in (module docs), or None between rounds."""
        if self.stage is not ServerStage.COLLECTING:
            return None
        r = self.round + 1
        own = self.protection.waiting()  # the mode's own stage (a secure sum's), if any
        if own is not None:
            return StageWait(*own)
        answered = {**self._pending, **self._sitting}  # a sit-out answers the exchange too
        if answered:
            first = next(iter(answered.values()))
            owing = tuple(c for c in self.active if c not in self.reports and c not in answered)
            return StageWait(("release", r, first.epoch, first.batch), tuple(answered), owing)
        return StageWait(("report", r), tuple(self.reports),
                         tuple(c for c in self.active if c not in self.reports))

    def close_stage(self, reason: str) -> list[Message]:
        """The current stage's deadline passed (``reason`` says how long it waited): whoever
        it still waits for misses it (module docs)."""
        wait = self.waiting()
        if wait is None or not wait.awaited:
            return []
        r = self.round + 1
        self.deadlines.append({"round": r, "stage": "/".join(str(k) for k in wait.key
                                                             if not isinstance(k, bytes)),
                               "silent": list(wait.awaited), "reason": reason})
        if self.protection.waiting() is not None:
            return self.protection.close_stage(self.active)
        out: list[Message] = []
        for c in wait.awaited:
            out += self._on_leave(Leave(c, r, f"missed the {wait.key[0]} deadline: {reason}"))
        return out

    def _reply(self, epoch: int, batch: int | None) -> list[Message]:
        """Everyone's release is in: compute every client's reply (the protection's math)."""
        s = self.settings
        order = [c for c in self.active if c in self._pending]
        spaces = {c: s.output_spaces[self.index[c]] for c in order}  # each client's task
        # means (mira's, mocha's steps) of the shared weights; FedEM's K components are
        # stacked in each part, so FedAvg's mean of a part is each component's mean
        if s.method in WEIGHT_SHARING:
            out = self.protection.weight_replies(WeightInputs(
                method=s.method, round=self.round + 1, epoch=epoch, batch=batch, order=order,
                releases=self._pending, spaces=spaces, beta=s.mira_beta, device=s.device))
            self.last_selection = {m.client: sorted({p for g in getattr(m, "peers", ())
                                                     for p in g} - {m.client}) for m in out}
            return out
        if s.method in OUTPUT_RELEASING:  # cofed / feddf: per output space, no peer selection
            out = group_output_replies(s.method, self.round + 1, epoch, batch, order, self._pending,
                                       spaces, device=s.device)
            self.last_selection = {m.client: list(m.peers) for m in out}
            return list(out)
        assert self._plan is not None
        sels = self._selections(epoch, batch, len(order),
                                1 if batch is not None else int(self._plan.shape[1]))
        self.last_selection = {order[n]: [order[m] for m in sels[0][n].tolist()] for n in range(len(order))}
        idx = torch.tensor([self.index[c] for c in order])
        return self.protection.replies(ReplyInputs(
            method=s.method, round=self.round + 1, epoch=epoch, batch=batch, order=order,
            releases=self._pending, selections=sels, inv_tau=s.inv_tau[idx][:, idx],
            gamma=s.gamma[idx][:, idx], device=s.device))

    def _selections(self, epoch: int, batch: int | None, n: int, nb: int) -> list[torch.Tensor]:
        """Per batch, the (n, M) peers each releasing client aligns to (DESIGN §3), drawn
        from the round seed; M shrinks once clients have left."""
        m_eff = min(self.settings.num_selected, n - 1)
        sels = []
        for b in range(nb):
            g = torch.Generator().manual_seed(derive_seed(
                self.round_seed(self.round + 1), "peers", epoch, batch if batch is not None else b))
            chosen = select_peers(list(range(n)), m_eff, g)
            sels.append(selection_tensor(chosen, list(range(n))))
        return sels

    def _on_report(self, msg: RoundReport) -> list[Message]:
        if msg.round != self.round + 1 or msg.client in self.reports:
            raise ProtocolError(msg.client, self.stage.value,
                                f"unexpected report for round {msg.round} (expecting round "
                                f"{self.round + 1}, once per client)")
        self.reports[msg.client] = msg
        out = self._maybe_reply()  # a client that finished owes no more releases
        self._maybe_finish_round()
        return out

    def _maybe_finish_round(self) -> None:
        if self.stage is ServerStage.COLLECTING and all(c in self.reports for c in self.active):
            self.round += 1
            self.stage = ServerStage.IDLE
            self._plan = None

    def state_dict(self) -> dict:
        return {"round": self.round, "active": list(self.active),
                "departures": [dict(d) for d in self.departures]}

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        self.active = list(state["active"])
        self.departures = [dict(d) for d in state.get("departures", [])]
