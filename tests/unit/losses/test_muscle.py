"""Exact Muscle loss (DESIGN §2.1): factorized and broadcast forms against the tuple
enumeration oracle, the γ = 0 reduction, gradients, positivity and input validation."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.losses import (
    gamma_from_temperatures,
    muscle_loss,
    muscle_loss_broadcast,
    muscle_loss_from_server,
    pair_matrix,
    pairwise_infonce_loss,
    server_side_terms,
)
from fedmuscle_secure.losses.reference import muscle_loss_enumerate

F64 = torch.float64


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def symmetric_uniform(m: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    upper = torch.triu(low + (high - low) * torch.rand(m, m, generator=gen, dtype=F64))
    return upper + torch.triu(upper, diagonal=1).T


def make_case(b: int, m: int, d: int, *, seed: int, unit: bool = True, gamma_sign: str = "mixed"):
    """Random anchor, raw peers, τ (M,) in [0.05, 1] and γ from random per-pair τ, τ'.

    gamma_sign: "positive" (τ' < τ), "negative" (τ' > τ) or "mixed" (independent draws).
    """
    gen = torch.Generator().manual_seed(seed)
    anchor = torch.randn(b, d, generator=gen, dtype=F64)
    peers = torch.randn(m, b, d, generator=gen, dtype=F64)
    if unit:
        anchor, peers = unit_rows(anchor), unit_rows(peers)
    else:
        anchor = anchor * 2.0
        peers = peers * (0.5 + 1.5 * torch.rand(m, b, 1, generator=gen, dtype=F64))
    tau = 0.05 + 0.95 * torch.rand(m, generator=gen, dtype=F64)
    tau_pairs = symmetric_uniform(m, 0.05, 1.0, gen)
    if gamma_sign == "positive":
        tau_prime = tau_pairs * symmetric_uniform(m, 0.3, 0.9, gen)
    elif gamma_sign == "negative":
        tau_prime = tau_pairs / symmetric_uniform(m, 0.3, 0.9, gen)
    else:
        tau_prime = symmetric_uniform(m, 0.05, 1.0, gen)
    gamma = gamma_from_temperatures(tau_pairs, tau_prime)
    return anchor, peers, tau, gamma


SHAPES = [(5, 1, 4), (6, 2, 3), (4, 3, 5), (7, 3, 8), (1, 3, 2)]


@pytest.mark.parametrize("gamma_sign", ["positive", "negative", "mixed"])
@pytest.mark.parametrize("unit", [True, False])
@pytest.mark.parametrize(("b", "m", "d"), SHAPES)
def test_factorized_matches_enumeration(b, m, d, unit, gamma_sign):
    anchor, peers, tau, gamma = make_case(
        b, m, d, seed=b * 100 + m * 10 + d, unit=unit, gamma_sign=gamma_sign
    )
    if m > 1 and gamma_sign == "negative":
        assert (gamma[0, 1] < 0).item()
    if m > 1 and gamma_sign == "positive":
        assert (gamma[0, 1] > 0).item()
    scaled, log_alpha = server_side_terms(peers, tau, gamma)
    expected = muscle_loss_enumerate(anchor, scaled, log_alpha)
    got = muscle_loss_from_server(anchor, scaled, log_alpha, reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        muscle_loss(anchor, peers, tau, gamma, reduction="none"), expected, rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 3, 100])
@pytest.mark.parametrize(("b", "m", "d"), [(5, 1, 4), (6, 2, 3), (4, 3, 5), (3, 4, 3)])
def test_broadcast_matches_enumeration(b, m, d, chunk_size):
    anchor, peers, tau, gamma = make_case(b, m, d, seed=7 + b + m, unit=False)
    scaled, log_alpha = server_side_terms(peers, tau, gamma)
    expected = muscle_loss_enumerate(anchor, scaled, log_alpha)
    got = muscle_loss_broadcast(anchor, scaled, log_alpha, reduction="none", chunk_size=chunk_size)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_factorized_dispatches_to_broadcast_above_three_peers():
    anchor, peers, tau, gamma = make_case(3, 4, 2, seed=11)
    scaled, log_alpha = server_side_terms(peers, tau, gamma)
    expected = muscle_loss_enumerate(anchor, scaled, log_alpha)
    got = muscle_loss_from_server(anchor, scaled, log_alpha, reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_server_side_terms_follow_the_definition():
    _, peers, tau, gamma = make_case(4, 3, 5, seed=3)
    scaled, log_alpha = server_side_terms(peers, tau, gamma)
    assert scaled.shape == (3, 4, 5) and log_alpha.shape == (3, 4, 4)
    for k in range(3):
        torch.testing.assert_close(scaled[k], peers[k] / tau[k])
    for p, (k, l) in enumerate(itertools.combinations(range(3), 2)):
        for a in range(4):
            for c in range(4):
                value = -gamma[k, l] * torch.dot(peers[k, a], peers[l, c])
                torch.testing.assert_close(log_alpha[p, a, c], value)
    _, empty = server_side_terms(peers[:1], tau[:1], gamma[:1, :1])
    assert empty.shape == (0, 4, 4)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_small_temperature_is_finite_where_float32_naive_overflows(m):
    # τ = 0.05 and τ' = 1 (γ = −19) with peers close to the anchor: the positive logit is
    # about 20·M + 19·M(M−1)/2, past float32's exp limit (~88.7) for M = 3.
    gen = torch.Generator().manual_seed(m)
    b, d = 6, 16
    anchor = unit_rows(torch.randn(b, d, generator=gen, dtype=F64))
    peers = unit_rows(anchor + 0.1 * torch.randn(m, b, d, generator=gen, dtype=F64))
    tau = torch.full((m,), 0.05, dtype=F64)
    gamma = gamma_from_temperatures(
        torch.full((m, m), 0.05, dtype=F64), torch.full((m, m), 1.0, dtype=F64)
    )
    scaled, log_alpha = server_side_terms(peers, tau, gamma)
    expected = muscle_loss_enumerate(anchor, scaled, log_alpha)

    a32, s32, l32 = anchor.float(), scaled.float(), log_alpha.float()
    factorized = muscle_loss_from_server(a32, s32, l32, reduction="none")
    broadcast = muscle_loss_broadcast(a32, s32, l32, reduction="none")
    assert factorized.dtype == torch.float32
    assert torch.isfinite(factorized).all() and torch.isfinite(broadcast).all()
    torch.testing.assert_close(factorized.double(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(factorized, broadcast, rtol=1e-4, atol=1e-4)
    if m == 3:
        positive = torch.einsum("id,kid->i", a32, s32) + l32.diagonal(dim1=1, dim2=2).sum(0)
        assert torch.isinf(torch.exp(positive)).any(), "case too mild to show the overflow"


def test_factorized_survives_where_float32_kernel_products_underflow():
    # d = 1, anchors all +1, each peer's rows half +1 and half -1; τ = 0.05 and γ = 49
    # (τ = 1, τ' = 0.02). Every tuple then sits at least e^-138 below the product of the
    # factors' maxima, under float32's smallest subnormal (~e^-103): a float32
    # contraction returns log(0) = -inf. The float64 contraction must still be exact.
    from fedmuscle_secure.losses.muscle import _factorized_log_denominator

    b, m = 4, 3
    anchor = torch.ones(b, 1, dtype=F64)
    peers = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=F64).reshape(1, b, 1).repeat(m, 1, 1)
    tau = torch.full((m,), 0.05, dtype=F64)
    gamma = gamma_from_temperatures(
        torch.full((m, m), 1.0, dtype=F64), torch.full((m, m), 0.02, dtype=F64)
    )
    scaled, log_alpha = server_side_terms(peers, tau, gamma)
    expected = muscle_loss_enumerate(anchor, scaled, log_alpha)
    similarities32 = anchor.float() @ scaled.float().transpose(1, 2)
    _, underflow32 = _factorized_log_denominator(similarities32, log_alpha.float())
    assert underflow32.all(), "case too mild to show the float32 underflow"
    got = muscle_loss_from_server(
        anchor.float(), scaled.float(), log_alpha.float(), reduction="none"
    )
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("m", [2, 3])
def test_factorized_falls_back_to_log_space_where_even_float64_underflows(m):
    # The same construction, far sharper (τ = 0.002, γ ≈ 1249): tuples sit > e^-745 below
    # the factors' maxima, so the float64 contraction itself underflows (as with the huge,
    # non-unit rows DP noise produces). The affected anchors must be recomputed exactly and
    # their gradients stay finite.
    from fedmuscle_secure.losses.muscle import _factorized_log_denominator

    b = 4
    anchor = torch.ones(b, 1, dtype=F64, requires_grad=True)
    peers = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=F64).reshape(1, b, 1).repeat(m, 1, 1)
    gamma = gamma_from_temperatures(
        torch.full((m, m), 1.0, dtype=F64), torch.full((m, m), 0.0008, dtype=F64)
    )
    scaled, log_alpha = server_side_terms(peers, torch.full((m,), 0.002, dtype=F64), gamma)
    _, underflow = _factorized_log_denominator(anchor.detach() @ scaled.transpose(1, 2), log_alpha)
    assert underflow.any(), "case too mild to show the float64 underflow"
    got = muscle_loss_from_server(anchor, scaled, log_alpha, reduction="none")
    torch.testing.assert_close(got.detach(), muscle_loss_enumerate(anchor.detach(), scaled, log_alpha))
    got.sum().backward()
    assert torch.isfinite(anchor.grad).all()


@pytest.mark.parametrize("method", ["factorized", "broadcast"])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_gamma_zero_reduces_to_pairwise_infonce(m, method):
    anchor, peers, tau, _ = make_case(6, m, 5, seed=20 + m, unit=False)
    tau_pairs = symmetric_uniform(m, 0.05, 1.0, torch.Generator().manual_seed(1))
    gamma = gamma_from_temperatures(tau_pairs, tau_pairs)  # τ' = τ
    assert (gamma == 0).all()
    got = muscle_loss(anchor, peers, tau, gamma, reduction="none", method=method)
    expected = pairwise_infonce_loss(anchor, peers, tau, reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # and α is what separates the two: a nonzero γ changes the loss
    if m > 1:
        other = muscle_loss(anchor, peers, tau, gamma + 1.0, reduction="none", method=method)
        assert not torch.allclose(other, expected)


def test_reductions_and_dtype():
    anchor, peers, tau, gamma = make_case(5, 2, 3, seed=9)
    per_anchor = muscle_loss(anchor, peers, tau, gamma, reduction="none")
    assert per_anchor.shape == (5,)
    torch.testing.assert_close(muscle_loss(anchor, peers, tau, gamma), per_anchor.mean())
    torch.testing.assert_close(
        muscle_loss(anchor, peers, tau, gamma, reduction="sum"), per_anchor.sum()
    )
    out32 = muscle_loss(anchor.float(), peers.float(), tau.float(), gamma.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), per_anchor.mean(), rtol=1e-5, atol=1e-5)


def _gradcheck_inputs(b, m, d, seed):
    anchor, peers, tau, gamma = make_case(b, m, d, seed=seed, unit=False)
    scaled, log_alpha = server_side_terms(peers, tau, gamma)
    return tuple(t.detach().clone().requires_grad_(True) for t in (anchor, scaled, log_alpha))


@pytest.mark.parametrize("m", [1, 2, 3])
def test_gradcheck_factorized(m):
    inputs = _gradcheck_inputs(4, m, 3, seed=30 + m)
    assert torch.autograd.gradcheck(
        lambda a, s, l: muscle_loss_from_server(a, s, l, reduction="none"), inputs
    )


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_gradcheck_broadcast(chunk_size):
    inputs = _gradcheck_inputs(3, 3, 2, seed=40)
    assert torch.autograd.gradcheck(
        lambda a, s, l: muscle_loss_broadcast(a, s, l, reduction="none", chunk_size=chunk_size),
        inputs,
    )


def test_gradcheck_through_server_side_terms():
    anchor, peers, tau, gamma = make_case(3, 2, 2, seed=50)
    inputs = tuple(t.clone().requires_grad_(True) for t in (anchor, peers, tau))
    assert torch.autograd.gradcheck(
        lambda a, p, t: muscle_loss(a, p, t, gamma, reduction="sum"), inputs
    )


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 6),
    m=st.integers(1, 3),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    tau=st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3),
    tau_pair=st.floats(0.05, 1.0),
    tau_prime=st.floats(0.05, 1.0),
)
def test_loss_is_nonnegative_per_anchor(b, m, d, seed, tau, tau_pair, tau_prime):
    # The positive tuple (i,..,i) is one of the denominator's terms, so L_i >= 0.
    gen = torch.Generator().manual_seed(seed)
    anchor = unit_rows(torch.randn(b, d, generator=gen, dtype=F64))
    peers = unit_rows(torch.randn(m, b, d, generator=gen, dtype=F64))
    tau_t = torch.tensor(tau[:m], dtype=F64)
    gamma = gamma_from_temperatures(
        torch.full((m, m), tau_pair, dtype=F64), torch.full((m, m), tau_prime, dtype=F64)
    )
    for method in ("factorized", "broadcast"):
        losses = muscle_loss(anchor, peers, tau_t, gamma, reduction="none", method=method)
        assert torch.isfinite(losses).all()
        assert (losses >= -1e-9).all(), (method, losses)


# --- bad inputs -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -0.2, float("nan")])
def test_nonpositive_temperature_is_a_config_error(bad):
    anchor, peers, tau, gamma = make_case(3, 2, 2, seed=1)
    tau = tau.clone()
    tau[1] = bad
    with pytest.raises(ConfigError, match="temperature") as info:
        muscle_loss(anchor, peers, tau, gamma)
    assert info.value.field == "temperature"


def test_bad_options_are_config_errors():
    anchor, peers, tau, gamma = make_case(3, 2, 2, seed=1)
    scaled, log_alpha = server_side_terms(peers, tau, gamma)
    with pytest.raises(ConfigError, match="reduction"):
        muscle_loss_from_server(anchor, scaled, log_alpha, reduction="avg")
    with pytest.raises(ConfigError, match="method"):
        muscle_loss(anchor, peers, tau, gamma, method="einsum")
    with pytest.raises(ConfigError, match="chunk_size"):
        muscle_loss_broadcast(anchor, scaled, log_alpha, chunk_size=0)
    asymmetric = gamma.clone()
    asymmetric[0, 1] += 1.0
    with pytest.raises(ConfigError, match="symmetric"):
        server_side_terms(peers, tau, asymmetric)


def test_shape_mismatches_are_value_errors():
    anchor, peers, tau, gamma = make_case(4, 3, 5, seed=2)
    scaled, log_alpha = server_side_terms(peers, tau, gamma)
    for fn in (muscle_loss_from_server, muscle_loss_broadcast):
        with pytest.raises(ValueError, match="anchor"):
            fn(anchor[0], scaled, log_alpha)
        with pytest.raises(ValueError, match="scaled_peers"):
            fn(anchor, scaled[:, :, :4], log_alpha)
        with pytest.raises(ValueError, match="scaled_peers"):
            fn(anchor, scaled[:, :3], log_alpha)
        with pytest.raises(ValueError, match="log_alpha_pairs"):
            fn(anchor, scaled, log_alpha[:2])
        with pytest.raises(ValueError, match="log_alpha_pairs"):
            fn(anchor, scaled, log_alpha[:, :3])
    with pytest.raises(ValueError, match="tau"):
        muscle_loss(anchor, peers, tau[:2], gamma)
    with pytest.raises(ValueError, match="gamma"):
        muscle_loss(anchor, peers, tau, gamma[:2, :2])
    with pytest.raises(ValueError, match="peers"):
        muscle_loss(anchor, peers[0], tau, gamma)


# --- temperature helpers ----------------------------------------------------------------


def test_gamma_from_temperatures():
    tau = torch.tensor([[0.2, 0.2], [0.2, 0.2]], dtype=F64)
    tau_prime = torch.tensor([[0.15, 0.25], [0.25, 0.15]], dtype=F64)
    gamma = gamma_from_temperatures(tau, tau_prime)
    torch.testing.assert_close(
        gamma, torch.tensor([[1 / 0.15 - 5, 4 - 5], [-1.0, 1 / 0.15 - 5]], dtype=F64)
    )
    with pytest.raises(ConfigError) as info:
        gamma_from_temperatures(tau, -tau_prime)
    assert info.value.field == "temperature_prime"
    with pytest.raises(ConfigError) as info:
        gamma_from_temperatures(tau * 0, tau_prime)
    assert info.value.field == "temperature"


def test_pair_matrix():
    torch.testing.assert_close(pair_matrix(0.2, 3, "tau"), torch.full((3, 3), 0.2, dtype=F64))
    nested = [[1.0, 0.3], [0.3, 1.0]]
    torch.testing.assert_close(pair_matrix(nested, 2, "tau"), torch.tensor(nested, dtype=F64))
    bad_values = [
        (0.0, "> 0"),
        ([[1.0, 0.3], [0.4, 1.0]], "symmetric"),
        ([[1.0, 0.3]], "rows"),
        ([[1.0, 0.3, 0.2], [0.3, 1.0, 0.2]], "entries"),
        ([[1.0, -0.3], [-0.3, 1.0]], "> 0"),
        ("0.2", "expected a number"),
    ]
    for value, message in bad_values:
        with pytest.raises(ConfigError, match=message) as info:
            pair_matrix(value, 2, "temperature_prime")
        assert info.value.field == "temperature_prime"
