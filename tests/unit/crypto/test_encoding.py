"""Fixed-point codec into Z_(2^64) (DESIGN §4.1)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmuscle_secure.crypto.encoding import INT64_MAX, FixedPointCodec, max_units
from fedmuscle_secure.errors import EncodingError

SETTINGS = settings(max_examples=60, deadline=None)
I64 = st.integers(-(2**63), 2**63 - 1)


def to_signed(v: int) -> int:
    v %= 2**64
    return v - 2**64 if v >= 2**63 else v


@st.composite
def codecs(draw, max_clients: int = 50) -> FixedPointCodec:
    clip = draw(st.floats(1e-3, 1e6, allow_nan=False, allow_infinity=False))
    n = draw(st.integers(1, max_clients))
    best = FixedPointCodec.for_clients(clip=clip, num_clients=n)
    f = draw(st.one_of(st.just(best.frac_bits), st.integers(0, best.frac_bits)))
    return FixedPointCodec(clip=clip, frac_bits=f, num_clients=n)


def values(codec: FixedPointCodec, size: int):
    c = codec.clip
    return st.lists(
        st.one_of(
            st.floats(-c, c, allow_nan=False),
            st.floats(-3 * c, 3 * c, allow_nan=False),
            st.sampled_from([c, -c, 0.0]),
        ),
        min_size=size,
        max_size=size,
    )


def exact_clipped(x: float, clip: float) -> Fraction:
    return Fraction(min(max(x, -clip), clip))


@SETTINGS
@given(data=st.data())
def test_round_trip_within_half_ulp_of_scale(data):
    codec = data.draw(codecs())
    xs = data.draw(values(codec, 6))
    enc, clipped = codec.encode(torch.tensor(xs, dtype=torch.float64))
    assert enc.dtype == torch.int64
    assert clipped == sum(abs(x) > codec.clip for x in xs)
    dec = codec.decode(enc)
    assert dec.dtype == torch.float64
    for x, d in zip(xs, dec.tolist(), strict=True):
        err = abs(Fraction(d) - exact_clipped(x, codec.clip))
        assert err <= codec.precision_for(1)
    for x, e in zip(xs, enc.tolist(), strict=True):
        # the encoding itself is within 0.5 units of the exact scaled clipped value
        assert abs(e - exact_clipped(x, codec.clip) * 2**codec.frac_bits) <= Fraction(1, 2)


@SETTINGS
@given(data=st.data())
def test_sum_of_encodings_decodes_within_precision_with_and_without_masks(data):
    codec = data.draw(codecs())
    k = data.draw(st.integers(1, codec.num_clients))
    size = 4
    rows = [data.draw(values(codec, size)) for _ in range(k)]
    encs = [codec.encode(torch.tensor(r, dtype=torch.float64))[0] for r in rows]
    exact = [sum(exact_clipped(r[j], codec.clip) for r in rows) for j in range(size)]

    total = torch.zeros(size, dtype=torch.int64)
    for e in encs:
        total = total + e
    masks = [torch.tensor(data.draw(st.lists(I64, min_size=size, max_size=size))) for _ in range(k)]
    masked = torch.zeros(size, dtype=torch.int64)
    for e, m in zip(encs, masks, strict=True):
        masked = masked + (e + m)  # wraps mod 2^64
    for m in masks:
        masked = masked - m
    assert torch.equal(masked, total)

    tol = codec.precision_for(k)
    assert tol <= codec.precision
    for d, ex in zip(codec.decode(total).tolist(), exact, strict=True):
        assert abs(Fraction(d) - ex) <= Fraction(tol)


def test_worst_case_sum_does_not_wrap():
    codec = FixedPointCodec.for_clients(clip=1.0, num_clients=7)
    one, _ = codec.encode(torch.tensor([1.0, -1.0], dtype=torch.float64))
    total = torch.zeros(2, dtype=torch.int64)
    for _ in range(7):
        total = total + one
    assert total.tolist() == [7 * codec.max_encoded, -7 * codec.max_encoded]
    assert codec.decode(total).tolist() == pytest.approx([7.0, -7.0], abs=codec.precision)


@SETTINGS
@given(a=I64, b=I64)
def test_torch_int64_wrap_equals_mod_2_64(a, b):
    ta, tb = torch.tensor([a]), torch.tensor([b])
    assert (ta + tb).item() == to_signed(a + b)
    assert (ta - tb).item() == to_signed(a - b)


def test_torch_int64_wrap_on_large_random_values():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-(2**63), 2**63 - 1, (2000,), dtype=torch.int64, generator=g)
    b = torch.randint(-(2**63), 2**63 - 1, (2000,), dtype=torch.int64, generator=g)
    s = (a + b).tolist()
    for x, y, z in zip(a.tolist(), b.tolist(), s, strict=True):
        assert z == to_signed(x + y)


@SETTINGS
@given(codec=codecs(), xs=st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=20))
def test_clipped_count_is_exact(codec, xs):
    enc, clipped = codec.encode(torch.tensor(xs, dtype=torch.float64))
    assert clipped == sum(abs(x) > codec.clip for x in xs)
    assert bool((enc.abs() <= codec.max_encoded).all())


def test_clip_boundary_is_not_clipped_and_encodes_to_max():
    codec = FixedPointCodec(clip=2.5, frac_bits=10, num_clients=3)
    enc, clipped = codec.encode(torch.tensor([2.5, -2.5, 2.5000001, -1e30], dtype=torch.float64))
    assert clipped == 2
    assert enc.tolist() == [2560, -2560, 2560, -2560]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_is_an_error(bad):
    codec = FixedPointCodec(clip=1.0, frac_bits=16, num_clients=4)
    with pytest.raises(EncodingError, match="NaN/infinite"):
        codec.encode(torch.tensor([0.0, bad]))


def test_float32_input_is_accepted():
    codec = FixedPointCodec(clip=1.0, frac_bits=16, num_clients=4)
    enc, _ = codec.encode(torch.tensor([0.5, -0.25], dtype=torch.float32))
    assert enc.tolist() == [32768, -16384]


# --- overflow refusal exactly at the bound ---------------------------------------------------


def test_refusal_exactly_at_the_bound_integer_units():
    # N = 2**10, f = 20: allowed iff round(clip * 2**20) <= (2**63 - 1) // 2**10 = 2**53 - 1
    n, f = 2**10, 20
    under = (2**53 - 1) / 2**20  # exact float
    over = math.nextafter(under, math.inf)  # = 2**33
    assert n * max_units(under, f) == 2**63 - 2**10 <= INT64_MAX
    FixedPointCodec(clip=under, frac_bits=f, num_clients=n)
    assert n * max_units(over, f) == 2**63 > INT64_MAX
    with pytest.raises(EncodingError) as exc:
        FixedPointCodec(clip=over, frac_bits=f, num_clients=n)
    msg = str(exc.value)
    for word in ("clip=", "frac_bits=20", "num_clients=1024", "2**63 - 1", str(INT64_MAX)):
        assert word in msg
    # one more client or one more fractional bit also goes over
    with pytest.raises(EncodingError):
        FixedPointCodec(clip=under, frac_bits=f, num_clients=n + 1)
    with pytest.raises(EncodingError):
        FixedPointCodec(clip=under, frac_bits=f + 1, num_clients=n)


def test_refusal_at_the_bound_with_rounding():
    # clip * 2**f = M + 0.5 with M = 2**52 - 1 odd: rounds (half to even) up to 2**52
    n = 2**11  # (2**63 - 1) // n = 2**52 - 1
    f = 1
    fine = (2**52 - 1) / 2  # clip * 2 = 2**52 - 1
    assert FixedPointCodec(clip=fine, frac_bits=f, num_clients=n).max_encoded == 2**52 - 1
    with pytest.raises(EncodingError):
        FixedPointCodec(clip=2**51, frac_bits=f, num_clients=n)


@SETTINGS
@given(
    clip=st.floats(1e-6, 1e12, allow_nan=False),
    n=st.integers(1, 10_000),
    f=st.integers(0, 80),
)
def test_refusal_iff_bound_exceeded(clip, n, f):
    ok = n * max_units(clip, f) <= INT64_MAX
    if ok:
        codec = FixedPointCodec(clip=clip, frac_bits=f, num_clients=n)
        enc, _ = codec.encode(torch.tensor([clip, -clip], dtype=torch.float64))
        assert enc.tolist() == [max_units(clip, f), -max_units(clip, f)]
    else:
        with pytest.raises(EncodingError, match="exceeds the bound"):
            FixedPointCodec(clip=clip, frac_bits=f, num_clients=n)


@SETTINGS
@given(clip=st.floats(1e-6, 1e12, allow_nan=False), n=st.integers(1, 10_000))
def test_for_clients_picks_the_largest_safe_frac_bits(clip, n):
    codec = FixedPointCodec.for_clients(clip=clip, num_clients=n)
    assert n * max_units(clip, codec.frac_bits) <= INT64_MAX
    with pytest.raises(EncodingError):
        FixedPointCodec(clip=clip, frac_bits=codec.frac_bits + 1, num_clients=n)
    assert codec.precision == pytest.approx(
        n * 0.5 / 2**codec.frac_bits + n * (clip + 2.0**-codec.frac_bits) * 2.0**-53
    )


def test_for_clients_explicit_and_impossible():
    assert FixedPointCodec.for_clients(clip=1.0, num_clients=4, frac_bits=8).frac_bits == 8
    with pytest.raises(EncodingError, match="exceeds the bound"):
        FixedPointCodec.for_clients(clip=1e19, num_clients=2)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"clip": 0.0, "frac_bits": 8, "num_clients": 2}, "clip"),
        ({"clip": -1.0, "frac_bits": 8, "num_clients": 2}, "clip"),
        ({"clip": math.nan, "frac_bits": 8, "num_clients": 2}, "clip"),
        ({"clip": math.inf, "frac_bits": 8, "num_clients": 2}, "clip"),
        ({"clip": 1.0, "frac_bits": -1, "num_clients": 2}, "frac_bits"),
        ({"clip": 1.0, "frac_bits": 2.0, "num_clients": 2}, "frac_bits"),
        ({"clip": 1.0, "frac_bits": 8, "num_clients": 0}, "num_clients"),
        ({"clip": 1.0, "frac_bits": 8, "num_clients": -3}, "num_clients"),
        ({"clip": 1.0, "frac_bits": 8, "num_clients": True}, "num_clients"),
    ],
)
def test_invalid_configs_are_refused(kwargs, word):
    with pytest.raises(EncodingError, match=word):
        FixedPointCodec(**kwargs)


def test_decode_requires_int64():
    codec = FixedPointCodec(clip=1.0, frac_bits=8, num_clients=2)
    with pytest.raises(EncodingError, match="int64"):
        codec.decode(torch.tensor([1.0]))
