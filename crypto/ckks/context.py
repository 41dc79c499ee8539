"""CKKS parameters and the secret / public contexts of the ``ckks`` mode (DESIGN §4.3).

A provisioning step creates one CKKS context. Clients hold it *with* the secret key
(:class:`SecretContext`); the server holds an evaluation-only copy (:class:`PublicContext`).
The two are different types: :meth:`SecretContext.to_public` serializes the context without
its secret key and loads that into a *new* object, so the secret context is never mutated
(TenSEAL's own ``make_context_public`` flips one flag on the object it is given, TenSEAL
#437/#438). A public context refuses bytes that carry a secret key, and nothing in this
package can decrypt with it.

Parameters are validated before anything is encrypted (TenSEAL #216/#253 show users meeting
raw SEAL errors instead). The rules, each reported with the field at fault and the fix:

* ``poly_modulus_degree`` N is a power of two in [1024, 32768]; a ciphertext holds N/2 slots,
  which must be at least the packed length (for the row layout of :mod:`crypto.ckks.ops`:
  one row, padded to a power of two).
* ``coeff_mod_bit_sizes`` = (first, middle..., last). Every prime has 20..60 bits; their sum
  is at most SEAL's 128-bit-security bound for N (:data:`MAX_COEFF_BITS`). The last prime is
  SEAL's "special" key-switching prime; the remaining ``len - 2`` middle primes are the
  multiplicative depth (one rescale each), so ``len - 2 >= depth``.
* Each middle prime has exactly ``global_scale_bits`` bits: a rescale divides by the prime,
  and TenSEAL then declares the scale to be 2**global_scale_bits again, so a prime of a
  different size silently rescales values by 2**(scale - bits).
* Integer-part rule: a result is decrypted modulo the first prime q0 > 2**(b0 - 1), so
  ``|x| * 2**scale`` must stay below q0/2, i.e. ``|x| < 2**(b0 - scale - 2)``
  (:attr:`CkksParameters.max_abs_value`). We require ``b0 >= scale + MIN_INTEGER_BITS``
  (10 bits: |x| < 256, room for ||U||^2 of up to 16 summed unit rows) and the special prime
  to be at least as large as every other prime (SEAL's guidance; a smaller special prime
  inflates key-switching noise), hence also ``> scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

import tenseal as ts
from tenseal import sealapi

from fedmuscle_secure.errors import ConfigError, EncodingError

__all__ = [
    "MAX_COEFF_BITS",
    "MIN_INTEGER_BITS",
    "CkksParameters",
    "PublicContext",
    "SecretContext",
]

#: SEAL's largest total coefficient-modulus size (bits) at 128-bit classical security,
#: ``CoeffModulus::MaxBitCount(N, sec_level_type::tc128)``.
MAX_COEFF_BITS: dict[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
MIN_INTEGER_BITS = 10
PRIME_BITS = (20, 60)
#: ``default_for`` never goes below this scale: the rotation noise of ``sq_norm_minus``
#: (about 2**-21 at scale 2**40, N = 8192) grows by one bit per bit of scale given up.
MIN_DEFAULT_SCALE_BITS = 30
_FIELD = "ckks"
_TENSEAL_ERRORS = (ValueError, RuntimeError, TypeError)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class CkksParameters:
    """CKKS encryption parameters of the ``ckks`` protection mode (DESIGN §4.3).

    See the module docstring for the validation rules.
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    global_scale_bits: int
    galois_keys: bool

    def __post_init__(self) -> None:
        if isinstance(self.coeff_mod_bit_sizes, list):  # as loaded from YAML
            object.__setattr__(self, "coeff_mod_bit_sizes", tuple(self.coeff_mod_bit_sizes))

    @property
    def slots(self) -> int:
        """Values one ciphertext holds: N/2."""
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Multiplicative depth available: the number of middle primes."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def max_abs_value(self) -> float:
        """Largest magnitude a (decrypted) value may have: ``2**(b0 - scale - 2)``."""
        return 2.0 ** (self.coeff_mod_bit_sizes[0] - self.global_scale_bits - 2)

    def problems(
        self, *, packed_length: int, depth: int, max_abs_value: float | None = None
    ) -> list[tuple[str, str]]:
        """Every rule this parameter set breaks, as ``(field, how to fix)`` pairs."""
        if not _is_int(packed_length) or packed_length < 1:
            raise ValueError(f"packed_length must be a positive int, got {packed_length!r}")
        if not _is_int(depth) or depth < 0:
            raise ValueError(f"depth must be a non-negative int, got {depth!r}")
        out: list[tuple[str, str]] = []
        n_ok, scale_ok = self._ring_problems(packed_length, out)
        bits = self.coeff_mod_bit_sizes
        if not isinstance(bits, tuple) or not all(_is_int(b) for b in bits):
            out.append((f"{_FIELD}.coeff_mod_bit_sizes",
                        f"got {bits!r}; use a tuple of ints such as (60, 40, 60)"))
            return out
        if len(bits) < 2:
            out.append((f"{_FIELD}.coeff_mod_bit_sizes",
                        (f"got {len(bits)} prime(s); CKKS needs at least a first and a special "
                        "(last) prime, plus one middle prime per multiplication")))
            return out
        self._chain_problems(depth, n_ok, out)
        if scale_ok:
            self._scale_problems(max_abs_value, out)
        if bits[-1] < max(bits[:-1]):
            out.append((f"{_FIELD}.coeff_mod_bit_sizes[{len(bits) - 1}]",
                        (f"special (last) prime has {bits[-1]} bits < the largest other prime "
                        f"({max(bits[:-1])}); make it at least as large (60 is usual)")))
        return out

    def _ring_problems(self, packed_length: int, out: list[tuple[str, str]]) -> tuple[bool, bool]:
        """Ring degree, scale and Galois-key problems; returns whether N and the scale are
        usable (the coefficient-chain checks need them)."""
        n, scale = self.poly_modulus_degree, self.global_scale_bits
        n_ok = _is_int(n) and n in MAX_COEFF_BITS
        if not n_ok:
            out.append((f"{_FIELD}.poly_modulus_degree",
                        f"got {n!r}; use a power of two in {sorted(MAX_COEFF_BITS)}"))
        elif n // 2 < packed_length:
            need = max(1024, 1 << (2 * packed_length - 1).bit_length())
            out.append((f"{_FIELD}.poly_modulus_degree",
                        (f"N={n} gives {n // 2} slots < packed length {packed_length}; "
                        f"use poly_modulus_degree >= {need}")))
        scale_ok = _is_int(scale) and PRIME_BITS[0] <= scale <= PRIME_BITS[1]
        if not scale_ok:
            out.append((f"{_FIELD}.global_scale_bits",
                        (f"got {scale!r}; use an int in [{PRIME_BITS[0]}, {PRIME_BITS[1]}] "
                        "(40 is the usual choice)")))
        if not isinstance(self.galois_keys, bool):
            out.append((f"{_FIELD}.galois_keys", f"got {self.galois_keys!r}; use true or false"))
        return n_ok, scale_ok

    def _chain_problems(self, depth: int, n_ok: bool, out: list[tuple[str, str]]) -> None:
        """Each prime's size, the depth the chain allows, and SEAL's security bound on it."""
        n, bits = self.poly_modulus_degree, self.coeff_mod_bit_sizes
        for i, b in enumerate(bits):
            if not PRIME_BITS[0] <= b <= PRIME_BITS[1]:
                out.append((f"{_FIELD}.coeff_mod_bit_sizes[{i}]",
                            f"{b} bits; SEAL primes have {PRIME_BITS[0]}..{PRIME_BITS[1]} bits"))
        if len(bits) - 2 < depth:
            out.append((f"{_FIELD}.coeff_mod_bit_sizes",
                        (f"{len(bits)} primes give depth {len(bits) - 2} < required {depth}; add "
                        f"{depth - len(bits) + 2} middle prime(s) of global_scale_bits bits")))
        if n_ok and sum(bits) > MAX_COEFF_BITS[n]:
            out.append((f"{_FIELD}.coeff_mod_bit_sizes",
                        (f"total {sum(bits)} bits exceeds SEAL's 128-bit-security bound "
                        f"{MAX_COEFF_BITS[n]} for N={n}; use a larger poly_modulus_degree or "
                        "fewer / smaller primes")))

    def _scale_problems(self, max_abs_value: float | None, out: list[tuple[str, str]]) -> None:
        """Middle primes equal to the scale, and a first prime that holds the integer part
        of the largest value (``max_abs_value``, when given)."""
        bits, scale = self.coeff_mod_bit_sizes, self.global_scale_bits
        for i, b in enumerate(bits[1:-1], start=1):
            if b != scale:
                out.append((f"{_FIELD}.coeff_mod_bit_sizes[{i}]",
                            (f"middle prime has {b} bits != global_scale_bits={scale}; each "
                            "rescale would multiply values by 2**(scale - bits)")))
        if bits[0] < scale + MIN_INTEGER_BITS:
            out.append((f"{_FIELD}.coeff_mod_bit_sizes[0]",
                        (f"first prime has {bits[0]} bits; it needs >= global_scale_bits + "
                        f"{MIN_INTEGER_BITS} = {scale + MIN_INTEGER_BITS} to hold the "
                        "integer part of the decrypted result")))
        elif max_abs_value is not None and max_abs_value >= self.max_abs_value:
            out.append((f"{_FIELD}.coeff_mod_bit_sizes[0]",
                        (f"values up to {max_abs_value} need |x| < 2**(first - scale - 2) = "
                        f"{self.max_abs_value}; use a larger first prime or a smaller scale")))

    def validate(
        self, *, packed_length: int, depth: int, max_abs_value: float | None = None
    ) -> None:
        """Raise one :class:`ConfigError` listing every broken rule (DESIGN §4.3).

        ``packed_length``: slots one ciphertext must hold; ``depth``: multiplications the
        computation needs; ``max_abs_value`` (optional): the largest magnitude of any
        intermediate or result, checked against the integer-part rule.
        """
        found = self.problems(packed_length=packed_length, depth=depth,
                              max_abs_value=max_abs_value)
        if found:
            fields = ", ".join(dict.fromkeys(f for f, _ in found))
            detail = "; ".join(f"{f}: {m}" for f, m in found)
            err = ConfigError(fields, f"invalid CKKS parameters ({len(found)} problem(s)): "
                                      f"{detail}")
            err.problems = tuple(found)  # type: ignore[attr-defined]
            raise err

    @classmethod
    def default_for(
        cls, packed_length: int, depth: int, *, galois_keys: bool = True
    ) -> CkksParameters:
        """The valid set with the smallest N for ``packed_length`` slots and ``depth``.

        For each N (ascending) and scale from 40 down to :data:`MIN_DEFAULT_SCALE_BITS` bits,
        first = last prime = the largest size <= 60 that keeps the total within the security
        bound; the first candidate that validates wins (so precision is given up only when a
        smaller N would otherwise be impossible, never below 2**30).
        """
        for n, bound in MAX_COEFF_BITS.items():
            for scale in range(40, MIN_DEFAULT_SCALE_BITS - 1, -1):
                edge = min(PRIME_BITS[1], (bound - depth * scale) // 2)
                cand = cls(n, (edge,) + (scale,) * depth + (edge,), scale, galois_keys)
                if not cand.problems(packed_length=packed_length, depth=depth):
                    return cand
        raise ConfigError(_FIELD, f"no parameter set with N <= 32768 and scale >= "
                                  f"2**{MIN_DEFAULT_SCALE_BITS} holds {packed_length} slots at "
                                  f"depth {depth}; split the data or lower the depth")


def _expected_parms_id(params: CkksParameters) -> list[int]:
    """SEAL's hash of the key-level parameters, computed without generating keys."""
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(params.poly_modulus_degree)
    parms.set_coeff_modulus(
        sealapi.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes))
    )
    ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    return list(ctx.key_parms_id())


