"""A walk over received protobuf bytes *before* they are parsed (DESIGN §6).

The protobuf parser allocates as it reads: a 38 MB ``UnmaskRequest`` whose ``survivors``
list holds millions of one-byte names costs the parser an arena entry per name and
:mod:`fedmuscle_secure.transport.codec` a Python string per name, more than twenty times the bytes
received. What a message may hold is known before parsing (the schema, and how many
clients, batches and ciphertexts this federation has), so :func:`scan` walks the wire
format itself, field by field, skipping every length-delimited value in O(1), and
refuses before anything is allocated:

* a repeated field with more entries than its cap (``caps(message, field)``), counted as
  the entries arrive, so the walk stops at the first entry over the cap; a packed scalar
  list is counted by its varint terminators;
* a singular field that appears twice, or two members of one ``oneof`` (the parser would
  keep the last; the encoder never writes either);
* a field number the schema does not have (the parser would keep its bytes), a wire type
  that does not match the field's type, a group, and anything truncated.

:func:`oneof_member` is the shallow form: which member of a ``oneof`` is set, from the
tags of one message without looking inside any field; the decoder uses it to learn a
message's type (and so who may send it) before it reads any body. The walk reads only varints, tags and lengths; it is pure
bookkeeping on bytes, so its cost is bounded by the number of fields it is allowed to see.
Every refusal is a :class:`~fedmuscle_secure.errors.ProtocolError` (peer ``"wire"``,
stage ``"decode"``) naming the field path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from fedmuscle_secure.errors import ProtocolError

__all__ = ["Caps", "oneof_member", "scan"]

#: ``caps(message name, field name)``: the most entries a repeated field may hold, or None
#: for no cap (the walk then still checks structure).
Caps = Callable[[str, str], int | None]

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_T = FieldDescriptor
_WIRE_TYPE = {
    **dict.fromkeys((_T.TYPE_INT64, _T.TYPE_UINT64, _T.TYPE_INT32, _T.TYPE_UINT32, _T.TYPE_BOOL,
                     _T.TYPE_ENUM, _T.TYPE_SINT32, _T.TYPE_SINT64), _VARINT),
    **dict.fromkeys((_T.TYPE_DOUBLE, _T.TYPE_FIXED64, _T.TYPE_SFIXED64), _FIXED64),
    **dict.fromkeys((_T.TYPE_FLOAT, _T.TYPE_FIXED32, _T.TYPE_SFIXED32), _FIXED32),
    **dict.fromkeys((_T.TYPE_STRING, _T.TYPE_BYTES, _T.TYPE_MESSAGE), _LENGTH),
}
_MAX_DEPTH = 16  # the schema nests 5 deep; a cycle in a future schema must not recurse forever


def _refuse(reason: str) -> ProtocolError:
    return ProtocolError("wire", "decode", reason)


def _varint(buf: bytes, i: int, end: int, where: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end:
            raise _refuse(f"not a fedmuscle.v1.Envelope ({where}: truncated varint)")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift >= 70:
            raise _refuse(f"not a fedmuscle.v1.Envelope ({where}: varint longer than 10 bytes)")


def _fields(buf: bytes, start: int, end: int, where: str) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end) of each field in ``buf[start:end]``."""
    i = start
    while i < end:
        key, i = _varint(buf, i, end, where)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _refuse(f"not a fedmuscle.v1.Envelope ({where}: field number 0)")
        if wire == _VARINT:
            _, j = _varint(buf, i, end, where)
        elif wire == _FIXED64:
            j = i + 8
        elif wire == _FIXED32:
            j = i + 4
        elif wire == _LENGTH:
            size, i = _varint(buf, i, end, where)
            j = i + size
        else:
            raise _refuse(f"not a fedmuscle.v1.Envelope ({where}: wire type {wire} "
                          f"(groups) is not used by this protocol)")
        if j > end:
            raise _refuse(f"not a fedmuscle.v1.Envelope ({where}: field {number} runs past "
                          f"the end of its message)")
        yield number, wire, i, j
        i = j


def _field(descriptor: Descriptor, number: int, wire: int, where: str) -> FieldDescriptor:
    fd = descriptor.fields_by_number.get(number)
    if fd is None:
        raise _refuse(f"{where}: unknown field number {number} (not in {descriptor.full_name})")
    want = _WIRE_TYPE[fd.type]
    packed = fd.is_repeated and want != _LENGTH and wire == _LENGTH
    if wire != want and not packed:
        raise _refuse(f"{where}.{fd.name}: wire type {wire}, expected {want}")
    return fd


def oneof_member(data: bytes, descriptor: Descriptor, oneof: str, where: str,
                 ) -> tuple[str, memoryview]:
    """(name, bytes) of the one member of ``oneof`` set in ``data``, read from the tags
    only: nothing inside any field is looked at."""
    members = {fd.name for fd in descriptor.oneofs_by_name[oneof].fields}
    view = memoryview(data)  # slices without copying
    found = [(fd.name, view[s:e]) for number, wire, s, e in _fields(data, 0, len(data), where)
             if (fd := _field(descriptor, number, wire, where)).name in members]
    if not found:
        raise _refuse(f"{where} carries no message (oneof {oneof} is empty)")
    if len(found) > 1:
        raise _refuse(f"{where}: {len(found)} members of oneof {oneof!r} "
                      f"({', '.join(name for name, _ in found)}); exactly one expected")
    return found[0]


def scan(data: bytes, descriptor: Descriptor, caps: Caps, where: str) -> None:
    """Walk the whole message tree of ``data`` (module docs); raise at the first problem."""
    _scan(data, 0, len(data), descriptor, caps, where, 0)


def _scan(buf: bytes, start: int, end: int, descriptor: Descriptor, caps: Caps, where: str,
          depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise _refuse(f"{where}: nested deeper than {_MAX_DEPTH} messages")
    counts: dict[int, int] = {}
    oneofs: dict[str, str] = {}
    for number, wire, s, e in _fields(buf, start, end, where):
        fd = _field(descriptor, number, wire, where)
        path = f"{where}.{fd.name}"
        if fd.is_repeated:
            cap = caps(descriptor.name, fd.name)
            entries = 1
            packed = _WIRE_TYPE[fd.type]
            if wire == _LENGTH and packed != _LENGTH and cap is not None:
                if packed != _VARINT:  # packed fixed-width scalars
                    entries = (e - s) // (8 if packed == _FIXED64 else 4)
                elif e - s > 10 * cap:  # a varint is 1..10 bytes: more than cap of them
                    entries = cap + 1
                else:                   # count the varints' last bytes
                    entries = sum(1 for i in range(s, e) if not buf[i] & 0x80)
            counts[number] = counts.get(number, 0) + entries
            if cap is not None and counts[number] > cap:
                raise _refuse(f"{path}: more than {cap} entries; at most {cap} accepted "
                              "for this federation")
        else:
            if number in counts:
                raise _refuse(f"{path}: appears twice (a singular field)")
            counts[number] = 1
            group = fd.containing_oneof
            if group is not None:
                if group.name in oneofs:
                    raise _refuse(f"{where}: two members of oneof {group.name!r} "
                                  f"({oneofs[group.name]} and {fd.name})")
                oneofs[group.name] = fd.name
        if fd.type == _T.TYPE_MESSAGE:
            index = f"[{counts[number] - 1}]" if fd.is_repeated else ""
            _scan(buf, s, e, fd.message_type, caps, f"{path}{index}", depth + 1)
