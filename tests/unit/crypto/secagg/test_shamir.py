"""Shamir t-of-n secret sharing (DESIGN §4.2): exhaustive on small fields, round trips on M521,
and robust reconstruction from shares of which some may lie."""

from __future__ import annotations

import itertools
import secrets
from collections import Counter

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedmuscle_secure.crypto.secagg.shamir import (
    PRIME_256,
    Decoded,
    ShareDecodingError,
    correctable_errors,
    int_to_bytes32,
    reconstruct,
    robust_reconstruct,
    split,
)

SMALL = [(11, 5, 2), (11, 5, 3), (13, 4, 2), (13, 4, 3), (7, 4, 1), (7, 4, 4)]


def fixed_rng(coeffs):
    """An ``rng`` hook that returns the given coefficients in order."""
    it = iter(coeffs)

    def rng(k):
        v = next(it)
        assert 0 <= v < k
        return v

    return rng


def all_splits(secret, p, n, t):
    """Every polynomial with constant term ``secret``: the p**(t-1) coefficient tuples."""
    for coeffs in itertools.product(range(p), repeat=t - 1):
        yield split(secret, threshold=t, num_shares=n, prime=p, rng=fixed_rng(coeffs))


def subsets(n, sizes):
    for k in sizes:
        yield from itertools.combinations(range(n), k)


def test_prime_is_m521_and_above_2_256():
    assert PRIME_256 == 2**521 - 1
    assert PRIME_256 > 2**256
    # Fermat check with a few bases (M521 is a known Mersenne prime)
    for a in (2, 3, 5, 7, 11):
        assert pow(a, PRIME_256 - 1, PRIME_256) == 1


@pytest.mark.parametrize(("p", "n", "t"), SMALL)
def test_every_subset_of_at_least_t_shares_reconstructs_every_secret(p, n, t):
    big = list(subsets(n, range(t, n + 1)))
    for secret in range(p):
        for shares in all_splits(secret, p, n, t):
            assert [x for x, _ in shares] == list(range(1, n + 1))
            for idx in big:
                picked = [shares[i] for i in idx]
                assert reconstruct(picked, threshold=t, prime=p) == secret
                assert reconstruct(picked[::-1], threshold=t, prime=p) == secret


@pytest.mark.parametrize(("p", "n", "t"), SMALL)
def test_fewer_than_t_shares_have_the_same_distribution_for_every_secret(p, n, t):
    small = list(subsets(n, range(1, t)))
    for idx in small:
        dists = []
        for secret in range(p):
            dists.append(Counter(tuple(s[i][1] for i in idx) for s in all_splits(secret, p, n, t)))
        assert all(d == dists[0] for d in dists)
        # and it is uniform: each tuple of |idx| values appears p**(t-1-|idx|) times
        assert len(dists[0]) == p ** len(idx)
        assert set(dists[0].values()) == {p ** (t - 1 - len(idx))}


def test_default_rng_uses_field_sized_coefficients():
    # rng=None: coefficients come from secrets.randbelow(prime)
    shares = split(5, threshold=3, num_shares=6, prime=97)
    assert all(0 <= y < 97 for _, y in shares)
    assert reconstruct(shares[2:5], threshold=3, prime=97) == 5


@pytest.mark.parametrize(("t", "n"), [(2, 3), (3, 5), (5, 10)])
def test_32_byte_secrets_round_trip_on_prime_256(t, n):
    for secret in (bytes(32), b"\xff" * 32, secrets.token_bytes(32), secrets.token_bytes(32)):
        shares = split(secret, threshold=t, num_shares=n)
        assert len(shares) == n
        for idx in itertools.islice(itertools.combinations(range(n), t), 30):
            got = reconstruct([shares[i] for i in idx], threshold=t)
            assert int_to_bytes32(got) == secret
        assert int_to_bytes32(reconstruct(shares, threshold=t)) == secret
        if t > 1:  # t-1 shares (almost surely) do not give the secret
            wrong = reconstruct(shares[: t - 1], threshold=t - 1)
            assert wrong != int.from_bytes(secret, "big") or secret == bytes(32)


def test_short_bytes_and_int_secrets():
    shares = split(b"\x01\x02", threshold=2, num_shares=3)
    assert reconstruct(shares[1:], threshold=2) == 0x0102
    big = PRIME_256 - 1
    assert reconstruct(split(big, threshold=3, num_shares=4), threshold=3) == big


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"secret": 1, "threshold": 0, "num_shares": 3}, "threshold"),
        ({"secret": 1, "threshold": 4, "num_shares": 3}, "num_shares"),
        ({"secret": 1, "threshold": 2, "num_shares": 13, "prime": 13}, "num_shares"),
        ({"secret": 13, "threshold": 2, "num_shares": 3, "prime": 13}, "secret"),
        ({"secret": -1, "threshold": 2, "num_shares": 3}, "secret"),
        ({"secret": b"x" * 33, "threshold": 2, "num_shares": 3}, "secret"),
        ({"secret": 1.0, "threshold": 2, "num_shares": 3}, "secret"),
        ({"secret": 1, "threshold": 2.0, "num_shares": 3}, "threshold"),
        ({"secret": 1, "threshold": 2, "num_shares": 3, "prime": 1}, "prime"),
    ],
)
def test_split_errors_name_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        split(**kwargs)


