"""The gRPC + mutual-TLS client of one organisation (DESIGN §6).

It builds exactly the :class:`FedMuscleClient` the simulator builds for that organisation
(same split, seeds and model initialisation: :func:`~fedmuscle_secure.simulator.build_client`),
connects with its provisioned key and certificate, opens ``FedMuscle.Exchange`` and loops:
reassemble → decode → ``client.handle`` → encode → chunk → send. No protocol logic lives
here. The signed ledger is written in the client's own run directory (``ledger/``), as in
simulation, and so are the organisation's own full metrics (:class:`OwnRecords`: a
``round_end`` event per report and ``metrics.csv``), of which the server gets only what the
report policy lets leave (DESIGN §4.4). Until the server answers, the connection is retried with exponential backoff
(:class:`RetrySettings`).

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
:mod:`fedmuscle_secure.client.own_run`); a restarted client resumes from its latest checkpoint.

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
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from fedmuscle_secure.client.grpc_stream import Stream
from fedmuscle_secure.client.own_run import (
    check_run_id,
    inspect_out,
    recorded_rows,
    resume,
    start_fresh,
)

from fedmuscle_secure.config import ExperimentConfig, ckks_parameters, validate_deployable
from fedmuscle_secure.errors import FedMuscleError, IdentityError
from fedmuscle_secure.experiment.rundir import RunDir
from fedmuscle_secure.messages import Finish, RoundPlan, RoundReport
from fedmuscle_secure.transport.limits import WireLimits, wire_limits
from fedmuscle_secure.transport.streams import (
    RUN_ID_METADATA,
    Direction,
    Inbound,
    TransportOptions,
)
from fedmuscle_secure.transport.tls_probe import Probe, Verdict

log = logging.getLogger("fedmuscle_secure.client")


class ConnectionFailed(FedMuscleError):
    """The server could not be reached, or refused or ended this client's stream."""


class HandshakeRefused(ConnectionFailed):
    """The TLS handshake cannot succeed (a certificate one side does not trust): retrying
    would not help, so the client stops at once."""


class ServerLost(ConnectionFailed):
    """The stream broke because the server went away: reconnect and resume."""


@dataclass(frozen=True)
class RetrySettings:
    """Exponential backoff while the server is not up: ``initial_s`` doubling (× ``factor``)
    up to ``max_s`` between attempts, for at most ``deadline_s`` in all."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 10.0
    deadline_s: float = 300.0


def client_id_of(certs: Path, org: str) -> str:
    """The client id the server maps ``org``'s certificate to (``clients.yaml``)."""
    path = certs / "clients.yaml"
    if path.is_file():
        raw = yaml.safe_load(path.read_text()) or {}
        return str((raw.get("clients") or {}).get(org, org))
    return org


def _identities(cfg: ExperimentConfig, certs: Path, name: str):
    """Own provisioned Ed25519 private identity (it signs the ledger in every mode; only its
    public half is written, to ``out/keys``, once the run directory is this run's) and, under
    secagg, every organisation's identity (the peers' public ones) for the key
    advertisements, else None."""
    from fedmuscle_secure.crypto.identity import load_private, load_public

    folder = certs / "identities"
    own = load_private(folder / f"{name}.key")
    if not (cfg.protection == "secagg" and cfg.muscle.method == "muscle_sum"):
        return own, None
    return own, {c.name: own if c.name == name else load_public(folder / f"{c.name}.pub")
                 for c in cfg.clients}


