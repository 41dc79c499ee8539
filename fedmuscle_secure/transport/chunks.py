"""Large payloads as a stream of ``Chunk`` messages, and their checked reassembly (DESIGN §6).

A serialized ``Envelope`` can exceed gRPC's per-message limit (4 MiB by default; CKKS
ciphertexts alone are hundreds of KiB each), so the transport sends it as the chunks
:func:`chunk` cuts, over the ``FedMuscle.Stream`` stream, and the receiver feeds them to
a :class:`Reassembler`. Both are pure functions of their inputs: no gRPC, no I/O.

The reassembler holds one stream at a time (chunks of one payload are sent back to back on
an ordered gRPC stream), so its memory is bounded by ``max_total_bytes``. It refuses, with
a :class:`~fedmuscle_secure.errors.ProtocolError` naming the stream, anything but chunks
0, 1, ..., total-1 of one stream with a constant ``total`` and digest: a chunk out of order,
a duplicate, an index not below ``total``, ``total`` or the digest changing mid-stream,
another stream starting before this one is complete (a truncated stream), a running size
above ``max_total_bytes`` (checked before the chunk is buffered) and a reassembled payload
whose SHA-256 is not the announced one (truncated or corrupted). After a refusal the
partial stream is dropped; the transport is expected to close the connection.
"""

from __future__ import annotations

import hashlib

from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.transport.wire_pb.fedmuscle_pb2 import Chunk

__all__ = ["DEFAULT_MAX_CHUNK_BYTES", "Chunk", "Reassembler", "chunk"]

#: 1 MiB: well below gRPC's default 4 MiB message limit, with room for the chunk's fields.
DEFAULT_MAX_CHUNK_BYTES = 1 << 20
_DIGEST_BYTES = 32
_MAX_CHUNKS = 2**32 - 1  # ``total`` is a uint32


def chunk(payload: bytes, *, stream_id: str, max_chunk_bytes: int) -> list[Chunk]:
    """Cut ``payload`` into chunks of at most ``max_chunk_bytes`` data bytes, in order.

    Every chunk names the stream and repeats ``total`` and the SHA-256 of the whole payload;
    an empty payload is one empty chunk.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"chunk: payload must be bytes, got {type(payload).__name__}")
    if not isinstance(stream_id, str) or not stream_id:
        raise ValueError("chunk: stream_id must be a non-empty string")
    if isinstance(max_chunk_bytes, bool) or not isinstance(max_chunk_bytes, int) \
            or max_chunk_bytes < 1:
        raise ValueError(f"chunk: max_chunk_bytes must be a positive int, got {max_chunk_bytes!r}")
    payload = bytes(payload)
    total = max(1, -(-len(payload) // max_chunk_bytes))
    if total > _MAX_CHUNKS:
        raise ValueError(f"chunk: {total} chunks exceed the uint32 index; raise max_chunk_bytes")
    digest = hashlib.sha256(payload).digest()
    return [Chunk(stream_id=stream_id, index=i, total=total, sha256_of_whole=digest,
                  data=payload[i * max_chunk_bytes:(i + 1) * max_chunk_bytes])
            for i in range(total)]


class Reassembler:
    """Collects the chunks of one stream after another; :meth:`add` returns each payload."""

    def __init__(self, max_total_bytes: int) -> None:
        if isinstance(max_total_bytes, bool) or not isinstance(max_total_bytes, int) \
                or max_total_bytes < 0:
            raise ValueError("Reassembler: max_total_bytes must be a non-negative int, got "
                             f"{max_total_bytes!r}")
        self.max_total_bytes = max_total_bytes
        self._reset()

    def _reset(self) -> None:
        self._stream: str | None = None
        self._total = 0
        self._digest = b""
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def in_progress(self) -> str | None:
        """The stream being reassembled, or None between payloads."""
        return self._stream

    def _refuse(self, stream: str, reason: str) -> ProtocolError:
        self._reset()
        return ProtocolError("wire", "reassemble", f"stream {stream!r}: {reason}")

    def add(self, piece: Chunk) -> bytes | None:
        """Buffer ``piece``; the whole payload once its last chunk arrived, else None."""
        if not isinstance(piece, Chunk):
            raise TypeError(f"Reassembler.add: expected a Chunk, got {type(piece).__name__}")
        sid, index, total = piece.stream_id, piece.index, piece.total
        if not sid:
            raise self._refuse(sid, "chunk without a stream id")
        if self._stream is not None and sid != self._stream:
            current, got = self._stream, len(self._parts)
            raise self._refuse(current, f"truncated: {got} of {self._total} chunks arrived "
                                        f"before stream {sid!r} started")
        if self._stream is None:
            if total < 1:
                raise self._refuse(sid, f"total {total}: a stream has at least one chunk")
            if len(piece.sha256_of_whole) != _DIGEST_BYTES:
                raise self._refuse(sid, f"sha256_of_whole is {len(piece.sha256_of_whole)} "
                                        f"bytes, expected {_DIGEST_BYTES}")
        elif total != self._total:
            raise self._refuse(sid, f"total changed mid-stream from {self._total} to {total}")
        elif piece.sha256_of_whole != self._digest:
            raise self._refuse(sid, "sha256_of_whole changed mid-stream")
        if index >= total:
            raise self._refuse(sid, f"index {index} >= total {total}")
        expected = len(self._parts)
        if index < expected:
            raise self._refuse(sid, f"duplicate chunk {index} (expected chunk {expected})")
        if index > expected:
            raise self._refuse(sid, f"out-of-order chunk {index} (expected chunk {expected})")
        if not piece.data and total > 1:
            raise self._refuse(sid, f"empty chunk {index} in a stream of {total}")
        size = self._size + len(piece.data)
        if size > self.max_total_bytes:
            raise self._refuse(sid, f"oversize: {size} bytes so far, at most "
                                    f"{self.max_total_bytes} accepted")
        if self._stream is None:
            self._stream, self._total, self._digest = sid, total, piece.sha256_of_whole
        self._parts.append(piece.data)
        self._size = size
        if len(self._parts) < total:
            return None
        payload, digest = b"".join(self._parts), self._digest
        if hashlib.sha256(payload).digest() != digest:
            raise self._refuse(sid, "SHA-256 of the reassembled payload does not match "
                                    "sha256_of_whole (truncated or corrupted)")
        self._reset()
        return payload
