"""CKKS contexts, packed encryption and the server's ops against plaintext torch (DESIGN §4.3).

Tolerances (N = 8192, coefficient primes (60, 40, 60), scale Δ = 2**40):

* FRESH_ATOL, for encrypt -> (add) -> decrypt. A fresh ciphertext's error per slot is the
  encoding rounding plus the encryption noise (ternary secret, Gaussian σ = 3.2), about
  sqrt(N)·σ·(a few) / Δ ≈ 1e-9..1e-8 (measured max 2e-8 for sums of 3); 1e-6 leaves a
  margin of 50x, while a row or slot in the wrong place errs by ~0.1 (entries of unit rows
  are ~1/sqrt(d)).
* RESCALE_BIAS: after a multiplication TenSEAL rescales by the 40-bit prime p and then
  declares the scale to be 2**40 again, so every product comes back multiplied by 2**40/p;
  the bias |2**40/p - 1| (≈ 1.3e-7, computed below from SEAL's own prime) is relative.
* PRODUCT_ATOL, for scale / sq_norm_minus: the products' fresh noise times |value| plus the
  key-switching noise of the log2(d') Galois rotations done at the last level, measured at
  most 3e-6 over 3,840 rows; 1e-5 (~12 standard deviations) on top of the bias term. A
  wrong rotation or row block errs by >= 1/64 (one squared entry of a unit row).
"""

from __future__ import annotations

import os

import pytest
import tenseal as ts
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tenseal import sealapi

from fedmuscle_secure.crypto.ckks import (
    CkksParameters,
    EncryptedMatrix,
    EncryptedRowValues,
    PublicContext,
    RowLayout,
    SecretContext,
    add,
    decrypt_matrix,
    decrypt_row_values,
    decrypt_vector,
    encrypt_matrix,
    encrypt_row_values,
    encrypt_vector,
    fresh_error_bound,
    scale,
    sq_norm_minus,
    vector_layout,
)
from fedmuscle_secure.crypto.ckks.envelope import build_envelope, parse_envelope
from fedmuscle_secure.errors import ConfigError, EncodingError

PARAMS = CkksParameters(8192, (60, 40, 60), 40, True)
FRESH_ATOL = 1e-6
RESCALE_BIAS = abs(2**40 / sealapi.CoeffModulus.Create(8192, [60, 40, 60])[1].value() - 1)
PRODUCT_ATOL = 1e-5
TAU = 0.2


@pytest.fixture(scope="module")
def secret() -> SecretContext:
    return SecretContext.create(PARAMS)


@pytest.fixture(scope="module")
def public(secret: SecretContext) -> PublicContext:
    return secret.to_public()


@pytest.fixture(scope="module")
def secret_no_galois() -> SecretContext:
    return SecretContext.create(CkksParameters(8192, (60, 40, 60), 40, False))


@pytest.fixture(scope="module")
def public_no_galois(secret_no_galois: SecretContext) -> PublicContext:
    return secret_no_galois.to_public()


def unit_rows(b: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)


def raw_slots(ctx: SecretContext, data: bytes) -> torch.Tensor:
    """Every logical slot of one ciphertext, decrypted with TenSEAL directly."""
    return torch.tensor(ts.ckks_vector_from(ctx._ts, data).decrypt(), dtype=torch.float64)


# --- layout and round trips --------------------------------------------------------------


def test_round_trip_64x64_unit_rows(secret: SecretContext) -> None:
    z = unit_rows(64, 64, seed=1)
    q = (z * z).sum(1)
    enc = encrypt_matrix(secret, z)
    assert len(enc.ciphertexts) == 1 and enc.shape == (64, 64)  # 64·64 = N/2 slots exactly
    out = decrypt_matrix(secret, enc)
    assert out.dtype == torch.float64 and out.shape == (64, 64)
    torch.testing.assert_close(out, z, atol=FRESH_ATOL, rtol=0)
    enc_q = encrypt_row_values(secret, q, cols=64)
    torch.testing.assert_close(decrypt_row_values(secret, enc_q), q, atol=FRESH_ATOL, rtol=0)


