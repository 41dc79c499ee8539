"""``fedmuscle-secure server``: the federation's server over gRPC with mutual TLS (DESIGN §6).

The work is :mod:`fedmuscle_secure.server.grpc.process`; this module parses arguments and
checks the certificate folder and the address first. Errors propagate to
:func:`fedmuscle_secure.cli.main.main` (exit 0 ok, 1 failure, 2 bad usage or configuration).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from fedmuscle_secure.cli.args import host_port, non_negative_float, positive_float, writable_dir
from fedmuscle_secure.cli.deploy_checks import check_listen, check_server_certs
from fedmuscle_secure.cli.deploy_options import add_common_options, prepare
from fedmuscle_secure.transport import grpc_core_log

__all__ = ["add_server_parser", "cmd_server"]


def cmd_server(args: argparse.Namespace) -> int:
    writable_dir(args.out, "--out")
    cfg, options = prepare(args)
    check_server_certs(cfg, args.certs)
    check_listen(args.listen)
    # before gRPC loads: refused TLS handshakes are logged with the peer and the reason
    restore_stderr = grpc_core_log.install(logging.getLogger("fedmuscle_secure.server"))
    try:
        # deferred: after grpc_core_log.install, so gRPC's own log lines are caught
        from fedmuscle_secure.server.grpc.process import ServeSettings, serve

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


def add_server_parser(sub: Any) -> None:
    """Register ``server`` on the CLI's subparsers."""
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
    add_common_options(s)
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
