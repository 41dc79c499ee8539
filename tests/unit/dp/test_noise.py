"""CSPRNG Gaussian noise, row clipping and the representation release (DESIGN §5.1)."""

from __future__ import annotations

import math
import os
import random
from statistics import NormalDist

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedmuscle_secure.dp import noise
from fedmuscle_secure.dp.noise import (
    clip_rows,
    csprng_normal,
    gaussian_release,
    representation_sensitivity,
)

# ---------------------------------------------------------------------------------------
# Distribution of one large sample.
#
# n = 4·10⁶ normals at σ = 3 (float64, so the checks see the generator, not rounding).
# Total chance of a false alarm ≤ 10⁻⁶, split (Bonferroni) into 4·10⁻⁷ for the mean,
# 4·10⁻⁷ for the variance and 2·10⁻⁷ for the CDF:
#
# * mean: x̄ ~ N(0, σ²/n) exactly, so |x̄| ≤ z·σ/√n with z = Φ⁻¹(1 − 2·10⁻⁷) ≈ 5.07
#   (two-sided 4·10⁻⁷), i.e. about 5 standard deviations: 0.0076.
# * variance: (n−1)s²/σ² ~ χ²(n−1), mean σ², sd σ²·√(2/(n−1)); at n = 4·10⁶ its skewness
#   √(8/(n−1)) ≈ 1.4·10⁻³ makes the normal approximation exact for our purpose, so
#   |s² − σ²| ≤ z·σ²·√(2/(n−1)) with the same z ≈ 5.07: 0.032 (a σ off by 0.2 % fails).
# * CDF (KS-style): Dvoretzky–Kiefer–Wolfowitz (Massart's constant) gives
#   P(sup_x |F_n(x) − F(x)| > ε) ≤ 2·exp(−2nε²) = 2·10⁻⁷ for ε = √(ln(10⁷)/(2n)) ≈ 1.4·10⁻³,
#   a bound on all quantiles at once; we look at nine of them.
# ---------------------------------------------------------------------------------------
N_SAMPLE = 4_000_000
STD = 3.0
ALPHA_MEAN, ALPHA_VAR, ALPHA_CDF = 4e-7, 4e-7, 2e-7


@pytest.fixture(scope="module")
def big_sample() -> torch.Tensor:
    return csprng_normal((N_SAMPLE,), std=STD, dtype=torch.float64)


def test_mean_within_sampling_bound(big_sample):
    z = NormalDist().inv_cdf(1 - ALPHA_MEAN / 2)
    bound = z * STD / math.sqrt(N_SAMPLE)
    assert abs(big_sample.mean().item()) <= bound


def test_variance_within_sampling_bound(big_sample):
    z = NormalDist().inv_cdf(1 - ALPHA_VAR / 2)
    bound = z * STD**2 * math.sqrt(2 / (N_SAMPLE - 1))
    assert abs(big_sample.var(unbiased=True).item() - STD**2) <= bound


def test_cdf_at_quantiles_dkw(big_sample):
    eps = math.sqrt(math.log(2 / ALPHA_CDF) / (2 * N_SAMPLE))
    for p in (0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999):
        x = STD * NormalDist().inv_cdf(p)
        empirical = (big_sample < x).double().mean().item()
        assert abs(empirical - p) <= eps, (p, empirical)


def test_tails_are_bounded_by_the_refined_uniforms(big_sample):
    # The smallest radius uniform is 2^(-53·20), so |z| ≤ σ·√(2·1060·ln 2) ≈ 38.3σ; no inf/nan.
    assert torch.isfinite(big_sample).all()
    assert noise.MAX_DRAW_SDS == pytest.approx(math.sqrt(2 * 53 * 20 * math.log(2)))
    assert big_sample.abs().max().item() <= STD * noise.MAX_DRAW_SDS


