"""Packed CKKS matrices, client encrypt/decrypt and the server's evaluation ops (DESIGN §4.3).

Layout. A (B, d) matrix is stored row after row: each row is zero-padded to the next power
of two ``d'`` (the row stride; zeros change neither sums nor norms, and a power of two lets a
row be summed by rotations 1, 2, ..., d'/2 without crossing into the next row), and
``N/2 // d'`` rows share a ciphertext, row k of a ciphertext at slots ``[k·d', (k+1)·d')``.
More rows spill into further ciphertexts. Per-row values (q, ||U||^2 - q) use the same
layout with the value at each row start ``k·d'``; every other slot is ignored on decode.

Server ops (:func:`add`, :func:`scale`, :func:`sq_norm_minus`) take a
:class:`PublicContext` only. For muscle-sum (DESIGN §2.2) the server returns
``scale(add(Z over Q_n), 1/τ)`` and ``sq_norm_minus(add(Z), add(q))``; each uses one
multiplicative level, so depth 1 suffices, and the client applies -γ/2 after decrypting.

Received bytes are only ever read by ``ts.ckks_vector_from`` (never pickle); every failure
is an :class:`EncodingError` naming the ciphertext. CKKS has no integrity: a well-formed but
wrong ciphertext decrypts to wrong numbers, so authenticity is the transport's job.

TenSEAL 0.3.18 exposes no rotation on ``CKKSVector``; its ``sum_`` rotates by
``size/2, ..., 2, 1``. :func:`sq_norm_minus` therefore re-labels the logical size of the
squared vector as ``d'`` in its protobuf envelope (``CKKSVectorProto``, field 1 ``sizes``;
tenseal/proto/tensors.proto), calls ``sum_`` (exactly the rotations 1..d'/2, with the
Galois keys, applied to every slot at once), and re-labels it back. The envelope codec only
ever reads bytes TenSEAL itself produced in this process
(:mod:`fedmuscle_secure.crypto.ckks.envelope`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import tenseal as ts
import torch

from fedmuscle_secure.crypto.ckks.context import CkksParameters, PublicContext, SecretContext
from fedmuscle_secure.crypto.ckks.envelope import build_envelope, parse_envelope
from fedmuscle_secure.errors import ConfigError, EncodingError

__all__ = [
    "EncryptedMatrix",
    "EncryptedRowValues",
    "RowLayout",
    "add",
    "decrypt_matrix",
    "decrypt_row_values",
    "decrypt_vector",
    "encrypt_matrix",
    "encrypt_row_values",
    "encrypt_vector",
    "fresh_error_bound",
    "scale",
    "sq_norm_minus",
    "update_sum_error_bound",
    "vector_layout",
]

_TENSEAL_ERRORS = (ValueError, RuntimeError, TypeError)


@dataclass(frozen=True)
class RowLayout:
    """Where row k of a (rows, cols) matrix lives: ciphertext k // rpc, slot (k % rpc)·stride."""

    rows: int
    cols: int
    row_stride: int
    rows_per_ciphertext: int

    @classmethod
    def for_shape(cls, rows: int, cols: int, params: CkksParameters) -> RowLayout:
        """The layout for ``params``; validates that one padded row fits in a ciphertext."""
        stride = 1 << (cols - 1).bit_length()
        params.validate(packed_length=stride, depth=0)
        return cls(rows, cols, stride, params.slots // stride)

    def __post_init__(self) -> None:
        ints = (self.rows, self.cols, self.row_stride, self.rows_per_ciphertext)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in ints):
            raise EncodingError(f"row layout needs positive ints, got {self}")
        if self.row_stride != 1 << (self.cols - 1).bit_length():
            raise EncodingError(f"row stride must be cols padded to a power of two, got {self}")

    @property
    def num_ciphertexts(self) -> int:
        return -(-self.rows // self.rows_per_ciphertext)

    def vector_size(self, i: int) -> int:
        """Logical TenSEAL size of ciphertext ``i``: its rows times the stride."""
        return min(self.rows_per_ciphertext, self.rows - i * self.rows_per_ciphertext) * self.row_stride

    def check(self, params: CkksParameters, what: str) -> None:
        """Received metadata must be the layout these parameters produce."""
        if self != RowLayout.for_shape(self.rows, self.cols, params):
            raise EncodingError(f"{what}: layout {self} is not the one N={params.poly_modulus_degree}"
                                " gives for this shape")


@dataclass(frozen=True)
class EncryptedMatrix:
    """Enc of a (rows, cols) matrix: serialized CKKS vectors, no keys (DESIGN §4.3)."""

    layout: RowLayout
    ciphertexts: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_ciphertexts(self)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.layout.rows, self.layout.cols)

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.ciphertexts)


