"""The gRPC + mutual-TLS client of one organisation (DESIGN §6).

It builds exactly the :class:`FedMuscleClient` the simulator builds for that organisation
(same split, seeds and model initialisation: :func:`~fedmuscle_secure.federation.clients.build_client`),
connects with its provisioned key and certificate, opens ``FedMuscle.Stream`` and loops:
reassemble → decode → ``client.handle`` → encode → chunk → send. No protocol logic lives
here. The signed ledger is written in the client's own run directory (``ledger/``), as in
simulation, and so are the organisation's own full metrics (:class:`~fedmuscle_secure.client.grpc.records.OwnRecords`: a
``round_end`` event per report and ``metrics.csv``), of which the server gets only what the
report policy lets leave (DESIGN §4.4). Until the server answers, the connection is retried with exponential backoff
(:mod:`~fedmuscle_secure.client.grpc.channel`).

Server restarts (DESIGN §6): the client checkpoints its state after every round it
completes (``checkpoints/``). When the stream breaks because the server went away
(``UNAVAILABLE``, or closed without ``Finish``) the client reconnects with the same backoff;
a server restarted with ``--resume`` re-sends the plan of the round after its last
checkpoint, and the client first rewinds to its own checkpoint of that round (model and
optimizers; the privacy accountants are rebuilt from the ledger, so releases of the
interrupted round stay counted; a signed ``server_lost`` ledger entry marks the releases
the server may not have received, :meth:`~fedmuscle_secure.records.ledger.Ledger.mark_server_lost`).
A refusal (``PERMISSION_DENIED``: the server dropped this
client, e.g. after a protocol error or because its certificate was revoked), the server
giving up the run (``FAILED_PRECONDITION``, with its reason: too few organisations
connected, or left for the protection) or any other failure ends the run at once.
The client keeps
``checkpoint.keep`` checkpoints, and the one of the round before its last until the next plan
shows the server can no longer ask for it. ``--out`` is new or this organisation's directory
of the run the server resumes (the server's run id, checked before anything is written:
:mod:`fedmuscle_secure.client.grpc.own_run`); a restarted client resumes from its latest checkpoint.

Certificates (``--certs DIR``, the layout of ``fedmuscle-secure provision init``):
``ca/ca.crt``, ``orgs/<org>/<org>.key`` and ``.crt``; the client id is the organisation's
entry in ``clients.yaml`` (else the organisation name). The Ed25519 identity that signs the
ledger, in every mode, is this organisation's ``DIR/identities/<id>.key`` (only ``<id>.pub``
is written to the run directory's ``keys/``); under ``secagg`` every peer's
``DIR/identities/<id>.pub`` too; under ``ckks`` the federation's secret context from
``DIR/ckks/secret.ctx``
(:mod:`fedmuscle_secure.provision.keys`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fedmuscle_secure.client.grpc.channel import (
    ConnectionFailed,
    HandshakeRefused,
    RetrySettings,
    ServerLost,
    client_id_of,
    open_channel,
)
from fedmuscle_secure.client.grpc.failpoints import FAILPOINT_ENV, STALL_ENV, describe, failpoint
from fedmuscle_secure.client.grpc.own_run import (
    check_run_id,
    inspect_out,
    recorded_rows,
    resume,
    start_fresh,
)
from fedmuscle_secure.client.grpc.records import OwnRecords
from fedmuscle_secure.client.grpc.stream import Stream
from fedmuscle_secure.client.state import ClientStage
from fedmuscle_secure.config import ExperimentConfig, validate_deployable
from fedmuscle_secure.console.deploy import ClientProgress
from fedmuscle_secure.crypto.identity import load_private, load_public
from fedmuscle_secure.errors import IdentityError
from fedmuscle_secure.experiment.environment import software_environment
from fedmuscle_secure.experiment.run import methods_of
from fedmuscle_secure.experiment.rundir import RunDir
from fedmuscle_secure.federation.ckks import client_ckks
from fedmuscle_secure.federation.clients import build_client, final_model_spec
from fedmuscle_secure.federation.setup import (
    Protection,
    decide_protection,
    federation_setup,
    federation_wire_limits,
)
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import Finish, RoundPlan, RoundReport
from fedmuscle_secure.records.identity_files import save_public
from fedmuscle_secure.transport.limits import WireLimits
from fedmuscle_secure.transport.streams import (
    RUN_ID_METADATA,
    Direction,
    Inbound,
    TransportOptions,
)

__all__ = ["FAILPOINT_ENV", "STALL_ENV", "ConnectionFailed", "HandshakeRefused", "OwnRecords",
           "RetrySettings", "ServerLost", "client_id_of", "open_channel",
           "rewind_if_needed", "run_client", "run_stream"]
log = logging.getLogger("fedmuscle_secure.client")


def _identities(cfg: ExperimentConfig, certs: Path, name: str, protection: Protection):
    """Own provisioned Ed25519 private identity (it signs the ledger in every mode; only its
    public half is written, to ``out/keys``, once the run directory is this run's) and, under
    secagg, every organisation's identity (the peers' public ones) for the key
    advertisements, else None."""
    folder = certs / "identities"
    own = load_private(folder / f"{name}.key")
    if protection.mode != "secagg":
        return own, None
    return own, {c.name: own if c.name == name else load_public(folder / f"{c.name}.pub")
                 for c in cfg.clients}


def run_client(cfg: ExperimentConfig, org: str, certs: str | Path, target: str, out: str | Path,
               *, options: TransportOptions | None = None,
               retry: RetrySettings | None = None) -> dict[str, float]:
    """Take part in the federation as ``org``; returns the final metrics (after Finish).

    ``out`` is new (missing or empty), or this organisation's run directory of the run the
    server is resuming (:mod:`fedmuscle_secure.client.grpc.own_run`): nothing is written
    there before the server's run id was checked against it."""
    validate_deployable(cfg)
    options, retry = options or TransportOptions(), retry or RetrySettings()
    certs, run = Path(certs), RunDir(out)
    name = client_id_of(certs, org)
    recorded = inspect_out(run, cfg)
    method = methods_of(cfg)[0]
    split = make_split(cfg)
    protection = decide_protection(cfg, method, split)  # σ calibrated once, for all below
    contexts = (client_ckks(cfg, certs, protection.sigma_client)
                if protection.mode == "ckks" else None)
    own, identities = _identities(cfg, certs, name, protection)
    member = _Member(cfg, name, method, run, split, own, identities, contexts, protection,
                     ClientProgress(cfg, method, name, log), recorded)
    limits = federation_wire_limits(cfg)
    member.watch.connecting(target)
    try:
        while True:
            stream = Stream(open_channel(certs, org, target, options, retry,
                                         reconnecting=member.client is not None), name, options,
                            member.recorded)
            member.watch.connected(target)
            try:
                final = member.take_part(stream, target, limits)
                break
            except ServerLost as exc:
                member.lost(exc)
            finally:
                stream.close()
    finally:
        member.close()
    run.event("run_end", client=name, final=final)
    member.watch.finished(run.root)
    return final