def test_spill_into_several_ciphertexts_row_contiguous(secret: SecretContext) -> None:
    z = unit_rows(100, 48, seed=2)  # stride 64, 64 rows per ciphertext -> 2 ciphertexts
    enc = encrypt_matrix(secret, z)
    assert enc.layout == RowLayout(rows=100, cols=48, row_stride=64, rows_per_ciphertext=64)
    assert len(enc.ciphertexts) == 2
    second = raw_slots(secret, enc.ciphertexts[1]).view(36, 64)  # rows 64..99 at k·64
    torch.testing.assert_close(second[:, :48], z[64:], atol=FRESH_ATOL, rtol=0)
    torch.testing.assert_close(second[:, 48:], torch.zeros(36, 16, dtype=torch.float64),
                               atol=FRESH_ATOL, rtol=0)
    torch.testing.assert_close(decrypt_matrix(secret, enc), z, atol=FRESH_ATOL, rtol=0)

    q = torch.linspace(-2.0, 3.0, 100, dtype=torch.float64)
    enc_q = encrypt_row_values(secret, q, cols=48)
    slots = raw_slots(secret, enc_q.ciphertexts[0]).view(64, 64)
    torch.testing.assert_close(slots[:, 0], q[:64], atol=FRESH_ATOL, rtol=0)
    torch.testing.assert_close(decrypt_row_values(secret, enc_q), q, atol=FRESH_ATOL, rtol=0)


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 70), d=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_round_trip_property(secret: SecretContext, b: int, d: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.empty(b, d, dtype=torch.float64).uniform_(-4.0, 4.0, generator=g)
    torch.testing.assert_close(decrypt_matrix(secret, encrypt_matrix(secret, z)), z,
                               atol=FRESH_ATOL, rtol=0)
    q = z[:, 0].clone()
    torch.testing.assert_close(decrypt_row_values(secret, encrypt_row_values(secret, q, cols=d)),
                               q, atol=FRESH_ATOL, rtol=0)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.full((4, 8), float("nan")), "NaN"),
        (torch.zeros(8), "2-D"),
        (torch.zeros(0, 8), "non-empty"),
        (torch.full((2, 8), 2.0**18), "largest magnitude"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_encrypt_rejects_bad_tensors(secret: SecretContext, bad, match: str) -> None:
    with pytest.raises(EncodingError, match=match):
        encrypt_matrix(secret, bad)


def test_row_wider_than_slots_is_a_config_error_before_encrypting(secret: SecretContext) -> None:
    with pytest.raises(ConfigError, match=r"ckks.poly_modulus_degree.*>= 16384"):
        encrypt_matrix(secret, torch.zeros(1, 4097))


# --- secret vs public --------------------------------------------------------------------


def test_public_copy_cannot_decrypt(secret: SecretContext, public: PublicContext) -> None:
    enc = encrypt_matrix(secret, unit_rows(4, 8, seed=3))
    with pytest.raises(ConfigError, match="no secret key"):
        decrypt_matrix(public, enc)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no secret key"):
        decrypt_row_values(public, encrypt_row_values(secret, torch.ones(4), cols=8))  # type: ignore[arg-type]
    # Not just our type check: TenSEAL itself has no key to decrypt with in the copy.
    assert not public._ts.has_secret_key() and public._ts.is_public()
    with pytest.raises(ValueError, match="secret_key"):
        ts.ckks_vector_from(public._ts, enc.ciphertexts[0]).decrypt()


def test_public_bytes_carry_no_secret_key(secret: SecretContext, public: PublicContext) -> None:
    reloaded = ts.context_from(public.serialize())
    assert not reloaded.has_secret_key() and not reloaded.is_private()
    assert reloaded.has_galois_keys() and reloaded.has_relin_keys()
    assert ts.context_from(secret.serialize()).has_secret_key()
    with pytest.raises(ConfigError, match="contain the secret key"):
        PublicContext.from_bytes(secret.serialize(), PARAMS)
    with pytest.raises(ConfigError, match="a PublicContext must not hold a secret key"):
        PublicContext(secret._ts, PARAMS)
    with pytest.raises(ConfigError, match="public context"):
        SecretContext.from_bytes(public.serialize(), PARAMS)


def test_to_public_leaves_the_secret_context_unchanged(secret: SecretContext) -> None:
    before = secret.serialize()
    fresh = secret.to_public()
    assert fresh._ts is not secret._ts
    assert secret._ts.is_private() and secret._ts.has_secret_key()
    assert secret.serialize() == before
    z = unit_rows(3, 4, seed=4)
    torch.testing.assert_close(decrypt_matrix(secret, encrypt_matrix(secret, z)), z,
                               atol=FRESH_ATOL, rtol=0)


def test_contexts_round_trip_through_bytes(secret: SecretContext, public: PublicContext) -> None:
    z = unit_rows(8, 16, seed=5)
    enc = encrypt_matrix(secret, z)
    client = SecretContext.from_bytes(secret.serialize(), PARAMS)
    server = PublicContext.from_bytes(public.serialize(), PARAMS)
    summed = add(server, [enc, enc])
    torch.testing.assert_close(decrypt_matrix(client, summed), 2 * z, atol=FRESH_ATOL, rtol=0)


def test_context_bytes_checked_against_params(secret: SecretContext, public: PublicContext) -> None:
    other = CkksParameters(8192, (60, 40, 40, 60), 40, True)
    with pytest.raises(ConfigError, match="other CKKS parameters"):
        PublicContext.from_bytes(public.serialize(), other)
    with pytest.raises(EncodingError, match="cannot deserialize"):
        PublicContext.from_bytes(os.urandom(4096), PARAMS)
    with pytest.raises(EncodingError, match="cannot deserialize"):
        SecretContext.from_bytes(secret.serialize()[:500], PARAMS)


def test_secret_context_is_never_pickled(secret: SecretContext) -> None:
    import pickle

    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(secret)
    assert "secret" not in repr(secret).lower().replace("secretcontext", "")


# --- server ops --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def group(secret: SecretContext):
    """Three clients' unit-row matrices (B=100, d=48: two ciphertexts, padded rows)."""
    zs = [unit_rows(100, 48, seed=10 + m) for m in range(3)]
    encs = [encrypt_matrix(secret, z) for z in zs]
    enc_qs = [encrypt_row_values(secret, (z * z).sum(1), cols=48) for z in zs]
    return zs, encs, enc_qs


def test_add_over_a_group(secret: SecretContext, public: PublicContext, group) -> None:
    zs, encs, enc_qs = group
    u = decrypt_matrix(secret, add(public, encs))
    torch.testing.assert_close(u, sum(zs), atol=FRESH_ATOL, rtol=0)
    q = decrypt_row_values(secret, add(public, enc_qs))
    torch.testing.assert_close(q, sum((z * z).sum(1) for z in zs), atol=FRESH_ATOL, rtol=0)
    torch.testing.assert_close(decrypt_matrix(secret, add(public, encs[:1])), zs[0],
                               atol=FRESH_ATOL, rtol=0)


def test_scale_by_inverse_temperature(secret: SecretContext, public: PublicContext, group) -> None:
    zs, encs, _ = group
    ref = sum(zs) / TAU
    out = decrypt_matrix(secret, scale(public, add(public, encs), 1 / TAU))
    assert ((out - ref).abs() <= RESCALE_BIAS * ref.abs() + PRODUCT_ATOL).all()
    assert (out - ref).abs().max() < PRODUCT_ATOL


def test_sq_norm_minus_matches_plaintext(secret: SecretContext, public: PublicContext,
                                         group) -> None:
    zs, encs, enc_qs = group
    u, q = sum(zs), sum((z * z).sum(1) for z in zs)
    ref = (u * u).sum(1) - q
    enc = sq_norm_minus(public, add(public, encs), add(public, enc_qs))
    assert isinstance(enc, EncryptedRowValues) and enc.shape == (100,)
    out = decrypt_row_values(secret, enc)
    assert ((out - ref).abs() <= RESCALE_BIAS * (u * u).sum(1) + PRODUCT_ATOL).all()
    # The slots between row starts hold partial sums (garbage); the decoder skips them.
    slots = raw_slots(secret, enc.ciphertexts[0]).view(64, 64)
    assert (slots[:, 1:] - 0).abs().max() > 0.1
    torch.testing.assert_close(slots[:, 0], out[:64])


def test_sq_norm_minus_needs_galois_keys(secret: SecretContext, public_no_galois: PublicContext,
                                         group) -> None:
    _, encs, enc_qs = group
    with pytest.raises(ConfigError) as info:
        sq_norm_minus(public_no_galois, encs[0], enc_qs[0])
    assert info.value.field == "ckks.galois_keys"


def test_galois_keys_only_when_asked(secret: SecretContext, public: PublicContext,
                                    secret_no_galois: SecretContext,
                                    public_no_galois: PublicContext) -> None:
    assert secret._ts.has_galois_keys() and public._ts.has_galois_keys()
    assert not secret_no_galois._ts.has_galois_keys()
    assert not public_no_galois._ts.has_galois_keys()
    # Galois keys dominate the public context's size (every power-of-two rotation).
    assert len(public.serialize()) > 10 * len(public_no_galois.serialize())


def test_depth_is_checked(public: PublicContext, group) -> None:
    _, encs, enc_qs = group
    scaled = scale(public, encs[0], 2.0)
    with pytest.raises(ConfigError, match="no multiplicative level left"):
        sq_norm_minus(public, scaled, enc_qs[0])
    with pytest.raises(ConfigError, match="no multiplicative level left"):
        scale(public, scaled, 2.0)


def test_server_ops_take_only_a_public_context(secret: SecretContext, group) -> None:
    _, encs, enc_qs = group
    with pytest.raises(TypeError, match="PublicContext"):
        add(secret, encs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="PublicContext"):
        sq_norm_minus(secret, encs[0], enc_qs[0])  # type: ignore[arg-type]


@pytest.mark.parametrize("factor", [0.0, float("nan"), float("inf"), True])
def test_scale_rejects_bad_factors(public: PublicContext, group, factor) -> None:
    with pytest.raises(EncodingError, match="finite non-zero"):
        scale(public, group[1][0], factor)


def test_mismatched_operands_are_refused(secret: SecretContext, public: PublicContext,
                                         group) -> None:
    _, encs, enc_qs = group
    small = encrypt_matrix(secret, unit_rows(100, 16, seed=6))
    with pytest.raises(EncodingError, match="operand 1"):
        add(public, [encs[0], small])
    with pytest.raises(EncodingError, match="operand 1"):
        add(public, [encs[0], enc_qs[0]])
    with pytest.raises(EncodingError, match="q has layout"):
        sq_norm_minus(public, small, enc_qs[0])


# --- received garbage --------------------------------------------------------------------


def _garbage_cases(secret: SecretContext, good: bytes) -> dict[str, bytes]:
    other = SecretContext.create(CkksParameters(8192, (60, 40, 40, 60), 40, False))
    return {
        "random": os.urandom(3000),
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "header flipped": good[:20] + bytes([good[20] ^ 0xFF]) + good[21:],
        "other parameters": encrypt_matrix(other, torch.zeros(64, 64)).ciphertexts[0],
        "wrong size": encrypt_matrix(secret, torch.zeros(3, 64)).ciphertexts[0],
    }


def test_garbage_ciphertexts_raise_encoding_error(secret: SecretContext,
                                                  public: PublicContext) -> None:
    good = encrypt_matrix(secret, unit_rows(64, 64, seed=7))
    q = encrypt_row_values(secret, torch.ones(64), cols=64)
    for name, data in _garbage_cases(secret, good.ciphertexts[0]).items():
        bad = EncryptedMatrix(good.layout, (data,))
        with pytest.raises(EncodingError, match="ciphertext 0"):
            decrypt_matrix(secret, bad)
        with pytest.raises(EncodingError, match="ciphertext 0"):
            add(public, [good, bad])
        with pytest.raises(EncodingError, match="ciphertext 0"):
            sq_norm_minus(public, bad, q)
        assert name  # every case above raised, none crashed


def test_malformed_metadata_is_refused(secret: SecretContext) -> None:
    good = encrypt_matrix(secret, unit_rows(64, 64, seed=8))
    with pytest.raises(EncodingError, match="expected 1"):
        EncryptedMatrix(good.layout, good.ciphertexts * 2)
    with pytest.raises(EncodingError, match="tuple of bytes"):
        EncryptedMatrix(good.layout, ["not bytes"])  # type: ignore[arg-type]
    with pytest.raises(EncodingError, match="power of two"):
        RowLayout(rows=64, cols=64, row_stride=48, rows_per_ciphertext=64)
    odd = EncryptedMatrix(RowLayout(64, 64, 64, 32), good.ciphertexts * 2)
    with pytest.raises(EncodingError, match="not the one"):
        decrypt_matrix(secret, odd)


# --- the CKKSVectorProto envelope used to re-label sizes --------------------------------


def test_envelope_reproduces_tenseal_bytes(secret: SecretContext) -> None:
    data = ts.ckks_vector(secret._ts, [1.0, 2.0, 3.0]).serialize()
    sizes, cts, scale_ = parse_envelope(data)
    assert sizes == [3] and len(cts) == 1 and scale_ == 2.0**40
    assert build_envelope(sizes, cts, scale_) == data


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 2**32 - 1), max_size=4),
    cts=st.lists(st.binary(max_size=300), max_size=3),
    scale_=st.floats(allow_nan=False),
)
def test_envelope_round_trip_property(sizes, cts, scale_) -> None:
    assert parse_envelope(build_envelope(sizes, cts, scale_)) == (sizes, cts, scale_)


