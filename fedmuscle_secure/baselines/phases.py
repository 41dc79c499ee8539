"""The client side of the baselines that do not release representations (DESIGN §2.3).

A :class:`PublicPhase` tells the client state machine (``client/state.py``) what the
method does per public batch: release nothing and take a local step (``simclr``,
``pseudo_label``), or release task outputs and take a step from the server's group reply
(``cofed``, ``feddf``; a client whose output space has no other member releases nothing,
:func:`public_phase`). Representation-releasing baselines (``gram``, ``fedhenn``) need no
phase object: they follow FedMuscle's path and only differ in the loss
(:func:`~fedmuscle_secure.client.contrastive.contrastive_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedmuscle_secure.baselines import cofed, feddf, pseudo_label, simclr
from fedmuscle_secure.data.tasks import Task
from fedmuscle_secure.messages import GroupOutputs
from fedmuscle_secure.models import ClientModel

__all__ = ["PublicBatch", "PublicPhase", "public_phase"]


@dataclass(frozen=True)
class PublicBatch:
    """One public batch as the client sees it: the plain rows, the view it trains on (a
    random affine view under ``training.augment``), and what fresh random views are drawn
    from (the client's per-round view generator, the model's input size)."""

    x: Tensor
    train_x: Tensor
    views: torch.Generator
    size: int

    def random_view(self, x: Tensor) -> Tensor:
        """A fresh SimCLR view of ``x`` (:func:`~fedmuscle_secure.baselines.simclr.simclr_view`)."""
        return simclr.simclr_view(x, self.views, size=self.size)


class PublicPhase:
    """What one method does with a public batch; subclasses override what applies."""

    communicates: bool = True   # False: the client releases nothing in the public phase
    trains_head: bool = False   # True: the contrastive-phase optimizer covers the task head too

    def release(self, model: ClientModel, task: Task, x: Tensor) -> Tensor:
        """The (B, C) float32 payload released for the batch (eval mode, no gradient)."""
        raise NotImplementedError

    def local_loss(self, model: ClientModel, task: Task, batch: PublicBatch) -> Tensor | None:
        """The loss of a no-communication step (None: skip the step)."""
        raise NotImplementedError

    def reply_loss(self, model: ClientModel, task: Task, batch: PublicBatch, reply: GroupOutputs,
                   index: int, me: str) -> Tensor | None:
        """The loss of a step from the server's reply at batch ``index`` (None: skip)."""
        raise NotImplementedError


class SimclrPhase(PublicPhase):
    communicates = False

    def local_loss(self, model: ClientModel, task: Task, batch: PublicBatch) -> Tensor | None:
        model.train()
        return simclr.nt_xent(model.represent(batch.random_view(batch.x)),
                              model.represent(batch.random_view(batch.x)))


class PseudoLabelPhase(PublicPhase):
    communicates = False
    trains_head = True

    def local_loss(self, model: ClientModel, task: Task, batch: PublicBatch) -> Tensor | None:
        return pseudo_label.pseudo_label_loss(model, task, batch.x, batch.train_x)


class CofedPhase(PublicPhase):
    trains_head = True

    def release(self, model: ClientModel, task: Task, x: Tensor) -> Tensor:
        return cofed.hard_predictions(task, model(x))

    def reply_loss(self, model: ClientModel, task: Task, batch: PublicBatch, reply: GroupOutputs,
                   index: int, me: str) -> Tensor | None:
        alone = all(m == me for m in reply.peers)
        return cofed.cofed_loss(model, task, batch.x, batch.train_x, reply.mean[index], alone)


class FeddfPhase(PublicPhase):
    trains_head = True

    def release(self, model: ClientModel, task: Task, x: Tensor) -> Tensor:
        return model(x)

    def reply_loss(self, model: ClientModel, task: Task, batch: PublicBatch, reply: GroupOutputs,
                   index: int, me: str) -> Tensor | None:
        if not [m for m in reply.peers if m != me]:
            return None  # no partner shares this output space: nothing to distil from
        model.train()
        return feddf.distillation_loss(task, model(batch.train_x), reply.mean[index])


class UnpartneredFeddfPhase(PublicPhase):
    """FedDF for a client whose output space no other organisation shares: there is no
    ensemble to distil from, so it releases nothing and takes no step."""

    communicates = False
    trains_head = True

    def local_loss(self, model: ClientModel, task: Task, batch: PublicBatch) -> Tensor | None:
        return None


_PHASES: dict[str, type[PublicPhase]] = {
    "simclr": SimclrPhase, "pseudo_label": PseudoLabelPhase, "cofed": CofedPhase,
    "feddf": FeddfPhase,
}
# An output-space method's client with no partner in its space (DESIGN §2.3): CoFED's vote
# would be its own prediction, so it takes CoFED's fallback, pseudo-labelling, without a
# release; FedDF's ensemble would be empty. Neither sends anything no one would use.
_UNPARTNERED: dict[str, type[PublicPhase]] = {
    "cofed": PseudoLabelPhase, "feddf": UnpartneredFeddfPhase,
}


def public_phase(method: str, *, partnered: bool = True) -> PublicPhase | None:
    """The phase object of ``method``, or None for the representation-releasing methods.
    ``partnered``: whether another organisation's task shares this client's output space
    (only ``cofed`` and ``feddf`` read it)."""
    cls = _PHASES.get(method) if partnered else _UNPARTNERED.get(method, _PHASES.get(method))
    return cls() if cls is not None else None


def no_grad_release(phase: PublicPhase, model: ClientModel, task: Task,
                    xs: list[Tensor]) -> Tensor:
    """The exchange's release (nb, B, C) float32 for the batches ``xs``."""
    model.eval()
    with torch.no_grad():
        return torch.stack([phase.release(model, task, x) for x in xs]).float().contiguous()
