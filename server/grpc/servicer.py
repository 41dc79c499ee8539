"""The gRPC servicer of the federation server (DESIGN §6): it authenticates each stream's
peer and moves chunks; :class:`~fedmuscle_secure.server.coordinator.Coordinator` decides.

Per client stream:

* the peer certificate (``auth_context()["x509_pem_cert"]``) is mapped to a client id by
  :meth:`Trust.verify_peer`; unknown, revoked, expired or foreign-CA certificates are
  refused (``PERMISSION_DENIED``, reason logged), a second stream of a connected client too,
  and so is an organisation barred from the run (excluded, absent at the start, revoked).
  The CRL is re-read when ``crl.pem`` changes, checked on every new connection and at every
  stage boundary (:class:`~fedmuscle_secure.transport.trust_reload.LiveTrust`): a member revoked
  mid-run has its stream ended with ``PERMISSION_DENIED`` and is dropped as a ``Leave``;
  a certificate of another CA, or an expired one, already fails gRPC's TLS handshake and
  never reaches the servicer: the ``server`` command logs those with the peer and the
  reason (:mod:`fedmuscle_secure.transport.grpc_core_log`);
* a reader thread reassembles chunks, decodes (client → server messages only, under the
  federation's :class:`~fedmuscle_secure.transport.limits.WireLimits`) and
  :meth:`Coordinator.submit` s the message
  (``server.handle``; replies are routed to their recipients' outboxes). A
  :class:`ProtocolError` aborts that stream with the reason (``INVALID_ARGUMENT``) and the
  client is dropped as if it had sent a ``Leave``; the others go on;
* the response generator yields the chunks of every message put in the outbox.

Limits and keep-alive: :class:`~fedmuscle_secure.transport.streams.TransportOptions`.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from fedmuscle_secure.console.progress import OPERATOR
from fedmuscle_secure.errors import ConfigError, IdentityError, ProtocolError
from fedmuscle_secure.server.coordinator import CLOSE, Abort, Coordinator
from fedmuscle_secure.transport.chunks import Chunk
from fedmuscle_secure.transport.limits import WireLimits
from fedmuscle_secure.transport.streams import (
    RUN_ID_METADATA,
    RUN_ID_MISMATCH,
    Direction,
    Inbound,
    TransportOptions,
    outbound,
)
from fedmuscle_secure.transport.tls_trust import Trust, load_cert
from fedmuscle_secure.transport.trust_reload import LiveTrust
from fedmuscle_secure.transport.wire_pb import fedmuscle_pb2_grpc as rpc

__all__ = ["FedMuscleServicer", "start_grpc_server", "stream_failure"]
log = logging.getLogger("fedmuscle_secure.server")


class FedMuscleServicer(rpc.FedMuscleServicer):
    """``Stream``: authenticate the peer, then pump chunks both ways (module docs)."""

    def __init__(self, coordinator: Coordinator, trust: Trust | LiveTrust,
                 options: TransportOptions, limits: WireLimits, run_id: str | None = None) -> None:
        self.coordinator, self.trust, self.options = coordinator, trust, options
        self.limits, self.run_id = limits, run_id

    def _identify(self, context: grpc.ServicerContext) -> tuple[str, Any]:
        """The peer's client id and certificate, or abort its stream (module docs)."""
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            log.warning("refused %s: no client certificate", context.peer())
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        try:
            client = self.trust.verify_peer(pems[0])
        except IdentityError as exc:
            log.warning("refused %s: %s", context.peer(), exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        if client not in self.coordinator.server.clients:
            reason = f"client id {client!r} is not in this federation's config"
            log.warning("refused %s: %s", context.peer(), reason)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        return client, load_cert(pems[0], "peer certificate")

    def Stream(self, request_iterator: Iterator[Chunk],
                 context: grpc.ServicerContext) -> Iterator[Chunk]:
        client, cert = self._identify(context)
        self._check_run_id(client, context)
        try:
            box = self.coordinator.connect(client, cert)
        except IdentityError as exc:
            log.warning("refused %s: %s", context.peer(), exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        log.info("client %s connected from %s", client, context.peer(), extra=OPERATOR)
        if self.run_id is not None:  # before any message: the client checks it first
            context.send_initial_metadata(((RUN_ID_METADATA, self.run_id),))
        threading.Thread(target=self._read, args=(client, request_iterator), daemon=True,
                         name=f"reader-{client}").start()
        counter = itertools.count()
        while True:
            item = box.get()
            if item is CLOSE:
                return
            if isinstance(item, Abort):
                context.abort(item.code, item.reason)
            yield from outbound(item, "server", counter, self.options)

    def _check_run_id(self, client: str, context: grpc.ServicerContext) -> None:
        """A client resuming another federation run is turned away before it counts as
        connected (``RUN_ID_MISMATCH``); a new client sends no run id."""
        theirs = dict(context.invocation_metadata() or ()).get(RUN_ID_METADATA)
        if self.run_id is None or theirs is None or theirs == self.run_id:
            return
        reason = (f"{RUN_ID_MISMATCH}: the run directory of {client!r} belongs to federation "
                  f"run {theirs}; this server runs {self.run_id}")
        log.warning("refused %s: %s", context.peer(), reason)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, reason)

    def _read(self, client: str, requests: Iterator[Chunk]) -> None:
        inbound = Inbound(self.options, self.limits, expect=Direction.TO_SERVER, sender=client)
        reason, abort = "stream closed by the client", None
        try:
            for piece in requests:
                msg = inbound.add(piece)
                if msg is not None:
                    self.coordinator.submit(client, msg)
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            log.warning("aborting the stream of %s: %s", client, exc)
            abort = Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except grpc.RpcError as exc:
            reason = stream_failure(exc)
        except Exception as exc:  # one client's failure must not stop the rest
            reason = f"{type(exc).__name__}: {exc}"
            log.exception("stream of %s failed", client)
            abort = Abort(grpc.StatusCode.INTERNAL, reason)
        finally:
            self.coordinator.disconnect(client, reason, abort)


def stream_failure(exc: grpc.RpcError) -> str:
    """Why a client's stream failed (a departure's reason): the status code and details when
    gRPC has them; the request iterator raises a bare ``RpcError`` when the RPC was
    cancelled, i.e. the client process ended or its connection broke."""
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    if code is None:
        return "stream closed by the client (cancelled, or its connection was lost)"
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    return f"stream failed ({code.name}): {details or 'no details'}"


def start_grpc_server(coordinator: Coordinator, trust: Trust | LiveTrust, certs: Path,
                      listen: str, options: TransportOptions, limits: WireLimits, *,
                      run_id: str | None = None) -> tuple[grpc.Server, int]:
    """Listen on ``listen`` with mutual TLS (client certificates required); returns the port.
    ``run_id``: the federation run id sent to every accepted client (initial metadata)."""
    key = (certs / "server" / "server.key").read_bytes()
    cert = (certs / "server" / "server.crt").read_bytes()
    creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=trust.ca_pem,
                                        require_client_auth=True)
    # no SO_REUSEPORT: a second server on the same port must fail, not share its clients
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=len(coordinator.server.clients) + 4),
                         options=[*options.channel_options(server=True), ("grpc.so_reuseport", 0)])
    rpc.add_FedMuscleServicer_to_server(
        FedMuscleServicer(coordinator, trust, options, limits, run_id), server)
    try:
        port = server.add_secure_port(listen, creds)
    except RuntimeError:  # gRPC's "Failed to bind"; the reason is in its log line
        port = 0
    if port == 0:
        raise ConfigError("--listen", f"cannot listen on {listen!r} (in use, or not an address "
                                      "of this machine)")
    server.start()
    return server, port