def _load_context(data: bytes, params: CkksParameters, role: str) -> ts.Context:
    """Deserialize context bytes and check they were made for ``params``."""
    params.validate(packed_length=1, depth=0)
    if not isinstance(data, bytes) or not data:
        raise EncodingError(f"{role} context: expected non-empty bytes, got {type(data).__name__}")
    try:
        ctx = ts.context_from(data)
    except _TENSEAL_ERRORS as e:
        raise EncodingError(f"{role} context: cannot deserialize CKKS context bytes ({e})") from e
    if list(ctx.seal_context().data.key_parms_id()) != _expected_parms_id(params):
        raise ConfigError(f"{_FIELD}.coeff_mod_bit_sizes",
                          f"{role} context bytes were made for other CKKS parameters than "
                          f"{params}; provision the context again")
    if ctx.global_scale != 2.0**params.global_scale_bits:
        raise ConfigError(f"{_FIELD}.global_scale_bits",
                          f"{role} context has scale {ctx.global_scale!r}, expected "
                          f"2**{params.global_scale_bits}")
    if not ctx.has_relin_keys():
        raise ConfigError(f"{_FIELD}.context", f"{role} context lacks relinearization keys")
    if params.galois_keys and not ctx.has_galois_keys():
        raise ConfigError(f"{_FIELD}.galois_keys",
                          f"params ask for Galois keys but the {role} context bytes have none")
    _set_auto_flags(ctx)
    return ctx


