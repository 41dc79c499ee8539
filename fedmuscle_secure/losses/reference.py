"""Brute-force oracles for the Muscle losses (tests and benchmarks only).

They follow the definitions of DESIGN §2.1/§2.2 literally: a Python loop over every
tuple j ∈ [B]^M (``itertools.product``), dot products and logsumexp in Python float64
arithmetic, nothing shared with the vectorized implementations. Cost B^(M+1) · M · d
scalar operations, so keep B and M tiny.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

__all__ = ["muscle_loss_enumerate", "muscle_sum_loss_enumerate"]


def _dot(u: list[float], v: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(u, v, strict=True))


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(math.fsum(math.exp(v - top) for v in values))


def muscle_loss_enumerate(anchor: Tensor, scaled_peers: Tensor, log_alpha_pairs: Tensor) -> Tensor:
    """Per-anchor Muscle losses (B,) in float64 by enumerating all B^M tuples (§2.1).

    Same inputs as ``muscle_loss_from_server``: anchor (B, d), scaled_peers (M, B, d),
    log_alpha_pairs (M(M−1)/2, B, B) in ``itertools.combinations(range(M), 2)`` order.
    """
    z = anchor.detach().to(torch.float64).tolist()
    s = scaled_peers.detach().to(torch.float64).tolist()
    log_alpha = log_alpha_pairs.detach().to(torch.float64).tolist()
    b, m = len(z), len(s)
    pairs = list(itertools.combinations(range(m), 2))
    losses = []
    for i in range(b):
        logits: dict[tuple[int, ...], float] = {}
        for j in itertools.product(range(b), repeat=m):
            value = math.fsum(_dot(z[i], s[k][j[k]]) for k in range(m))
            value += math.fsum(log_alpha[p][j[k]][j[l]] for p, (k, l) in enumerate(pairs))
            logits[j] = value
        losses.append(_logsumexp(list(logits.values())) - logits[(i,) * m])
    return torch.tensor(losses, dtype=torch.float64)


def muscle_sum_loss_enumerate(anchor: Tensor, peers: Tensor, tau: float, gamma: float) -> Tensor:
    """Per-anchor muscle-sum losses (B,) from the full Muscle logit restricted to the
    diagonal tuples (k,..,k), with raw ``peers`` (M, B, d) and uniform τ, γ (§2.2).

    logit[i, k] = Σ_m z_i · z_k^m / τ − γ Σ_{l<m} z_k^l · z_k^m, written out pair by pair,
    so agreeing with ``muscle_sum_loss`` shows the sum identity is applied correctly.
    """
    z = anchor.detach().to(torch.float64).tolist()
    zs = peers.detach().to(torch.float64).tolist()
    b, m = len(z), len(zs)
    pairs = list(itertools.combinations(range(m), 2))
    losses = []
    for i in range(b):
        logits = []
        for k in range(b):
            value = math.fsum(_dot(z[i], zs[p][k]) / tau for p in range(m))
            value -= gamma * math.fsum(_dot(zs[p][k], zs[q][k]) for p, q in pairs)
            logits.append(value)
        losses.append(_logsumexp(logits) - logits[i])
    return torch.tensor(losses, dtype=torch.float64)
