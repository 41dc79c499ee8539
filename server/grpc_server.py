"""The gRPC + mutual-TLS server (DESIGN §6): the same :class:`FedMuscleServer` as the simulator.

One :class:`~fedmuscle_secure.server.coordinator.Coordinator` owns the server state machine,
a lock, one outbox per connected client and the stage deadlines (``--stage-timeout``); the
transport only moves messages (DESIGN §13.1). Per client stream:

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

A client may reconnect until the first round this server process runs starts; after that
a closed stream is final. The run starts when every organisation still in it is connected,
or, after ``--connect-timeout``, with the quorum of ``deployment.min_clients`` (the absent
ones are dropped and barred); below the quorum the server gives up and ends every stream
with ``FAILED_PRECONDITION`` naming the missing organisations, so the clients exit at once.
``--resume --exclude ORG`` continues without an organisation
(:mod:`~fedmuscle_secure.server.membership`).
A server killed and restarted with ``--resume`` goes on from its last checkpoint
(:func:`serve`); the clients reconnect and rewind (``client.grpc_client``).

A stream that closes mid-run is a ``Leave`` (secagg recovers by its dropout path). After the
last round every connected client gets a :class:`~fedmuscle_secure.messages.Finish` and
answers with its closing ``RoundReport`` (round R + 1), written as the ``final`` rows. The
run directory gets ``config.resolved.yaml``, ``events.jsonl``, ``metrics.csv`` (rows as in
``run``, with what the clients' report policy kept at home marked ``not reported``),
``summary.md`` and a server checkpoint per round (server state and rows).
Limits and keep-alive: :class:`~fedmuscle_secure.transport.streams.TransportOptions`.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from fedmuscle_secure.client.report_policy import as_received
from fedmuscle_secure.server.coordinator import CLOSE, Abort, Coordinator, TransportError
from fedmuscle_secure.server.membership import (
    EXCLUDED,
    barred_on_resume,
    final_row_metrics,
    resolve_exclusions,
)

from fedmuscle_secure.config import (
    ExperimentConfig,
    ckks_parameters,
    dump_config,
    validate_deployable,
)
from fedmuscle_secure.config_deployment import quorum
from fedmuscle_secure.console.progress import OPERATOR
from fedmuscle_secure.data import get_task
from fedmuscle_secure.errors import ConfigError, IdentityError, ProtocolError, QuorumLost
from fedmuscle_secure.experiment.rundir import FINAL, RunDir, config_differences, differs_message
from fedmuscle_secure.transport.chunks import Chunk
from fedmuscle_secure.transport.limits import WireLimits, wire_limits
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

__all__ = ["Coordinator", "FedMuscleServicer", "ServeSettings", "TransportError", "serve",
           "start_grpc_server"]
log = logging.getLogger("fedmuscle_secure.server")


class FedMuscleServicer(rpc.FedMuscleServicer):
    """``Exchange``: authenticate the peer, then pump chunks both ways (module docs)."""

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

    def Exchange(self, request_iterator: Iterator[Chunk],
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
        threading.Thread(target=self.read_file, args=(client, request_iterator), daemon=True,
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

    def read_file(self, client: str, requests: Iterator[Chunk]) -> None:
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
            reason = _stream_failure(exc)
        except Exception as exc:  # one client's failure must not stop the rest
            reason = f"{type(exc).__name__}: {exc}"
            log.exception("stream of %s failed", client)
            abort = Abort(grpc.StatusCode.INTERNAL, reason)
        finally:
            self.coordinator.disconnect(client, reason, abort)


def _stream_failure(exc: grpc.RpcError) -> str:
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
    from concurrent import futures

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


@dataclass(frozen=True)
class ServeSettings:
    """Timeouts of the run loop, in seconds. ``stage_timeout_s``: how long a stage may wait
    for its silent members after the first one answered (None: no stage deadlines;
    :mod:`fedmuscle_secure.server.coordinator`)."""

    connect_timeout_s: float = 300.0
    round_timeout_s: float = 3600.0
    stage_timeout_s: float | None = 120.0


def _open_run(cfg: ExperimentConfig, out: str | Path, resume: bool) -> tuple[RunDir, str, str]:
    """The server's run directory: new (``out`` empty), or the one to resume (same config),
    and the federation run id (:func:`new_run_id`; kept by a resume)."""
    run, resolved = RunDir(out), dump_config(cfg)
    if resume:
        if not run.config.is_file():
            raise ConfigError("--out", f"{run.root}: nothing to resume (no config.resolved.yaml)")
        if keys := config_differences(run.config.read_text(), resolved):
            raise ConfigError("--config", differs_message(run.config, keys))
    elif run.root.exists() and any(run.root.iterdir()):
        raise ConfigError("--out", f"{run.root} already holds a run; pass --resume to continue "
                                   "it after a restart, or choose another --out")
    run.create()
    run.config.write_text(resolved)
    run_id = run.read_run_id() if resume else None
    if run_id is None:  # a new run (or one whose directory predates run ids)
        run_id = new_run_id()
        run.write_run_id(run_id)
    return run, resolved, run_id


def new_run_id() -> str:
    """A fresh federation run id: 128 random bits from the OS CSPRNG. The clients record it
    at first contact and refuse to write into a run directory of another run."""
    return secrets.token_hex(16)


def serve(cfg: ExperimentConfig, certs: str | Path, listen: str, out: str | Path, *,
          options: TransportOptions | None = None, settings: ServeSettings | None = None,
          resume: bool = False, exclude: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run the federation of ``cfg`` for its main method over gRPC; returns the metric rows.

    Rows are ``run``'s, except ``wall_time_s`` (the server sees the round's wall time, not
    each client's compute time) and the metrics a client's report policy kept at home
    (``not reported``; each organisation's own run directory has them). No ``local``
    reference is run (``compare_local`` is ignored): it would train a second model on the
    organisations' private shards outside every ledger.
    The server writes its receipt log (``receipts.jsonl``) as the simulator does, and a
    checkpoint after every round; ``resume`` restarts from the last one (the server
    process was killed): the clients, which retry their connection, rewind to the same
    round from their own checkpoints and the interrupted round is run again. ``exclude``
    (with ``resume``) names organisations the resumed run goes on without; if the members
    left would be fewer than the protection needs it raises :class:`QuorumLost` before
    listening.
    """
    from fedmuscle_secure.experiment.run import config_digest, make_split, methods_of
    from fedmuscle_secure.experiment.summary import write_summary
    from fedmuscle_secure.simulator import build_server, federation_setup, open_receipts

    validate_deployable(cfg)
    if exclude and not resume:
        raise ConfigError("--exclude", "only with --resume: a new run takes every configured "
                                       "client; leave the organisation out of the config")
    options, settings = options or TransportOptions(), settings or ServeSettings()
    certs, method, rounds = Path(certs), methods_of(cfg)[0], cfg.training.rounds
    trust = LiveTrust(certs)
    contexts = None
    if cfg.protection == "ckks" and method != "local":
        from fedmuscle_secure.provision.keys import server_ckks

        contexts = server_ckks(cfg, certs)
    run, resolved, run_id = _open_run(cfg, out, resume)
    trust.on_event = run.event
    ck = run.latest_checkpoint(method) if resume else None
    if ck is not None and ck[1].get("finished"):
        log.info("%s: the run already finished", run.root)
        return list(ck[1]["rows"])
    excluded = resolve_exclusions(  # before any work: a refused exclusion runs nothing
        cfg, ck[1]["server"]["active"] if ck is not None else [c.name for c in cfg.clients],
        exclude, trust.trust.clients)
    split = make_split(cfg)
    setup = federation_setup(cfg, split, method, ckks_contexts=contexts,
                             identities=_server_identities(cfg, certs, method))
    server = build_server(cfg, method, setup)
    rows: list[dict[str, Any]] = []
    start = 1
    if ck is not None:
        server.load_state_dict(ck[1]["server"])
        rows, start = list(ck[1]["rows"]), int(ck[0]) + 1
    for client in excluded:
        if client in server.active:
            server.remove(client, EXCLUDED)
    receipts = open_receipts(run.root)
    coordinator = Coordinator(server, final_round=rounds + 1, receipts=receipts,
                              stage_timeout_s=settings.stage_timeout_s,
                              revocations=trust.revoked, on_event=run.event)
    for client, why in barred_on_resume(server.departures, excluded).items():
        coordinator.bar(client, why)
    limits = wire_limits(cfg, ckks_parameters(cfg) if cfg.protection == "ckks" else None)
    try:
        grpc_server, port = start_grpc_server(coordinator, trust, certs, listen, options, limits,
                                              run_id=run_id)
    except BaseException:
        receipts.close()
        raise
    run.event("run_resume" if resume else "run_start", run_id=run_id, transport="grpc", listen=listen,
              port=port, seed=cfg.seed, config_sha256=config_digest(resolved), method=method,
              from_round=start - 1, max_payload_bytes=options.payload_limit(limits),
              stage_timeout_s=settings.stage_timeout_s,
              min_clients=quorum(cfg, len(server.active)),
              **({"excluded": excluded} if resume else {}))
    from fedmuscle_secure.console.deploy import ServerProgress

    watch = ServerProgress(cfg, method, coordinator, start=start, log=log)
    watch.listening(listen, port, start, list(server.active))
    try:
        return _rounds(cfg, run, coordinator, settings, method, rows, start,
                       {c.name: (c, get_task(c.task, split.num_classes)) for c in cfg.clients},
                       write_summary, watch=watch)
    except (QuorumLost, TransportError) as exc:  # tell the clients why, so they stop
        run.event("run_stopped", reason=str(exc))
        coordinator.abort_all(f"the server stopped the run: {exc}")
        raise
    finally:
        watch.close()
        coordinator.close_all()
        grpc_server.stop(grace=5).wait()
        receipts.close()