def _set_auto_flags(ctx: ts.Context) -> None:
    # Relinearize after every product, rescale after every multiplication (and reset the
    # scale to 2**global_scale_bits), switch operands to a common level automatically.
    ctx.auto_relin = True
    ctx.auto_rescale = True
    ctx.auto_mod_switch = True


class SecretContext:
    """A client's CKKS context, holding the secret key (DESIGN §4.3).

    Build it with :meth:`create` (provisioning) or :meth:`from_bytes`; never pickle it.
    """

    __slots__ = ("_params", "_ts")

    def __init__(self, tenseal_context: ts.Context, params: CkksParameters) -> None:
        if not tenseal_context.is_private():
            raise ConfigError(f"{_FIELD}.context",
                              "a SecretContext needs a TenSEAL context with its secret key")
        self._ts = tenseal_context
        self._params = params

    @classmethod
    def create(cls, params: CkksParameters) -> SecretContext:
        """Provision a fresh context: keys from SEAL's CSPRNG, relin keys, Galois keys if asked.

        The parameter rules are checked first; the packed length and depth of a computation
        are checked again by the operation that needs them, before it encrypts anything.
        """
        params.validate(packed_length=1, depth=0)
        try:
            ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=params.poly_modulus_degree,
                             coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
        except _TENSEAL_ERRORS as e:
            raise ConfigError(f"{_FIELD}.coeff_mod_bit_sizes",
                              f"SEAL rejected the parameters {params} ({e})") from e
        ctx.global_scale = 2.0**params.global_scale_bits
        _set_auto_flags(ctx)
        if not ctx.has_relin_keys():
            ctx.generate_relin_keys()
        if params.galois_keys:
            ctx.generate_galois_keys()
        return cls(ctx, params)

    @classmethod
    def from_bytes(cls, data: bytes, params: CkksParameters) -> SecretContext:
        """Load a context serialized by :meth:`serialize`; it must carry the secret key."""
        ctx = _load_context(data, params, "secret")
        if not ctx.is_private():
            raise ConfigError(f"{_FIELD}.context",
                              "these bytes hold a public context (no secret key); a client "
                              "needs the provisioned secret context")
        return cls(ctx, params)

    @property
    def params(self) -> CkksParameters:
        return self._params

    def serialize(self) -> bytes:
        """All keys, the secret key included (TenSEAL regenerates Galois keys on load)."""
        return self._ts.serialize(save_public_key=True, save_secret_key=True,
                                  save_galois_keys=self._params.galois_keys,
                                  save_relin_keys=True)

    def to_public(self) -> PublicContext:
        """A NEW evaluation-only context: serialized without the secret key and reloaded.

        ``self`` is left exactly as it was.
        """
        data = self._ts.serialize(save_public_key=True, save_secret_key=False,
                                  save_galois_keys=self._params.galois_keys,
                                  save_relin_keys=True)
        return PublicContext.from_bytes(data, self._params)

    def __repr__(self) -> str:
        return f"SecretContext({self._params!r})"

    def __reduce__(self) -> object:
        raise TypeError("SecretContext holds a secret key and is never pickled; use serialize()")