def open_channel(certs: Path, org: str, target: str, options: TransportOptions,
                 retry: RetrySettings, *, reconnecting: bool = False) -> grpc.Channel:
    """A mutual-TLS channel to ``target``, once it is ready (exponential backoff).

    While it is not ready, each attempt also asks :func:`~fedmuscle_secure.transport.tls_probe.probe`
    why: a server that is not up yet is retried until the deadline, but a handshake that
    cannot succeed stops at once (:class:`HandshakeRefused`): the server's certificate does
    not verify against our CA, or the server refused ours twice in a row (twice, so that a
    server going down mid-handshake is not taken for a refusal). ``reconnecting`` (the
    client already ran with this server, which is restarting): a failed handshake says
    nothing about that server, only about whoever holds its port meanwhile, so it is
    retried until the deadline like a server not up yet (a one-off impostor must not end
    the organisation's run)."""
    ca, key = certs / "ca" / "ca.crt", certs / "orgs" / org / f"{org}.key"
    crt = certs / "orgs" / org / f"{org}.crt"
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes(),
                                         private_key=key.read_bytes(),
                                         certificate_chain=crt.read_bytes())
    channel = grpc.secure_channel(target, creds, options=options.channel_options(server=False))
    t_end, wait, refusals = time.monotonic() + retry.deadline_s, retry.initial_s, 0
    while True:
        ready = grpc.channel_ready_future(channel)
        try:
            ready.result(timeout=wait)
            return channel
        except grpc.FutureTimeoutError:
            ready.cancel()  # stop its polling thread before the channel may close
            found = _diagnose(target, ca, crt, key)
            refusals = refusals + 1 if found and found.verdict is Verdict.CLIENT_REFUSED else 0
            if not reconnecting and found and (found.verdict is Verdict.SERVER_UNTRUSTED
                                               or refusals >= 2):
                channel.close()
                raise HandshakeRefused(_refusal_message(found, target, ca, crt)) from None
            if time.monotonic() >= t_end:
                channel.close()
                last = f" (last attempt: {found.detail})" if found else ""
                raise ConnectionFailed(f"server {target} not reachable within "
                                       f"{retry.deadline_s:g} s{last}") from None
            log.info("server %s not ready (%s); retrying in %.1f s", target,
                     found.detail if found else "no answer", wait)
            time.sleep(min(wait, max(0.0, t_end - time.monotonic())))
            wait = min(wait * retry.factor, retry.max_s)


def _diagnose(target: str, ca: Path, crt: Path, key: Path) -> Probe | None:
    """The probe's verdict for a ``HOST:PORT`` target (None for other gRPC target forms)."""
    from fedmuscle_secure.transport.address import split_host_port
    from fedmuscle_secure.transport.tls_probe import probe

    try:
        host, port = split_host_port(target)
    except ValueError:
        return None
    return probe(host, port, ca=ca, cert=crt, key=key)


def _refusal_message(found: Probe, target: str, ca: Path, crt: Path) -> str:
    if found.verdict is Verdict.SERVER_UNTRUSTED:
        return (f"TLS handshake with {target} failed: the server's certificate is not trusted "
                f"by {ca} ({found.detail}); check --server and that {ca} is this "
                "federation's CA certificate")
    return (f"server {target} refused the TLS handshake: it does not trust this "
            f"organisation's certificate {crt} ({found.detail}); the server trusts another CA "
            "than the one that issued it: ask its operator for a certificate of the "
            "federation's CA")


def run_client(cfg: ExperimentConfig, org: str, certs: str | Path, target: str, out: str | Path,
               *, options: TransportOptions | None = None,
               retry: RetrySettings | None = None) -> dict[str, float]:
    """Take part in the federation as ``org``; returns the final metrics (after Finish).

    ``out`` is new (missing or empty), or this organisation's run directory of the run the
    server is resuming (:mod:`fedmuscle_secure.client.own_run`): nothing is written there
    before the server's run id was checked against it."""
    from fedmuscle_secure.experiment.run import make_split, methods_of

    validate_deployable(cfg)
    options, retry = options or TransportOptions(), retry or RetrySettings()
    certs, run = Path(certs), RunDir(out)
    name = client_id_of(certs, org)
    recorded = inspect_out(run, cfg)
    method = methods_of(cfg)[0]
    split = make_split(cfg)
    contexts = None
    if cfg.protection == "ckks" and method != "local":
        from fedmuscle_secure.provision.keys import client_ckks

        contexts = client_ckks(cfg, certs)
    own, identities = _identities(cfg, certs, name)
    limits = wire_limits(cfg, ckks_parameters(cfg) if cfg.protection == "ckks" else None)
    from fedmuscle_secure.console.deploy import ClientProgress

    watch = ClientProgress(cfg, method, name, log)
    client = records = None
    reconnected = False
    watch.connecting(target)
    try:
        while True:
            stream = Stream(open_channel(certs, org, target, options, retry,
                                         reconnecting=client is not None), name, options,
                            recorded)
            watch.connected(target)
            try:
                served = _served_run_id(stream, name, run, target)
                if client is None:  # first contact: check, then the first write
                    check_run_id(run, recorded, served, target)
                    client, records, reconnected = _build(cfg, split, method, name, run, served,
                                                          recorded is not None, own, identities,
                                                          contexts, watch)
                    recorded = served
                elif served != recorded:
                    raise ConnectionFailed(f"the server at {target} now runs federation run "
                                           f"{served}, not {recorded}: a restarted server must "
                                           "be started with --resume on its run directory")
                run.event("connected", client=name, run_id=served)
                final = _exchange(client, stream, name, limits, run, method, records,
                                  keep=cfg.checkpoint.keep, reconnected=reconnected, watch=watch)
                break
            except ServerLost as exc:
                log.warning("%s: %s; reconnecting", name, exc)
                if client is None:
                    continue
                reconnected = True
                run.event("server_lost", client=name, round=client.round, reason=str(exc))
                if client.privacy is not None and client.privacy.ledger is not None:
                    client.privacy.ledger.mark_server_lost(client.round, str(exc))
            finally:
                stream.close()
    finally:
        watch.close()
        if client is not None and client.privacy is not None and client.privacy.ledger is not None:
            client.privacy.ledger.close()
    run.event("run_end", client=name, final=final)
    watch.finished(run.root)
    return final


