"""Poisson sampling for DP-SGD from the CSPRNG (DESIGN §5.2): the rate, independence across
records and steps, no dependence on any seed, the exact selection threshold.

Statistical checks over m = 400 steps of n = 1000 records at q = 0.05. Each bound is set
for a false-alarm chance below 10⁻⁷ (z = Φ⁻¹(1 − 5·10⁻⁸) ≈ 5.33, normal approximations of
binomial and χ² laws that are accurate at these sizes), so the file fails by chance less
than once in 10⁶ runs.
"""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import numpy as np
import pytest
import torch

from fedmuscle_secure.dp import sampling
from fedmuscle_secure.dp.sampling import CsprngPoissonSampler, poisson_mask

N, Q, M = 1000, 0.05, 400
Z = NormalDist().inv_cdf(1 - 5e-8)


@pytest.fixture(scope="module")
def masks() -> np.ndarray:
    """(M, N) boolean: which record is in which step's batch, from the sampler itself."""
    batches = list(CsprngPoissonSampler(num_samples=N, sample_rate=Q, steps=M))
    out = np.zeros((M, N), dtype=bool)
    for step, idx in enumerate(batches):
        assert idx == sorted(set(idx)) and all(0 <= i < N for i in idx)
        out[step, idx] = True
    return out


def test_mean_batch_size_is_q_n(masks):
    total = int(masks.sum())  # Binomial(M·N, q)
    mean, sd = M * N * Q, math.sqrt(M * N * Q * (1 - Q))
    assert abs(total - mean) <= Z * sd


def test_batch_sizes_vary_like_a_binomial(masks):
    """Poisson sampling, not a fixed batch size: Var(|batch|) = n·q·(1 − q)."""
    sizes = masks.sum(axis=1).astype(float)
    var = N * Q * (1 - Q)
    kurt = (1 - 6 * Q * (1 - Q)) / var  # excess kurtosis of the binomial
    rel_sd = math.sqrt(2 / (M - 1) + kurt / M)  # of the sample variance / var
    assert abs(sizes.var(ddof=1) / var - 1) <= Z * rel_sd


def test_every_record_is_picked_at_rate_q(masks):
    """χ² over records of their pick counts (each Binomial(M, q)): no record favoured, and
    not more even than chance either (a round-robin would be)."""
    counts = masks.sum(axis=0)
    mu, var = M * Q, M * Q * (1 - Q)
    chi2 = float(((counts - mu) ** 2 / var).sum())
    kurt = (1 - 6 * Q * (1 - Q)) / var
    assert abs(chi2 - N) <= Z * math.sqrt(N * (2 + kurt))


def test_consecutive_steps_are_independent(masks):
    """A record in step k is in step k + 1 with probability q, not more or less."""
    both = int((masks[:-1] & masks[1:]).sum())  # Binomial((M − 1)·N, q²)
    trials, p = (M - 1) * N, Q * Q
    assert abs(both - trials * p) <= Z * math.sqrt(trials * p * (1 - p))


def test_no_seed_reproduces_the_masks():
    drawn = []
    for _ in range(2):
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        drawn.append(list(CsprngPoissonSampler(num_samples=200, sample_rate=0.5, steps=2)))
    assert drawn[0] != drawn[1]


def test_selection_is_word_below_floor_q_2_64(monkeypatch):
    q = 0.3
    cut = math.floor(q * 2**64)
    words = np.array([cut - 1, cut, 0, 2**64 - 1, cut + 1], dtype=np.uint64)
    monkeypatch.setattr(sampling, "chacha20_words", lambda n: words[:n])
    assert poisson_mask(5, q).tolist() == [True, False, True, False, False]


def test_rate_one_takes_every_record_every_step():
    assert list(CsprngPoissonSampler(num_samples=7, sample_rate=1.0, steps=3)) == [list(range(7))] * 3


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"num_samples": 0, "sample_rate": 0.5, "steps": 1}, "num_samples"),
    ({"num_samples": 5, "sample_rate": 0.0, "steps": 1}, "sample_rate"),
    ({"num_samples": 5, "sample_rate": 1.5, "steps": 1}, "sample_rate"),
    ({"num_samples": 5, "sample_rate": float("nan"), "steps": 1}, "sample_rate"),
    ({"num_samples": 5, "sample_rate": 0.5, "steps": 0}, "steps"),
    ({"num_samples": True, "sample_rate": 0.5, "steps": 1}, "num_samples"),
])
def test_arguments_are_validated(kwargs, word):
    with pytest.raises(ValueError, match=word):
        CsprngPoissonSampler(**kwargs)
