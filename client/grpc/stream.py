"""One ``FedMuscle.Stream`` stream of a deployed client (DESIGN §6): the queue feeding its
request side, its responses, and the federation run id exchanged when it opens.

A client resuming a run sends its recorded run id with the call's metadata; the server
sends its own in its initial metadata once it accepted the client. Transport only: what
the ids mean for the run directory is :mod:`fedmuscle_secure.client.own_run`'s.
"""

from __future__ import annotations

import itertools
import queue
import time

import grpc

from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.experiment.rundir import RunDir
from fedmuscle_secure.transport.streams import (
    RUN_ID_METADATA,
    RUN_ID_MISMATCH,
    TransportOptions,
    outbound,
)
from fedmuscle_secure.transport.wire_pb import fedmuscle_pb2_grpc as rpc

_CLOSE = object()


class Stream:
    """An open ``Stream`` call on ``channel`` (closed with it by :meth:`close`)."""

    def __init__(self, channel: grpc.Channel, name: str, options: TransportOptions,
                 recorded: str | None) -> None:
        self.channel, self.options, self.sending = channel, options, queue.Queue()
        self.opened = time.monotonic()
        counter = itertools.count()

        def requests():
            while (msg := self.sending.get()) is not _CLOSE:
                yield from outbound(msg, name, counter, options)

        metadata = ((RUN_ID_METADATA, recorded),) if recorded is not None else None
        self.responses = rpc.FedMuscleStub(channel).Stream(requests(), metadata=metadata)

    def run_id(self, run: RunDir, target: str) -> str | None:
        """The federation run id the server sent with its initial metadata, or None (the
        stream ended first without an error, or the server sends none). A server of another
        run than ``run``'s (it checked the id this client sent) raises :class:`ConfigError`
        naming ``--out``; any other failure the stream's ``grpc.RpcError``."""
        try:
            metadata = dict(self.responses.initial_metadata() or ())
            if run_id := metadata.get(RUN_ID_METADATA):
                return str(run_id)
            for _ in self.responses:  # no metadata: the stream ended (refused) or an old server
                break
        except grpc.RpcError as exc:
            detail = (exc.details() if hasattr(exc, "details") else "") or ""
            code = exc.code() if hasattr(exc, "code") else None
            if code is grpc.StatusCode.FAILED_PRECONDITION and RUN_ID_MISMATCH in detail:
                raise ConfigError("--out", f"{run.root}: the server at {target} refused it, "
                                           f"{detail}; a client only resumes its own run: "
                                           "choose a new, empty --out for this one") from None
            raise
        return None

    def send(self, msg) -> None:
        self.sending.put(msg)

    def half_close(self) -> None:
        """No more messages from this client (the server still closes the stream)."""
        self.sending.put(_CLOSE)

    def close(self) -> None:
        self.sending.put(_CLOSE)
        # gRPC's connectivity poller (behind channel_ready_future, 0.2 s polls) raises in its
        # own thread when the channel closes before it took in the last connect request: a
        # stream refused at once (another run's --out) waits for it to finish first.
        time.sleep(max(0.0, self.opened + 0.5 - time.monotonic()))
        self.channel.close()
