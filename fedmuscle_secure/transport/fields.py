"""Field kinds of the wire codec: how one dataclass field maps onto the proto field of the
same name (DESIGN §6).

A :class:`Kind` is an encoder and a decoder for one kind of value (a scalar, a peer name,
a tensor, a list of names, a map of shares...). The leaf kinds here check, on decode,
what the protobuf parser does not: a peer name present, a Shamir share of exactly
:data:`SHARE_BYTES` bytes below the field prime, no map key twice. The codec's table
(:mod:`fedmuscle_secure.transport.codec`) says which kind each field of each message is,
and builds the kinds that nest whole messages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message as ProtoMessage

from fedmuscle_secure.crypto.secagg.messages import frozen_map
from fedmuscle_secure.crypto.secagg.shamir import PRIME_256
from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.transport.tensor import tensor_from_proto, tensor_to_proto

__all__ = ["BYTES_TUPLE", "CIPHERTEXTS", "GROUPS", "IDENTITY", "METRICS", "NAMES", "OPTIONAL",
           "SCALAR", "SHARES", "SHARE_BYTES", "SIGNATURES", "TENSOR", "Decoder", "Encoder",
           "Kind", "refuse", "required", "sequence", "unencodable"]

#: A Shamir share is an element of the M521 field: 521 bits, 66 bytes big-endian.
SHARE_BYTES = 66


def refuse(reason: str) -> ProtocolError:
    """A decode refusal: the received bytes are not a message we accept."""
    return ProtocolError("wire", "decode", reason)


def unencodable(reason: str) -> ProtocolError:
    """An encode refusal: a value of ours that cannot travel."""
    return ProtocolError("wire", "encode", reason)


Encoder = Callable[[ProtoMessage, str, Any, str], None]
Decoder = Callable[[ProtoMessage, str, str], Any]


@dataclass(frozen=True)
class Kind:
    """How one field travels: ``encode(proto, name, value, where)`` and
    ``decode(proto, name, where)``; ``where`` is the field path named in errors."""

    encode: Encoder
    decode: Decoder


def _set(p: ProtoMessage, name: str, value: Any, where: str) -> None:
    setattr(p, name, value)


def _get(p: ProtoMessage, name: str, where: str) -> Any:
    return getattr(p, name)


def _get_identity(p: ProtoMessage, name: str, where: str) -> str:
    value = getattr(p, name)
    if not value:
        raise refuse(f"{where}: missing (empty peer name)")
    return value


def _set_optional(p: ProtoMessage, name: str, value: Any, where: str) -> None:
    if value is not None:
        setattr(p, name, value)


def _get_optional(p: ProtoMessage, name: str, where: str) -> Any:
    return getattr(p, name) if p.HasField(name) else None


def required(p: ProtoMessage, name: str, where: str) -> Any:
    """The sub-message ``name`` of ``p``, refused when it is absent."""
    if not p.HasField(name):
        raise refuse(f"{where}: missing")
    return getattr(p, name)


def _set_names(p: ProtoMessage, name: str, value: Any, where: str) -> None:
    getattr(p, name).extend(sequence(value, where))


def _set_groups(p: ProtoMessage, name: str, value: Any, where: str) -> None:
    for group in sequence(value, where):
        getattr(p, name).add().names.extend(sequence(group, where))


def sequence(value: Any, where: str) -> tuple | list:
    """``value`` if it is a tuple or list (what a repeated field is encoded from)."""
    if not isinstance(value, (tuple, list)):
        raise unencodable(f"{where}: expected a tuple, got {type(value).__name__}")
    return value


def _unique(items: Any, where: str) -> dict:
    out: dict = {}
    for key, value in items:
        if key in out:
            raise refuse(f"{where}: {key!r} appears twice")
        out[key] = value
    return out


def _entries(value: Any, where: str) -> Any:
    if not isinstance(value, Mapping):
        raise unencodable(f"{where}: expected a mapping, got {type(value).__name__}")
    return value.items()


def _set_metrics(p: ProtoMessage, name: str, value: Any, where: str) -> None:
    for key, x in _entries(value, where):
        getattr(p, name).add(name=key, value=float(x))


def _set_ciphertexts(p: ProtoMessage, name: str, value: Any, where: str) -> None:
    for peer, data in _entries(value, where):
        getattr(p, name).add(peer=peer, ciphertext=data)


def _set_signatures(p: ProtoMessage, name: str, value: Any, where: str) -> None:
    for peer, data in _entries(value, where):
        getattr(p, name).add(peer=peer, signature=data)


def _share_to_bytes(value: Any, where: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < PRIME_256:
        raise unencodable(f"{where}: a share must be an int in [0, 2**521 - 1), got "
                           f"{type(value).__name__}")
    return value.to_bytes(SHARE_BYTES, "big")


def _share_from_bytes(data: bytes, where: str) -> int:
    if len(data) != SHARE_BYTES:
        raise refuse(f"{where}: a share must be {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME_256:
        raise refuse(f"{where}: share is not below the field prime 2**521 - 1")
    return value


def _set_shares(p: ProtoMessage, name: str, value: Any, where: str) -> None:
    for peer, share in _entries(value, where):
        getattr(p, name).add(peer=peer, share=_share_to_bytes(share, f"{where}[{peer!r}]"))


SCALAR = Kind(_set, _get)
IDENTITY = Kind(_set, _get_identity)
OPTIONAL = Kind(_set_optional, _get_optional)
TENSOR = Kind(lambda p, n, v, w: tensor_to_proto(v, getattr(p, n), where=w),
               lambda p, n, w: tensor_from_proto(required(p, n, w), where=w))
NAMES = Kind(_set_names, lambda p, n, w: tuple(getattr(p, n)))
GROUPS = Kind(_set_groups, lambda p, n, w: tuple(tuple(g.names) for g in getattr(p, n)))
BYTES_TUPLE = Kind(_set_names, lambda p, n, w: tuple(getattr(p, n)))
METRICS = Kind(_set_metrics,
                lambda p, n, w: _unique(((m.name, m.value) for m in getattr(p, n)), w))
CIPHERTEXTS = Kind(_set_ciphertexts, lambda p, n, w: frozen_map(
    _unique(((e.peer, e.ciphertext) for e in getattr(p, n)), w)))
SIGNATURES = Kind(_set_signatures, lambda p, n, w: frozen_map(
    _unique(((e.peer, e.signature) for e in getattr(p, n)), w)))
SHARES = Kind(_set_shares, lambda p, n, w: frozen_map(
    _unique(((e.peer, _share_from_bytes(e.share, f"{w}[{e.peer!r}]")) for e in getattr(p, n)), w)))
