"""GRAM volume loss (fedmuscle_secure.baselines.gram) against explicit per-tuple loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from fedmuscle_secure.baselines.gram import gram_logits, gram_loss, gram_volumes


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _reference_loss(anchor, peers, tau):
    """Obviously correct: for every (i, j) stack the tuple's rows, det of V Vᵀ, one at a time."""
    b, m = anchor.shape[0], peers.shape[0]
    total = 0.0
    for i in range(b):
        logits = []
        for j in range(b):
            v = torch.stack([anchor[i]] + [peers[k, j] for k in range(m)])
            vol = math.sqrt(max(float(torch.det(v @ v.T)), 0.0))
            logits.append(-vol / tau)
        lse = math.log(sum(math.exp(x) for x in logits))
        total += lse - logits[i]
    return total / b


@pytest.mark.parametrize("m", [1, 2, 3])
def test_loss_matches_per_tuple_determinant_loop(m):
    anchor, peers = _unit(5, 6, seed=1), _unit(m, 5, 6, seed=2)
    got = gram_loss(anchor, peers, 0.3)
    assert float(got) == pytest.approx(_reference_loss(anchor, peers, 0.3), rel=1e-6)


def test_single_peer_volume_is_the_sine_of_the_angle():
    anchor, peers = _unit(7, 4, seed=3), _unit(1, 7, 4, seed=4)
    cos = anchor @ peers[0].T
    torch.testing.assert_close(gram_volumes(anchor, peers), torch.sqrt(1 - cos**2))


def test_rows_are_renormalised_so_scaled_peers_give_the_same_logits():
    anchor, peers = _unit(4, 5, seed=5), _unit(2, 4, 5, seed=6)
    torch.testing.assert_close(gram_logits(anchor, peers / 0.2, 0.5), gram_logits(anchor, peers, 0.5))


def test_aligned_tuple_has_zero_volume_and_finite_gradient():
    peers = _unit(2, 4, 3, seed=7)
    anchor = peers[0].clone().requires_grad_(True)
    vol = gram_volumes(anchor, torch.stack([peers[0], peers[0]]))
    assert float(vol.detach().diagonal().max()) < 1e-3
    gram_loss(anchor, peers, 0.2).backward()
    assert torch.isfinite(anchor.grad).all()


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="expected anchor"):
        gram_volumes(_unit(4, 3), _unit(2, 5, 3))
