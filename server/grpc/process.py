"""The federation server process over gRPC + mutual TLS (DESIGN §6): the same
:class:`FedMuscleServer` as the simulator, the same run directory.

One :class:`~fedmuscle_secure.server.coordinator.Coordinator` owns the server state machine,
a lock, one outbox per connected client and the stage deadlines (``--stage-timeout``); the
transport only moves messages (DESIGN §13.1; the servicer is
:mod:`fedmuscle_secure.server.grpc.servicer`).

A client may reconnect until the first round this server process runs starts; after that
a closed stream is final. The run starts when every organisation still in it is connected,
or, after ``--connect-timeout``, with the quorum of ``deployment.min_clients`` (the absent
ones are dropped and barred); below the quorum the server gives up and ends every stream
with ``FAILED_PRECONDITION`` naming the missing organisations, so the clients exit at once.
``--resume --exclude ORG`` continues without an organisation
(:mod:`~fedmuscle_secure.server.grpc.membership`).
A server killed and restarted with ``--resume`` goes on from its last checkpoint
(:func:`serve`); the clients reconnect and rewind (:mod:`fedmuscle_secure.client.grpc`).

A stream that closes mid-run is a ``Leave`` (secagg recovers by its dropout path). After the
last round every connected client gets a :class:`~fedmuscle_secure.messages.Finish` and
answers with its closing ``RoundReport`` (round R + 1), written as the ``final`` rows. The
run directory gets ``config.resolved.yaml``, ``events.jsonl``, ``metrics.csv`` (rows as in
``run``, with what the clients' report policy kept at home marked ``not reported``),
``summary.md`` and a server checkpoint per round (server state and rows), recorded as the
simulator records them (:mod:`fedmuscle_secure.experiment.rounds`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmuscle_secure.config import ExperimentConfig, dump_config, validate_deployable
from fedmuscle_secure.config_deployment import quorum
from fedmuscle_secure.console.deploy import ServerProgress
from fedmuscle_secure.crypto.identity import load_public
from fedmuscle_secure.data import get_task
from fedmuscle_secure.errors import ConfigError, QuorumLost
from fedmuscle_secure.experiment.environment import software_environment
from fedmuscle_secure.experiment.rounds import RoundRecorder, metric_row
from fedmuscle_secure.experiment.run import methods_of
from fedmuscle_secure.experiment.rundir import (
    FINAL,
    RunDir,
    StartWording,
    check_start,
    config_digest,
)
from fedmuscle_secure.experiment.summary import write_summary
from fedmuscle_secure.federation.ckks import server_ckks
from fedmuscle_secure.federation.server import build_server, open_receipts
from fedmuscle_secure.federation.setup import (
    Protection,
    decide_protection,
    federation_setup,
    federation_wire_limits,
)
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import as_received
from fedmuscle_secure.server.coordinator import Coordinator, TransportError
from fedmuscle_secure.server.grpc.membership import (
    EXCLUDED,
    barred_on_resume,
    final_row_metrics,
    resolve_exclusions,
)
from fedmuscle_secure.server.grpc.servicer import FedMuscleServicer, start_grpc_server
from fedmuscle_secure.transport.streams import TransportOptions
from fedmuscle_secure.transport.trust_reload import LiveTrust

__all__ = ["Coordinator", "FedMuscleServicer", "ServeSettings", "ServerRun", "TransportError",
           "new_run_id", "serve", "start_grpc_server"]
log = logging.getLogger("fedmuscle_secure.server")

#: How ``server`` names a run directory it refuses (:func:`check_start`).
SERVER_WORDING = StartWording(
    config_flag="--config",
    held_hint="pass --resume to continue it after a restart, or choose another --out")


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
    check_start(run, resolved, resume, SERVER_WORDING)
    run.start(resolved)
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
    validate_deployable(cfg)
    if exclude and not resume:
        raise ConfigError("--exclude", "only with --resume: a new run takes every configured "
                                       "client; leave the organisation out of the config")
    options, settings = options or TransportOptions(), settings or ServeSettings()
    certs, method = Path(certs), methods_of(cfg)[0]
    trust = LiveTrust(certs)
    split = make_split(cfg)
    protection = decide_protection(cfg, method, split)
    contexts = server_ckks(cfg, certs, protection.sigma_client) if protection.mode == "ckks" else None
    limits = federation_wire_limits(cfg)  # before the run directory is written
    run, resolved, run_id = _open_run(cfg, out, resume)
    trust.on_event = run.event
    ck = run.latest_checkpoint(method) if resume else None
    if ck is not None and ck[1].get("finished"):
        log.info("%s: the run already finished", run.root)
        return list(ck[1]["rows"])
    excluded = resolve_exclusions(  # before any work: a refused exclusion runs nothing
        cfg, ck[1]["server"]["active"] if ck is not None else [c.name for c in cfg.clients],
        exclude, trust.trust.clients)
    setup = federation_setup(cfg, split, method, ckks_contexts=contexts, protection=protection,
                             identities=_server_identities(cfg, certs, protection))
    server = build_server(cfg, method, setup)
    rows, start = _restore(server, ck, excluded)
    coordinator, receipts = _coordinator(cfg, run, server, settings, trust, excluded)
    try:
        grpc_server, port = start_grpc_server(coordinator, trust, certs, listen, options, limits,
                                              run_id=run_id)
    except BaseException:
        receipts.close()
        raise
    run.event("run_resume" if resume else "run_start", run_id=run_id, transport="grpc",
              listen=listen, port=port, seed=cfg.seed, config_sha256=config_digest(resolved),
              method=method, from_round=start - 1,
              max_payload_bytes=options.payload_limit(limits),
              stage_timeout_s=settings.stage_timeout_s,
              min_clients=quorum(cfg, len(server.active)),
              **({"excluded": excluded} if resume else {}))
    run.record_environment(software_environment())
    watch = ServerProgress(cfg, method, coordinator, start=start, log=log)
    watch.listening(listen, port, start, list(server.active))
    metrics = {c.name: get_task(c.task, split.num_classes).metric for c in cfg.clients}
    try:
        return ServerRun(cfg, run, coordinator, settings, method, metrics, watch).rounds(rows, start)
    except (QuorumLost, TransportError) as exc:  # tell the clients why, so they stop
        run.event("run_stopped", reason=str(exc))
        coordinator.abort_all(f"the server stopped the run: {exc}")
        raise
    finally:
        watch.close()
        coordinator.close_all()
        grpc_server.stop(grace=5).wait()
        receipts.close()


def _coordinator(cfg: ExperimentConfig, run: RunDir, server, settings: ServeSettings,
                 trust: LiveTrust, excluded: list[str]) -> tuple[Coordinator, Any]:
    """The coordinator of ``server`` with its receipt log (``receipts.jsonl``, to close),
    the CRL's revocations and the organisations barred after a resume."""
    receipts = open_receipts(run.root)
    coordinator = Coordinator(server, final_round=cfg.training.rounds + 1, receipts=receipts,
                              stage_timeout_s=settings.stage_timeout_s,
                              revocations=trust.revoked, on_event=run.event)
    for client, why in barred_on_resume(server.departures, excluded).items():
        coordinator.bar(client, why)
    return coordinator, receipts