@dataclass
class _Member:
    """This organisation in the federation: what it is built from, and across reconnects
    its client, its own records and the run id it belongs to (``recorded``)."""

    cfg: ExperimentConfig
    name: str
    method: str
    run: RunDir
    split: Any
    own: Any
    identities: dict | None
    contexts: Any
    protection: Protection
    watch: ClientProgress
    recorded: str | None
    client: Any = None
    records: OwnRecords | None = None
    reconnected: bool = False

    def take_part(self, stream: Stream, target: str, limits: WireLimits) -> dict[str, float]:
        """One stream: check the server's run id (and, at first contact, build the client),
        then exchange until Finish."""
        served = _served_run_id(stream, self.name, self.run, target)
        if self.client is None:  # first contact: check, then the first write
            check_run_id(self.run, self.recorded, served, target)
            self._build(served, resuming=self.recorded is not None)
            self.recorded = served
        elif served != self.recorded:
            raise ConnectionFailed(f"the server at {target} now runs federation run "
                                   f"{served}, not {self.recorded}: a restarted server must "
                                   "be started with --resume on its run directory")
        self.run.event("connected", client=self.name, run_id=served)
        return run_stream(self.client, stream, self.name, limits, self.run, self.method,
                        self.records, keep=self.cfg.checkpoint.keep,
                        reconnected=self.reconnected, watch=self.watch)

    def _build(self, run_id: str, *, resuming: bool) -> None:
        """The client and its records, in a run directory of run ``run_id``: a new one (its
        checkpoint of round 0 is what round 1 starts from), or this run's, resumed from its
        latest checkpoint (then the first plan may rewind it)."""
        cfg, run, method, name = self.cfg, self.run, self.method, self.name
        if not resuming:
            start_fresh(run, cfg, run_id)
        run.record_environment(software_environment())
        save_public(self.own, run.root / "keys", name)
        setup = federation_setup(cfg, self.split, method, record_dir=run.root,
                                 ckks_contexts=self.contexts, identities=self.identities,
                                 protection=self.protection)
        client = build_client(cfg, self.split, method, name, setup, record_dir=run.root,
                              identity=self.own)
        records = OwnRecords(run, cfg, method, client,
                             final_model_spec(cfg, name, setup, client), watch=self.watch)
        resumed = resume(run, method, client, run_id) if resuming else None
        if resumed is not None:
            records.rows.update(recorded_rows(run, resumed))
        else:
            run.save_checkpoint(method, 0, client.state_dict(),
                                keep=_save_keep(cfg.checkpoint.keep))
        self.client, self.records, self.reconnected = client, records, resumed is not None

    def lost(self, exc: ServerLost) -> None:
        """The server went away: record it (and mark the unacknowledged releases in the
        ledger) and reconnect."""
        log.warning("%s: %s; reconnecting", self.name, exc)
        if self.client is None:
            return
        self.reconnected = True
        self.run.event("server_lost", client=self.name, round=self.client.round, reason=str(exc))
        if self.client.privacy is not None and self.client.privacy.ledger is not None:
            self.client.privacy.ledger.mark_server_lost(self.client.round, str(exc))

    def close(self) -> None:
        self.watch.close()
        client = self.client
        if client is not None and client.privacy is not None and client.privacy.ledger is not None:
            client.privacy.ledger.close()


