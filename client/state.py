"""The client state machine (DESIGN §2, Algorithm 1 from one client's side).

It takes a message and returns messages; it does no I/O, so the in-process simulator and a
network transport drive the same object. Stages: ``IDLE`` (between rounds) →
``AWAIT_REPLY`` (a release is out, waiting for S^n/α^n or sums) → ``IDLE`` after its
``RoundReport``. A message that does not fit the stage or the exchange raises
:class:`ProtocolError` naming the peer and the stage.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from fedmuscle_secure.client.contrastive import contrastive_loss
from fedmuscle_secure.client.local_update import evaluate, local_update
from fedmuscle_secure.client.release_record import ReleaseGuard, ReleaseRecord
from fedmuscle_secure.client.report_policy import ReportGate, ReportPolicy
from fedmuscle_secure.crypto.secagg.messages import MaskedInput

from fedmuscle_secure.baselines.phases import PublicBatch, no_grad_release, public_phase
from fedmuscle_secure.data.tasks import Task
from fedmuscle_secure.data.views import random_affine_view
from fedmuscle_secure.errors import PrivacyBudgetExceeded, ProtocolError
from fedmuscle_secure.messages import (
    EncryptedPeers,
    EncryptedRepresentations,
    EncryptedSums,
    EncryptedSumTerms,
    ExchangeAborted,
    Finish,
    GroupOutputs,
    Leave,
    Message,
    PeerKernel,
    PeerSums,
    PeerTerms,
    Representations,
    RoundPlan,
    RoundReport,
    SecAggEnvelope,
    SitOut,
    SumTerms,
    TaskOutputs,
)
from fedmuscle_secure.models import ClientModel
from fedmuscle_secure.seeding import derive_seed, public_batches

if TYPE_CHECKING:  # heavy imports (opacus, dp-accounting) only where DP is configured
    from fedmuscle_secure.client.ckks_exchange import CkksClient
    from fedmuscle_secure.client.dp_sgd import DPSGDTrainer
    from fedmuscle_secure.client.privacy import ClientPrivacy
    from fedmuscle_secure.client.secure_exchange import OwnContribution, SecureExchangeClient

SERVER = "server"


class ClientStage(enum.Enum):
    IDLE = "idle"
    AWAIT_REPLY = "await_reply"
    LEFT = "left"


@dataclass(frozen=True)
class LabelledData:
    x: torch.Tensor
    targets: torch.Tensor


@dataclass(frozen=True)
class ClientSettings:
    """What a client needs to know about the experiment (from the config)."""

    method: str
    local_epochs: int
    local_batch_size: int
    lr: float
    cl_lr: float
    weight_decay: float
    augment: bool
    tau: float          # uniform temperature (sum form only)
    gamma: float        # uniform γ (sum form only)
    seed: int
    report: ReportPolicy  # which metrics a RoundReport may carry (DESIGN §4.4)
    plan: PlanSpec | None = None  # what a round plan must be; None: unchecked


@dataclass(frozen=True)
class PlanSpec:
    """The configured shape of every round plan: the exchange mode and the public rows the
    round seed gives (:func:`~fedmuscle_secure.seeding.public_batches`). A client refuses a
    plan that differs: a server that chose the rows or the exchange mode itself could make
    two exchanges cover the same rows from the same encoder."""

    exchange: str
    public_size: int
    batch_size: int
    cl_epochs: int


class FedMuscleClient:
    """One organization's side: LocalUpdate, release Z^n, one step per server reply."""

    def __init__(self, name: str, model: ClientModel, task: Task, *, train: LabelledData,
                 val: LabelledData, test: LabelledData, public_x: torch.Tensor,
                 settings: ClientSettings, privacy: ClientPrivacy | None = None,
                 dpsgd: DPSGDTrainer | None = None,
                 secure: SecureExchangeClient | None = None, ckks: CkksClient | None = None) -> None:
        self.name = name
        self.model = model
        self.task = task
        self.train, self.val, self.test = train, val, test
        self.public_x = public_x
        self.settings = settings
        self.report_gate = ReportGate(settings.report)  # full metrics stay here, per round
        self.privacy = privacy
        # Record-level DP-SGD replaces the plain LocalUpdate when set; its per-sample hooks
        # are on only inside DPSGDTrainer.run, so the contrastive phase pays nothing for them.
        self.dpsgd = dpsgd
        self.secure = secure  # protection: secagg — releases go through secure sums only
        self.ckks = ckks      # protection: ckks — releases leave encrypted
        self._own: OwnContribution | None = None
        # At most one release per exchange, and never the same content twice (DESIGN §4.4):
        # remembered from the ledger so the rule survives a restart; asked again, the client
        # sits the exchange out.
        ledger = privacy.ledger if privacy is not None else None
        self.guard = ReleaseGuard(ReleaseRecord.from_ledger(ledger.entries if ledger is not None
                                                            else ()))
        self._sitting_out = False
        self._aborted_before = self._clipped_before = 0  # secagg counters at the last report
        self.left: dict | None = None  # {"round", "reason"} once the client has left
        # Baselines that release outputs or nothing (DESIGN §2.3); None: representations.
        self.phase = public_phase(settings.method)
        self.task_optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr,
                                               weight_decay=settings.weight_decay)
        # Own optimizer state for the contrastive phase (§8.1: sharing Adam state hurt).
        # Baselines that train on labels/logits of the public data move the head too.
        cl_params = model.parameters() if self.phase is not None and self.phase.trains_head \
            else model.encoder_parameters()
        self.cl_optimizer = torch.optim.Adam(cl_params, lr=settings.cl_lr,
                                             weight_decay=settings.weight_decay)
        self.stage = ClientStage.IDLE
        self.round = 0  # last completed round
        self._plan: RoundPlan | None = None
        self._exchange: tuple[int, int | None] | None = None
        self._pending: torch.Tensor | None = None   # per_batch: anchor with its graph
        self._released: torch.Tensor | None = None  # what was sent, (nb, B, d)
        self._views: torch.Generator | None = None
        self._metrics: dict[str, float] = {}
        self._cl_losses: list[float] = []

    # -- entry point -------------------------------------------------------------------
    def handle(self, msg: Message) -> list[Message]:
        """Process one message from the server; return the messages to send back."""
        if isinstance(msg, Finish):
            return [self._on_finish(msg)]
        if self.stage is ClientStage.LEFT:
            if isinstance(msg, RoundPlan) and self.left is not None:
                # a server that resumed from before the leave still counts on this client:
                # say again that it left (its ledger already holds the leave)
                return [Leave(self.name, msg.round, str(self.left["reason"]))]
            return []  # a client that left answers nothing (the server already dropped it)
        if isinstance(msg, RoundPlan):
            return self._on_round_plan(msg)
        if isinstance(msg, ExchangeAborted) or self.secure is not None and isinstance(msg, SumTerms):
            return self._on_reply(msg)
        if self.secure is not None and isinstance(msg, SecAggEnvelope):
            return self._on_secagg(msg)
        if self.secure is None and self.ckks is None and isinstance(
                msg, (PeerTerms, PeerSums, PeerKernel, GroupOutputs)):
            return self._on_reply(msg)
        if self.ckks is not None and isinstance(msg, (EncryptedSumTerms, EncryptedSums, EncryptedPeers)):
            self._expect(ClientStage.AWAIT_REPLY, msg)
            return self._on_reply(self.ckks.open(msg, gamma_uniform=self.settings.gamma))
        raise ProtocolError(SERVER, self.stage.value,
                            f"client {self.name!r} cannot accept a {type(msg).__name__}")

    # -- handlers ----------------------------------------------------------------------
    def _on_finish(self, msg: Finish) -> RoundReport:
        """After the last round (DESIGN §6): :meth:`finish`, reported as round ``msg.round``
        through the report gate like every round. A client that left answers too: it is
        evaluated as it stands, like in ``run``."""
        if msg.client != self.name or msg.round != self.round + 1 and self.left is None:
            raise ProtocolError(SERVER, self.stage.value,
                                f"expected Finish of round {self.round + 1} for {self.name!r}, "
                                f"got round {msg.round} for {msg.client!r}")
        metrics = self.finish()
        if self.privacy is not None:
            metrics["releases"] = float(self.privacy.releases)
        if self.left is not None:
            metrics["left_round"] = float(self.left["round"])
        return self.report_gate.report(self.name, msg.round, metrics, self.privacy)

    def _on_round_plan(self, plan: RoundPlan) -> list[Message]:
        self._expect(ClientStage.IDLE, plan)
        if plan.client != self.name or plan.round != self.round + 1:
            raise ProtocolError(SERVER, self.stage.value,
                                f"expected the plan of round {self.round + 1} for {self.name!r}, "
                                f"got round {plan.round} for {plan.client!r}")
        r = plan.round
        self._check_plan(plan)
        self.guard.start_round(r)
        try:
            task_loss = self._local_update(r)
        except PrivacyBudgetExceeded as exc:
            return [self._leave(r, str(exc))]
        self.guard.encoder_changed()
        self._metrics = {"task_loss": task_loss, **self.evaluate()}
        self._cl_losses = []
        if self.settings.method == "local" or plan.batches.shape[0] == 0:
            return [self._report(r)]
        self._plan = plan
        self._views = torch.Generator().manual_seed(derive_seed(self.settings.seed, self.name, r, "views"))
        torch.manual_seed(derive_seed(self.settings.seed, self.name, r, "cl-modules"))
        if self.phase is not None and not self.phase.communicates:  # nothing leaves the client
            for idx in plan.batches.reshape(-1, plan.batches.shape[-1]):
                self._optimize(self.phase.local_loss(self.model, self.task, self._batch(idx)))
            return [self._report(r)]
        first = (0, 0 if plan.exchange == "per_batch" else None)
        if self.secure is not None:  # wait for the server's setup of the first secure exchange
            self._exchange = first
            self.stage = ClientStage.AWAIT_REPLY
            return []
        return [self._release(*first)]

    def _check_plan(self, plan: RoundPlan) -> None:
        spec = self.settings.plan
        if spec is None or plan.batches.shape[0] == 0:  # an empty plan releases nothing
            return
        want = public_batches(self.settings.seed, plan.round, public_size=spec.public_size,
                              batch_size=spec.batch_size, cl_epochs=spec.cl_epochs)
        if plan.exchange != spec.exchange or plan.batches.shape != want.shape \
                or not torch.equal(plan.batches, want):
            raise ProtocolError(SERVER, self.stage.value, f"the plan of round {plan.round} is not "
                                f"the configured one (exchange {plan.exchange!r}, expected "
                                f"{spec.exchange!r}; the public rows must be those the round "
                                "seed gives): refusing it")

    def _on_secagg(self, env: SecAggEnvelope) -> list[Message]:
        """A stage of the current exchange's secure sum (DESIGN §4.2)."""
        self._expect(ClientStage.AWAIT_REPLY, env)
        assert self._plan is not None and self._exchange is not None and self.secure is not None
        self._check_exchange(env)
        if env.encoding is None:
            if self._sitting_out:
                raise ProtocolError(SERVER, self.stage.value, f"{self.name!r} sits out exchange "
                                    f"{self._exchange} of round {env.round}; it takes no stage")
            reply = self.secure.handle(env)
            if isinstance(reply.body, MaskedInput):  # under secagg, this is the release
                self.guard.released(env.round, *self._exchange, self._rows(*self._exchange))
            return [reply]
        epoch, batch = self._exchange
        if self.secure.instance is not None or self._sitting_out:
            raise ProtocolError(SERVER, "setup", f"a second secure-sum setup for exchange (round "
                                f"{env.round}, epoch {epoch}, batch {batch}) while {self.name!r} "
                                "already answered one; refusing (two sums over groups that "
                                "differ by one member reveal that member's input)")
        why = self.guard.refusal(env.round, epoch, batch, self._rows(epoch, batch))
        if why is not None:
            return [self._sit_out(env.round, epoch, batch, why)]
        try:
            advert, self._own = self.secure.begin(env, self._representations(epoch, batch))
        except PrivacyBudgetExceeded as exc:
            return [self._leave(self._plan.round, str(exc))]
        self._released = self._own.z
        return [advert]

    def _check_exchange(self, msg: Message) -> None:
        assert self._plan is not None and self._exchange is not None
        if (msg.client, msg.round, msg.epoch, msg.batch) != (self.name, self._plan.round, *self._exchange):
            raise ProtocolError(SERVER, self.stage.value,
                                f"{type(msg).__name__} for exchange (round {msg.round}, epoch "
                                f"{msg.epoch}, batch {msg.batch}) but {self.name!r} waits for round "
                                f"{self._plan.round}, epoch/batch {self._exchange}")

    def _on_reply(self, reply: PeerTerms | PeerSums | SumTerms | PeerKernel | GroupOutputs
                  | ExchangeAborted) -> list[Message]:
        self._expect(ClientStage.AWAIT_REPLY, reply)
        assert self._plan is not None and self._exchange is not None
        self._check_exchange(reply)
        epoch, batch = self._exchange
        batches = self._plan.batches[epoch]
        aborted = isinstance(reply, ExchangeAborted)
        if self._sitting_out and not aborted:
            raise ProtocolError(SERVER, self.stage.value, f"{type(reply).__name__} for exchange "
                                f"{self._exchange} that {self.name!r} sits out")
        if aborted and not self._sitting_out:
            if self.secure is not None:
                self.secure.aborted += 1
            if self.privacy is not None:
                sent = (self.secure.masked_sent if self.secure is not None
                        else (reply.round, epoch, batch) in self.guard.record)
                self.privacy.abort_exchange(reply.round, (epoch, batch), reply.reason, released=sent)
        self._sitting_out = False
        if batch is not None:  # per_batch: the anchor was computed at release time
            if not aborted:
                self._step(batches[batch], reply, 0, anchor=self._pending)
            self._pending = None
            nxt = (epoch, batch + 1) if batch + 1 < batches.shape[0] else (epoch + 1, 0)
        else:                  # per_epoch: recompute each anchor with the current encoder
            for b in range(batches.shape[0] if not aborted else 0):
                self._step(batches[b], reply, b)
            nxt = (epoch + 1, None)
        if self.secure is not None:
            self.secure.end()
            self._own = None
        if nxt[0] >= self._plan.batches.shape[0]:
            return [self._report(self._plan.round)]
        if self.secure is not None:  # the server sends the next exchange's setup
            self._exchange = nxt
            return []
        return [self._release(*nxt)]

    # -- pieces ------------------------------------------------------------------------
    def _leave(self, r: int, reason: str) -> Leave:
        """Leave the federation cleanly (DESIGN §5.3: never exceed the budget)."""
        if self.privacy is not None:
            self.privacy.leave(r, reason)
        self.stage = ClientStage.LEFT
        self.left = {"round": r, "reason": reason}
        self._plan, self._exchange, self._released, self._pending = None, None, None, None
        return Leave(self.name, r, reason)

    def _expect(self, stage: ClientStage, msg: Message) -> None:
        if self.stage is not stage:
            raise ProtocolError(SERVER, self.stage.value,
                                f"{type(msg).__name__} arrived while {self.name!r} is in stage "
                                f"{self.stage.value!r}; expected stage {stage.value!r}")

    def _local_update(self, label: int | str) -> float:
        """LocalUpdate; under DP-SGD the accountant is asked first (may raise
        :class:`PrivacyBudgetExceeded`) and the steps taken are recorded after."""
        r = self.round + 1 if label == "final" else int(label)
        torch.manual_seed(derive_seed(self.settings.seed, self.name, label, "local-modules"))
        if self.dpsgd is not None:
            assert self.privacy is not None
            steps = self.settings.local_epochs * self.dpsgd.steps_per_epoch
            self.privacy.admit_local_update(r, steps, self.dpsgd.sample_rate)
            loss, taken = self.dpsgd.run(self.settings.local_epochs)
            self.privacy.record_local_update(r, taken, self.dpsgd.sample_rate)
            return loss
        gen = torch.Generator().manual_seed(derive_seed(self.settings.seed, self.name, label, "local"))
        return local_update(self.model, self.task_optimizer, self.task, self.train.x,
                            self.train.targets, epochs=self.settings.local_epochs,
                            batch_size=self.settings.local_batch_size, generator=gen)

    def _random_view(self, x: torch.Tensor) -> torch.Tensor:
        assert self._views is not None
        return random_affine_view(x, self._views, size=self.model.image_size)

    def _anchor(self, idx: torch.Tensor) -> torch.Tensor:
        self.model.train()
        x = self.public_x[idx]
        return self.model.represent(self._random_view(x) if self.settings.augment else x)

    def _batch(self, idx: torch.Tensor) -> PublicBatch:
        """A public batch for a baseline's phase (its training view drawn like the anchor's)."""
        x = self.public_x[idx]
        train_x = self._random_view(x) if self.settings.augment else x
        assert self._views is not None
        return PublicBatch(x, train_x, self._views, self.model.image_size)

    def _representations(self, epoch: int, batch: int | None) -> torch.Tensor:
        """Z^n of one exchange, (nb, B, d); per_batch keeps the anchor's graph for the step."""
        assert self._plan is not None
        batches = self._plan.batches[epoch]
        if self.phase is not None:  # cofed / feddf: task outputs on the plain rows
            rows = batches if batch is None else batches[batch:batch + 1]
            return no_grad_release(self.phase, self.model, self.task, [self.public_x[i] for i in rows])
        if batch is not None:
            self._pending = self._anchor(batches[batch])
            z = self._pending.detach().unsqueeze(0)
        else:
            self.model.eval()
            with torch.no_grad():
                z = torch.stack([self.model.represent(self.public_x[idx]) for idx in batches])
        return z.float().contiguous()

    def _rows(self, epoch: int, batch: int | None) -> torch.Tensor:
        """The public rows exchange (epoch, batch) of the current plan covers."""
        assert self._plan is not None
        rows = self._plan.batches[epoch]
        return (rows if batch is None else rows[batch]).reshape(-1)

    def _sit_out(self, r: int, epoch: int, batch: int | None, reason: str) -> SitOut:
        """Do not release for this exchange (:class:`ReleaseGuard` says why): it counts as a
        drop for this exchange only; the server answers ExchangeAborted."""
        if self.privacy is not None:
            self.privacy.sit_out(r, (epoch, batch), reason)
        self._exchange = (epoch, batch)
        self._released, self._pending = None, None
        self._sitting_out = True
        self.stage = ClientStage.AWAIT_REPLY
        return SitOut(self.name, r, epoch, batch, reason)

    def _release(self, epoch: int, batch: int | None) -> Representations | TaskOutputs | Leave | SitOut:
        assert self._plan is not None
        r = self._plan.round
        rows = self._rows(epoch, batch)
        why = self.guard.refusal(r, epoch, batch, rows)
        if why is not None:
            return self._sit_out(r, epoch, batch, why)
        z = self._representations(epoch, batch)
        protect = None
        if self.ckks is not None:
            ckks = self.ckks
            protect = lambda zz: ckks.protect(r, epoch, batch, zz)
        if self.privacy is not None:
            try:
                out = self.privacy.release(r, (epoch, batch), z, recipient=SERVER, protect=protect)
            except PrivacyBudgetExceeded as exc:
                return self._leave(r, str(exc))
        else:
            out = protect(z) if protect is not None else z
        self.guard.released(r, epoch, batch, rows)
        self._exchange = (epoch, batch)
        self.stage = ClientStage.AWAIT_REPLY
        if isinstance(out, EncryptedRepresentations):
            self._released = None  # the sum form under ckks excludes the client: no leave-one-out
            return out
        self._released = out
        if self.phase is not None:
            return TaskOutputs(self.name, r, epoch, batch, out)
        return Representations(self.name, r, epoch, batch, self._released)

    def _step(self, idx: torch.Tensor, reply: PeerTerms | PeerSums | SumTerms | PeerKernel
              | GroupOutputs, index: int, anchor: torch.Tensor | None = None) -> None:
        """One optimizer step on public batch ``idx`` from the reply's batch ``index``
        (``anchor``: Z^n computed at release time, per_batch only)."""
        if isinstance(reply, GroupOutputs):
            assert self.phase is not None
            self._optimize(self.phase.reply_loss(self.model, self.task, self._batch(idx), reply,
                                                 index, self.name))
            return
        group = reply.group if isinstance(reply, SumTerms) else reply.peers[index]
        if not group:  # every peer has left the federation: nothing to align to
            return
        own_q = self._own.sq_norm[index] if self._own is not None else None
        loss = contrastive_loss(self.settings.method, anchor if anchor is not None else self._anchor(idx),
                                reply, index, tau=self.settings.tau, gamma=self.settings.gamma,
                                released=self._released[index] if self._released is not None else None,
                                released_sq_norm=own_q)
        self._optimize(loss)

    def _optimize(self, loss: torch.Tensor | None) -> None:
        """One step of the contrastive-phase optimizer (None: nothing to learn here)."""
        if loss is None:
            return
        self.cl_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.cl_optimizer.step()
        self.guard.encoder_changed()
        self._cl_losses.append(float(loss.detach()))

    def _report(self, r: int) -> RoundReport:
        """End round ``r``: ε, counters and losses; the report gate keeps all of them and
        sends only what the accounting covers (:mod:`~fedmuscle_secure.client.report_policy`)."""
        self.stage = ClientStage.IDLE
        self.round = r
        self._plan, self._exchange, self._released = None, None, None
        cl = self._cl_losses
        metrics = dict(self._metrics)
        if self.privacy is not None:
            eps = self.privacy.end_round(r)
            metrics["eps_record"], metrics["eps_client"] = eps["record"], eps["client"]
        if self.secure is not None:
            metrics["secagg_aborted"] = float(self.secure.aborted - self._aborted_before)
            metrics["clipped_values"] = float(self.secure.clipped_values - self._clipped_before)
            self._aborted_before, self._clipped_before = self.secure.aborted, self.secure.clipped_values
        metrics["cl_loss"] = sum(cl) / len(cl) if cl else float("nan")
        metrics["cl_steps"] = float(len(cl))
        return self.report_gate.report(self.name, r, metrics, self.privacy)

    # -- outside the round loop --------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """``val_metric`` reads private records (the shard's held-out split) directly;
        ``test_metric`` is the model on the shared test split. Which of them may leave the
        client is the report policy's decision, not this method's."""
        return {"val_metric": evaluate(self.model, self.task, self.val.x, self.val.targets),
                "test_metric": evaluate(self.model, self.task, self.test.x, self.test.targets)}

    def finish(self) -> dict[str, float]:
        """The closing LocalUpdate (§8.1: heads must match their encoders) and evaluation.

        A client that left the federation, or whose record-level budget cannot pay for
        the closing LocalUpdate, is evaluated as it stands. The metrics returned are the
        client's own; :meth:`_on_finish` sends the server only what the report policy allows.
        """
        if self.stage is ClientStage.AWAIT_REPLY:
            raise ProtocolError(SERVER, self.stage.value, f"{self.name!r} cannot finish mid-round")
        task_loss = float("nan")
        if self.stage is ClientStage.IDLE:
            try:
                task_loss = self._local_update("final")
            except PrivacyBudgetExceeded:
                pass  # the refusal is in the ledger; keep the model as it is
        out = {"task_loss": task_loss, **self.evaluate()}
        if self.privacy is not None:
            eps = self.privacy.end_round(self.round + 1)
            out["eps_record"], out["eps_client"] = eps["record"], eps["client"]
        return out

    def state_dict(self) -> dict:
        if self.stage is ClientStage.AWAIT_REPLY:
            raise ProtocolError(SERVER, self.stage.value, "checkpoints are taken between rounds")
        state = {"round": self.round, "model": self.model.state_dict(),
                 "task_optimizer": self.task_optimizer.state_dict(),
                 "cl_optimizer": self.cl_optimizer.state_dict(), "left": self.left}
        if self.privacy is not None:
            state["privacy"] = self.privacy.state_dict()
        if self.dpsgd is not None:
            state["dpsgd"] = self.dpsgd.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        self.model.load_state_dict(state["model"])
        self.task_optimizer.load_state_dict(state["task_optimizer"])
        self.cl_optimizer.load_state_dict(state["cl_optimizer"])
        self.left = state.get("left") or (self.privacy.left_in_ledger()
                                          if self.privacy is not None else None)
        self.stage = ClientStage.LEFT if self.left else ClientStage.IDLE
        # A rewind (the deployment's server restarted mid-round) drops the exchange in flight.
        self._plan, self._exchange, self._released, self._pending, self._own = (None,) * 5
        self._sitting_out = False  # what was released stays in self.guard: never again
        self.guard.encoder_changed()
        if self.secure is not None:
            self.secure.end()
        if self.privacy is not None:
            self.privacy.load_state_dict(state["privacy"])
        if self.dpsgd is not None:
            self.dpsgd.load_state_dict(state["dpsgd"])
