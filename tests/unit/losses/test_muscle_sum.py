"""Muscle-sum loss (DESIGN §2.2) against the diagonal-tuple enumeration of the full
Muscle logit, leave-one-out, gradients, positivity and input validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.losses import (
    leave_one_out,
    muscle_loss,
    muscle_sum_loss,
    pairwise_infonce_loss,
)
from fedmuscle_secure.losses.reference import muscle_sum_loss_enumerate

F64 = torch.float64


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def make_case(b: int, m: int, d: int, *, seed: int, unit: bool = True):
    gen = torch.Generator().manual_seed(seed)
    anchor = torch.randn(b, d, generator=gen, dtype=F64)
    peers = torch.randn(m, b, d, generator=gen, dtype=F64)
    if unit:
        return unit_rows(anchor), unit_rows(peers)
    return 1.5 * anchor, peers * (0.5 + torch.rand(m, b, 1, generator=gen, dtype=F64))


def group_sums(peers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return peers.sum(dim=0), (peers * peers).sum(dim=(0, 2))


@pytest.mark.parametrize(("tau", "gamma"), [(0.2, 1 / 0.15 - 1 / 0.2), (0.05, -5.0), (1.0, 0.0)])
@pytest.mark.parametrize("unit", [True, False])
@pytest.mark.parametrize(("b", "m", "d"), [(5, 1, 3), (6, 2, 4), (4, 3, 5), (7, 4, 2)])
def test_sum_form_matches_diagonal_tuple_enumeration(b, m, d, unit, tau, gamma):
    anchor, peers = make_case(b, m, d, seed=b + 10 * m + d, unit=unit)
    peer_sum, peer_sq = group_sums(peers)
    got = muscle_sum_loss(anchor, peer_sum, peer_sq, tau=tau, gamma=gamma, reduction="none")
    expected = muscle_sum_loss_enumerate(anchor, peers, tau, gamma)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_single_peer_sum_form_is_the_exact_loss():
    # With M = 1 every tuple is diagonal, so the sum form, the exact form and InfoNCE agree.
    anchor, peers = make_case(6, 1, 4, seed=3)
    tau = torch.tensor([0.3], dtype=F64)
    peer_sum, peer_sq = group_sums(peers)
    got = muscle_sum_loss(anchor, peer_sum, peer_sq, tau=0.3, gamma=2.0, reduction="none")
    exact = muscle_loss(anchor, peers, tau, torch.full((1, 1), 2.0, dtype=F64), reduction="none")
    torch.testing.assert_close(got, exact, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got, pairwise_infonce_loss(anchor, peers, tau, reduction="none"))


def test_sum_form_differs_from_exact_loss_for_several_peers():
    anchor, peers = make_case(6, 3, 4, seed=4)
    peer_sum, peer_sq = group_sums(peers)
    got = muscle_sum_loss(anchor, peer_sum, peer_sq, tau=0.2, gamma=1.5, reduction="none")
    exact = muscle_loss(
        anchor,
        peers,
        torch.full((3,), 0.2, dtype=F64),
        torch.full((3, 3), 1.5, dtype=F64),
        reduction="none",
    )
    assert not torch.allclose(got, exact)


def test_leave_one_out():
    anchor, peers = make_case(5, 3, 4, seed=6)
    own = anchor
    group = torch.cat([own[None], peers])
    total_sum, total_sq = group_sums(group)
    peer_sum, peer_sq = leave_one_out(total_sum, total_sq, own)
    expected_sum, expected_sq = group_sums(peers)
    torch.testing.assert_close(peer_sum, expected_sum, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(peer_sq, expected_sq, rtol=1e-12, atol=1e-12)
    got = muscle_sum_loss(anchor, peer_sum, peer_sq, tau=0.2, gamma=1.0, reduction="none")
    torch.testing.assert_close(
        got, muscle_sum_loss_enumerate(anchor, peers, 0.2, 1.0), rtol=1e-9, atol=1e-12
    )
    with pytest.raises(ValueError, match="own"):
        leave_one_out(total_sum, total_sq, own[0])
    with pytest.raises(ValueError, match="peer_sq_norm_sum"):
        leave_one_out(total_sum, total_sq[:3], own)


def test_reductions():
    anchor, peers = make_case(5, 2, 3, seed=8)
    peer_sum, peer_sq = group_sums(peers)
    per_anchor = muscle_sum_loss(anchor, peer_sum, peer_sq, tau=0.2, gamma=1.0, reduction="none")
    torch.testing.assert_close(
        muscle_sum_loss(anchor, peer_sum, peer_sq, tau=0.2, gamma=1.0), per_anchor.mean()
    )
    torch.testing.assert_close(
        muscle_sum_loss(anchor, peer_sum, peer_sq, tau=0.2, gamma=1.0, reduction="sum"),
        per_anchor.sum(),
    )
    with pytest.raises(ConfigError, match="reduction"):
        muscle_sum_loss(anchor, peer_sum, peer_sq, tau=0.2, gamma=1.0, reduction="max")


def test_gradcheck_sum_form():
    anchor, peers = make_case(4, 3, 3, seed=9, unit=False)
    peer_sum, peer_sq = group_sums(peers)
    inputs = tuple(t.clone().requires_grad_(True) for t in (anchor, peer_sum, peer_sq))
    assert torch.autograd.gradcheck(
        lambda a, u, q: muscle_sum_loss(a, u, q, tau=0.3, gamma=-1.2, reduction="none"), inputs
    )


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 8),
    m=st.integers(1, 4),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    tau=st.floats(0.05, 1.0),
    tau_prime=st.floats(0.05, 1.0),
)
def test_sum_form_is_nonnegative_per_anchor(b, m, d, seed, tau, tau_prime):
    anchor, peers = make_case(b, m, d, seed=seed)
    peer_sum, peer_sq = group_sums(peers)
    losses = muscle_sum_loss(
        anchor, peer_sum, peer_sq, tau=tau, gamma=1 / tau_prime - 1 / tau, reduction="none"
    )
    assert torch.isfinite(losses).all()
    assert (losses >= -1e-9).all(), losses


@pytest.mark.parametrize("tau", [0.0, -0.1, float("inf")])
def test_bad_temperature_is_a_config_error(tau):
    anchor, peers = make_case(3, 2, 2, seed=1)
    peer_sum, peer_sq = group_sums(peers)
    with pytest.raises(ConfigError, match="temperature") as info:
        muscle_sum_loss(anchor, peer_sum, peer_sq, tau=tau, gamma=1.0)
    assert info.value.field == "temperature"
    with pytest.raises(ConfigError, match="gamma"):
        muscle_sum_loss(anchor, peer_sum, peer_sq, tau=0.2, gamma=float("nan"))


def test_shape_mismatches_are_value_errors():
    anchor, peers = make_case(4, 2, 3, seed=2)
    peer_sum, peer_sq = group_sums(peers)
    with pytest.raises(ValueError, match="anchor"):
        muscle_sum_loss(anchor[0], peer_sum, peer_sq, tau=0.2, gamma=1.0)
    with pytest.raises(ValueError, match="peer_sum"):
        muscle_sum_loss(anchor, peer_sum[:, :2], peer_sq, tau=0.2, gamma=1.0)
    with pytest.raises(ValueError, match="peer_sq_norm_sum"):
        muscle_sum_loss(anchor, peer_sum, peer_sq[:, None], tau=0.2, gamma=1.0)
