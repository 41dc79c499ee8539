"""Protocol messages ↔ protobuf bytes for the gRPC deployment (DESIGN §6).

:func:`encode` turns any message of :mod:`fedmuscle_secure.messages` into the bytes of one
``fedmuscle.v1.Envelope`` (``proto/fedmuscle.proto``) and :func:`decode` turns them back,
exactly: tensors bit for bit with their dtype and shape, ``batch = None`` (``per_epoch``)
kept apart from batch 0, tuples of tuples as tuples, and the secure-aggregation maps
restored as read-only maps (:func:`~fedmuscle_secure.crypto.secagg.messages.frozen_map`).
Tensors are explicit dtype / shape / little-endian bytes and ciphertexts opaque bytes:
nothing received is ever unpickled or ``torch.load``-ed (DESIGN §13.5).

Received bytes come from another organization, so :func:`decode` checks everything the
protobuf parser does not — allowed dtype, shape against byte length, a message in every
``oneof``, required sub-messages present, Shamir shares of exactly 66 bytes below the
field prime, no repeated map key, layouts the CKKS types accept — and raises
:class:`~fedmuscle_secure.errors.ProtocolError` (peer ``"wire"``, stage ``"decode"``) with
the field path at fault. What the bytes *mean* (who may send what, in which stage) stays
the state machines' job, except who may send it: :data:`DIRECTION` (one entry per type)
lets ``decode(..., expect=...)`` refuse a message of the wrong direction from its tags,
before any body is decoded. With ``limits`` (the federation's
:class:`~fedmuscle_secure.transport.limits.WireLimits`) :mod:`fedmuscle_secure.transport.scan` counts
every repeated field against its cap before the protobuf parser allocates anything.
Chunking: :mod:`fedmuscle_secure.transport.chunks`; tensors: :mod:`fedmuscle_secure.transport.tensor`;
field kinds: :mod:`fedmuscle_secure.transport.fields`.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from fedmuscle_secure.crypto.ckks.ops import EncryptedMatrix, EncryptedRowValues, RowLayout
from fedmuscle_secure.crypto.secagg.messages import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencySignature,
    EncryptedShares,
    KeyBook,
    MaskedInput,
    SecAggSetup,
    ShareInbox,
    UnmaskRequest,
    UnmaskShares,
)
from fedmuscle_secure.crypto.secagg.sum_encoding import SumEncoding
from fedmuscle_secure.errors import EncodingError, ProtocolError
from fedmuscle_secure.messages import (
    EncryptedPeers,
    EncryptedRepresentations,
    EncryptedSums,
    EncryptedSumTerms,
    ExchangeAborted,
    Finish,
    Leave,
    Message,
    PeerSums,
    PeerTerms,
    Representations,
    RoundPlan,
    RoundReport,
    SecAggEnvelope,
    SitOut,
    SumTerms,
)
from fedmuscle_secure.transport.fields import (
    BYTES_TUPLE,
    CIPHERTEXTS,
    GROUPS,
    IDENTITY,
    METRICS,
    NAMES,
    OPTIONAL,
    SCALAR,
    SHARE_BYTES,
    SHARES,
    SIGNATURES,
    TENSOR,
    Kind,
    refuse,
    required,
    sequence,
    unencodable,
)
from fedmuscle_secure.transport.scan import oneof_member, scan
from fedmuscle_secure.transport.tensor import DTYPES, tensor_from_proto, tensor_to_proto
from fedmuscle_secure.transport.wire_pb import fedmuscle_pb2 as pb

if TYPE_CHECKING:
    from fedmuscle_secure.transport.limits import WireLimits

__all__ = ["DIRECTION", "DTYPES", "SHARE_BYTES", "Direction", "decode", "encode",
           "tensor_from_proto", "tensor_to_proto"]

def _nested(cls: type) -> Kind:
    """A required sub-message holding a ``cls`` dataclass."""
    def enc(p: ProtoMessage, name: str, value: Any, where: str) -> None:
        getattr(p, name).SetInParent()
        _to_proto(value, getattr(p, name), where, cls)

    def dec(p: ProtoMessage, name: str, where: str) -> Any:
        return _from_proto(cls, required(p, name, where), where)

    return Kind(enc, dec)


def _repeated(cls: type, depth: int = 1) -> Kind:
    """A tuple (``depth`` 2: tuple of tuples) of ``cls`` dataclasses."""
    def enc(p: ProtoMessage, name: str, value: Any, where: str) -> None:
        for i, item in enumerate(sequence(value, where)):
            sub = getattr(p, name).add()
            if depth == 2:
                for j, leaf in enumerate(sequence(item, f"{where}[{i}]")):
                    _to_proto(leaf, sub.matrices.add(), f"{where}[{i}][{j}]", cls)
            else:
                _to_proto(item, sub, f"{where}[{i}]", cls)

    def dec(p: ProtoMessage, name: str, where: str) -> tuple:
        if depth == 2:
            return tuple(tuple(_from_proto(cls, leaf, f"{where}[{i}][{j}]")
                               for j, leaf in enumerate(sub.matrices))
                         for i, sub in enumerate(getattr(p, name)))
        return tuple(_from_proto(cls, sub, f"{where}[{i}]")
                     for i, sub in enumerate(getattr(p, name)))

    return Kind(enc, dec)


def _set_encoding(p: ProtoMessage, name: str, value: Any, where: str) -> None:
    if value is not None:
        getattr(p, name).SetInParent()
        _to_proto(value, getattr(p, name), where, SumEncoding)


def _get_encoding(p: ProtoMessage, name: str, where: str) -> SumEncoding | None:
    return _from_proto(SumEncoding, getattr(p, name), where) if p.HasField(name) else None


#: SecAggEnvelope.body: stage message type ↔ its ``oneof body`` field.
_BODY = {SecAggSetup: "setup", KeyBook: "key_book", ShareInbox: "share_inbox",
         UnmaskRequest: "unmask_request", AdvertiseKeys: "advertise_keys",
         EncryptedShares: "encrypted_shares", MaskedInput: "masked_input",
         UnmaskShares: "unmask_shares", ConsistencyCheck: "consistency_check",
         ConsistencySignature: "consistency_signature"}
_BODY_TYPE = {field: cls for cls, field in _BODY.items()}


def _set_body(p: ProtoMessage, name: str, value: Any, where: str) -> None:
    field = _BODY.get(type(value))
    if field is None:
        raise unencodable(f"{where}: {type(value).__name__} is not a secagg stage message")
    getattr(p, field).SetInParent()
    _to_proto(value, getattr(p, field), where, type(value))


def _get_body(p: ProtoMessage, name: str, where: str) -> Any:
    field = p.WhichOneof(name)
    if field is None:
        raise refuse(f"{where}: no stage message (oneof body is empty)")
    return _from_proto(_BODY_TYPE[field], getattr(p, field), where)


_EXCHANGE = {"client": IDENTITY, "round": SCALAR, "epoch": SCALAR, "batch": OPTIONAL}
_LAYOUT = {"layout": _nested(RowLayout), "ciphertexts": BYTES_TUPLE}

#: Every dataclass that travels, field by field (proto fields carry the same names).
_SPECS: dict[type, dict[str, Kind]] = {
    RoundPlan: {"client": IDENTITY, "round": SCALAR, "exchange": SCALAR, "batches": TENSOR,
                "members": NAMES},
    Representations: {**_EXCHANGE, "z": TENSOR},
    PeerTerms: {**_EXCHANGE, "peers": GROUPS, "scaled_peers": TENSOR, "log_alpha_pairs": TENSOR},
    PeerSums: {**_EXCHANGE, "peers": GROUPS, "peer_sum": TENSOR, "peer_sq_norm_sum": TENSOR,
               "includes_self": SCALAR},
    SumTerms: {**_EXCHANGE, "peers": NAMES, "scaled_sum": TENSOR, "log_alpha": TENSOR,
               "includes_self": SCALAR},
    RoundReport: {"client": IDENTITY, "round": SCALAR, "metrics": METRICS, "withheld": NAMES},
    Leave: {"client": IDENTITY, "round": SCALAR, "reason": SCALAR},
    Finish: {"client": IDENTITY, "round": SCALAR},
    ExchangeAborted: {**_EXCHANGE, "reason": SCALAR},
    SitOut: {**_EXCHANGE, "reason": SCALAR},
    SecAggEnvelope: {**_EXCHANGE, "body": Kind(_set_body, _get_body),
                     "encoding": Kind(_set_encoding, _get_encoding)},
    SecAggSetup: {"recipient": IDENTITY, "instance_id": SCALAR, "participants": NAMES,
                  "threshold": SCALAR, "vector_length": SCALAR},
    KeyBook: {"recipient": IDENTITY, "instance_id": SCALAR, "adverts": _repeated(AdvertiseKeys)},
    ShareInbox: {"recipient": IDENTITY, "instance_id": SCALAR, "ciphertexts": CIPHERTEXTS},
    ConsistencyCheck: {"recipient": IDENTITY, "instance_id": SCALAR, "survivors": NAMES,
                       "dropped": NAMES},
    UnmaskRequest: {"recipient": IDENTITY, "instance_id": SCALAR, "survivors": NAMES,
                    "dropped": NAMES, "signatures": SIGNATURES},
    ConsistencySignature: {"sender": IDENTITY, "instance_id": SCALAR, "signature": SCALAR},
    AdvertiseKeys: {"sender": IDENTITY, "instance_id": SCALAR, "cipher_public": SCALAR,
                    "mask_public": SCALAR, "signature": SCALAR},
    EncryptedShares: {"sender": IDENTITY, "instance_id": SCALAR, "ciphertexts": CIPHERTEXTS},
    MaskedInput: {"sender": IDENTITY, "instance_id": SCALAR, "masked": TENSOR},
    UnmaskShares: {"sender": IDENTITY, "instance_id": SCALAR, "seed_shares": SHARES,
                   "key_shares": SHARES},
    SumEncoding: {"batches": SCALAR, "rows": SCALAR, "dim": SCALAR, "group_size": SCALAR,
                  "value_clip": SCALAR, "sq_norm_clip": SCALAR, "frac_bits": OPTIONAL},
    RowLayout: {"rows": SCALAR, "cols": SCALAR, "row_stride": SCALAR,
                "rows_per_ciphertext": SCALAR},
    EncryptedMatrix: _LAYOUT,
    EncryptedRowValues: _LAYOUT,
    EncryptedRepresentations: {**_EXCHANGE, "z": _repeated(EncryptedMatrix),
                               "sq_norms": _repeated(EncryptedRowValues)},
    EncryptedSumTerms: {**_EXCHANGE, "peers": GROUPS, "scaled_sum": _repeated(EncryptedMatrix),
                        "sq_norm_minus": _repeated(EncryptedRowValues)},
    EncryptedSums: {**_EXCHANGE, "peers": GROUPS, "peer_sum": _repeated(EncryptedMatrix),
                    "peer_sq_norm_sum": _repeated(EncryptedRowValues)},
    EncryptedPeers: {**_EXCHANGE, "peers": GROUPS,
                     "matrices": _repeated(EncryptedMatrix, depth=2)},
}

#: Top-level message type ↔ its ``Envelope.message`` oneof field.
_ENVELOPE = {RoundPlan: "round_plan", Representations: "representations",
             PeerTerms: "peer_terms", PeerSums: "peer_sums", SumTerms: "sum_terms",
             RoundReport: "round_report", Leave: "leave", ExchangeAborted: "exchange_aborted",
             SecAggEnvelope: "secagg", EncryptedRepresentations: "encrypted_representations",
             EncryptedSumTerms: "encrypted_sum_terms", EncryptedSums: "encrypted_sums",
             EncryptedPeers: "encrypted_peers", Finish: "finish", SitOut: "sit_out"}
_ENVELOPE_TYPE = {field: cls for cls, field in _ENVELOPE.items()}


class Direction(enum.Enum):
    """Who sends a message: the receiving end accepts only the other end's messages."""

    TO_SERVER = "client → server"
    TO_CLIENT = "server → client"


