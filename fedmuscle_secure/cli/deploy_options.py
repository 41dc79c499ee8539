"""The options both deployment processes (``server``, ``client``) take, and what they do
before either starts (DESIGN §6)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedmuscle_secure.cli.args import positive_int
from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.console.progress import (
    add_verbosity_options,
    configure_logging,
    verbosity_of,
)
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.transport.streams import TransportOptions

__all__ = ["add_common_options", "prepare"]


def add_common_options(p: argparse.ArgumentParser) -> None:
    """The options ``server`` and ``client`` share: config, certificates, run directory,
    threads, message limits, keep-alive, output."""
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


def prepare(args: argparse.Namespace) -> tuple[ExperimentConfig, TransportOptions]:
    """Logging, torch threads, the transport options and the config, from the options of
    :func:`add_common_options`."""
    # deferred: torch takes seconds to import, which --help should not pay
    import torch

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
    # deferred, after configure_logging: the federation layer imports torch and its
    # libraries, one of which configures the root logger if it is still bare
    from fedmuscle_secure.federation.checks import load_config

    return load_config(args.config), options
