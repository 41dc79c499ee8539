"""Shamir t-of-n secret sharing over a prime field (DESIGN §4.2).

The only hand-written cryptographic primitive in the project. A secret ``s`` in
``[0, prime)`` is the constant term of a random polynomial of degree ``threshold - 1``
whose other coefficients are uniform in the field (``secrets.randbelow``); share ``i`` is
``(i, f(i))`` for ``i = 1..num_shares``. Any ``threshold`` shares determine ``s`` by Lagrange
interpolation at 0; any fewer are independent of ``s`` (perfect secrecy).

``PRIME_256`` is the Mersenne prime ``2**521 - 1`` (M521, > 2**256), so any 32-byte
secret (seed or X25519 private key) is a field element.

Shares revealed by parties who may lie are read with :func:`robust_reconstruct`: Shamir
shares are a Reed–Solomon codeword (length n, dimension t), so with more than t shares
the wrong ones can be found and left out (Berlekamp–Welch decoding), up to the bound
:func:`correctable_errors` documents.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedmuscle_secure.errors import FedMuscleError

PRIME_256: int = 2**521 - 1  # Mersenne prime M521

__all__ = [
    "PRIME_256",
    "Decoded",
    "ShareDecodingError",
    "correctable_errors",
    "int_to_bytes32",
    "reconstruct",
    "robust_reconstruct",
    "split",
]


class ShareDecodingError(FedMuscleError):
    """The shares are not all on one polynomial of degree ``threshold - 1``, and which of
    them are wrong cannot be decided (more are wrong than :func:`correctable_errors`)."""

    def __init__(self, num_shares: int, threshold: int, message: str) -> None:
        self.num_shares = num_shares
        self.threshold = threshold
        self.correctable = correctable_errors(num_shares, threshold)
        super().__init__(f"{num_shares} shares, threshold {threshold} (at most "
                         f"{self.correctable} wrong shares can be corrected): {message}")


@dataclass(frozen=True)
class Decoded:
    """What :func:`robust_reconstruct` found: the secret, and the x coordinates of the
    shares that are off the polynomial every other share agrees on (sorted)."""

    secret: int
    off: tuple[int, ...]


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


def _check_points(shares: Sequence[tuple[int, int]], threshold: int, prime: int,
                  ) -> list[tuple[int, int]]:
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
    return shares


def reconstruct(
    shares: Sequence[tuple[int, int]], *, threshold: int, prime: int = PRIME_256
) -> int:
    """Lagrange interpolation at 0 through all given shares (at least ``threshold``).

    Trusts every share: one wrong share gives a wrong secret, silently. Shares from
    parties who may lie go through :func:`robust_reconstruct`.
    """
    shares = _check_points(shares, threshold, prime)
    xs = [x for x, _ in shares]
    secret = 0
    for i, (xi, yi) in enumerate(shares):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (-xj) % prime
                den = den * (xi - xj) % prime
        secret = (secret + yi * num * pow(den, -1, prime)) % prime
    return secret


def correctable_errors(num_shares: int, threshold: int) -> int:
    """How many wrong shares among ``num_shares`` :func:`robust_reconstruct` corrects:
    e = ⌊(n − t) / 2⌋ for n shares and threshold t.

    n shares of a polynomial of degree t − 1 are a Reed–Solomon codeword of minimum
    distance n − t + 1 (two different polynomials agree on at most t − 1 points), so
    with s wrong shares:

    * s ≤ e: the true polynomial is the only one within distance e of the shares: the
      secret is right and exactly the wrong shares are named;
    * e < s ≤ n − t − e: no polynomial is within distance e: :class:`ShareDecodingError`
      (the inconsistency is detected, nobody is named);
    * s ≥ n − t + 1 − e: parties that coordinate their wrong shares can place them
      within distance e of a polynomial of their choosing; its secret comes back and
      honest shares are named. No decoder can tell (the shares look exactly like ≤ e
      errors on that polynomial): the caller checks the secret where it can (a
      reconstructed private key against its public key).

    With n = t nothing can be checked: any t points lie on one polynomial.
    """
    if not (_is_int(num_shares) and _is_int(threshold) and 1 <= threshold <= num_shares):
        raise ValueError(f"need 1 <= threshold <= num_shares, got threshold {threshold!r}, "
                         f"num_shares {num_shares!r}")
    return (num_shares - threshold) // 2


def robust_reconstruct(
    shares: Sequence[tuple[int, int]], *, threshold: int, prime: int = PRIME_256
) -> Decoded:
    """The secret of the one polynomial of degree ``threshold - 1`` that all but at most
    :func:`correctable_errors` of ``shares`` lie on, and the shares off it.

    All shares consistent (the usual case) costs one interpolation through ``threshold``
    of them and a check of the others. Otherwise Berlekamp–Welch decoding finds the
    polynomial, or raises :class:`ShareDecodingError` when no polynomial is within the
    correctable distance (too many wrong shares to tell which). Read the bound in
    :func:`correctable_errors` before trusting the names in :attr:`Decoded.off`.
    """
    shares = _check_points(shares, threshold, prime)
    n, k = len(shares), threshold
    coeffs = _interpolate(shares[:k], prime)
    if all(_evaluate(coeffs, x, prime) == y for x, y in shares[k:]):
        return Decoded(coeffs[0], ())
    e = correctable_errors(n, k)
    if e == 0:
        raise ShareDecodingError(n, k, "the shares are not on one polynomial of degree "
                                 f"{k - 1}, and there are too few to tell which are wrong")
    poly = _berlekamp_welch(shares, k, e, prime)
    off = () if poly is None else tuple(sorted(x for x, y in shares if _evaluate(poly, x, prime) != y))
    if poly is None or len(off) > e:  # the second cannot happen; checked, not assumed
        raise ShareDecodingError(n, k, f"no polynomial of degree {k - 1} agrees with all but at "
                                 f"most {e} of the shares: too many are wrong to tell which")
    return Decoded(poly[0], off)


# -- field polynomials (coefficient lists, constant term first) ------------------------
def _evaluate(coeffs: Sequence[int], x: int, prime: int) -> int:
    y = 0
    for c in reversed(coeffs):  # Horner
        y = (y * x + c) % prime
    return y


def _interpolate(points: Sequence[tuple[int, int]], prime: int) -> list[int]:
    """Coefficients of the polynomial of degree < len(points) through ``points``:
    Σ_i y_i · (M(x) / (x − x_i)) / M'(x_i), with M = Π (x − x_j)."""
    k = len(points)
    master = [1]
    for xj, _ in points:  # master ← master · (x − xj)
        master = [(lo - xj * hi) % prime for lo, hi in zip([0, *master], [*master, 0], strict=True)]
    out = [0] * k
    for xi, yi in points:
        basis, carry = [0] * k, 0  # master / (x − xi), synthetic division from the top
        for d in range(k, 0, -1):
            carry = (master[d] + carry * xi) % prime
            basis[d - 1] = carry
        den = 1
        for xj, _ in points:
            if xj != xi:
                den = den * (xi - xj) % prime
        scale = yi * pow(den, -1, prime) % prime
        out = [(o + scale * b) % prime for o, b in zip(out, basis, strict=True)]
    return out