def _build(cfg: ExperimentConfig, split, method: str, name: str, run: RunDir, run_id: str,
           resuming: bool, own, identities, contexts, watch=None):
    """The client and its records, in a run directory of run ``run_id``: a new one (its
    checkpoint of round 0 is what round 1 starts from), or this run's, resumed from its
    latest checkpoint. Returns (client, records, whether the first plan may rewind)."""
    from fedmuscle_secure.records.identity_files import save_public
    from fedmuscle_secure.simulator import build_client, federation_setup, final_model_spec

    if not resuming:
        start_fresh(run, cfg, run_id)
    save_public(own, run.root / "keys", name)
    setup = federation_setup(cfg, split, method, record_dir=run.root, ckks_contexts=contexts,
                             identities=identities)
    client = build_client(cfg, split, method, name, setup, record_dir=run.root, identity=own)
    records = OwnRecords(run, cfg, method, client, final_model_spec(cfg, name, setup, client),
                         watch=watch)
    resumed = resume(run, method, client, run_id) if resuming else None
    if resumed is not None:
        records.rows.update(recorded_rows(run, resumed))
    else:
        run.save_checkpoint(method, 0, client.state_dict(), keep=_save_keep(cfg.checkpoint.keep))
    return client, records, resumed is not None


def _save_keep(keep: int) -> int:
    """Checkpoints a client keeps when it writes one: at least two. Having reported round r,
    it may still be asked to redo round r (the server can die before its own checkpoint of
    round r) and then needs its checkpoint of round r - 1; the next plan, sent only once the
    server's checkpoint of round r is on disk, lets it go (:func:`_exchange`)."""
    return max(keep, 2)


def _served_run_id(stream: Stream, name: str, run: RunDir, target: str) -> str:
    """The server's federation run id (it accepted this client); a broken or refused stream
    raises as :func:`_exchange` does."""
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


def _rewind_if_needed(client, msg: RoundPlan | Finish, run: RunDir, method: str) -> None:
    """A restarted server asks for round ``msg.round``: unless this client is between rounds
    right before it, load its own checkpoint of round ``msg.round - 1``. Called only for the
    first plan after a reconnect, and only one round back at most (the server's checkpoint
    can lag the client's by the round it died in): a server that could rewind a client at
    will could replay a round's releases (the release guard sits re-run rounds out)."""
    from fedmuscle_secure.client.state import ClientStage

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


