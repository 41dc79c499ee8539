"""Shamir t-of-n secret sharing over a prime field (DESIGN §4.2).

The only hand-written cryptographic primitive in the project. A secret ``s`` in
``[0, prime)`` is the constant term of a random polynomial of degree ``threshold - 1``
whose other coefficients are uniform in the field (``secrets.randbelow``); share ``i`` is
``(i, f(i))`` for ``i = 1..num_shares``. Any ``threshold`` shares determine ``s`` by Lagrange
interpolation at 0; any fewer are independent of ``s`` (perfect secrecy).

``PRIME_256`` is the Mersenne prime ``2**521 - 1`` (M521, > 2**256), so any 32-byte
secret (seed or X25519 private key) is a field element.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence

PRIME_256: int = 2**521 - 1  # Mersenne prime M521

__all__ = ["PRIME_256", "int_to_bytes32", "reconstruct", "split"]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_prime(prime: int) -> None:
    if not _is_int(prime) or prime < 2:
        raise ValueError(f"prime must be an integer >= 2, got {prime!r}")


def _check_threshold(threshold: int, prime: int) -> None:
    if not _is_int(threshold) or not 1 <= threshold < prime:
        raise ValueError(f"threshold must be an integer in [1, prime), got {threshold!r}")


def split(
    secret: int | bytes,
    *,
    threshold: int,
    num_shares: int,
    prime: int = PRIME_256,
    rng: Callable[[int], int] | None = None,
) -> list[tuple[int, int]]:
    """Split ``secret`` into ``num_shares`` shares ``(x, y)``, ``x = 1..num_shares``.

    ``bytes`` secrets (at most 32 bytes) are read big-endian. ``rng`` (a callable
    ``k -> int in [0, k)``) replaces ``secrets.randbelow``; it exists only for tests.
    """
    _check_prime(prime)
    if isinstance(secret, (bytes, bytearray)):
        if len(secret) > 32:
            raise ValueError(f"secret: bytes secrets are at most 32 bytes, got {len(secret)}")
        secret = int.from_bytes(secret, "big")
    if not _is_int(secret) or not 0 <= secret < prime:
        raise ValueError("secret must be an integer in [0, prime) or at most 32 bytes")
    _check_threshold(threshold, prime)
    if not _is_int(num_shares) or not threshold <= num_shares < prime:
        raise ValueError(
            f"num_shares must be an integer with threshold ({threshold}) <= num_shares < prime, "
            f"got {num_shares!r}"
        )
    draw = secrets.randbelow if rng is None else rng
    coeffs = [secret]
    for _ in range(threshold - 1):
        c = draw(prime)
        if not _is_int(c) or not 0 <= c < prime:
            raise ValueError(f"rng returned {c!r}, not an integer in [0, prime)")
        coeffs.append(c)
    shares = []
    for x in range(1, num_shares + 1):
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % prime
        shares.append((x, y))
    return shares


def reconstruct(
    shares: Sequence[tuple[int, int]], *, threshold: int, prime: int = PRIME_256
) -> int:
    """Lagrange interpolation at 0 through all given shares (at least ``threshold``)."""
    _check_prime(prime)
    _check_threshold(threshold, prime)
    shares = list(shares)
    if len(shares) < threshold:
        raise ValueError(f"shares: need at least threshold={threshold} shares, got {len(shares)}")
    xs = []
    for share in shares:
        if len(share) != 2:
            raise ValueError(f"shares: each share is an (x, y) pair, got {share!r}")
        x, y = share
        if not (_is_int(x) and _is_int(y) and 1 <= x < prime and 0 <= y < prime):
            raise ValueError(f"shares: share {share!r} is not in [1, prime) x [0, prime)")
        xs.append(x)
    if len(set(xs)) != len(xs):
        raise ValueError(f"shares: duplicate x coordinates in {sorted(xs)}")
    secret = 0
    for i, (xi, yi) in enumerate(shares):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (-xj) % prime
                den = den * (xi - xj) % prime
        secret = (secret + yi * num * pow(den, -1, prime)) % prime
    return secret


def int_to_bytes32(v: int) -> bytes:
    """``v`` in ``[0, 2**256)`` as 32 big-endian bytes (inverse of the bytes form of ``split``)."""
    if not _is_int(v) or not 0 <= v < 2**256:
        raise ValueError(f"v must be an integer in [0, 2**256), got {v!r}")
    return v.to_bytes(32, "big")