def _solve(rows: list[list[int]], prime: int) -> list[int] | None:
    """One solution of the augmented system ``rows`` (free unknowns 0), or None."""
    m = len(rows[0]) - 1
    rank, pivots = 0, []
    for col in range(m):
        r = next((i for i in range(rank, len(rows)) if rows[i][col]), None)
        if r is None:
            continue
        rows[rank], rows[r] = rows[r], rows[rank]
        inv = pow(rows[rank][col], -1, prime)
        rows[rank] = [v * inv % prime for v in rows[rank]]
        for i, row in enumerate(rows):
            if i != rank and row[col]:
                f = row[col]
                rows[i] = [(a - f * b) % prime for a, b in zip(row, rows[rank], strict=True)]
        pivots.append(col)
        rank += 1
    if any(row[m] for row in rows[rank:]):
        return None
    sol = [0] * m
    for i, col in enumerate(pivots):
        sol[col] = rows[i][m]
    return sol


def _berlekamp_welch(shares: Sequence[tuple[int, int]], k: int, e: int, prime: int,
                     ) -> list[int] | None:
    """The polynomial of degree < k within distance e of ``shares``, or None.

    Unknowns: Q of degree < e + k and a monic error locator E of degree e with
    Q(x_i) = y_i · E(x_i) at every share; then the polynomial is Q / E. Any solution
    gives the same quotient (Q1·E2 and Q2·E1 have degree < n and agree on n points)."""
    rows = []
    for x, y in shares:
        powers = [pow(x, j, prime) for j in range(e + k)]
        rows.append([*powers, *((-y * pw) % prime for pw in powers[:e]), y * pow(x, e, prime) % prime])
    sol = _solve(rows, prime)
    if sol is None:
        return None
    q, locator = sol[:e + k], [*sol[e + k:], 1]
    quotient = [0] * (len(q) - e)
    rem = list(q)
    for d in range(len(q) - 1, e - 1, -1):  # long division by the monic locator
        c = rem[d]
        quotient[d - e] = c
        if c:
            for j, lc in enumerate(locator):
                rem[d - e + j] = (rem[d - e + j] - c * lc) % prime
    if any(rem[:e]):
        return None
    return quotient  # degree < k: deg Q < e + k, E monic of degree e


def int_to_bytes32(v: int) -> bytes:
    """``v`` in ``[0, 2**256)`` as 32 big-endian bytes (inverse of the bytes form of ``split``)."""
    if not _is_int(v) or not 0 <= v < 2**256:
        raise ValueError(f"v must be an integer in [0, 2**256), got {v!r}")
    return v.to_bytes(32, "big")
