"""Poisson sampling for DP-SGD from the CSPRNG (DESIGN §5.2, §13.2).

The ε reported for DP-SGD is that of a Poisson-subsampled Gaussian mechanism: each record
is in a step's batch independently with probability q, and amplification by subsampling
assumes nobody can tell which. The batch membership is therefore part of the mechanism,
as secret as the noise. Opacus's sampler draws it with ``torch.rand`` from a seedable
MT19937 generator: whoever obtains that generator's state (a copy of the process, a
pickled trainer, a forked data-loader worker) replays every future batch. Here each step's
mask comes from the same ChaCha20 keystream as the DP noise
(:func:`~fedmuscle_secure.dp.noise.chacha20_words`, a fresh key from ``os.urandom`` per
draw): record i is in the batch iff its 64-bit word is below ⌊q·2^64⌋, so it is picked with
probability q to within 2^-64 (``torch.rand``'s float32 uniforms resolve q to 2^-24 only).
"""

from __future__ import annotations

import math

import numpy as np
from torch.utils.data import Sampler

from fedmuscle_secure.dp.noise import chacha20_words

__all__ = ["CsprngPoissonSampler", "poisson_mask"]

_WORD = 2**64


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_rate(sample_rate: float) -> float:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) \
            or not math.isfinite(sample_rate) or not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be a number in (0, 1], got {sample_rate!r}")
    return float(sample_rate)


def poisson_mask(num_samples: int, sample_rate: float) -> np.ndarray:
    """A boolean mask over ``num_samples`` records, each True with probability
    ``sample_rate``, independently, from the CSPRNG."""
    n, q = _check_count("num_samples", num_samples), _check_rate(sample_rate)
    cut = math.floor(q * _WORD)  # exact: scaling a float by a power of two
    if cut >= _WORD:  # q = 1: every record, no draw needed
        return np.ones(n, dtype=bool)
    return chacha20_words(n) < np.uint64(cut)


class CsprngPoissonSampler(Sampler[list[int]]):
    """``steps`` Poisson batches (lists of record indices, ascending) per iteration, like
    Opacus's ``UniformWithReplacementSampler`` but drawn from the CSPRNG. It holds no
    generator state: there is nothing to seed, save or copy."""

    def __init__(self, *, num_samples: int, sample_rate: float, steps: int) -> None:
        self.num_samples = _check_count("num_samples", num_samples)
        self.sample_rate = _check_rate(sample_rate)
        self.steps = _check_count("steps", steps)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield np.flatnonzero(poisson_mask(self.num_samples, self.sample_rate)).tolist()
