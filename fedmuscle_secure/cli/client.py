"""``fedmuscle-secure client``: one organisation in a federation over gRPC (DESIGN §6).

The work is :mod:`fedmuscle_secure.client.grpc.process`; this module parses arguments and
checks the organisation's certificate folder first. Errors propagate to
:func:`fedmuscle_secure.cli.main.main` (exit 0 ok, 1 failure, 2 bad usage or configuration).
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from fedmuscle_secure.cli.args import host_port, positive_float, writable_dir
from fedmuscle_secure.cli.deploy_checks import check_client_certs
from fedmuscle_secure.cli.deploy_options import add_common_options, prepare
from fedmuscle_secure.transport import grpc_core_log

__all__ = ["add_client_parser", "cmd_client"]


def cmd_client(args: argparse.Namespace) -> int:
    writable_dir(args.out, "--out")
    cfg, options = prepare(args)  # logging first: the client process imports opacus,
    # which would configure a bare root logger; and torch and the federation take seconds
    from fedmuscle_secure.client.grpc.process import RetrySettings, client_id_of, run_client

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


def add_client_parser(sub: Any) -> None:
    """Register ``client`` on the CLI's subparsers."""
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
    add_common_options(c)
    c.add_argument("--org", required=True, help="organisation name (its certificate's CN)")
    c.add_argument("--server", required=True, type=host_port, help="server HOST:PORT")
    c.add_argument("--retry-initial", type=positive_float, default=0.5,
                   help="first wait between connection attempts, seconds (default: %(default)s)")
    c.add_argument("--retry-max", type=positive_float, default=10.0,
                   help="longest wait between attempts, seconds (default: %(default)s)")
    c.add_argument("--retry-deadline", type=positive_float, default=300.0,
                   help="give up connecting after this many seconds (default: %(default)s)")
    c.set_defaults(func=cmd_client)
