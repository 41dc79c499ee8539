"""The client state machine (DESIGN §2, Algorithm 1 from one client's side).

It takes a message and returns messages; it does no I/O, so the in-process simulator and a
network transport drive the same object. Stages: ``IDLE`` (between rounds) →
``AWAIT_REPLY`` (a release is out, waiting for S^n/α^n or sums) → ``IDLE`` after its
``RoundReport``. A message that does not fit the stage or the exchange raises
:class:`ProtocolError` naming the peer and the stage.

The machine runs the stages; its parts do the rest: :class:`LocalTraining` (LocalUpdate,
DP-SGD admission, evaluation), :class:`ContrastivePhase` (views, anchors, the contrastive
optimizer), and one :class:`ClientProtection` per protection mode (plain / secagg / ckks),
chosen when the client is built, so this machine never asks which mode is on.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import torch

from fedmuscle_secure.client.contrastive_phase import ContrastivePhase
from fedmuscle_secure.client.protection.base import ClientProtection, PlainReply
from fedmuscle_secure.client.protection.plain import PlainClientProtection
from fedmuscle_secure.client.release_record import ReleaseGuard, ReleaseRecord
from fedmuscle_secure.client.report_policy import ReportGate
from fedmuscle_secure.client.settings import ClientSettings, LabelledData
from fedmuscle_secure.client.training import LocalTraining
from fedmuscle_secure.client.weight_phase import WeightPhase
from fedmuscle_secure.data.tasks import Task
from fedmuscle_secure.errors import PrivacyBudgetExceeded, ProtocolError
from fedmuscle_secure.messages import (
    ExchangeAborted,
    Finish,
    Leave,
    Message,
    RoundPlan,
    RoundReport,
    SitOut,
    WeightAverage,
    WeightRelease,
)
from fedmuscle_secure.methods import WEIGHT_SHARING
from fedmuscle_secure.models import ClientModel
from fedmuscle_secure.models.mixture import MixtureModel

if TYPE_CHECKING:  # heavy imports (opacus, dp-accounting, tenseal) only where configured
    from fedmuscle_secure.client.dp_sgd import DPSGDTrainer
    from fedmuscle_secure.client.privacy import ClientPrivacy

SERVER = "server"
#: The one exchange (epoch, batch) of a weight-sharing round.
WEIGHT_EXCHANGE: tuple[int, None] = (0, None)


class ClientStage(enum.Enum):
    IDLE = "idle"
    AWAIT_REPLY = "await_reply"
    LEFT = "left"


class FedMuscleClient:
    """One organization's side: LocalUpdate, release Z^n, one step per server reply."""

    def __init__(self, name: str, model: ClientModel | MixtureModel, task: Task, *, train: LabelledData,
                 val: LabelledData, test: LabelledData, public_x: torch.Tensor,
                 settings: ClientSettings, privacy: ClientPrivacy | None = None,
                 dpsgd: DPSGDTrainer | None = None,
                 protection: ClientProtection | None = None) -> None:
        """``protection``: the strategy of a secagg or ckks federation (None: plain)."""
        self.name = name
        self.model = model
        self.task = task
        self.settings = settings
        self.report_gate = ReportGate(settings.report)  # full metrics stay here, per round
        self.privacy = privacy
        self.dpsgd = dpsgd  # record-level DP-SGD replaces the plain LocalUpdate when set
        self.protection: ClientProtection = protection or PlainClientProtection()
        # At most one release per exchange, and never the same content twice (DESIGN §4.4):
        # remembered from the ledger so the rule survives a restart; asked again, the client
        # sits the exchange out.
        ledger = privacy.ledger if privacy is not None else None
        self.guard = ReleaseGuard(ReleaseRecord.from_ledger(ledger.entries if ledger is not None
                                                            else ()))
        # the weight exchange of a weight-sharing method (DESIGN §2.7); None: representations
        self.weights = (WeightPhase(model, settings.method, settings.weight_scope,
                                    settings.fedprox_mu, settings.feddea_keep)
                        if settings.method in WEIGHT_SHARING else None)
        self.training = LocalTraining(name, model, task, train=train, val=val, test=test,
                                      settings=settings, privacy=privacy, dpsgd=dpsgd,
                                      weights=self.weights)
        self.contrastive = ContrastivePhase(name, model, task, public_x, settings, self.guard)
        self.left: dict | None = None  # {"round", "reason"} once the client has left
        self.stage = ClientStage.IDLE
        self.round = 0  # last completed round
        self._plan: RoundPlan | None = None
        self._exchange: tuple[int, int | None] | None = None
        self._sitting_out = False
        self._released: torch.Tensor | None = None  # what was sent, (nb, B, d)
        self._part_means: list[torch.Tensor | None] = []  # secure weight sums of the round
        self._metrics: dict[str, float] = {}

    @property
    def cl_losses(self) -> tuple[float, ...]:
        """The contrastive-phase losses of the current (or last) round, one per step."""
        return tuple(self.contrastive.losses)

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
        if isinstance(msg, ExchangeAborted):
            return self._on_reply(msg)
        if isinstance(msg, self.protection.stage_types):
            return self._on_stage(msg)
        if isinstance(msg, self.protection.reply_types):
            self._expect(ClientStage.AWAIT_REPLY, msg)
            return self._on_reply(self.protection.open(msg))
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
            task_loss = self.training.run(r, r)
        except PrivacyBudgetExceeded as exc:
            return [self._leave(r, str(exc))]
        self.guard.encoder_changed()
        self._metrics = {"task_loss": task_loss, **self.evaluate()}
        self.contrastive.losses.clear()
        if self.settings.method == "local" or plan.batches.shape[0] == 0:
            return [self._report(r)]
        self._plan = plan
        if self.weights is not None:  # the weight exchange after the LocalUpdate
            if not self.protection.weight_parts:
                return [self._release_weights(r)]
            self._exchange, self._part_means = (0, 0), []  # one sum per part (§2.7)
            self.stage = ClientStage.AWAIT_REPLY
            return [] if self.protection.server_opens_exchange else [self._release_part(r, 0)]
        self.contrastive.begin_round(r, plan.members)
        if not self.contrastive.communicates:  # nothing leaves the client
            self.contrastive.train_silently(plan.batches)
            return [self._report(r)]
        first = (0, 0 if plan.exchange == "per_batch" else None)
        if self.protection.server_opens_exchange:  # wait for the server's setup
            self._exchange = first
            self.stage = ClientStage.AWAIT_REPLY
            return []
        return [self._release(*first)]

    def _check_plan(self, plan: RoundPlan) -> None:
        spec = self.settings.plan
        if spec is None or plan.batches.shape[0] == 0:  # an empty plan releases nothing
            return
        if not spec.matches(plan, self.settings.seed):
            raise ProtocolError(SERVER, self.stage.value, f"the plan of round {plan.round} is not "
                                f"the configured one (exchange {plan.exchange!r}, expected "
                                f"{spec.exchange!r}; the public rows must be those the round "
                                "seed gives): refusing it")

    def _on_stage(self, msg: Message) -> list[Message]:
        """A stage of the protection's own protocol for the current exchange (the secure
        sum of secagg, DESIGN §4.2): a setup, answered with this client's input, or a later
        stage."""
        self._expect(ClientStage.AWAIT_REPLY, msg)
        assert self._plan is not None and self._exchange is not None
        self._check_exchange(msg)
        epoch, batch = self._exchange
        if not self.protection.is_setup(msg):
            if self._sitting_out:
                raise ProtocolError(SERVER, self.stage.value, f"{self.name!r} sits out exchange "
                                    f"{self._exchange} of round {msg.round}; it takes no stage")
            reply, released = self.protection.step(msg)
            if released:
                self.guard.released(msg.round, epoch, batch, self._rows(epoch, batch))
            return [reply]
        if self.protection.in_progress or self._sitting_out:
            raise ProtocolError(SERVER, "setup", f"a second secure-sum setup for exchange (round "
                                f"{msg.round}, epoch {epoch}, batch {batch}) while {self.name!r} "
                                "already answered one; refusing (two sums over groups that "
                                "differ by one member reveal that member's input)")
        why = self.guard.refusal(msg.round, epoch, batch, self._rows(epoch, batch))
        if why is not None:
            return [self._sit_out(msg.round, epoch, batch, why)]
        try:
            if self.weights is not None:
                advert = self._begin_weights(msg, batch)
            else:
                advert, self._released = self.protection.begin(msg, self._representations(epoch, batch))
        except PrivacyBudgetExceeded as exc:
            return [self._leave(self._plan.round, str(exc))]
        return [advert]

    def _check_exchange(self, msg: Message) -> None:
        assert self._plan is not None and self._exchange is not None
        if (msg.client, msg.round, msg.epoch, msg.batch) != (self.name, self._plan.round, *self._exchange):
            raise ProtocolError(SERVER, self.stage.value,
                                f"{type(msg).__name__} for exchange (round {msg.round}, epoch "
                                f"{msg.epoch}, batch {msg.batch}) but {self.name!r} waits for round "
                                f"{self._plan.round}, epoch/batch {self._exchange}")

    def _on_reply(self, reply: PlainReply | ExchangeAborted) -> list[Message]:
        self._expect(ClientStage.AWAIT_REPLY, reply)
        assert self._plan is not None and self._exchange is not None
        self._check_exchange(reply)
        epoch, batch = self._exchange
        aborted = isinstance(reply, ExchangeAborted)
        if self._sitting_out and not aborted:
            raise ProtocolError(SERVER, self.stage.value, f"{type(reply).__name__} for exchange "
                                f"{self._exchange} that {self.name!r} sits out")
        if aborted and not self._sitting_out:
            sent = self.protection.aborted((reply.round, epoch, batch) in self.guard.record)
            if self.privacy is not None:
                self.privacy.abort_exchange(reply.round, (epoch, batch), reply.reason, released=sent)
        self._sitting_out = False
        if self.weights is not None and batch is None:  # the round's one exchange is over
            if isinstance(reply, WeightAverage):
                self._load_weights(reply)
            self.protection.exchange_over()
            return [self._report(self._plan.round)]
        if self.weights is not None:  # the secure sum of part ``batch`` is over
            self._part_means.append(None if aborted else self._part_mean(reply, batch))
            self.protection.exchange_over()
            if batch + 1 < len(self.weights.layout()):
                self._exchange = (0, batch + 1)
                return [] if self.protection.server_opens_exchange else \
                    [self._release_part(self._plan.round, batch + 1)]
            self.weights.apply_mean_updates(self._part_means)
            self._part_means = []
            self.guard.encoder_changed()
            return [self._report(self._plan.round)]
        batches = self._plan.batches[epoch]
        self.contrastive.learn(None if aborted else reply, batches, batch, self._released,
                               self.protection.own_sq_norm)
        if batch is not None:
            nxt = (epoch, batch + 1) if batch + 1 < batches.shape[0] else (epoch + 1, 0)
        else:
            nxt = (epoch + 1, None)
        self.protection.exchange_over()
        if nxt[0] >= self._plan.batches.shape[0]:
            return [self._report(self._plan.round)]
        if self.protection.server_opens_exchange:  # the server sends the next exchange's setup
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
        self._plan, self._exchange, self._released = None, None, None
        self.contrastive.drop_pending()
        return Leave(self.name, r, reason)

    def _expect(self, stage: ClientStage, msg: Message) -> None:
        if self.stage is not stage:
            raise ProtocolError(SERVER, self.stage.value,
                                f"{type(msg).__name__} arrived while {self.name!r} is in stage "
                                f"{self.stage.value!r}; expected stage {stage.value!r}")

    def _rows(self, epoch: int, batch: int | None) -> torch.Tensor:
        """The public rows exchange (epoch, batch) of the current plan covers (none for a
        weight exchange)."""
        assert self._plan is not None
        if self.weights is not None:
            return torch.empty(0, dtype=torch.long)
        rows = self._plan.batches[epoch]
        return (rows if batch is None else rows[batch]).reshape(-1)

    def _sit_out(self, r: int, epoch: int, batch: int | None, reason: str) -> SitOut:
        """Do not release for this exchange (:class:`ReleaseGuard` says why): it counts as a
        drop for this exchange only; the server answers ExchangeAborted."""
        if self.privacy is not None:
            self.privacy.sit_out(r, (epoch, batch), reason)
        self._exchange = (epoch, batch)
        self._released = None
        self.contrastive.drop_pending()
        self._sitting_out = True
        self.stage = ClientStage.AWAIT_REPLY
        return SitOut(self.name, r, epoch, batch, reason)

    def _representations(self, epoch: int, batch: int | None) -> torch.Tensor:
        """Z^n of exchange (epoch, batch) of the current plan, (nb, B, d)."""
        assert self._plan is not None
        return self.contrastive.representations(self._plan.batches[epoch], batch)

    def _release(self, epoch: int, batch: int | None) -> Message:
        """The client's release of exchange (epoch, batch): through the privacy pipeline
        and the protection's seal, or a sit-out or a leave."""
        assert self._plan is not None
        r = self._plan.round
        rows = self._rows(epoch, batch)
        why = self.guard.refusal(r, epoch, batch, rows)
        if why is not None:
            return self._sit_out(r, epoch, batch, why)
        z = self._representations(epoch, batch)
        seal = self.protection.seal(r, epoch, batch)
        if self.privacy is not None:
            try:
                out = self.privacy.release(r, (epoch, batch), z, recipient=SERVER, protect=seal)
            except PrivacyBudgetExceeded as exc:
                return self._leave(r, str(exc))
        else:
            out = seal(z) if seal is not None else z
        self.guard.released(r, epoch, batch, rows)
        self._exchange = (epoch, batch)
        self.stage = ClientStage.AWAIT_REPLY
        msg, self._released = self.protection.release_message(
            self.name, r, epoch, batch, out, outputs=self.contrastive.phase is not None)
        return msg

    def _release_weights(self, r: int) -> Message:
        """The round's weight release (exchange (0, None), no public rows): the shared
        parameters after LocalUpdate, recorded in the ledger like any release."""
        assert self.weights is not None
        epoch, batch, rows = WEIGHT_EXCHANGE[0], WEIGHT_EXCHANGE[1], torch.empty(0, dtype=torch.long)
        why = self.guard.refusal(r, epoch, batch, rows)
        if why is not None:
            return self._sit_out(r, epoch, batch, why)
        w = self.weights.release()
        samples = self._samples()
        if self.privacy is not None:
            content = {}
            if self.privacy.noises_updates:  # DP-FedAvg: what the server knows + a noised update
                known = self.weights.known
                parts = [name for name, _ in self.weights.layout()]
                try:
                    noisy = self.privacy.noisy_updates(
                        r, (epoch, batch), list(zip(parts, self.weights.segments(w - known),
                                                    strict=True)))
                except PrivacyBudgetExceeded as exc:
                    return self._leave(r, str(exc))
                w = (known.to(torch.float64) + torch.cat(noisy)).float().contiguous()
                self.weights.mark_known(w)
                content = {"update_noise": True}
            self.privacy.release_weights(r, (epoch, batch), [w], samples, recipient=SERVER,
                                         **content)
        self.guard.released(r, epoch, batch, rows)
        self._exchange = (epoch, batch)
        self.stage = ClientStage.AWAIT_REPLY
        return WeightRelease(self.name, r, epoch, batch, self.weights.layout(), w, samples)

    def _release_part(self, r: int, k: int) -> Message:
        """The release of shared part ``k`` (exchange (0, k), no public rows) with this
        round's update of it, sealed by the protection (ckks: encrypted), recorded in the
        ledger like any release; or a sit-out."""
        assert self.weights is not None
        rows = torch.empty(0, dtype=torch.long)
        why = self.guard.refusal(r, 0, k, rows)
        if why is not None:
            return self._sit_out(r, 0, k, why)
        part = self.weights.layout()[k][0]
        msg, content = self.protection.seal_weights(
            r, k, part, self.weights.segments(self.weights.update())[k])
        if self.privacy is not None:
            self.privacy.release_weights(r, (0, k), msg.payload_parts(), 1, recipient=SERVER,
                                         **content)
        self.guard.released(r, 0, k, rows)
        self._exchange = (0, k)
        self.stage = ClientStage.AWAIT_REPLY
        return msg

    def _samples(self) -> int:
        """The client's FedAvg weight: its training-set size; under DP that size would leave
        outside the accounting (it tells neighbouring datasets apart), so every client
        weighs 1."""
        return 1 if self.settings.dp else int(self.training.train.x.shape[0])

    def _begin_weights(self, setup: Message, k: int | None) -> Message:
        """Answer the setup of part ``k``'s secure sum with this round's update of it."""
        assert self.weights is not None and k is not None
        layout = self.weights.layout()
        if not 0 <= k < len(layout):
            raise ProtocolError(SERVER, "setup", f"a secure sum for weight part {k}; "
                                f"{self.name!r} shares {len(layout)} parts")
        update = self.weights.segments(self.weights.update())[k]
        return self.protection.begin_weights(setup, layout[k][0], update)

    def _part_mean(self, reply: PlainReply, k: int) -> torch.Tensor:
        """The mean update of part ``k`` the server decoded from its secure sum."""
        assert self.weights is not None
        n = self.weights.layout()[k][1]
        if not isinstance(reply, WeightAverage) or reply.w.dtype != torch.float32 \
                or reply.w.shape != (n,) or not torch.isfinite(reply.w).all() \
                or len(reply.peers) != 1 or self.name not in reply.peers[0]:
            raise ProtocolError(SERVER, self.stage.value, f"the mean update of part {k} for "
                                f"{self.name!r} must be a WeightAverage of {n} finite float32 "
                                f"values over a group that includes it; got {type(reply).__name__}")
        self.protection.check_mean_update(self.weights.layout()[k][0], reply.w, reply.peers[0])
        return reply.w

    def _load_weights(self, reply: WeightAverage) -> None:
        assert self.weights is not None
        layout = self.weights.layout()
        total = sum(n for _, n in layout)
        if reply.w.dtype != torch.float32 or len(reply.peers) != len(layout) \
                or reply.w.shape != (total,) or not torch.isfinite(reply.w).all():
            raise ProtocolError(SERVER, self.stage.value, f"WeightAverage for {self.name!r} must "
                                f"be finite float32 of {total} weights in {len(layout)} parts; "
                                f"got {reply.w.dtype} {tuple(reply.w.shape)}, "
                                f"{len(reply.peers)} parts")
        self.weights.load(reply.w)
        self.weights.mark_known(reply.w)
        self.guard.encoder_changed()

    def _report(self, r: int) -> RoundReport:
        """End round ``r``: ε, counters and losses; the report gate keeps all of them and
        sends only what the accounting covers (:mod:`~fedmuscle_secure.client.report_policy`)."""
        self.stage = ClientStage.IDLE
        self.round = r
        self._plan, self._exchange, self._released = None, None, None
        cl = self.contrastive.losses
        metrics = dict(self._metrics)
        if self.privacy is not None:
            eps = self.privacy.end_round(r)
            metrics["eps_record"], metrics["eps_client"] = eps["record"], eps["client"]
        metrics.update(self.protection.round_metrics())
        metrics["cl_loss"] = sum(cl) / len(cl) if cl else float("nan")
        metrics["cl_steps"] = float(len(cl))
        return self.report_gate.report(self.name, r, metrics, self.privacy)

    # -- outside the round loop --------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """The task metrics (:meth:`LocalTraining.evaluate`)."""
        return self.training.evaluate()

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
                task_loss = self.training.run("final", self.round + 1)
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
                 "task_optimizer": self.training.task_optimizer.state_dict(),
                 "cl_optimizer": self.contrastive.optimizer.state_dict(), "left": self.left}
        if self.privacy is not None:
            state["privacy"] = self.privacy.state_dict()
        if self.dpsgd is not None:
            state["dpsgd"] = self.dpsgd.state_dict()
        if self.weights is not None:  # MOCHA's target; the weights the server knows
            state["weight_phase"] = self.weights.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        self.model.load_state_dict(state["model"])
        if "weight_phase" in state and self.weights is not None:
            self.weights.load_state_dict(state["weight_phase"])
        self.training.task_optimizer.load_state_dict(state["task_optimizer"])
        self.contrastive.optimizer.load_state_dict(state["cl_optimizer"])
        self.left = state.get("left") or (self.privacy.left_in_ledger()
                                          if self.privacy is not None else None)
        self.stage = ClientStage.LEFT if self.left else ClientStage.IDLE
        # A rewind (the deployment's server restarted mid-round) drops the exchange in flight.
        self._plan, self._exchange, self._released = None, None, None
        self.contrastive.drop_pending()
        self._sitting_out = False  # what was released stays in self.guard: never again
        self.guard.encoder_changed()
        self.protection.exchange_over()
        if self.privacy is not None:
            self.privacy.load_state_dict(state["privacy"])
        if self.dpsgd is not None:
            self.dpsgd.load_state_dict(state["dpsgd"])