def _restore(server, ck: tuple[int | str, dict[str, Any]] | None,
             excluded: list[str]) -> tuple[list[dict[str, Any]], int]:
    """The rows so far and the first round to run: from the checkpoint ``ck`` (a resume),
    without the ``excluded`` organisations."""
    rows: list[dict[str, Any]] = []
    start = 1
    if ck is not None:
        server.load_state_dict(ck[1]["server"])
        rows, start = list(ck[1]["rows"]), int(ck[0]) + 1
    for client in excluded:
        if client in server.active:
            server.remove(client, EXCLUDED)
    return rows, start


@dataclass
class ServerRun:
    """The rounds of a deployed run, recorded in ``run`` as ``run`` records them.
    ``metrics``: each client's task metric name (its rows' ``metric``); ``watch``: the
    operator's display."""

    cfg: ExperimentConfig
    run: RunDir
    coordinator: Coordinator
    settings: ServeSettings
    method: str
    metrics: dict[str, str]
    watch: ServerProgress | None = None

    def _row(self, r: int | str, name: str, metrics: dict[str, Any]) -> dict[str, Any]:
        return metric_row(self.cfg, self.method, r, name, self.metrics[name], metrics)

    def rounds(self, rows: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
        """Rounds ``start``..R after ``rows``, then Finish and the clients' closing reports;
        returns every row."""
        s, settings = self.coordinator.server, self.settings
        absent = self.coordinator.wait_for_members(quorum(self.cfg, len(s.active)),
                                                   settings.connect_timeout_s)
        if absent:
            self.run.event("clients_absent", clients=absent, round=s.round + 1,
                           connect_timeout_s=settings.connect_timeout_s)
        records = RoundRecorder(self.run, self.method, self.cfg.checkpoint.keep)
        for r in range(start, self.cfg.training.rounds + 1):
            self._round(r, rows, records)
        self._finish(rows, records)
        return rows

    def _round(self, r: int, rows: list[dict[str, Any]], records: RoundRecorder) -> None:
        coordinator, s = self.coordinator, self.coordinator.server
        t0 = time.perf_counter()
        coordinator.start_round(r)
        coordinator.wait(lambda: s.round >= r, self.settings.round_timeout_s, f"round {r}")
        wall = time.perf_counter() - t0
        with coordinator.cond:
            per_client = {c: {**as_received(s.reports[c]), **coordinator.traffic[c],
                              "wall_time_s": wall} for c in s.active}
        rows += [self._row(r, c, m) for c, m in per_client.items()]
        records.events(r, s, wall, per_client)
        if self.watch is not None:
            self.watch.round_end(r, wall, per_client, [d["client"] for d in s.departures
                                                       if d["round"] == r])
        records.checkpoint(r, {"server": s.state_dict()}, rows, finished=False)
        self.run.write_metrics(rows)

    def _finish(self, rows: list[dict[str, Any]], records: RoundRecorder) -> None:
        """Finish, every configured client's ``final`` row (in config order, as ``run``),
        the final checkpoint and the summary."""
        coordinator, s = self.coordinator, self.coordinator.server
        waiting = coordinator.finish()
        coordinator.wait(lambda: all(c in coordinator.finals or c in coordinator.gone
                                     for c in waiting),
                         self.settings.round_timeout_s, "the clients' final reports")
        departed = {d["client"]: d for d in s.departures}
        closing = self.cfg.training.rounds + 1
        with coordinator.cond:
            rows += [self._row("final", c, final_row_metrics(
                c, rows, departed.get(c),
                {**coordinator.finals[c], **coordinator.traffic[c]} if c in coordinator.finals
                else None, coordinator.gone.get(c), closing)) for c in s.clients]
        records.checkpoint(FINAL, {"server": s.state_dict()}, rows, finished=True)
        self.run.write_metrics(rows)
        write_summary(self.run.summary, self.cfg, rows, transport="grpc")
        self.run.event("run_end", final={c: m.get("test_metric")
                                         for c, m in coordinator.finals.items()})
        if self.watch is not None:
            self.watch.finished(coordinator.finals, self.run.root)


def _server_identities(cfg: ExperimentConfig, certs: Path, protection: Protection) -> dict | None:
    """Under secagg: every organisation's Ed25519 public identity, from ``certs/identities``."""
    if protection.mode != "secagg":
        return None
    folder = certs / "identities"
    return {c.name: load_public(folder / f"{c.name}.pub") for c in cfg.clients}