class OwnRecords:
    """The organisation's own records in its run directory: a ``round_end`` event per report
    (the metrics, ε among them where DP is on, which of them were sent, and with ``watch``
    the round's seconds and payload bytes at this organisation), ``metrics.csv`` with rows
    as ``run`` writes them (the server's rows hold only what was sent, DESIGN §4.4), and,
    after the closing LocalUpdate, the model it keeps: ``model/final.pt`` and
    ``model/final.json`` (:func:`fedmuscle_secure.models.load_final` loads it). ``watch``
    (:class:`~fedmuscle_secure.console.deploy.ClientProgress`) also gets the operator's
    line of each report."""

    def __init__(self, run: RunDir, cfg: ExperimentConfig, method: str, client,
                 final_spec: dict | None = None, watch=None) -> None:
        self.final_spec, self.watch = final_spec, watch
        self.rounds = cfg.training.rounds
        spec = next(c for c in cfg.clients if c.name == client.name)
        self.run, self.client = run, client
        self.meta = {"method": method, "client": client.name, "model": spec.model,
                     "task": spec.task, "metric": client.task.metric}
        self.rows: dict[int | str, dict] = {}

    def record(self, report: RoundReport, final: bool) -> dict[str, float]:
        """Write what the client kept for ``report``; returns those full metrics."""
        full = dict(self.client.report_gate.kept[report.round])
        label = "final" if final else report.round
        timing = self.watch.timing() if self.watch is not None else {}
        self.run.event("round_end", client=self.client.name, round=label, rounds=self.rounds,
                       metrics=full, sent=sorted(report.metrics),
                       withheld=list(report.withheld), **timing)
        self.rows[label] = {**self.meta, "round": label, **full}
        order = sorted(self.rows, key=lambda k: (k == "final", k if k != "final" else 0))
        self.run.write_metrics([self.rows[k] for k in order])
        if final and self.final_spec is not None:  # the model whose score was just reported
            from fedmuscle_secure.models import save_final

            save_final(self.client.model, {**self.final_spec, "round": label, "metrics": full},
                       self.run.root / "model")
        if self.watch is not None:
            self.watch.report(label, full, timing)
        return full


def _exchange(client, stream: Stream, name: str, limits: WireLimits, run: RunDir, method: str,
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
            log.debug("%s: received %s", name, _describe(msg))
            _failpoint(_describe(msg))
            if watch is not None:
                watch.received(msg)
            if isinstance(msg, RoundPlan | Finish):
                if reconnected:
                    _rewind_if_needed(client, msg, run, method)
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


#: Fault injection for the deployment's fault tests (etcd/TiKV-style failpoint): when set,
#: the client SIGKILLs itself on receiving the first message whose description starts with
#: this value (e.g. ``SecAggEnvelope(round 2, epoch 0, batch 0, ShareInbox``), a
#: deterministic point mid-round that an outside ``kill`` cannot hit reliably.
FAILPOINT_ENV = "FEDMUSCLE_FAILPOINT_SIGKILL_ON"
#: Test-only, like the above: on that message the client stops answering but keeps its
#: connection open (a hung organisation), for ``FEDMUSCLE_FAILPOINT_STALL_S`` seconds
#: (default: for good), then goes on as if nothing happened.
STALL_ENV, STALL_SECONDS_ENV = "FEDMUSCLE_FAILPOINT_STALL_ON", "FEDMUSCLE_FAILPOINT_STALL_S"


def _failpoint(description: str) -> None:
    point = os.environ.get(FAILPOINT_ENV)
    if point and description.startswith(point):
        log.warning("failpoint %s=%r: SIGKILL", FAILPOINT_ENV, point)
        os.kill(os.getpid(), signal.SIGKILL)
    stall = os.environ.get(STALL_ENV)
    if stall and description.startswith(stall):
        seconds = float(os.environ.get(STALL_SECONDS_ENV, "inf"))
        log.warning("failpoint %s=%r: not answering for %g s", STALL_ENV, stall, seconds)
        threading.Event().wait(None if seconds == float("inf") else seconds)


def _describe(msg) -> str:
    """``Kind(round r, epoch e, batch b[, stage])`` for the debug log (fault tests watch it)."""
    parts = [f"round {msg.round}"]
    for field in ("epoch", "batch"):
        if getattr(msg, field, None) is not None:
            parts.append(f"{field} {getattr(msg, field)}")
    body = getattr(msg, "body", None)
    if body is not None:
        parts.append(type(body).__name__)
    return f"{type(msg).__name__}({', '.join(parts)})"
