"""TenSEAL's ``CKKSVectorProto`` envelope, read and written by hand (DESIGN §4.3).

TenSEAL 0.3.18 exposes no rotation on ``CKKSVector``, so the server's
:func:`~fedmuscle_secure.crypto.ckks.ops.sq_norm_minus` re-labels a vector's logical size
in this envelope (field 1 ``sizes``, 2 ``ciphertexts``, 3 ``scale``;
tenseal/proto/tensors.proto) around ``sum_``. Only ever used on bytes TenSEAL itself
produced in this process; received bytes are loaded by ``ts.ckks_vector_from`` alone.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from fedmuscle_secure.errors import EncodingError

__all__ = ["build_envelope", "parse_envelope"]


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise EncodingError("CKKSVectorProto: truncated or oversized varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _put_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def parse_envelope(buf: bytes) -> tuple[list[int], list[bytes], float]:
    """Decode ``CKKSVectorProto`` {1: packed uint32 sizes, 2: bytes ciphertexts, 3: double}."""
    sizes: list[int] = []
    cts: list[bytes] = []
    scale_ = 0.0
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if field == 1 and wire == 0:
            v, i = _varint(buf, i)
            sizes.append(v)
        elif field in (1, 2) and wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise EncodingError("CKKSVectorProto: field runs past the end")
            if field == 2:
                cts.append(buf[i : i + n])
                i += n
            else:
                end, i0 = i + n, i
                while i0 < end:
                    v, i0 = _varint(buf, i0)
                    sizes.append(v)
                i = end
        elif field == 3 and wire == 1 and i + 8 <= len(buf):
            (scale_,) = struct.unpack("<d", buf[i : i + 8])
            i += 8
        else:
            raise EncodingError(f"CKKSVectorProto: unexpected field {field} (wire type {wire})")
    return sizes, cts, scale_


def build_envelope(sizes: Sequence[int], cts: Sequence[bytes], scale_: float) -> bytes:
    """Encode ``CKKSVectorProto`` as :func:`parse_envelope` reads it (sizes packed)."""
    packed = b"".join(_put_varint(s) for s in sizes)
    out = [b"\x0a", _put_varint(len(packed)), packed]
    for c in cts:
        out += [b"\x12", _put_varint(len(c)), c]
    out += [b"\x19", struct.pack("<d", scale_)]
    return b"".join(out)
