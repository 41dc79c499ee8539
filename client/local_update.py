"""LocalUpdate (Algorithm 1, lines 16–20) and evaluation of a client's task model."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedmuscle_secure.data.tasks import Task


def local_update(
    model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, x: torch.Tensor,
    targets: torch.Tensor, *, epochs: int, batch_size: int, generator: torch.Generator,
    before_step: Callable[[], None] | None = None,
    batch_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """E epochs of the task loss on the private shard; returns the last epoch's mean loss.

    Shuffling draws from ``generator`` (experiment randomness, seeded per round and client)
    so a resumed run repeats an uninterrupted one exactly. ``before_step`` runs between the
    backward pass and each optimizer step (FedProx adds its proximal gradient there).
    ``batch_loss``: the loss of the batch of row indices it is given, in place of the task
    loss of ``model`` (FedEM's responsibility-weighted loss of its components).
    """
    model.train()
    n = x.shape[0]
    last = 0.0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if idx.numel() < 2 and n >= 2:  # BatchNorm cannot train on one row
                continue
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss(model(x[idx]), targets[idx]) if batch_loss is None \
                else batch_loss(idx)
            loss.backward()
            if before_step is not None:
                before_step()
            optimizer.step()
            total += float(loss.detach()) * idx.numel()
            seen += idx.numel()
        last = total / max(seen, 1)
    return last


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, x: torch.Tensor, targets: torch.Tensor,
             batch_size: int = 512) -> float:
    """The task metric (accuracy or micro-F1, DESIGN §2.4) on held-out data."""
    if x.shape[0] == 0:
        return float("nan")
    model.eval()
    logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    return float(task.evaluate(logits, targets))