def _rounds(cfg: ExperimentConfig, run: RunDir, coordinator: Coordinator, settings: ServeSettings,
            method: str, rows: list[dict[str, Any]], start: int, tasks: dict,
            write_summary, watch=None) -> list[dict[str, Any]]:
    """Rounds ``start``..R, then Finish and the clients' closing reports."""
    rounds = cfg.training.rounds

    def row(r: int | str, name: str, metrics: dict[str, float]) -> dict[str, Any]:
        spec, task = tasks[name]
        return {"method": method, "round": r, "client": name, "model": spec.model,
                "task": spec.task, "metric": task.metric, **metrics}

    s = coordinator.server
    absent = coordinator.wait_for_members(quorum(cfg, len(s.active)), settings.connect_timeout_s)
    if absent:
        run.event("clients_absent", clients=absent, round=s.round + 1,
                  connect_timeout_s=settings.connect_timeout_s)
    for r in range(start, rounds + 1):
        t0 = time.perf_counter()
        coordinator.start_round(r)
        coordinator.wait(lambda r=r: s.round >= r, settings.round_timeout_s, f"round {r}")
        wall = time.perf_counter() - t0
        with coordinator.cond:
            per_client = {c: {**as_received(s.reports[c]), **coordinator.traffic[c],
                              "wall_time_s": wall} for c in s.active}
        rows += [row(r, c, m) for c, m in per_client.items()]
        run.event("round_end", method=method, round=r, seconds=wall,
                  selection=s.last_selection, metrics=per_client)
        if watch is not None:
            watch.round_end(r, wall, per_client, [d["client"] for d in s.departures
                                                  if d["round"] == r])
        for d in s.deadlines:
            if d["round"] == r:
                run.event("stage_deadline", method=method, **d)
        for d in s.departures:
            if d["round"] == r:
                run.event("client_left", method=method, **d)
        for e in s.sat_out:
            if e["round"] == r:
                run.event("exchange_sat_out", method=method, **e)
        if s.settings.secure is not None:
            for e in s.settings.secure.events:
                if e["round"] == r:
                    run.event(e["event"], method=method,
                              **{k: v for k, v in e.items() if k != "event"})
        run.save_checkpoint(method, r, {"server": s.state_dict(), "rows": rows,
                                        "finished": False}, keep=cfg.checkpoint.keep)
        run.write_metrics(rows)
    waiting = coordinator.finish()
    coordinator.wait(lambda: all(c in coordinator.finals or c in coordinator.gone
                                 for c in waiting),
                     settings.round_timeout_s, "the clients' final reports")
    departed = {d["client"]: d for d in s.departures}
    with coordinator.cond:  # every configured client, in config order, as `run`
        rows += [row("final", c, final_row_metrics(
            c, rows, departed.get(c),
            {**coordinator.finals[c], **coordinator.traffic[c]} if c in coordinator.finals
            else None, coordinator.gone.get(c), rounds + 1)) for c in s.clients]
    run.save_checkpoint(method, FINAL, {"server": s.state_dict(), "rows": rows,
                                        "finished": True}, keep=cfg.checkpoint.keep)
    run.write_metrics(rows)
    write_summary(run.summary, cfg, rows, transport="grpc")
    run.event("run_end", final={c: m.get("test_metric") for c, m in coordinator.finals.items()})
    if watch is not None:
        watch.finished(coordinator.finals, run.root)
    return rows


def _server_identities(cfg: ExperimentConfig, certs: Path, method: str) -> dict | None:
    """Under secagg: every organisation's Ed25519 public identity, from ``certs/identities``."""
    if not (cfg.protection == "secagg" and method == "muscle_sum"):
        return None
    from fedmuscle_secure.crypto.identity import load_public

    folder = certs / "identities"
    return {c.name: load_public(folder / f"{c.name}.pub") for c in cfg.clients}
