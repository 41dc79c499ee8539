"""What one client feeds into a secure sum: its released rows Z and its q, as one int64 vector.

DESIGN §2.2 needs U = Σ z^m and q = Σ ||z^m||² over the group. Both are encoded with
their own :class:`FixedPointCodec` (their ranges differ: a noised coordinate vs a squared
norm), each with the largest fractional precision for which the sum over the whole
group cannot overflow (§4.1), and concatenated: ``[Z.flatten(), q]``. The parameters are
public and travel with the instance's setup, so every client encodes exactly what the
server decodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedmuscle_secure.crypto.encoding import FixedPointCodec
from fedmuscle_secure.errors import EncodingError

#: Standard deviations of slack above √length in the norm of a Gaussian noise vector: a
#: length-P vector of N(0, s²) coordinates has norm above s·(√P + k) with probability at
#: most exp(−k²/2) (Lipschitz concentration), 2·10⁻²² at k = 10.
NOISE_NORM_SDS = 10.0


def mean_update_bound(clip: float, noise_std: float = 0.0, length: int = 0) -> float:
    """The largest L2 norm a mean of updates each clipped to ``clip`` may show after the
    encoding's rounding and float32 (DESIGN §2.7): ``clip`` plus a relative 10⁻⁵, plus,
    where the members add noise (DESIGN §5.1), the norm a ``length``-vector of the mean's
    noise, per-coordinate std ``noise_std``, stays below but with probability 2·10⁻²²."""
    return clip * (1.0 + 1e-5) + noise_std * (length ** 0.5 + NOISE_NORM_SDS)


@dataclass(frozen=True)
class SumEncoding:
    """(nb, B, d) rows and (nb, B) squared norms of ``group_size`` clients → one int64 vector."""

    batches: int
    rows: int
    dim: int
    group_size: int
    value_clip: float
    sq_norm_clip: float
    frac_bits: int | None = None  # None: the largest safe value for each part

    def __post_init__(self) -> None:
        for name in ("batches", "rows", "dim", "group_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise EncodingError(f"SumEncoding.{name} must be a positive integer, got {v!r}")

    @property
    def z_codec(self) -> FixedPointCodec:
        return FixedPointCodec.for_clients(clip=self.value_clip, num_clients=self.group_size,
                                           frac_bits=self.frac_bits)

    @property
    def q_codec(self) -> FixedPointCodec:
        return FixedPointCodec.for_clients(clip=self.sq_norm_clip, num_clients=self.group_size,
                                           frac_bits=self.frac_bits)

    def check(self) -> None:
        """Raise :class:`EncodingError` unless the group's sum of both parts fits int64."""
        self.z_codec, self.q_codec  # noqa: B018 (building a codec validates it)

    @property
    def vector_length(self) -> int:
        return self.batches * self.rows * (self.dim + 1)

    def encode(self, z: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``z`` (nb, B, d), ``q`` (nb, B) → (int64 vector, number of clipped elements)."""
        shape = (self.batches, self.rows, self.dim)
        if tuple(z.shape) != shape or tuple(q.shape) != shape[:2]:
            raise EncodingError(f"secure-sum input must be Z {shape} and q {shape[:2]}, got "
                                f"{tuple(z.shape)} and {tuple(q.shape)}")
        ez, cz = self.z_codec.encode(z.reshape(-1))
        eq, cq = self.q_codec.encode(q.reshape(-1))
        return torch.cat([ez, eq]), cz + cq

    def decode(self, vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An int64 sum of up to ``group_size`` encodings → (U (nb, B, d), q (nb, B)) float64."""
        if tuple(vector.shape) != (self.vector_length,):
            raise EncodingError(f"secure-sum vector must have length {self.vector_length}, "
                                f"got shape {tuple(vector.shape)}")
        n = self.batches * self.rows * self.dim
        u = self.z_codec.decode(vector[:n]).view(self.batches, self.rows, self.dim)
        q = self.q_codec.decode(vector[n:]).view(self.batches, self.rows)
        return u, q

    def round_trip(self, z: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the group sum will contain for this input (its decoded encoding)."""
        return self.decode(self.encode(z, q)[0])