def _save_keep(keep: int) -> int:
    """Checkpoints a client keeps when it writes one: at least two. Having reported round r,
    it may still be asked to redo round r (the server can die before its own checkpoint of
    round r) and then needs its checkpoint of round r - 1; the next plan, sent only once the
    server's checkpoint of round r is on disk, lets it go (:func:`exchange`)."""
    return max(keep, 2)


def _served_run_id(stream: Stream, name: str, run: RunDir, target: str) -> str:
    """The server's federation run id (it accepted this client); a broken or refused stream
    raises as :func:`exchange` does."""
    try:
        served = stream.run_id(run, target)
    except grpc.RpcError as exc:
        raise _stream_failure(exc, name, finished=False) from None
    if served is None:
        raise ConnectionFailed(f"the server sent {name!r} no federation run id "
                               f"({RUN_ID_METADATA!r} metadata); is it a server of this version?")
    return served


def _stream_failure(exc: grpc.RpcError, name: str, *, finished: bool) -> Exception:
    """The error a broken stream ends the client with (``ServerLost``: reconnect)."""
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return IdentityError(f"server refused {name!r}: {detail}")
    if code is grpc.StatusCode.FAILED_PRECONDITION:  # the server gave up: say why, stop
        return ConnectionFailed(detail)
    if code is grpc.StatusCode.UNAVAILABLE and not finished:
        return ServerLost(f"stream to the server broke ({code}): {detail}")
    return ConnectionFailed(f"stream to the server failed ({code}): {detail}")


