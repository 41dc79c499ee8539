"""Fixed-point encoding of float tensors into Z_(2^64) for secure aggregation (DESIGN §4.1).

A value ``x`` is clipped to ``[-clip, clip]`` and encoded as ``round(x * 2**frac_bits)``
(round half to even) in an ``int64`` tensor. The int64 two's-complement representation is
the element of the group Z_(2^64); torch int64 addition wraps mod 2^64, so encodings (and
pairwise masks) can be added and subtracted as group elements.

Overflow rule: the largest encoded magnitude is ``m = round(clip * 2**frac_bits)``; a
configuration is accepted only if ``num_clients * m <= 2**63 - 1``, so the *signed* sum of
up to ``num_clients`` encodings never wraps and ``decode`` of the wrapped group sum is the
exact integer sum. The check is done in exact rational arithmetic, so it triggers exactly
at the bound. Inputs outside ``[-clip, clip]`` are clipped and *counted* (never silent);
NaN or infinite inputs are an :class:`EncodingError`.

Precision: each encoding is off by at most ``0.5 / 2**frac_bits`` from its clipped input,
so ``decode`` of a sum of ``k`` encodings is within ``k * 0.5 / 2**frac_bits`` of the exact
sum of the clipped inputs, plus the float64 rounding of the decoded value itself (at most
half an ulp of the result, relative ``2**-53``; it matters only when ``frac_bits`` is so large
that the integer sum exceeds 2^53). :meth:`FixedPointCodec.precision_for` returns the bound
including that term; the ``precision`` property is the bound for ``k = num_clients``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from fedmuscle_secure.errors import EncodingError

INT64_MAX = 2**63 - 1
MAX_FRAC_BITS = 1022  # 2.0**1022 is still a finite float64

__all__ = ["INT64_MAX", "MAX_FRAC_BITS", "FixedPointCodec", "max_units"]


def max_units(clip: float, frac_bits: int) -> int:
    """The largest encoded magnitude, ``round(clip * 2**frac_bits)`` (half to even), exactly."""
    return round(Fraction(clip) * 2**frac_bits)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class FixedPointCodec:
    """Clip-and-scale codec into Z_(2^64); see the module docstring for the guarantees."""

    clip: float
    frac_bits: int
    num_clients: int

    def __post_init__(self) -> None:
        cfg = f"clip={self.clip!r}, frac_bits={self.frac_bits!r}, num_clients={self.num_clients!r}"
        if isinstance(self.clip, bool) or not isinstance(self.clip, (int, float)):
            raise EncodingError(f"clip must be a positive finite number ({cfg})")
        if not math.isfinite(self.clip) or self.clip <= 0:
            raise EncodingError(f"clip must be a positive finite number ({cfg})")
        if not _is_int(self.num_clients) or self.num_clients <= 0:
            raise EncodingError(f"num_clients must be a positive integer ({cfg})")
        if not _is_int(self.frac_bits) or not 0 <= self.frac_bits <= MAX_FRAC_BITS:
            raise EncodingError(f"frac_bits must be an integer in [0, {MAX_FRAC_BITS}] ({cfg})")
        object.__setattr__(self, "clip", float(self.clip))
        m = max_units(self.clip, self.frac_bits)
        if self.num_clients * m > INT64_MAX:
            raise EncodingError(
                f"fixed-point sum could overflow: num_clients * round(clip * 2**frac_bits) = "
                f"{self.num_clients} * {m} = {self.num_clients * m} exceeds the bound "
                f"2**63 - 1 = {INT64_MAX} ({cfg}); lower frac_bits, clip or num_clients"
            )

    @classmethod
    def for_clients(
        cls, *, clip: float, num_clients: int, frac_bits: int | None = None
    ) -> FixedPointCodec:
        """A codec for ``num_clients``; ``frac_bits=None`` picks the largest safe value."""
        if frac_bits is not None:
            return cls(clip=clip, frac_bits=frac_bits, num_clients=num_clients)
        cls(clip=clip, frac_bits=0, num_clients=num_clients)  # validates; raises if f=0 unsafe
        lo, hi = 0, MAX_FRAC_BITS  # invariant: lo is safe
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if num_clients * max_units(float(clip), mid) <= INT64_MAX:
                lo = mid
            else:
                hi = mid - 1
        return cls(clip=clip, frac_bits=lo, num_clients=num_clients)

    @property
    def scale(self) -> float:
        return 2.0**self.frac_bits

    @property
    def max_encoded(self) -> int:
        """The largest magnitude of one encoding."""
        return max_units(self.clip, self.frac_bits)

    def precision_for(self, k: int) -> float:
        """Absolute error bound of ``decode(sum of k encodings)`` vs the exact clipped sum.

        ``k * 0.5 / 2**frac_bits`` (rounding of each encoding) plus half an ulp of the decoded
        float64 (``k * (clip + 2**-frac_bits) * 2**-53``, zero in practice unless the integer
        sum exceeds 2^53).
        """
        if not _is_int(k) or not 1 <= k <= self.num_clients:
            raise EncodingError(f"k={k!r} must be in [1, num_clients={self.num_clients}]")
        rounding = k * 0.5 / self.scale
        conversion = k * (self.clip + 1.0 / self.scale) * 2.0**-53
        return rounding + conversion

    @property
    def precision(self) -> float:
        """:meth:`precision_for` at ``k = num_clients`` (the worst case this codec allows)."""
        return self.precision_for(self.num_clients)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Encode ``x``; returns ``(int64 tensor, number of elements that were clipped)``."""
        if not isinstance(x, torch.Tensor):
            raise EncodingError(f"encode expects a torch.Tensor, got {type(x).__name__}")
        if x.is_complex():
            raise EncodingError("encode expects a real tensor, got a complex one")
        xf = x.detach().to(torch.float64)
        bad = ~torch.isfinite(xf)
        if bool(bad.any()):
            raise EncodingError(
                f"encode input has {int(bad.sum())} NaN/infinite element(s); refusing to encode"
            )
        clipped = int((xf.abs() > self.clip).sum())
        xc = xf.clamp(-self.clip, self.clip)
        # x * 2**f is exact in float64 (power-of-two scaling, |result| < 2**63 by the config
        # check), torch.round is half-to-even like max_units.
        return torch.round(xc * self.scale).to(torch.int64), clipped

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        """Decode an int64 sum of up to ``num_clients`` encodings (wrapped mod 2^64) to float64."""
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64:
            got = y.dtype if isinstance(y, torch.Tensor) else type(y).__name__
            raise EncodingError(f"decode expects an int64 tensor, got {got}")
        return y.to(torch.float64) / self.scale