_UP, _DOWN = Direction.TO_SERVER, Direction.TO_CLIENT
#: The sending direction of every message type that travels, one entry per type; a
#: ``SecAggEnvelope`` goes the way of its stage message (``body``).
DIRECTION: dict[type, Direction] = {
    RoundPlan: _DOWN, Representations: _UP, PeerTerms: _DOWN, PeerSums: _DOWN, SumTerms: _DOWN,
    RoundReport: _UP, Leave: _UP, Finish: _DOWN, ExchangeAborted: _DOWN, SitOut: _UP,
    EncryptedRepresentations: _UP, EncryptedSumTerms: _DOWN, EncryptedSums: _DOWN,
    EncryptedPeers: _DOWN,
    SecAggSetup: _DOWN, KeyBook: _DOWN, ShareInbox: _DOWN, ConsistencyCheck: _DOWN,
    UnmaskRequest: _DOWN,
    AdvertiseKeys: _UP, EncryptedShares: _UP, MaskedInput: _UP, ConsistencySignature: _UP,
    UnmaskShares: _UP,
}

_LIBRARY_ERRORS = (TypeError, ValueError, AttributeError, OverflowError)


def _to_proto(msg: Any, p: ProtoMessage, where: str, cls: type) -> None:
    if type(msg) is not cls:
        raise unencodable(f"{where}: expected a {cls.__name__}, got {type(msg).__name__}")
    for name, kind in _SPECS[cls].items():
        try:
            kind.encode(p, name, getattr(msg, name), f"{where}.{name}")
        except _LIBRARY_ERRORS as e:
            raise unencodable(f"{where}.{name}: {e}") from e


