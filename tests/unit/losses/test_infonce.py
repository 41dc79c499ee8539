"""Pairwise InfoNCE (the γ = 0 baseline, DESIGN §2.3) against a scalar loop oracle."""

from __future__ import annotations

import math

import pytest
import torch

from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.losses import pairwise_infonce_loss

F64 = torch.float64


def infonce_oracle(anchor: torch.Tensor, peers: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Σ_k [logsumexp_a (z_i · z_a^k / τ_k) − z_i · z_i^k / τ_k], in Python floats."""
    z, zs, taus = anchor.tolist(), peers.tolist(), tau.tolist()
    losses = []
    for i, zi in enumerate(z):
        total = 0.0
        for peer, t in zip(zs, taus, strict=True):
            logits = [math.fsum(x * y for x, y in zip(zi, za, strict=True)) / t for za in peer]
            top = max(logits)
            total += top + math.log(math.fsum(math.exp(v - top) for v in logits)) - logits[i]
        losses.append(total)
    return torch.tensor(losses, dtype=F64)


def make_case(b: int, m: int, d: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    anchor = torch.randn(b, d, generator=gen, dtype=F64)
    peers = torch.randn(m, b, d, generator=gen, dtype=F64)
    tau = 0.05 + 0.95 * torch.rand(m, generator=gen, dtype=F64)
    return anchor, peers, tau


@pytest.mark.parametrize(("b", "m", "d"), [(1, 1, 2), (5, 1, 3), (6, 2, 4), (7, 3, 8)])
def test_matches_oracle(b, m, d):
    anchor, peers, tau = make_case(b, m, d, seed=b * m * d)
    got = pairwise_infonce_loss(anchor, peers, tau, reduction="none")
    torch.testing.assert_close(got, infonce_oracle(anchor, peers, tau), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(pairwise_infonce_loss(anchor, peers, tau), got.mean())
    torch.testing.assert_close(
        pairwise_infonce_loss(anchor, peers, tau, reduction="sum"), got.sum()
    )


def test_one_direction_only():
    # Swapping anchor and peer changes the loss: only the anchor side is contrasted.
    anchor, peers, tau = make_case(6, 1, 4, seed=3)
    forward = pairwise_infonce_loss(anchor, peers, tau, reduction="none")
    backward = pairwise_infonce_loss(peers[0], anchor[None], tau, reduction="none")
    assert not torch.allclose(forward, backward)


def test_gradcheck():
    anchor, peers, tau = make_case(4, 2, 3, seed=4)
    inputs = tuple(t.clone().requires_grad_(True) for t in (anchor, peers, tau))
    assert torch.autograd.gradcheck(
        lambda a, p, t: pairwise_infonce_loss(a, p, t, reduction="none"), inputs
    )


def test_bad_inputs():
    anchor, peers, tau = make_case(4, 2, 3, seed=5)
    with pytest.raises(ConfigError, match="temperature"):
        pairwise_infonce_loss(anchor, peers, torch.tensor([0.2, 0.0], dtype=F64))
    with pytest.raises(ConfigError, match="reduction"):
        pairwise_infonce_loss(anchor, peers, tau, reduction="median")
    with pytest.raises(ValueError, match="anchor"):
        pairwise_infonce_loss(anchor[0], peers, tau)
    with pytest.raises(ValueError, match="peers"):
        pairwise_infonce_loss(anchor, peers[:, :3], tau)
    with pytest.raises(ValueError, match="tau"):
        pairwise_infonce_loss(anchor, peers, tau[:1])
