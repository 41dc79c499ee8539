"""CKKS parameter validation and defaults (DESIGN §4.3): pure Python, no keys generated."""

from __future__ import annotations

import dataclasses

import pytest

from fedmuscle_secure.crypto.ckks import MAX_COEFF_BITS, CkksParameters, SecretContext
from fedmuscle_secure.errors import ConfigError

VALID = CkksParameters(8192, (60, 40, 60), 40, True)


def test_valid_set_passes() -> None:
    VALID.validate(packed_length=4096, depth=1)
    VALID.validate(packed_length=1, depth=0, max_abs_value=1000.0)
    assert VALID.slots == 4096 and VALID.depth == 1
    # integer-part rule: decrypt mod q0 > 2**59 at scale 2**40 holds |x| < 2**(60-40-2)
    assert VALID.max_abs_value == 2.0**18


@pytest.mark.parametrize(
    ("change", "packed_length", "depth", "field", "fragment"),
    [
        ({"poly_modulus_degree": 5000}, 1, 0, "ckks.poly_modulus_degree", "power of two"),
        ({"poly_modulus_degree": 512}, 1, 0, "ckks.poly_modulus_degree", "power of two"),
        ({"poly_modulus_degree": 65536}, 1, 0, "ckks.poly_modulus_degree", "power of two"),
        ({}, 4097, 1, "ckks.poly_modulus_degree", ">= 16384"),
        ({}, 64, 2, "ckks.coeff_mod_bit_sizes", "depth 1 < required 2"),
        ({"poly_modulus_degree": 4096}, 64, 1, "ckks.coeff_mod_bit_sizes", "security bound 109"),
        ({"coeff_mod_bit_sizes": (60, 40, 40, 61)}, 64, 1, "ckks.coeff_mod_bit_sizes[3]",
         "20..60"),
        ({"coeff_mod_bit_sizes": (60, 19, 60)}, 64, 1, "ckks.coeff_mod_bit_sizes[1]", "20..60"),
        ({"coeff_mod_bit_sizes": (60, 30, 60)}, 64, 1, "ckks.coeff_mod_bit_sizes[1]",
         "global_scale_bits=40"),
        ({"coeff_mod_bit_sizes": (45, 40, 60)}, 64, 1, "ckks.coeff_mod_bit_sizes[0]",
         "integer part"),
        ({"coeff_mod_bit_sizes": (60, 40, 50)}, 64, 1, "ckks.coeff_mod_bit_sizes[2]", "special"),
        ({"coeff_mod_bit_sizes": (60,)}, 1, 0, "ckks.coeff_mod_bit_sizes", "at least"),
        ({"coeff_mod_bit_sizes": (60, 40.0, 60)}, 1, 0, "ckks.coeff_mod_bit_sizes", "ints"),
        ({"global_scale_bits": 15}, 64, 1, "ckks.global_scale_bits", "[20, 60]"),
        ({"galois_keys": "yes"}, 64, 1, "ckks.galois_keys", "true or false"),
    ],
)
def test_each_rule_names_its_field(change, packed_length, depth, field, fragment) -> None:
    params = dataclasses.replace(VALID, **change)
    with pytest.raises(ConfigError) as info:
        params.validate(packed_length=packed_length, depth=depth)
    assert field in {f for f, _ in info.value.problems}
    assert fragment in str(info.value)


def test_value_bound_is_checked_when_given() -> None:
    with pytest.raises(ConfigError, match=r"coeff_mod_bit_sizes\[0\].*values up to"):
        VALID.validate(packed_length=1, depth=0, max_abs_value=2.0**18)


def test_several_problems_reported_in_one_error() -> None:
    bad = CkksParameters(4096, (61, 30, 50), 40, "no")  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        bad.validate(packed_length=4096, depth=2)
    fields = {f for f, _ in info.value.problems}
    assert {"ckks.poly_modulus_degree", "ckks.galois_keys", "ckks.coeff_mod_bit_sizes",
            "ckks.coeff_mod_bit_sizes[0]", "ckks.coeff_mod_bit_sizes[1]"} <= fields
    for f in fields:
        assert f in info.value.field  # the one error names every field at fault


def test_yaml_list_becomes_tuple() -> None:
    p = CkksParameters(8192, [60, 40, 60], 40, True)  # type: ignore[arg-type]
    assert p == VALID
    p.validate(packed_length=64, depth=1)


def test_create_validates_before_building() -> None:
    with pytest.raises(ConfigError, match="ckks.poly_modulus_degree"):
        SecretContext.create(dataclasses.replace(VALID, poly_modulus_degree=3000))


def _any_valid_at(n: int, packed_length: int, depth: int) -> bool:
    """Oracle: brute force over every (first, scale x depth, last) with scale in [30, 40]."""
    for scale in range(30, 41):
        for first in range(20, 61):
            for last in range(20, 61):
                p = CkksParameters(n, (first,) + (scale,) * depth + (last,), scale, True)
                if not p.problems(packed_length=packed_length, depth=depth):
                    return True
    return False


def test_default_for_is_the_usual_set_and_minimal() -> None:
    p = CkksParameters.default_for(64, 1)
    assert p == VALID
    p.validate(packed_length=64, depth=1)
    assert not _any_valid_at(p.poly_modulus_degree // 2, 64, 1)


@pytest.mark.parametrize(("packed_length", "depth"), [(4096, 1), (4097, 1), (64, 0), (64, 3)])
def test_default_for_valid_with_smallest_n(packed_length: int, depth: int) -> None:
    p = CkksParameters.default_for(packed_length, depth, galois_keys=False)
    p.validate(packed_length=packed_length, depth=depth)
    assert p.galois_keys is False and p.global_scale_bits >= 30
    smaller = [n for n in MAX_COEFF_BITS if n < p.poly_modulus_degree]
    assert not any(_any_valid_at(n, packed_length, depth) for n in smaller[-1:])


def test_default_for_impossible_raises() -> None:
    with pytest.raises(ConfigError, match="no parameter set"):
        CkksParameters.default_for(20000, 1)