def _from_proto(cls: type, p: ProtoMessage, where: str) -> Any:
    values = {name: kind.decode(p, name, f"{where}.{name}") for name, kind in _SPECS[cls].items()}
    try:
        return cls(**values)
    except (EncodingError, *_LIBRARY_ERRORS) as e:  # the dataclass's own checks
        raise refuse(f"{where}: {e}") from e


# --- front door ---------------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """The bytes of one ``Envelope`` carrying ``msg`` (DESIGN §6); deterministic.

    Raises :class:`ProtocolError` (stage ``"encode"``) for a value that cannot travel:
    an unknown message type, a tensor dtype outside :data:`DTYPES`, a share outside the field.
    """
    field = _ENVELOPE.get(type(msg))
    if field is None:
        raise unencodable(f"{type(msg).__name__} is not a protocol message")
    envelope = pb.Envelope()
    getattr(envelope, field).SetInParent()
    _to_proto(msg, getattr(envelope, field), type(msg).__name__, type(msg))
    return envelope.SerializeToString(deterministic=True)


def message_type(data: bytes) -> type:
    """The type of the message in ``data`` (a ``SecAggEnvelope``'s stage message type), read
    from field tags only: no body is decoded."""
    field, body = oneof_member(data, pb.Envelope.DESCRIPTOR, "message", "Envelope")
    if _ENVELOPE_TYPE[field] is not SecAggEnvelope:
        return _ENVELOPE_TYPE[field]
    return _BODY_TYPE[oneof_member(body, pb.SecAggEnvelope.DESCRIPTOR, "body", "SecAggEnvelope")[0]]


def check_direction(cls: type, expect: Direction, sender: str) -> None:
    """Refuse a ``cls`` message from ``sender`` unless it travels ``expect``."""
    sent = DIRECTION.get(cls)
    if sent is not expect:
        way = sent.value if sent is not None else "no direction"
        raise ProtocolError(sender, "decode", f"{cls.__name__} travels {way}; this end "
                            f"accepts {expect.value} messages only")


def decode(data: bytes, *, expect: Direction | None = None, sender: str = "wire",
           limits: WireLimits | None = None) -> Message:
    """The message in one received ``Envelope``; refuses anything malformed (module docs).

    ``expect``: the direction this end receives; a message of the other direction is
    refused before its body is read, as a :class:`ProtocolError` naming ``sender`` and the
    type. ``limits``: the federation's caps on repeated fields, checked before parsing.
    Other refusals are :class:`ProtocolError` (peer ``"wire"``, stage ``"decode"``) naming
    the field.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise refuse(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if expect is not None:
        check_direction(message_type(data), expect, sender)
    scan(data, pb.Envelope.DESCRIPTOR, limits.cap if limits is not None else lambda m, f: None,
         "Envelope")
    envelope = pb.Envelope()
    try:
        envelope.ParseFromString(data)
    except DecodeError as e:
        raise refuse(f"not a fedmuscle.v1.Envelope ({e})") from e
    field = envelope.WhichOneof("message")
    if field is None:
        raise refuse("Envelope carries no message (oneof message is empty)")
    cls = _ENVELOPE_TYPE[field]
    return _from_proto(cls, getattr(envelope, field), cls.__name__)
