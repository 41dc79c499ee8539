"""Self-training with confident pseudo-labels, the ``pseudo_label`` baseline (DESIGN §2.3).

Lee, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method for Deep
Neural Networks", ICML 2013 Workshop on Challenges in Representation Learning. A model
labels unlabelled data with its own predictions and trains on them with the labelled loss.

Adaptation here: no communication at all — each client labels the round's public batches
with its own model (eval mode, un-augmented rows), keeps only confident labels (a
single-label task: softmax max ≥ 0.9; a multi-label task: per attribute sigmoid ≥ 0.9 or
≤ 0.1, the others masked out; Lee keeps every argmax and ramps the loss weight α(t) up
instead — the threshold plays that role for models that start from scratch), and takes one
step of its task loss on them per public batch, on the training view (a random affine view
when ``training.augment``). The step uses the contrastive-phase optimizer, which for this
method covers the whole model (encoder and task head) at ``cl_lr`` with its own Adam state:
DESIGN §8.1 found that sharing Adam state with the private task loss hurt, and a smaller
rate keeps noisy pseudo-labels from overriding the private labels. The same confidence
rule is CoFED's fallback for a client with no partner (:mod:`.cofed`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmuscle_secure.data.tasks import Task

__all__ = ["THRESHOLD", "confident_targets", "masked_task_loss", "pseudo_label_loss"]

THRESHOLD = 0.9


def confident_targets(task: Task, logits: Tensor, threshold: float | None = None,
                      ) -> tuple[Tensor, Tensor]:
    """(targets, mask) from a model's own logits (B, C); ``threshold`` defaults to
    :data:`THRESHOLD` (read at call time).

    Multiclass: targets (B,) int64 argmax, mask (B,) where softmax max ≥ ``threshold``.
    Multilabel: targets (B, C) float 0/1 at p ≥ 0.5, mask (B, C) where p ≥ threshold or
    p ≤ 1 − threshold.
    """
    threshold = THRESHOLD if threshold is None else threshold
    if task.kind == "multiclass":
        conf, cls = F.softmax(logits, dim=-1).max(dim=-1)
        return cls, conf >= threshold
    p = torch.sigmoid(logits)
    return (p >= 0.5).to(logits.dtype), (p >= threshold) | (p <= 1 - threshold)


def masked_task_loss(task: Task, logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor | None:
    """The task loss over the kept labels only; None when nothing is kept (no step)."""
    if not bool(mask.any()):
        return None
    if task.kind == "multiclass":
        return F.cross_entropy(logits[mask], targets[mask].long())
    per = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    m = mask.to(per.dtype)
    return (per * m).sum() / m.sum()


def pseudo_label_loss(model: nn.Module, task: Task, x: Tensor, train_x: Tensor) -> Tensor | None:
    """Label ``x`` with ``model`` (eval mode, no gradient), then the masked task loss of the
    model (train mode) on ``train_x``, the training view of the same rows."""
    model.eval()
    with torch.no_grad():
        targets, mask = confident_targets(task, model(x))
    model.train()
    return masked_task_loss(task, model(train_x), targets, mask)
