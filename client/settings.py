"""What a client is told about the experiment: its settings, the plan spec, its data."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedmuscle_secure.client.report_policy import ReportPolicy
from fedmuscle_secure.messages import RoundPlan
from fedmuscle_secure.seeding import public_batches


@dataclass(frozen=True)
class LabelledData:
    x: torch.Tensor
    targets: torch.Tensor


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

    def matches(self, plan: RoundPlan, seed: int) -> bool:
        """Whether ``plan`` has this exchange mode and exactly the round seed's public rows."""
        want = public_batches(seed, plan.round, public_size=self.public_size,
                              batch_size=self.batch_size, cl_epochs=self.cl_epochs)
        return plan.exchange == self.exchange and plan.batches.shape == want.shape \
            and torch.equal(plan.batches, want)


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
    fused_optimizer: bool = True  # Adam's fused kernel (training.fused_optimizer)
    weight_scope: str = "encoder"  # fedavg/fedprox: what is averaged (weight_sharing.scope)
    fedprox_mu: float = 0.0        # fedprox's proximal strength (weight_sharing.mu)
    feddea_keep: float = 1.0       # feddea's share of update dimensions kept (weight_sharing.keep)
    dp: bool = False               # any DP mechanism on (FedAvg then weighs every client 1)
    #: cofed/feddf: the other organisations configured with this client's task (its output
    #: space); it releases only in rounds whose plan names one of them (DESIGN §2.3)
    output_partners: tuple[str, ...] = ()