def test_reconstruct_errors_name_the_argument():
    shares = split(3, threshold=3, num_shares=5, prime=13)
    with pytest.raises(ValueError, match="threshold=3"):
        reconstruct(shares[:2], threshold=3, prime=13)
    with pytest.raises(ValueError, match="duplicate"):
        reconstruct([shares[0], shares[1], shares[0]], threshold=3, prime=13)
    with pytest.raises(ValueError, match="shares"):
        reconstruct([shares[0], shares[1], (0, 5)], threshold=3, prime=13)
    with pytest.raises(ValueError, match="shares"):
        reconstruct([shares[0], shares[1], (4, 13)], threshold=3, prime=13)
    with pytest.raises(ValueError, match="threshold"):
        reconstruct(shares, threshold=0, prime=13)


def test_int_to_bytes32():
    assert int_to_bytes32(0) == bytes(32)
    assert int_to_bytes32(2**256 - 1) == b"\xff" * 32
    assert int_to_bytes32(0x0102) == bytes(30) + b"\x01\x02"
    for bad in (-1, 2**256, 1.0):
        with pytest.raises(ValueError, match="v must be"):
            int_to_bytes32(bad)


# -- robust reconstruction: shares that may lie ---------------------------------------------
# (p, n, t): every received word in F_p^n, against an oracle that enumerates every polynomial
DECODE_SMALL = [(7, 5, 1), (7, 5, 2), (5, 4, 1), (5, 4, 2), (5, 4, 3), (11, 3, 1)]


def _eval(coeffs, x, p):
    return sum(c * x**j for j, c in enumerate(coeffs)) % p


@pytest.mark.parametrize(("p", "n", "t"), DECODE_SMALL)
def test_robust_reconstruct_agrees_with_brute_force_on_every_word(p, n, t):
    """The oracle: the polynomials (all p**t of them) within distance e = ⌊(n − t)/2⌋ of the
    word. At most one exists; the decoder returns it with the points off it, or raises."""
    e = correctable_errors(n, t)
    assert e == (n - t) // 2
    polys = [(c, [_eval(c, x, p) for x in range(1, n + 1)])
             for c in itertools.product(range(p), repeat=t)]
    for word in itertools.product(range(p), repeat=n):
        shares = list(zip(range(1, n + 1), word, strict=True))
        near = [(c, [x for x, y, v in zip(range(1, n + 1), word, vals, strict=True) if y != v])
                for c, vals in polys]
        near = [(c, off) for c, off in near if len(off) <= e]
        assert len(near) <= 1
        if near:
            (coeffs, off), = near
            assert robust_reconstruct(shares, threshold=t, prime=p) == Decoded(coeffs[0], tuple(off))
            assert robust_reconstruct(shares[::-1], threshold=t, prime=p).secret == coeffs[0]
        else:
            with pytest.raises(ShareDecodingError) as info:
                robust_reconstruct(shares, threshold=t, prime=p)
            assert info.value.correctable == e and (info.value.num_shares, info.value.threshold) == (n, t)


@st.composite
def corrupted(draw, *, beyond: bool):
    """A sharing on M521 with s wrong shares: s ≤ e, or (beyond) e < s ≤ n − t − e."""
    t = draw(st.integers(1, 6))
    n = draw(st.integers(t + (3 if beyond else 0), t + 8))
    e = (n - t) // 2
    lo, hi = (e + 1, n - t - e) if beyond else (0, e)
    if beyond:
        assume(lo <= hi)
    secret = draw(st.integers(0, 2**256 - 1))
    shares = split(secret, threshold=t, num_shares=n)
    bad = draw(st.lists(st.integers(0, n - 1), min_size=lo, max_size=hi, unique=True))
    for i in bad:
        x, y = shares[i]
        delta = draw(st.integers(1, PRIME_256 - 1) | st.sampled_from([1, PRIME_256 - 1]))
        shares[i] = (x, (y + delta) % PRIME_256)
    order = draw(st.permutations(range(n)))
    return secret, [shares[i] for i in order], t, tuple(sorted(i + 1 for i in bad))


@settings(max_examples=80, deadline=None)
@given(corrupted(beyond=False))
def test_up_to_e_wrong_shares_are_corrected_and_named(case):
    secret, shares, t, bad = case
    assert robust_reconstruct(shares, threshold=t) == Decoded(secret, bad)


@settings(max_examples=60, deadline=None)
@given(corrupted(beyond=True))
def test_more_than_e_wrong_shares_are_detected(case):
    _, shares, t, _ = case
    with pytest.raises(ShareDecodingError, match="too many are wrong"):
        robust_reconstruct(shares, threshold=t)


def test_without_spare_shares_an_inconsistency_is_detected_but_not_corrected():
    shares = split(7, threshold=3, num_shares=4)
    shares[1] = (2, (shares[1][1] + 1) % PRIME_256)
    with pytest.raises(ShareDecodingError, match="too few to tell which") as info:
        robust_reconstruct(shares, threshold=3)
    assert info.value.correctable == 0


def test_robust_reconstruct_validates_like_reconstruct():
    shares = split(3, threshold=3, num_shares=5, prime=13)
    with pytest.raises(ValueError, match="threshold=3"):
        robust_reconstruct(shares[:2], threshold=3, prime=13)
    with pytest.raises(ValueError, match="duplicate"):
        robust_reconstruct([shares[0], shares[1], shares[0]], threshold=3, prime=13)
    with pytest.raises(ValueError, match="num_shares"):
        correctable_errors(2, 3)