@dataclass(frozen=True)
class EncryptedRowValues:
    """Enc of one value per row, at the row-start slots of ``layout`` (DESIGN §4.3)."""

    layout: RowLayout
    ciphertexts: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_ciphertexts(self)

    @property
    def shape(self) -> tuple[int]:
        return (self.layout.rows,)

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.ciphertexts)


Encrypted = TypeVar("Encrypted", EncryptedMatrix, EncryptedRowValues)


def _check_ciphertexts(enc: EncryptedMatrix | EncryptedRowValues) -> None:
    name = type(enc).__name__
    if not isinstance(enc.layout, RowLayout):
        raise EncodingError(f"{name}: layout must be a RowLayout, got {type(enc.layout).__name__}")
    if not isinstance(enc.ciphertexts, tuple) or not all(
        isinstance(c, bytes) for c in enc.ciphertexts
    ):
        raise EncodingError(f"{name}: ciphertexts must be a tuple of bytes")
    if len(enc.ciphertexts) != enc.layout.num_ciphertexts:
        raise EncodingError(f"{name}: {len(enc.ciphertexts)} ciphertexts for {enc.layout.rows} "
                            f"rows, expected {enc.layout.num_ciphertexts}")


# --- client side -------------------------------------------------------------------------


def _require_secret(ctx: object, op: str) -> SecretContext:
    if isinstance(ctx, PublicContext):
        raise ConfigError("ckks.context", f"{op} needs the client's SecretContext; a "
                                          "PublicContext has no secret key and cannot decrypt")
    if not isinstance(ctx, SecretContext):
        raise TypeError(f"{op}: expected a SecretContext, got {type(ctx).__name__}")
    return ctx