@pytest.mark.parametrize("data", [b"\x0a\xff", b"\x12\x05ab", b"\x22\x00", b"\x19\x00"])
def test_envelope_rejects_malformed(data: bytes) -> None:
    with pytest.raises(EncodingError, match="CKKSVectorProto"):
        parse_envelope(data)


# --- flat vectors (weight updates, DESIGN §2.7) --------------------------------------------


def test_a_vector_spans_ciphertexts_of_half_n_values_in_order(secret: SecretContext,
                                                             public: PublicContext) -> None:
    """A vector longer than N/2 fills ciphertexts in order, the last zero-padded; a sum of
    three decrypts to the exact sum within three fresh errors (the bound CKKS's analysis
    gives), while a value one slot off errs by about 1."""
    n = PARAMS.slots * 2 + 5
    v = torch.arange(n, dtype=torch.float64) % 7 - 3.0
    enc = [encrypt_vector(secret, v * (k + 1)) for k in range(3)]
    assert enc[0].layout == vector_layout(n, PARAMS) and len(enc[0].ciphertexts) == 3
    got = decrypt_vector(secret, add(public, enc), n)
    bound = 3 * fresh_error_bound(PARAMS, magnitude=3.0)
    assert got.shape == (n,) and (got - 6 * v).abs().max() <= bound
    assert raw_slots(secret, enc[0].ciphertexts[2])[5:].abs().max() <= fresh_error_bound(PARAMS)


def test_the_fresh_error_bound_is_cheon_et_al_at_the_default_parameters() -> None:
    """B_clean = 8√2σN + 6σ√N + 16σN (h = N) plus N/2 of rounding, over Δ = 2⁴⁰: 6.6e-7."""
    assert 6.5e-7 < fresh_error_bound(PARAMS) < 6.6e-7
    assert fresh_error_bound(PARAMS, magnitude=1.0) - fresh_error_bound(PARAMS) == \
        pytest.approx(8192 * 2.0**-48)


def test_a_vector_of_another_length_is_refused_before_decrypting(secret: SecretContext) -> None:
    enc = encrypt_vector(secret, torch.ones(10))
    assert decrypt_vector(secret, enc, 4000).shape == (4000,)  # one ciphertext either way
    with pytest.raises(EncodingError, match="not that of a vector of 5000 values"):
        decrypt_vector(secret, enc, 5000)
    with pytest.raises(EncodingError, match="positive int"):
        vector_layout(0, PARAMS)
