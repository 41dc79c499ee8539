"""A client's local training: LocalUpdate on its private shard, and its evaluation.

Record-level DP-SGD replaces the plain LocalUpdate when configured: the accountant is
asked first (DESIGN §5.2; a refusal raises :class:`PrivacyBudgetExceeded`) and the steps
taken are recorded after. The task optimizer lives here; the contrastive phase has its own
(:mod:`fedmuscle_secure.client.contrastive_phase`, §8.1: sharing Adam state hurt).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fedmuscle_secure.client.fedem import expectation_step, weighted_nll
from fedmuscle_secure.client.local_update import evaluate, local_update
from fedmuscle_secure.client.settings import ClientSettings, LabelledData
from fedmuscle_secure.client.weight_phase import WeightPhase
from fedmuscle_secure.data.tasks import Task
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.models import ClientModel
from fedmuscle_secure.models.mixture import MixtureModel
from fedmuscle_secure.seeding import derive_seed

if TYPE_CHECKING:  # heavy imports (opacus, dp-accounting) only where DP is configured
    from fedmuscle_secure.client.dp_sgd import DPSGDTrainer
    from fedmuscle_secure.client.privacy import ClientPrivacy


class LocalTraining:
    """LocalUpdate (plain or DP-SGD) and evaluation of one client's task model."""

    def __init__(self, name: str, model: ClientModel | MixtureModel, task: Task, *, train: LabelledData,
                 val: LabelledData, test: LabelledData, settings: ClientSettings,
                 privacy: ClientPrivacy | None, dpsgd: DPSGDTrainer | None,
                 weights: WeightPhase | None = None) -> None:
        """``weights``: the weight exchange of a weight-sharing method (FedProx's proximal
        gradient is added to every LocalUpdate step)."""
        self.name, self.model, self.task = name, model, task
        self.train, self.val, self.test = train, val, test
        self.settings = settings
        self.privacy = privacy
        # Its per-sample hooks are on only inside DPSGDTrainer.run, so the contrastive
        # phase pays nothing for them.
        self.dpsgd = dpsgd
        if dpsgd is not None and isinstance(model, MixtureModel):
            raise ConfigError("privacy.dp_sgd.enabled", "FedEM's mixture trains outside DP-SGD "
                              "(config_weights.check_weight_sharing refuses it)")
        self.weights = weights
        if dpsgd is not None and weights is not None:
            dpsgd.after_noise = weights.add_proximal_gradient
        self.task_optimizer = torch.optim.Adam(model.trainable_parameters(), lr=settings.lr,
                                               weight_decay=settings.weight_decay,
                                               fused=settings.fused_optimizer)

    def run(self, label: int | str, r: int) -> float:
        """LocalUpdate of round ``r`` (``label``: the round, or ``"final"``); returns the
        last epoch's mean task loss. Under DP-SGD may raise :class:`PrivacyBudgetExceeded`."""
        s = self.settings
        torch.manual_seed(derive_seed(s.seed, self.name, label, "local-modules"))
        if self.weights is not None:
            self.weights.begin_local_update()
        if self.dpsgd is not None:
            assert self.privacy is not None
            steps = s.local_epochs * self.dpsgd.steps_per_epoch
            self.privacy.admit_local_update(r, steps, self.dpsgd.sample_rate)
            loss, taken = self.dpsgd.run(s.local_epochs)
            self.privacy.record_local_update(r, taken, self.dpsgd.sample_rate)
            return loss
        gen = torch.Generator().manual_seed(derive_seed(s.seed, self.name, label, "local"))
        return local_update(self.model, self.task_optimizer, self.task, self.train.x,
                            self.train.targets, epochs=s.local_epochs,
                            batch_size=s.local_batch_size, generator=gen,
                            before_step=self.weights.add_proximal_gradient
                            if self.weights is not None else None,
                            batch_loss=self._mixture_loss())

    def _mixture_loss(self):
        """FedEM (:mod:`~fedmuscle_secure.client.fedem`): the E-step and π's M-step on the
        training set, then the components' responsibility-weighted loss for the LocalUpdate;
        None for one model (its task loss)."""
        if not isinstance(self.model, MixtureModel):
            return None
        model, task, x, targets = self.model, self.task, self.train.x, self.train.targets
        q = expectation_step(model, task, x, targets)
        return lambda idx: weighted_nll(model, task, x[idx], targets[idx], q[idx])

    def evaluate(self) -> dict[str, float]:
        """``val_metric`` reads private records (the shard's held-out split) directly;
        ``test_metric`` is the model on the shared test split. Which of them may leave the
        client is the report policy's decision, not this method's."""
        return {"val_metric": evaluate(self.model, self.task, self.val.x, self.val.targets),
                "test_metric": evaluate(self.model, self.task, self.test.x, self.test.targets)}
