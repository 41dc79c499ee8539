"""``fedmuscle-secure``: one entry point with subcommands (DESIGN §13.6).

Exit codes (README "Exit codes"): 0 ok, 1 failure at run time, 2 bad usage or
configuration, 10-21 ``audit`` verdicts, 130 interrupted (Ctrl-C), 141 stdout closed by its
reader. :func:`main` is the one place that maps what a command raised to a code and one
line on stderr; the subcommands live one per module beside it (``cli/run.py``, ...).
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from fedmuscle_secure.cli import exits as cli_errors
from fedmuscle_secure.cli.args import OneLineParser
from fedmuscle_secure.cli.audit import add_audit_parser
from fedmuscle_secure.cli.client import add_client_parser
from fedmuscle_secure.cli.compare import add_compare_parser
from fedmuscle_secure.cli.provision import add_provision_parser
from fedmuscle_secure.cli.run import add_run_parser
from fedmuscle_secure.cli.server import add_server_parser
from fedmuscle_secure.errors import ConfigError, FedMuscleError

#: The subcommands, in ``--help`` order; each module registers its parser and handler.
SUBCOMMANDS = (add_run_parser, add_compare_parser, add_audit_parser, add_provision_parser,
               add_server_parser, add_client_parser)

def _version() -> str:
    """The installed distribution's version (from its metadata, one source of truth)."""
    try:
        return version("fedmuscle-secure")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="fedmuscle-secure",
        description="Privacy-hardened federated multi-task learning with the Muscle loss.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in SUBCOMMANDS:
        add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the command, map its outcome to an exit code (module docs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = argparse.Namespace()
    try:
        args = build_parser().parse_args(argv)  # imports torch: Ctrl-C may land here too
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except ConfigError as exc:
        return _fail(cli_errors.EXIT_USAGE, f"config error: {exc}")
    except FedMuscleError as exc:
        return _fail(cli_errors.EXIT_RUNTIME, f"error: {exc}")
    except KeyboardInterrupt:
        hint = cli_errors.interrupted_hint(args, argv)
        return _fail(cli_errors.EXIT_INTERRUPTED, f"interrupted; {hint}")
    except BrokenPipeError as exc:
        if not cli_errors.stdout_broken():
            return _fail(cli_errors.EXIT_RUNTIME, f"error: {cli_errors.os_error_message(exc)}")
        cli_errors.silence_stdout()  # the reader has what it wanted: stop quietly
        return cli_errors.EXIT_PIPE
    except OSError as exc:
        return _fail(cli_errors.EXIT_RUNTIME, f"error: {cli_errors.os_error_message(exc)}")


def _fail(code: int, message: str) -> int:
    """One line on stderr (``fedmuscle-secure: MESSAGE``); returns ``code``."""
    print(f"fedmuscle-secure: {cli_errors.one_line(message)}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