def test_a_radius_uniform_with_53_zero_bits_is_refined_below_2_to_the_minus_53(monkeypatch):
    """A Gaussian cut at 8.57 sd (53-bit uniforms) makes a release at a small noise
    multiplier one the neighbouring dataset cannot produce; the radius's uniform keeps
    drawing words where the top 53 bits are all zero, so the cut moves to 38.3 sd."""
    refills = iter([np.array([0, 7 << 11], dtype=np.uint64), np.array([3 << 11], dtype=np.uint64)])
    monkeypatch.setattr(noise, "chacha20_words", lambda count: next(refills)[:count])
    words = np.array([0, 0, 5 << 11], dtype=np.uint64)
    u = noise._tail_uniform(words)
    assert u[1] == 8 * 2.0 ** -106          # second word 7: (7 + 1) / 2^106
    assert u[0] == 4 * 2.0 ** -159          # second word 0, third word 3: (3 + 1) / 2^159
    assert u[2] == 6 * 2.0 ** -53           # untouched


def test_the_cut_adds_a_delta_that_sets_a_floor_on_sigma():
    """truncation_delta: negligible for σ ≥ 0.04 over 140 releases of 10⁹ coordinates,
    certain failure (≥ 1 per release) once 1/σ passes the cut."""
    assert noise.truncation_delta(0.04, 140, 10 ** 9) < 1e-30
    assert noise.truncation_delta(0.02, 140, 10 ** 9) > 1
    assert noise.truncation_delta(0.03, 1, 1) == pytest.approx(
        math.exp(-(noise.MAX_DRAW_SDS - 1 / 0.03) ** 2 / 2), rel=1e-9)  # a 2-D radius tail


# --------------------------------------------------------------------------- independence
def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def test_calls_differ_even_with_identical_seeds():
    _seed_everything(1234)
    a = csprng_normal((1000,), std=1.0)
    _seed_everything(1234)
    b = csprng_normal((1000,), std=1.0)
    assert not torch.equal(a, b)
    # Independent draws: the correlation of two 1000-vectors is ~N(0, 1/1000).
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 6 / math.sqrt(1000)


def test_no_library_generator_is_touched():
    _seed_everything(7)
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), \
        random.getstate()
    csprng_normal((257, 3), std=2.0)
    gaussian_release(torch.ones(2, 4, 3) / math.sqrt(3), noise_multiplier=1.0)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state


