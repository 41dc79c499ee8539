"""Gaussian noise from a CSPRNG, row clipping and the representation release (DESIGN §5.1).

DP noise must not be predictable from anything an adversary could learn (the experiment
seed is written to the run directory), so it never comes from ``random``, numpy or torch
generators (DESIGN §13.2). :func:`chacha20_words` is the one generator of DP
randomness (this noise, and DP-SGD's Poisson sampling in :mod:`fedmuscle_secure.dp.sampling`):
each call draws a fresh 256-bit ChaCha20 key and a fresh 96-bit nonce from ``os.urandom``
(block counter from 0) and encrypts zeros to get the keystream, read as 64-bit words.
:func:`csprng_normal` (one call per tensor) keeps the top 53 bits of each word as a
uniform in (0, 1] and turns pairs of uniforms into normals with Box–Muller.

A fresh key per call keeps the function stateless: no key lingers in memory, and forked
workers (data loaders, multiprocessing) cannot share a key stream.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = [
    "chacha20_words",
    "clip_rows",
    "csprng_normal",
    "gaussian_release",
    "representation_sensitivity",
    "truncation_delta",
    "update_sensitivity",
]

_KEY_BYTES = 32      # ChaCha20 key
_COUNTER_BYTES = 4   # cryptography's ChaCha20 "nonce" is 4-byte block counter || 12-byte nonce
_NONCE_BYTES = 12
_MANTISSA_BITS = 53  # float64 resolution of a uniform in (0, 1)
_TAIL_LEVELS = 20    # words a radius uniform may take: 2^(-53·20) is still a float64


def chacha20_words(count: int) -> np.ndarray:
    """``count`` uniformly random uint64 words from one fresh ChaCha20 keystream."""
    key = os.urandom(_KEY_BYTES)
    # The counter starts at 0: a random counter could start near 2^32 and overflow on a
    # long request (cryptography raises); 2^32 blocks of 64 bytes bound one call at 256 GiB.
    nonce = bytes(_COUNTER_BYTES) + os.urandom(_NONCE_BYTES)
    encryptor = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * count))  # keystream XOR zeros = keystream
    return np.frombuffer(stream, dtype="<u8", count=count)


def _uniform_open(words: np.ndarray) -> np.ndarray:
    """53-bit uniforms that are never 0: the top 53 bits k of a word map to (k + 1) / 2^53,
    every value exact in float64, so log(u) in Box–Muller is always finite.

    The grid is (0, 1]: a midpoint grid (k + 1/2) / 2^53, open at both ends, would need a
    54th bit, and its top point rounds to 1 anyway. u = 1 (probability 2^-53) is radius 0,
    a legitimate normal sample.
    """
    k = (words >> np.uint64(64 - _MANTISSA_BITS)).astype(np.float64)
    return (k + 1.0) * (2.0 ** -_MANTISSA_BITS)


def _tail_uniform(words: np.ndarray) -> np.ndarray:
    """:func:`_uniform_open`'s uniforms, with their smallest values refined: where a word's
    top 53 bits are all zero (probability 2⁻⁵³) a fresh word gives the next 53 bits, and so
    on for up to :data:`_TAIL_LEVELS` words, so u reaches 2^(−53·levels) (float64 holds it)
    instead of stopping at 2⁻⁵³. Box–Muller's radius √(−2 ln u) then reaches
    :data:`MAX_DRAW_SDS` ≈ 38.3 standard deviations instead of 8.57: a Gaussian cut that far
    out is one no realistic noise multiplier notices (:func:`truncation_delta`)."""
    u = _uniform_open(words)
    idx = np.flatnonzero((words >> np.uint64(64 - _MANTISSA_BITS)) == 0)
    scale = 2.0 ** -_MANTISSA_BITS
    for _ in range(_TAIL_LEVELS - 1):
        if idx.size == 0:
            break
        k = (chacha20_words(idx.size) >> np.uint64(64 - _MANTISSA_BITS)).astype(np.float64)
        u[idx] = (k + 1.0) * (2.0 ** -_MANTISSA_BITS) * scale
        idx = idx[k == 0.0]
        scale *= 2.0 ** -_MANTISSA_BITS
    return u


def _check_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError as exc:
        raise ValueError(f"shape must be a tuple of non-negative ints, got {shape!r}") from exc
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0
               for n in dims):
        raise ValueError(f"shape must be a tuple of non-negative ints, got {shape!r}")
    return tuple(int(n) for n in dims)


def csprng_normal(
    shape: tuple[int, ...] | torch.Size,
    *,
    std: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """I.i.d. N(0, std²) samples of ``shape`` from OS entropy (DESIGN §5.1).

    The normals are computed in float64 (Box–Muller; the radius's uniform refined below
    2⁻⁵³ by :func:`_tail_uniform`, so the largest magnitude is :data:`MAX_DRAW_SDS` ≈ 38.3
    std), scaled by ``std`` and only then cast to ``dtype``.
    ``std == 0`` returns zeros without drawing entropy; a negative or non-finite ``std``
    raises :class:`ValueError`.
    """
    dims = _check_shape(shape)
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std):
        raise ValueError(f"std must be a finite number, got {std!r}")
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point dtype, got {dtype}")
    n = math.prod(dims)
    if std == 0 or n == 0:
        return torch.zeros(dims, dtype=dtype, device=device)

    pairs = (n + 1) // 2
    words = chacha20_words(2 * pairs)
    u = _uniform_open(words)
    radius = np.sqrt(-2.0 * np.log(_tail_uniform(words[:pairs])))
    angle = (2.0 * math.pi) * u[pairs:]
    normals = np.empty(2 * pairs, dtype=np.float64)
    normals[:pairs] = radius * np.cos(angle)
    normals[pairs:] = radius * np.sin(angle)
    normals = normals[:n] * float(std)
    return torch.from_numpy(normals).reshape(dims).to(device=device, dtype=dtype)


#: The largest |draw| of :func:`csprng_normal`, in standard deviations: Box–Muller's radius
#: √(−2 ln u) at the smallest uniform, 2^(−53·20) (:func:`_tail_uniform`): 38.3. The noise
#: is a Gaussian cut there, which the accountant does not model (:func:`truncation_delta`).
MAX_DRAW_SDS = math.sqrt(2.0 * _MANTISSA_BITS * _TAIL_LEVELS * math.log(2.0))


def truncation_delta(noise_multiplier: float, releases: int, coordinates: int) -> float:
    """The δ that :func:`csprng_normal`'s cut at :data:`MAX_DRAW_SDS` adds to ``releases``
    Gaussian mechanisms of multiplier σ, each over at most ``coordinates`` coordinates.

    Box–Muller draws coordinates in pairs whose radius stops at T = MAX_DRAW_SDS: each pair
    lies in a disk of radius T. On two neighbouring datasets the outputs' supports differ
    only where a pair lies within its shift of the disk's edge; on their common support the
    density ratio is the Gaussian's. The shift is at most 1/σ standard deviations in total
    (L2 sensitivity), so per release that event has probability at most
    P(R > T − 1/σ) + coordinates · P(R > T), R a 2-D standard normal's radius,
    P(R > r) = exp(−r²/2) (the worst case puts the whole shift on one pair); over the run
    the probabilities add to δ."""
    t = MAX_DRAW_SDS
    edge = max(t - 1.0 / noise_multiplier, 0.0)
    return releases * (math.exp(-edge * edge / 2.0) + coordinates * math.exp(-t * t / 2.0))


def representation_sensitivity(rows: int) -> float:
    """Frobenius sensitivity 2√B of a released batch of B unit-norm rows (DESIGN §5.1).

    One client replacing its whole private dataset can move each row anywhere on the unit
    sphere, i.e. by at most 2 in norm; over B rows that is at most √(B·2²) = 2√B.
    """
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
        raise ValueError(f"rows must be a positive int, got {rows!r}")
    return 2.0 * math.sqrt(int(rows))


def update_sensitivity(clip: float) -> float:
    """L2 sensitivity 2C of one weight update clipped to norm C (DESIGN §2.7, §5.1): a
    client replacing its whole private dataset can move its update anywhere in the ball of
    radius C, i.e. by at most 2C."""
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) \
            or clip <= 0:
        raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
    return 2.0 * float(clip)


def clip_rows(z: torch.Tensor, max_norm: float = 1.0) -> tuple[torch.Tensor, int]:
    """Scale every row (last dimension) of ``z`` to L2 norm at most ``max_norm``.

    Returns the clipped tensor and how many rows had a norm above ``max_norm·(1 + 1e-6)``
    (rows already normalised by the encoder sit at norm 1 up to rounding: not counted).
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) \
            or not math.isfinite(max_norm) or max_norm <= 0:
        raise ValueError(f"max_norm must be a finite number > 0, got {max_norm!r}")
    if not z.is_floating_point():
        raise ValueError(f"z must be a floating point tensor, got {z.dtype}")
    if z.dim() < 1:
        raise ValueError("z must have at least one dimension (the row)")
    norms = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    clipped = int((norms > max_norm * (1 + 1e-6)).sum().item())
    # max_norm / 0 = inf for an all-zero row; the clamp turns that into "leave it".
    scale = (max_norm / norms).clamp(max=1.0)
    return z * scale, clipped


def gaussian_release(z: torch.Tensor, *, noise_multiplier: float) -> tuple[torch.Tensor, int]:
    """Clip rows to norm 1, then add N(0, (σ·2√B)²) per coordinate (DESIGN §5.1).

    ``z`` is (nb, B, d): nb batches of B rows. Each batch is one Gaussian mechanism with
    sensitivity 2√B and noise multiplier σ, so a call is ``nb`` accountant steps
    (``DpEventRecord(mechanism="gaussian", steps=nb, ...)``). Returns (noisy, number of
    rows that were clipped).
    """
    if z.dim() != 3:
        raise ValueError(f"z must be (batches, rows, dim), got shape {tuple(z.shape)}")
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)) \
            or not math.isfinite(noise_multiplier) or noise_multiplier <= 0:
        raise ValueError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier!r}")
    rows = int(z.shape[1])
    clipped_z, clipped = clip_rows(z, 1.0)
    std = float(noise_multiplier) * representation_sensitivity(rows)
    noise = csprng_normal(z.shape, std=std, dtype=z.dtype, device=z.device)
    return clipped_z + noise, clipped
