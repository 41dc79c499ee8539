"""FedEM's client step (Marfoq et al., "Federated Multi-Task Learning under a Mixture of
Distributions", NeurIPS 2021, Algorithm 1; DESIGN §2.7).

Each client's data is modelled as a mixture of K underlying distributions shared by the
federation: K component models θ_k (:class:`~fedmuscle_secure.models.mixture.MixtureModel`,
averaged by the server as FedAvg averages one model) and the client's own weights π. At the
start of every LocalUpdate the client runs

* the E-step: for each private training sample i, q(z_i = k) ∝ π_k · exp(−ℓ_k(x_i, y_i)),
  ℓ_k the component's negative log-likelihood (:meth:`~fedmuscle_secure.data.tasks.Task.nll`),
  normalised over k in log space (:func:`responsibilities`), the components in eval mode;
* the M-step of π: π_k ← the mean of q(z_i = k) over the training set;
* the M-step of the components: the LocalUpdate's epochs train every component on its
  responsibility-weighted loss Σ_i q(z_i = k) ℓ_k(x_i, y_i) / B per batch
  (:func:`weighted_nll`; the sum over k trains each component on its own term, their
  parameters being disjoint).

Adapted: the responsibilities are computed once per LocalUpdate and held for its epochs,
as the paper's code does per local round; one optimizer (the client's Adam) steps all
components on the same batches, where the paper's code iterates each learner separately.
"""

from __future__ import annotations

import torch

from fedmuscle_secure.data.tasks import Task
from fedmuscle_secure.models.mixture import MixtureModel


def responsibilities(log_pi: torch.Tensor, nll: torch.Tensor) -> torch.Tensor:
    """(N, K) q(z_i = k) = softmax_k(log π_k − ℓ_k(i)) for per-sample losses ``nll``
    (N, K): each row sums to 1."""
    return torch.softmax(log_pi.to(nll.dtype)[None, :] - nll, dim=1)


@torch.no_grad()
def component_nll(model: MixtureModel, task: Task, x: torch.Tensor, targets: torch.Tensor,
                  batch_size: int = 512) -> torch.Tensor:
    """(N, K) every component's per-sample negative log-likelihood, in eval mode."""
    was = model.training
    model.eval()
    rows = []
    for start in range(0, x.shape[0], batch_size):
        logits = model.component_logits(x[start:start + batch_size])
        t = targets[start:start + batch_size]
        rows.append(torch.stack([task.nll(lk, t) for lk in logits], dim=1))
    model.train(was)
    return torch.cat(rows).float()


@torch.no_grad()
def expectation_step(model: MixtureModel, task: Task, x: torch.Tensor,
                     targets: torch.Tensor) -> torch.Tensor:
    """The E-step on the training set and π's M-step (module docs); returns q (N, K) and
    sets ``model.pi`` to its mean over the samples."""
    if x.shape[0] == 0:
        raise ValueError("FedEM's E-step needs at least one training sample")
    q = responsibilities(model.pi.log(), component_nll(model, task, x, targets))
    model.pi.copy_(q.mean(0).to(model.pi.dtype))
    return q


def weighted_nll(model: MixtureModel, task: Task, x: torch.Tensor, targets: torch.Tensor,
                 q: torch.Tensor) -> torch.Tensor:
    """Σ_k Σ_i q_ik ℓ_k(x_i, y_i) / B over the batch: the components' M-step loss."""
    nll = torch.stack([task.nll(lk, targets) for lk in model.component_logits(x)], dim=1)
    return (q.to(nll.dtype) * nll).sum() / x.shape[0]