def _check_values(x: object, ndim: int, params: CkksParameters, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise EncodingError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim or x.numel() == 0:
        raise EncodingError(f"{what}: expected a non-empty {ndim}-D tensor, got shape "
                            f"{tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise EncodingError(f"{what}: expected a real tensor, got {x.dtype}")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise EncodingError(f"{what}: contains NaN or infinite values")
    peak = x.abs().max().item()
    if peak >= params.max_abs_value:
        raise EncodingError(f"{what}: |value| {peak} >= {params.max_abs_value}, the largest "
                            "magnitude the first prime can hold (ckks.coeff_mod_bit_sizes[0])")
    return x


def _encrypt_padded(ctx: SecretContext, padded: torch.Tensor, layout: RowLayout) -> tuple[bytes, ...]:
    flat = padded.reshape(-1)
    step = layout.rows_per_ciphertext * layout.row_stride
    out = []
    for i in range(layout.num_ciphertexts):
        chunk = flat[i * step : i * step + layout.vector_size(i)].tolist()
        out.append(ts.ckks_vector(ctx._ts, chunk).serialize())
    return tuple(out)


def encrypt_matrix(ctx: SecretContext, z: torch.Tensor) -> EncryptedMatrix:
    """Encrypt a (B, d) matrix row-packed (module docstring); parameters checked first."""
    ctx = _require_secret(ctx, "encrypt_matrix")
    x = _check_values(z, 2, ctx.params, "encrypt_matrix")
    layout = RowLayout.for_shape(x.shape[0], x.shape[1], ctx.params)
    padded = torch.zeros(layout.rows, layout.row_stride, dtype=torch.float64)
    padded[:, : layout.cols] = x
    return EncryptedMatrix(layout, _encrypt_padded(ctx, padded, layout))


def encrypt_row_values(ctx: SecretContext, q: torch.Tensor, *, cols: int) -> EncryptedRowValues:
    """Encrypt q (B,) with q_k at row start k·d' of the (B, ``cols``) matrix layout."""
    ctx = _require_secret(ctx, "encrypt_row_values")
    x = _check_values(q, 1, ctx.params, "encrypt_row_values")
    if isinstance(cols, bool) or not isinstance(cols, int) or cols < 1:
        raise EncodingError(f"encrypt_row_values: cols must be a positive int, got {cols!r}")
    layout = RowLayout.for_shape(x.shape[0], cols, ctx.params)
    padded = torch.zeros(layout.rows, layout.row_stride, dtype=torch.float64)
    padded[:, 0] = x
    return EncryptedRowValues(layout, _encrypt_padded(ctx, padded, layout))


def _decrypt_padded(
    ctx: SecretContext, enc: EncryptedMatrix | EncryptedRowValues, op: str
) -> torch.Tensor:
    ctx = _require_secret(ctx, op)
    enc.layout.check(ctx.params, op)
    parts = []
    for i, data in enumerate(enc.ciphertexts):
        vec = _load(ctx, data, enc.layout.vector_size(i), f"{op}: ciphertext {i}")
        try:
            parts.append(torch.tensor(vec.decrypt(), dtype=torch.float64))
        except _TENSEAL_ERRORS as e:
            raise ConfigError("ckks.context", f"{op}: TenSEAL could not decrypt ciphertext "
                                              f"{i} ({e})") from e
    return torch.cat(parts).view(enc.layout.rows, enc.layout.row_stride)


def decrypt_matrix(ctx: SecretContext, enc: EncryptedMatrix) -> torch.Tensor:
    """Decrypt to a (B, d) float64 tensor (padding columns dropped)."""
    return _decrypt_padded(ctx, enc, "decrypt_matrix")[:, : enc.layout.cols].clone()


def decrypt_row_values(ctx: SecretContext, enc: EncryptedRowValues) -> torch.Tensor:
    """Decrypt to a (B,) float64 tensor: the row-start slots only, the rest is ignored."""
    return _decrypt_padded(ctx, enc, "decrypt_row_values")[:, 0].clone()


def vector_layout(length: int, params: CkksParameters) -> RowLayout:
    """A flat vector of ``length`` values packed N/2 per ciphertext: a (⌈length / (N/2)⌉, N/2)
    matrix, one row per ciphertext, the last row zero-padded."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise EncodingError(f"vector_layout: length must be a positive int, got {length!r}")
    return RowLayout.for_shape(-(-length // params.slots), params.slots, params)


def encrypt_vector(ctx: SecretContext, v: torch.Tensor) -> EncryptedMatrix:
    """Encrypt a (L,) vector in :func:`vector_layout` (N/2 values per ciphertext)."""
    ctx = _require_secret(ctx, "encrypt_vector")
    x = _check_values(v, 1, ctx.params, "encrypt_vector")
    layout = vector_layout(int(x.shape[0]), ctx.params)
    padded = torch.zeros(layout.rows * layout.row_stride, dtype=torch.float64)
    padded[: x.shape[0]] = x
    return EncryptedMatrix(layout, _encrypt_padded(ctx, padded.view(layout.rows, -1), layout))


def decrypt_vector(ctx: SecretContext, enc: EncryptedMatrix, length: int) -> torch.Tensor:
    """Decrypt a vector of ``length`` values packed by :func:`encrypt_vector` (float64); its
    layout must be the one ``length`` gives."""
    ctx = _require_secret(ctx, "decrypt_vector")
    if enc.layout != vector_layout(length, ctx.params):
        raise EncodingError(f"decrypt_vector: layout {enc.layout} is not that of a vector of "
                            f"{length} values")
    return _decrypt_padded(ctx, enc, "decrypt_vector").reshape(-1)[:length].clone()


#: The standard deviation of SEAL's error distribution (``seal/util/globals.h``); SEAL
#: samples the secret key uniformly from {-1, 0, 1}, so its Hamming weight h is at most N.
SEAL_NOISE_STD = 3.2


def fresh_error_bound(params: CkksParameters, magnitude: float = 0.0) -> float:
    """The most one slot of a decrypted, freshly encrypted CKKS vector differs from the value
    put in, in value units, at these parameters (high probability, as CKKS's analysis states
    it): B_clean = 8√2·σN + 6σ√N + 16σ√(hN) of Cheon, Kim, Kim and Song (ASIACRYPT 2017,
    Lemma 1) with σ = :data:`SEAL_NOISE_STD` and h ≤ N, plus the encoder's rounding of N
    coefficients by at most 1/2 each (N/2 in the canonical embedding), over the scale Δ;
    plus the float64 decoding of slots of at most ``magnitude`` (N coefficients each exact to
    a relative 2⁻⁵² of 2·magnitude·Δ, with room for the FFT: N·magnitude·2⁻⁴⁸).

    The sum of k fresh ciphertexts (additions add no noise of their own) differs by at most
    k times the first term: at the default N = 8192, Δ = 2⁴⁰ a fresh slot is within 6.6e-7."""
    n, sigma = params.poly_modulus_degree, SEAL_NOISE_STD
    b_clean = 8 * math.sqrt(2) * sigma * n + 6 * sigma * math.sqrt(n) + 16 * sigma * n
    return (b_clean + n / 2) / 2.0**params.global_scale_bits + n * magnitude * 2.0**-48


def update_sum_error_bound(params: CkksParameters, members: int, update_clip: float) -> float:
    """The most one decrypted slot of a sum of ``members`` fresh encryptions of a clipped
    update and its count differs from the exact sum: each slot holds at most
    max(``update_clip``, 1) (the count slot holds 1), and additions add no noise of their
    own, so ``members`` times :func:`fresh_error_bound` at that magnitude."""
    return members * fresh_error_bound(params, magnitude=max(update_clip, 1.0))


# --- shared: loading received bytes ------------------------------------------------------


def _load(
    ctx: SecretContext | PublicContext, data: bytes, size: int, what: str
) -> ts.CKKSVector:
    """``ts.ckks_vector_from`` plus the checks TenSEAL leaves to us (size, chunks, scale)."""
    if not isinstance(data, bytes) or not data:
        raise EncodingError(f"{what}: expected non-empty ciphertext bytes")
    try:
        vec = ts.ckks_vector_from(ctx._ts, data)
        cts = vec.ciphertext()
    except _TENSEAL_ERRORS as e:
        raise EncodingError(f"{what}: not a CKKS vector for this context ({e})") from e
    if vec.size() != size or len(cts) != 1:
        raise EncodingError(f"{what}: holds {vec.size()} values in {len(cts)} ciphertext(s), "
                            f"expected {size} in one")
    if cts[0].scale != 2.0**ctx.params.global_scale_bits:
        raise EncodingError(f"{what}: scale {cts[0].scale!r} != 2**{ctx.params.global_scale_bits}")
    return vec


def _levels_left(ctx: PublicContext, vec: ts.CKKSVector) -> int:
    seal = ctx._ts.seal_context().data
    return seal.get_context_data(vec.ciphertext()[0].parms_id()).chain_index()


# --- server side -------------------------------------------------------------------------


def _require_public(ctx: object, op: str) -> PublicContext:
    if not isinstance(ctx, PublicContext):
        raise TypeError(f"{op} is a server op and takes a PublicContext (no secret key), got "
                        f"{type(ctx).__name__}; use SecretContext.to_public()")
    return ctx


def _require_level(ctx: PublicContext, vec: ts.CKKSVector, what: str) -> None:
    if _levels_left(ctx, vec) < 1:
        raise ConfigError("ckks.coeff_mod_bit_sizes",
                          f"{what}: no multiplicative level left (the input was already "
                          "multiplied); add a middle prime of global_scale_bits bits")


def add(ctx: PublicContext, encs: Sequence[Encrypted]) -> Encrypted:
    """Σ over a group Q_n of encrypted matrices (or row values) with one layout (DESIGN §2.2)."""
    ctx = _require_public(ctx, "add")
    if not encs:
        raise EncodingError("add: needs at least one ciphertext")
    kind, layout = type(encs[0]), encs[0].layout
    for j, e in enumerate(encs):
        if type(e) is not kind or e.layout != layout:
            raise EncodingError(f"add: operand {j} is a {type(e).__name__} with {e.layout}, "
                                f"operand 0 a {kind.__name__} with {layout}")
    layout.check(ctx.params, "add")
    out = []
    for i in range(layout.num_ciphertexts):
        size = layout.vector_size(i)
        acc = _load(ctx, encs[0].ciphertexts[i], size, f"add: operand 0, ciphertext {i}")
        for j, e in enumerate(encs[1:], start=1):
            acc.add_(_load(ctx, e.ciphertexts[i], size, f"add: operand {j}, ciphertext {i}"))
        out.append(acc.serialize())
    return kind(layout, tuple(out))


def scale(ctx: PublicContext, enc: Encrypted, factor: float) -> Encrypted:
    """Multiply by a plain scalar (e.g. 1/τ); uses one level (TenSEAL rescales)."""
    ctx = _require_public(ctx, "scale")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (
        math.isfinite(factor) and factor != 0
    ):
        raise EncodingError(f"scale: factor must be a finite non-zero number, got {factor!r}")
    enc.layout.check(ctx.params, "scale")
    out = []
    for i, data in enumerate(enc.ciphertexts):
        vec = _load(ctx, data, enc.layout.vector_size(i), f"scale: ciphertext {i}")
        _require_level(ctx, vec, f"scale: ciphertext {i}")
        vec.mul_(float(factor))
        out.append(vec.serialize())
    return type(enc)(enc.layout, tuple(out))


def sq_norm_minus(
    ctx: PublicContext, enc_u: EncryptedMatrix, enc_q: EncryptedRowValues
) -> EncryptedRowValues:
    """Enc(||U_k||^2 - q_k) at each row start (DESIGN §2.2, §4.3); depth 1.

    Square (ciphertext x ciphertext, relinearize, rescale), rotate-and-sum inside each row
    block (rotations 1, 2, ..., d'/2 need Galois keys), subtract Enc(q). The client decrypts
    and multiplies by -γ/2 itself.
    """
    ctx = _require_public(ctx, "sq_norm_minus")
    if not (ctx.params.galois_keys and ctx._ts.has_galois_keys()):
        raise ConfigError("ckks.galois_keys", "sq_norm_minus rotates inside each row block and "
                          "needs Galois keys; provision the context with galois_keys=True")
    if not isinstance(enc_u, EncryptedMatrix) or not isinstance(enc_q, EncryptedRowValues):
        raise EncodingError("sq_norm_minus: expects (EncryptedMatrix, EncryptedRowValues)")
    layout = enc_u.layout
    if enc_q.layout != layout:
        raise EncodingError(f"sq_norm_minus: q has layout {enc_q.layout}, U has {layout}")
    ctx.params.validate(packed_length=layout.row_stride, depth=1)
    layout.check(ctx.params, "sq_norm_minus")
    out = []
    for i in range(layout.num_ciphertexts):
        size = layout.vector_size(i)
        u = _load(ctx, enc_u.ciphertexts[i], size, f"sq_norm_minus: U ciphertext {i}")
        q = _load(ctx, enc_q.ciphertexts[i], size, f"sq_norm_minus: q ciphertext {i}")
        _require_level(ctx, u, f"sq_norm_minus: U ciphertext {i}")
        u.square_()
        u = _relabel(ctx, u, layout.row_stride)
        u.sum_()  # rotations by d'/2, ..., 2, 1: slot k·d' now holds its row's sum
        u = _relabel(ctx, u, size)
        u.sub_(q)
        out.append(u.serialize())
    return EncryptedRowValues(layout, tuple(out))


# --- re-labelling through the CKKSVectorProto envelope (:mod:`.envelope`) -----------------


def _relabel(ctx: PublicContext, vec: ts.CKKSVector, size: int) -> ts.CKKSVector:
    """The same ciphertext with TenSEAL's logical size set to ``size``."""
    _, cts, scale_ = parse_envelope(vec.serialize())
    if len(cts) != 1:
        raise EncodingError(f"internal: expected one ciphertext, found {len(cts)}")
    return ts.ckks_vector_from(ctx._ts, build_envelope([size], cts, scale_))
