"""What the gRPC server and client share (DESIGN §6): limits, keep-alive, chunked messages.

Both ends move protocol messages as ``Envelope`` bytes (:mod:`fedmuscle_secure.transport.codec`) cut
into ``Chunk`` messages (:mod:`fedmuscle_secure.transport.chunks`) over the one bidirectional
``FedMuscle.Stream`` stream. Nothing here knows the protocol: it encodes, chunks,
reassembles and decodes. An :class:`Inbound` decodes one direction only (the server's
accepts client → server messages, a client's server → client ones, from the peer it
names) under the federation's :class:`~fedmuscle_secure.transport.limits.WireLimits`.

Settings (:class:`TransportOptions`, every one has a command-line flag):

``max_message_bytes`` (default 8 MiB)
    gRPC's ``grpc.max_send_message_length`` / ``grpc.max_receive_message_length``: the
    largest single ``Chunk`` either end accepts. Must exceed ``max_chunk_bytes`` plus the
    chunk's own fields (a few hundred bytes).
``max_chunk_bytes`` (default 1 MiB)
    data bytes per ``Chunk`` when sending.
``max_payload_bytes`` (default: derived from the config)
    the largest reassembled ``Envelope`` accepted; checked chunk by chunk before buffering.
    ``None`` takes the federation's own bound, :attr:`WireLimits.max_payload_bytes
    <fedmuscle_secure.transport.limits.WireLimits>` (1.5 × its largest legitimate message + 1 MiB,
    :mod:`fedmuscle_secure.transport.limits`); a number overrides it.
``keepalive_time_ms`` / ``keepalive_timeout_ms`` (defaults 30 000 / 20 000)
    HTTP/2 keep-alive pings (``grpc.keepalive_time_ms`` / ``grpc.keepalive_timeout_ms``),
    so a peer that vanished without closing its TCP connection is noticed during long
    local updates; ``grpc.keepalive_permit_without_calls`` is on and the server accepts
    pings as often as every ``keepalive_time_ms``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from fedmuscle_secure.messages import Message
from fedmuscle_secure.transport.chunks import Chunk, Reassembler, chunk
from fedmuscle_secure.transport.codec import Direction, decode, encode
from fedmuscle_secure.transport.limits import WireLimits

#: gRPC initial-metadata key of the federation run id the server sends on every accepted
#: ``Stream`` call, before any message: connection-level information, so it travels
#: in the (TLS-protected) HTTP/2 headers and the wire message table stays as it is. A
#: client compares it with the run id its run directory recorded at first contact.
RUN_ID_METADATA = "fedmuscle-run-id"
#: A client resuming a run sends its recorded run id under the same key; a server of another
#: run ends that stream at once (``FAILED_PRECONDITION``, details starting with this), before
#: counting the client as connected: a client started on the wrong ``--out`` must not start
#: the round the federation was waiting for and then leave it.
RUN_ID_MISMATCH = "federation run id mismatch"

__all__ = ["Direction", "Inbound", "TransportOptions", "outbound"]


@dataclass(frozen=True)
class TransportOptions:
    """Message size limits and keep-alive of one gRPC end (module docs)."""

    max_message_bytes: int = 8 << 20
    max_chunk_bytes: int = 1 << 20
    max_payload_bytes: int | None = None
    keepalive_time_ms: int = 30_000
    keepalive_timeout_ms: int = 20_000

    def __post_init__(self) -> None:
        if self.max_chunk_bytes < 1 or self.max_message_bytes < self.max_chunk_bytes + 1024:
            raise ValueError(f"max_message_bytes ({self.max_message_bytes}) must exceed "
                             f"max_chunk_bytes ({self.max_chunk_bytes}) by at least 1024")
        if self.max_payload_bytes is not None and self.max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes must be positive, got {self.max_payload_bytes}")

    def payload_limit(self, limits: WireLimits) -> int:
        """``max_payload_bytes``, or the federation's derived bound when it is None."""
        return limits.max_payload_bytes if self.max_payload_bytes is None \
            else self.max_payload_bytes

    def channel_options(self, *, server: bool) -> list[tuple[str, int]]:
        """The ``options`` of ``grpc.server`` / ``grpc.secure_channel``."""
        opts = [("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.keepalive_time_ms", self.keepalive_time_ms),
                ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
                ("grpc.keepalive_permit_without_calls", 1)]
        if server:
            opts += [("grpc.http2.min_ping_interval_without_data_ms", self.keepalive_time_ms),
                     ("grpc.http2.max_pings_without_data", 0)]
        return opts


def outbound(msg: Message, sender: str, counter: itertools.count, options: TransportOptions,
             ) -> Iterator[Chunk]:
    """The chunks of one message, on a stream id unique within the connection."""
    yield from chunk(encode(msg), stream_id=f"{sender}-{next(counter)}",
                     max_chunk_bytes=options.max_chunk_bytes)


class Inbound:
    """Received chunks → protocol messages of direction ``expect`` from ``sender``; raises
    ProtocolError on anything malformed, oversize, over a cap or of the other direction."""

    def __init__(self, options: TransportOptions, limits: WireLimits, *, expect: Direction,
                 sender: str) -> None:
        self._reassembler = Reassembler(options.payload_limit(limits))
        self._limits, self._expect, self._sender = limits, expect, sender

    def add(self, piece: Chunk) -> Message | None:
        payload = self._reassembler.add(piece)
        if payload is None:
            return None
        return decode(payload, expect=self._expect, sender=self._sender, limits=self._limits)