def rewind_if_needed(client, msg: RoundPlan | Finish, run: RunDir, method: str) -> None:
    """A restarted server asks for round ``msg.round``: unless this client is between rounds
    right before it, load its own checkpoint of round ``msg.round - 1``. Called only for the
    first plan after a reconnect, and only one round back at most (the server's checkpoint
    can lag the client's by the round it died in): a server that could rewind a client at
    will could replay a round's releases (the release guard sits re-run rounds out)."""
    target = msg.round - 1
    if client.stage is ClientStage.IDLE and client.round == target or client.left is not None:
        return
    # The bound is the latest round this client completed (its newest checkpoint), not the
    # round an earlier rewind left it at: else a server dropping the stream after each
    # rewind walks the client back one round at a time, as far as its checkpoints reach.
    completed = max([client.round, *(r for r in run.checkpoint_labels(method)
                                     if isinstance(r, int))])
    if target not in (completed, completed - 1):
        raise ConnectionFailed(f"the server resumes at round {msg.round} but {client.name!r} "
                               f"completed round {completed}: a restarted server goes back at "
                               "most to the round it died in; refusing to rewind further")
    state = run.checkpoint(method, target)
    if state is None:
        raise ConnectionFailed(f"the server resumes at round {msg.round} but {client.name!r} "
                               f"has no checkpoint of round {target} in {run.checkpoints}")
    log.warning("%s: rewinding from round %d (%s) to the end of round %d", client.name,
                client.round, client.stage.value, target)
    run.event("rewind", client=client.name, from_round=client.round,
              stage=client.stage.value, to_round=target)
    client.load_state_dict(state)


def run_stream(client, stream: Stream, name: str, limits: WireLimits, run: RunDir, method: str,
              records: OwnRecords, *, keep: int, reconnected: bool,
              watch=None) -> dict[str, float]:
    """One stream to the server until Finish. Only on a stream opened after the server was
    lost (or by a restarted client) may the first round plan (or Finish) rewind the client to
    its own checkpoint. A plan of round p comes only once the server's checkpoint of round
    p - 1 is on disk, so no restart can ask for an older one: those beyond ``keep`` go."""
    inbound = Inbound(stream.options, limits, expect=Direction.TO_CLIENT, sender="server")
    final = None
    try:
        for piece in stream.responses:
            msg = inbound.add(piece)
            if msg is None:
                continue
            log.debug("%s: received %s", name, describe(msg))
            failpoint(describe(msg))
            if watch is not None:
                watch.received(msg)
            if isinstance(msg, RoundPlan | Finish):
                if reconnected:
                    rewind_if_needed(client, msg, run, method)
                reconnected = False
            t0 = time.perf_counter()
            replies = client.handle(msg)
            if isinstance(msg, RoundPlan | Finish):
                # only once the client accepted it: a plan of a bogus round must not delete
                # the checkpoint that the next restart of the server may ask for
                run.prune_checkpoints(method, keep, before=msg.round - 1)
            if isinstance(msg, RoundReport | Finish) or any(isinstance(r, RoundReport)
                                                           for r in replies):
                log.info("%s: %s done in %.2f s", name, type(msg).__name__,
                         time.perf_counter() - t0)
            for rep in replies:
                if watch is not None:
                    watch.sent(rep)
                if isinstance(rep, RoundReport) and not isinstance(msg, Finish):
                    run.save_checkpoint(method, rep.round, client.state_dict(),
                                        keep=_save_keep(keep))
                    records.record(rep, final=False)
                stream.send(rep)
            if isinstance(msg, Finish):
                final = records.record(replies[0], final=True)
                stream.half_close()  # the run is over for this client
    except grpc.RpcError as exc:
        raise _stream_failure(exc, name, finished=final is not None) from None
    if final is None:
        raise ServerLost(f"the server closed the stream of {name!r} before Finish")
    return final