def test_entropy_comes_from_os_urandom_only(monkeypatch):
    """With os.urandom pinned, the output is pinned: no other source of randomness. The
    expected values follow the construction from the ChaCha20 keystream itself."""
    monkeypatch.setattr(os, "urandom", lambda n: bytes(n))
    a = csprng_normal((5,), std=2.0, dtype=torch.float64)
    b = csprng_normal((5,), std=2.0, dtype=torch.float64)
    assert torch.equal(a, b)

    stream = Cipher(algorithms.ChaCha20(bytes(32), bytes(16)), mode=None).encryptor() \
        .update(bytes(8 * 6))
    words = np.frombuffer(stream, dtype="<u8")
    u = ((words >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0**53
    r, theta = np.sqrt(-2 * np.log(u[:3])), 2 * math.pi * u[3:]
    expected = 2.0 * np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:5]
    np.testing.assert_allclose(a.numpy(), expected, rtol=1e-15, atol=0)


def test_uniforms_never_zero_53_bit_grid():
    words = np.array([0, 2**64 - 1, 2**11 - 1, 2**11, 2**63], dtype=np.uint64)
    u = noise._uniform_open(words)
    assert (u > 0).all() and (u <= 1).all()
    assert u[0] == 2.0**-53 and u[2] == u[0]   # the low 11 bits are dropped
    assert u[3] == 2 * 2.0**-53                # one step of the top 53 bits = 2^-53
    assert u[1] == 1.0 and u[4] == 0.5 + 2.0**-53


# --------------------------------------------------------------------------- shape, dtype
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_shape_and_dtype(dtype):
    x = csprng_normal(torch.Size([3, 4, 5]), std=1.5, dtype=dtype)
    assert x.shape == (3, 4, 5) and x.dtype == dtype and x.device.type == "cpu"
    assert csprng_normal((), std=1.0).shape == ()
    assert csprng_normal((0, 7), std=1.0).shape == (0, 7)
    assert csprng_normal((7,), std=1.0).unique().numel() == 7


def test_std_zero_and_invalid():
    assert torch.equal(csprng_normal((4, 2), std=0.0), torch.zeros(4, 2))
    for bad in (-1.0, -1e-12, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            csprng_normal((2,), std=bad)
    with pytest.raises(ValueError):
        csprng_normal((2,), std=1.0, dtype=torch.int64)
    with pytest.raises(ValueError):
        csprng_normal((2, -1), std=1.0)


# --------------------------------------------------------------------------- clipping
def test_representation_sensitivity():
    assert representation_sensitivity(64) == 16.0
    assert representation_sensitivity(900) == 60.0
    with pytest.raises(ValueError):
        representation_sensitivity(0)


def test_clip_rows_counts_and_scales():
    z = torch.tensor([[0.3, 0.4],            # norm 0.5: kept
                      [0.6, 0.8],            # norm 1: kept, not counted
                      [1.2, 1.6],            # norm 2: clipped
                      [0.0, 0.0],            # zero row: kept
                      [0.6 * (1 + 1e-8), 0.8 * (1 + 1e-8)],   # rounding above 1: not counted
                      [-6.0, 8.0]], dtype=torch.float64)      # norm 10: clipped
    out, clipped = clip_rows(z)
    assert clipped == 2
    norms = out.norm(dim=-1)
    assert (norms <= 1 + 1e-12).all()
    torch.testing.assert_close(out[[0, 1, 3]], z[[0, 1, 3]])
    torch.testing.assert_close(out[2], z[2] / 2)
    torch.testing.assert_close(out[5], z[5] / 10)
    out, clipped = clip_rows(z, max_norm=0.25)
    assert clipped == 5 and (out.norm(dim=-1) <= 0.25 + 1e-12).all()
    with pytest.raises(ValueError):
        clip_rows(z, max_norm=0.0)


def test_clip_rows_batched():
    z = torch.zeros(3, 5, 4)
    z[1, 2] = torch.tensor([3.0, 0, 0, 4.0])
    out, clipped = clip_rows(z)
    assert clipped == 1 and out.shape == z.shape
    torch.testing.assert_close(out[1, 2], torch.tensor([0.6, 0, 0, 0.8]))


# --------------------------------------------------------------------------- release
def _noise_std(rows: int, sigma: float) -> float:
    z = torch.nn.functional.normalize(torch.ones(40, rows, 128), dim=-1)
    noisy, clipped = gaussian_release(z, noise_multiplier=sigma)
    assert clipped == 0 and noisy.shape == z.shape and noisy.dtype == z.dtype
    return (noisy - z).double().std().item()


def test_gaussian_release_std_scales_with_sqrt_rows():
    sigma = 0.5
    s4, s64 = _noise_std(4, sigma), _noise_std(64, sigma)
    # ≥ 20 480 noise values each: the relative sd of a sample std is ≤ 1/√(2·20480) = 0.5 %.
    assert s4 == pytest.approx(sigma * 2 * math.sqrt(4), rel=0.04)
    assert s64 == pytest.approx(sigma * 2 * math.sqrt(64), rel=0.04)
    assert s64 / s4 == pytest.approx(math.sqrt(64 / 4), rel=0.06)


def test_gaussian_release_clips_before_noise():
    z = torch.zeros(2, 3, 4)
    z[0, 0] = torch.tensor([30.0, 40.0, 0.0, 0.0])   # norm 50
    z[1, 2] = torch.tensor([0.0, 0.0, 0.0, 2.0])     # norm 2
    noisy, clipped = gaussian_release(z, noise_multiplier=1e-6)
    assert clipped == 2
    torch.testing.assert_close(noisy, clip_rows(z)[0], atol=1e-3, rtol=0)


def test_gaussian_release_validates():
    with pytest.raises(ValueError):
        gaussian_release(torch.ones(3, 4), noise_multiplier=1.0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            gaussian_release(torch.ones(1, 3, 4), noise_multiplier=bad)


def test_keystream_counter_starts_at_zero_so_no_draw_overflows(monkeypatch):
    """The block counter is not random: with all-ones OS randomness (the worst nonce the
    old code could draw, counter 2^32 - 1) a request of many blocks still succeeds, and the
    words are the ChaCha20 keystream from counter 0 under that key and 96-bit nonce."""
    monkeypatch.setattr(noise.os, "urandom", lambda n: b"\xff" * n)
    words = noise.chacha20_words(10_000)  # 1,250 blocks
    ref = Cipher(algorithms.ChaCha20(b"\xff" * 32, bytes(4) + b"\xff" * 12), mode=None).encryptor()
    assert words.tobytes() == ref.update(bytes(80_000))
