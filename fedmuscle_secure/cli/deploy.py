"""The ``server`` and ``client`` subcommands: the gRPC + mutual-TLS deployment (DESIGN §6).

The work is :mod:`fedmuscle_secure.server.grpc_server` and
:mod:`fedmuscle_secure.client.grpc_client`; this module parses arguments. Errors propagate
to :func:`fedmuscle_secure.cli.main.main` (exit 0 ok, 1 failure, 2 bad usage or configuration).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fedmuscle_secure.cli.args import (
    host_port,
    non_negative_float,
    positive_float,
    positive_int,
    writable_dir,
)
from fedmuscle_secure.console.progress import add_verbosity_options
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.transport import grpc_core_log
from fedmuscle_secure.transport.streams import TransportOptions


def _add_common(p: argparse.ArgumentParser) -> None:
    d = TransportOptions()
    p.add_argument("--config", type=Path, required=True, help="experiment YAML config")
    p.add_argument("--certs", type=Path, required=True,
                   help="directory made by `fedmuscle-secure provision init`")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads, >= 1 (default: torch's)")
    p.add_argument("--max-message-bytes", type=positive_int, default=d.max_message_bytes,
                   help="gRPC send/receive limit per chunk message (default: %(default)s)")
    p.add_argument("--max-chunk-bytes", type=positive_int, default=d.max_chunk_bytes,
                   help="payload bytes per chunk when sending (default: %(default)s)")
    p.add_argument("--max-payload-bytes", type=positive_int, default=None,
                   help="largest reassembled message accepted (default: derived from the "
                        "config, 1.5 x the largest message this federation sends + 1 MiB; "
                        "the server records it in events.jsonl's run_start)")
    p.add_argument("--keepalive-ms", type=positive_int, default=d.keepalive_time_ms,
                   help="HTTP/2 keep-alive ping interval (default: %(default)s)")
    p.add_argument("--keepalive-timeout-ms", type=positive_int, default=d.keepalive_timeout_ms,
                   help="keep-alive ping timeout (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    add_verbosity_options(p)


def _prepare(args: argparse.Namespace):
    import torch

    from fedmuscle_secure.console.progress import configure_logging, verbosity_of
    from fedmuscle_secure.federation.checks import load_config

    configure_logging(verbosity_of(args.quiet, args.verbose))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        options = TransportOptions(
            max_message_bytes=args.max_message_bytes, max_chunk_bytes=args.max_chunk_bytes,
            max_payload_bytes=args.max_payload_bytes, keepalive_time_ms=args.keepalive_ms,
            keepalive_timeout_ms=args.keepalive_timeout_ms)
    except ValueError as exc:
        raise ConfigError("--max-*-bytes", str(exc)) from None
    return load_config(args.config), options


def cmd_server(args: argparse.Namespace) -> int:
    from fedmuscle_secure.cli.deploy_checks import check_listen, check_server_certs

    writable_dir(args.out, "--out")
    cfg, options = _prepare(args)
    check_server_certs(cfg, args.certs)
    check_listen(args.listen)
    # before gRPC loads: refused TLS handshakes are logged with the peer and the reason
    restore_stderr = grpc_core_log.install(logging.getLogger("fedmuscle_secure.server"))
    try:
        from fedmuscle_secure.server.grpc_server import ServeSettings, serve

        rows = serve(cfg, args.certs, args.listen, args.out, options=options,
                     settings=ServeSettings(connect_timeout_s=args.connect_timeout,
                                            round_timeout_s=args.round_timeout,
                                            stage_timeout_s=args.stage_timeout or None),
                     resume=args.resume, exclude=args.exclude)
    finally:
        if restore_stderr is not None:
            restore_stderr()
    final = {r["client"]: r.get("test_metric") for r in rows if r["round"] == "final"}
    print(json.dumps(final) if args.json else f"Run directory: {args.out}\nfinal: {final}")
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    from fedmuscle_secure.cli.deploy_checks import check_client_certs
    from fedmuscle_secure.client.grpc_client import RetrySettings, client_id_of, run_client

    writable_dir(args.out, "--out")
    cfg, options = _prepare(args)
    check_client_certs(cfg, args.certs, args.org, client_id_of(args.certs, args.org))
    retry = RetrySettings(initial_s=args.retry_initial, max_s=args.retry_max,
                          deadline_s=args.retry_deadline)
    restore_stderr = grpc_core_log.install(logging.getLogger("fedmuscle_secure.client"),
                                           side="client", level=logging.INFO)
    try:
        final = run_client(cfg, args.org, args.certs, args.server, args.out, options=options,
                           retry=retry)
    finally:
        if restore_stderr is not None:
            restore_stderr()
    print(json.dumps(final) if args.json else f"{args.org}: {final}")
    return 0


def add_deploy_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "server", help="run the federation's server over gRPC with mutual TLS",
        description="Serve one experiment config to its clients over gRPC with mutual TLS "
                    "(DESIGN §6). Waits for every configured client (after --connect-timeout it "
                    "starts with the quorum deployment.min_clients, without the absent ones), "
                    "runs the rounds, sends "
                    "each client Finish and writes the run directory (metrics.csv, "
                    "events.jsonl, summary.md, receipts.jsonl, checkpoints/); metrics a "
                    "client's report policy kept at home (privacy.report_private_metrics) "
                    "appear as 'not reported'. It never runs the local-training reference "
                    "(compare_local is ignored). It re-reads crl.pem when the file changes: "
                    "a revoked organisation is refused, and dropped at the next stage boundary "
                    "if it is connected. After a crash, "
                    "start it again with --resume and the same --out: it continues from its "
                    "last checkpoint and the clients (which keep retrying) reconnect.")
    _add_common(s)
    s.add_argument("--listen", required=True, type=host_port,
                   help="HOST:PORT to listen on (port 0: any)")
    s.add_argument("--connect-timeout", type=positive_float, default=300.0,
                   help="seconds to wait for every client to connect; then the run starts "
                        "if deployment.min_clients are connected, else the server gives up and "
                        "tells them who is missing (default: %(default)s)")
    s.add_argument("--round-timeout", type=positive_float, default=3600.0,
                   help="seconds one round may take (default: %(default)s)")
    s.add_argument("--stage-timeout", type=non_negative_float, default=120.0,
                   help="seconds a stage of a round waits for its silent members once the "
                        "first member answered; then, inside a secure sum, they sit out the "
                        "round, otherwise they are dropped as a Leave. Must exceed the spread "
                        "of the organisations' LocalUpdate times; 0 turns deadlines off "
                        "(default: %(default)s)")
    s.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (same --config)")
    s.add_argument("--exclude", action="append", default=[], metavar="ORG",
                   help="with --resume: continue without this organisation (client id or "
                        "certificate CN; repeatable). It is refused if it connects; the run "
                        "stops at once if too few organisations would remain for the "
                        "protection (secagg: max(3, t))")
    s.set_defaults(func=cmd_server)
    c = sub.add_parser(
        "client", help="take part in a federation as one organisation over gRPC",
        description="Build this organisation's client from the experiment config (same data "
                    "split and seeds as the simulator), connect to the server with its "
                    "provisioned certificate and train until the server sends Finish. Its own "
                    "full metrics go to --out (metrics.csv, round_end events); the server gets "
                    "only what the report policy lets leave. If the "
                    "server goes away mid-run the client keeps retrying (--retry-*) and, once a "
                    "restarted server resumes, rewinds to its own checkpoint of that round. "
                    "--out must be new (missing or empty) or this organisation's run directory "
                    "of the run the server is running (its federation run id): a client "
                    "restarted with its previous command resumes from its own checkpoint; "
                    "any other directory is refused before anything is written.")
    _add_common(c)
    c.add_argument("--org", required=True, help="organisation name (its certificate's CN)")
    c.add_argument("--server", required=True, type=host_port, help="server HOST:PORT")
    c.add_argument("--retry-initial", type=positive_float, default=0.5,
                   help="first wait between connection attempts, seconds (default: %(default)s)")
    c.add_argument("--retry-max", type=positive_float, default=10.0,
                   help="longest wait between attempts, seconds (default: %(default)s)")
    c.add_argument("--retry-deadline", type=positive_float, default=300.0,
                   help="give up connecting after this many seconds (default: %(default)s)")
    c.set_defaults(func=cmd_client)
