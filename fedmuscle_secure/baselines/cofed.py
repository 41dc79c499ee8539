"""CoFED: co-training through voted pseudo-labels, the ``cofed`` baseline (DESIGN §2.3).

Cao, Wang, Zhang, Ma, Chen, Niyato, "CoFED: Cross-silo Heterogeneous Federated Multi-task
Learning via Co-training" (arXiv 2022; IEEE TMC 2023/24). Clients with different models
label a shared unlabelled public set with hard predictions; the server aggregates the
votes into pseudo-labels; every client then trains on its private data plus the
pseudo-labelled public data.

Adaptation here: tasks differ between clients, so votes are only counted among clients
whose task has the same output space (same task name: two ``digit10`` clients vote
together, a ``coarse`` client votes alone). Per public batch each client releases its
hard predictions in its own output space (one-hot class for a single-label task, 0/1 per
attribute for a multi-label one); the server returns the mean vote of the whole group,
the recipient included (:mod:`.group_outputs`); a label is kept where a strict majority
agrees (vote share > 1/2 for a class; for an attribute ≠ 1/2), as CoFED keeps only
agreed labels. The client then takes one step of its task loss (encoder + head, the
contrastive-phase optimizer over the whole model, cf. :mod:`.pseudo_label`) on the kept
labels, on its training view of the batch. A client whose task no one else shares (its
group would be itself) falls back to its own confident predictions, exactly the
``pseudo_label`` rule, rather than skipping the phase, and releases nothing: its vote would
only come back to it (:func:`~fedmuscle_secure.baselines.phases.public_phase`); one whose
partners have all left votes alone the same way. CoFED has no such case (its clients all
share one label space). Releases are task outputs, not unit-norm representations, so
representation noise (DESIGN §5.1) is refused for this method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmuscle_secure.baselines.pseudo_label import confident_targets, masked_task_loss
from fedmuscle_secure.data.tasks import Task

__all__ = ["cofed_loss", "hard_predictions", "vote_targets"]


def hard_predictions(task: Task, logits: Tensor) -> Tensor:
    """What a client releases: one-hot argmax (multiclass) or 0/1 per output (multilabel)."""
    if task.kind == "multiclass":
        return F.one_hot(logits.argmax(-1), task.num_outputs).to(torch.float32)
    return (logits > 0).to(torch.float32)


def vote_targets(task: Task, shares: Tensor) -> tuple[Tensor, Tensor]:
    """(targets, mask) from the group's vote shares (B, C): strict majorities only."""
    if task.kind == "multiclass":
        top, cls = shares.max(-1)
        return cls, top > 0.5
    return (shares > 0.5).to(shares.dtype), shares != 0.5


def cofed_loss(model: nn.Module, task: Task, x: Tensor, train_x: Tensor, shares: Tensor,
               alone: bool) -> Tensor | None:
    """One step's loss for the batch: voted labels, or the own-confidence fallback."""
    if alone:
        model.eval()
        with torch.no_grad():
            targets, mask = confident_targets(task, model(x))
    else:
        targets, mask = vote_targets(task, shares)
    model.train()
    return masked_task_loss(task, model(train_x), targets, mask)
