"""SimCLR on the public data alone, the ``simclr`` baseline (DESIGN §2.3, §8.1).

Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020. Two random views of each image, encoded and projected, are
pulled together by the NT-Xent loss against the other 2B − 2 views of the batch.

Adaptation here: no communication; each client trains its own encoder and projection head
(the same ones the federated methods align) on the round's public batches, one optimizer
step per batch with the contrastive-phase optimizer. SimCLR's colour/crop augmentations do
not suit 1-channel 8×8 digits, so a view is a random affine warp (rotation, scale, shift:
the views the other methods use, :func:`~fedmuscle_secure.data.views.random_view`)
plus small Gaussian pixel noise (5 % of the batch's pixel std). τ = 0.2 (the paper's
contrastive temperature of this project, DESIGN §2.1). §8.1 found that about half of
FedMuscle's gain on the embedded benchmark comes from this alone, so it is a baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fedmuscle_secure.data.views import random_view

__all__ = ["NOISE", "TEMPERATURE", "nt_xent", "simclr_view"]

TEMPERATURE = 0.2
NOISE = 0.05


def nt_xent(z1: Tensor, z2: Tensor, tau: float = TEMPERATURE) -> Tensor:
    """NT-Xent over 2B views: row i's positive is its other view, the rest are negatives."""
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = z @ z.T / tau
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(sim, target)


def simclr_view(x: Tensor, generator: torch.Generator, *, size: int) -> Tensor:
    """One random view: affine warp to the model's input size, then pixel noise (a text's
    view is token dropout alone)."""
    v = random_view(x, generator, size=size)
    if not v.is_floating_point():
        return v
    noise = torch.randn(v.shape, generator=generator, dtype=v.dtype)
    return v + NOISE * v.detach().std() * noise
