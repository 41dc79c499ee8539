"""A client's model under FedEM (Marfoq et al., "Federated Multi-Task Learning under a
Mixture of Distributions", NeurIPS 2021; DESIGN §2.7): K component models θ_1..θ_K, shared
by the federation, and the client's own mixture weights π (a point of the K-simplex).

The client predicts with the mixture Σ_k π_k p_k(y | x) (the paper's prediction rule,
probabilities mixed, not logits). :meth:`MixtureModel.forward` returns it in the task's own
output form, so the task's loss, prediction and metric read it as they read one model's
logits: for a multiclass task log Σ_k π_k softmax(l_k) (its softmax is the mixture), for a
multilabel task, per output, the logit of Σ_k π_k sigmoid(l_k) (its sigmoid is the mixture).
π is a buffer: it is checkpointed with the components and stays on the client (never shared).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def mixture_logits(logits: torch.Tensor, log_pi: torch.Tensor, *, multilabel: bool) -> torch.Tensor:
    """The mixture Σ_k π_k p_k(y | x) of the components' ``logits`` (K, N, C), in log space,
    as the task's output form (module docs)."""
    lp = log_pi.to(logits.dtype).reshape(-1, *([1] * (logits.ndim - 1)))
    if not multilabel:
        return torch.logsumexp(lp + F.log_softmax(logits, dim=-1), dim=0)
    log_p = torch.logsumexp(lp + F.logsigmoid(logits), dim=0)
    log_not_p = torch.logsumexp(lp + F.logsigmoid(-logits), dim=0)
    return log_p - log_not_p


class MixtureModel(nn.Module):
    """K components of one architecture and the mixture weights π (module docs); uniform π
    to start with, as FedEM initialises it."""

    def __init__(self, components: Sequence[nn.Module], *, multilabel: bool) -> None:
        super().__init__()
        if len(components) < 2:
            raise ValueError(f"a mixture needs at least 2 components, got {len(components)}")
        self.components = nn.ModuleList(components)
        self.multilabel = multilabel
        k = len(components)
        self.register_buffer("pi", torch.full((k,), 1.0 / k))

    @property
    def channels_last(self) -> bool:
        """The components' input layout (they are built alike)."""
        return bool(getattr(self.components[0], "channels_last", False))

    @property
    def image_size(self) -> int:
        return int(self.components[0].image_size)

    def component_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(K, N, C): every component's task output on ``x``."""
        return torch.stack([m(x) for m in self.components])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mixture_logits(self.component_logits(x), self.pi.log(), multilabel=self.multilabel)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every component's trainable parameters, component by component."""
        return [p for p in self.parameters() if p.requires_grad]

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Every component's encoder parameters (what a contrastive optimizer would hold)."""
        return [p for m in self.components for p in m.encoder_parameters()]