class PublicContext:
    """The server's evaluation-only CKKS context: public, relin and Galois keys (DESIGN §4.3).

    It has no secret key and cannot decrypt; :meth:`from_bytes` refuses bytes with one.
    """

    __slots__ = ("_params", "_ts")

    def __init__(self, tenseal_context: ts.Context, params: CkksParameters) -> None:
        if tenseal_context.has_secret_key():
            raise ConfigError(f"{_FIELD}.context",
                              "a PublicContext must not hold a secret key (DESIGN §4.3)")
        self._ts = tenseal_context
        self._params = params

    @classmethod
    def from_bytes(cls, data: bytes, params: CkksParameters) -> PublicContext:
        """Load an evaluation-only context; bytes that carry a secret key are refused."""
        ctx = _load_context(data, params, "public")
        if ctx.has_secret_key():
            raise ConfigError(f"{_FIELD}.context",
                              "these context bytes contain the secret key; the server must only "
                              "ever receive SecretContext.to_public().serialize() (DESIGN §4.3)")
        return cls(ctx, params)

    @property
    def params(self) -> CkksParameters:
        return self._params

    def serialize(self) -> bytes:
        """Public, relinearization and (if any) Galois keys; never a secret key."""
        return self._ts.serialize(save_public_key=True, save_secret_key=False,
                                  save_galois_keys=self._params.galois_keys,
                                  save_relin_keys=True)

    def __repr__(self) -> str:
        return f"PublicContext({self._params!r})"
