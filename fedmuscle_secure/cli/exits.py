"""What the CLI prints and returns when a command does not succeed (README "Exit codes").

``cli.main`` is the one place that maps outcomes to exit codes; this module holds the
pieces it uses: the one-line message of an error, what to type after an interruption, and
the quiet exit when the reader of stdout went away (``audit --json | head``).

Why one line: an operator reads the last line of a log or of a CI job. A traceback there
says where the code was, not which flag, file or peer to fix.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

__all__ = ["EXIT_INTERRUPTED", "EXIT_PIPE", "EXIT_RUNTIME", "EXIT_USAGE", "interrupted_hint",
           "one_line", "os_error_message", "silence_stdout"]

EXIT_RUNTIME = 1
EXIT_USAGE = 2
#: 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C.
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE, what a shell reports for a Unix tool whose reader closed the pipe.
EXIT_PIPE = 141


def one_line(message: str) -> str:
    """``message`` on one line: a multi-line library message (YAML, gRPC) joined by ' | '."""
    parts = [p.strip() for p in str(message).splitlines()]
    return " | ".join(p for p in parts if p and set(p) != {"^"})


def os_error_message(exc: OSError) -> str:
    """``FILE: reason`` (the Unix tools' form) for an OSError that escaped a command."""
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where else reason


def _command_line(argv: list[str], *, add: tuple[tuple[str, str | None], ...] = ()) -> str:
    """``fedmuscle-secure ARGV...`` plus each ``(flag, value)`` of ``add`` not already given."""
    extra: list[str] = []
    for flag, value in add:
        if flag not in argv and not any(a.startswith(flag + "=") for a in argv):
            extra += [flag] if value is None else [flag, value]
    return shlex.join(["fedmuscle-secure", *argv, *extra])


def _resumable(out: Path | None) -> bool:
    return out is not None and (Path(out) / "config.resolved.yaml").is_file()


def interrupted_hint(args: argparse.Namespace, argv: list[str]) -> str:
    """What the operator types to go on after Ctrl-C, for the interrupted command."""
    command = getattr(args, "command", None)
    out = getattr(args, "out", None)
    if command == "run":
        if not _resumable(out):
            return "nothing was written yet; start it again"
        return f"resume with: {_command_line(argv, add=(('--resume', None), ('--out', str(out))))}"
    if command == "server":
        if not _resumable(out):
            return f"start it again: {_command_line(argv)}"
        return (f"resume with: {_command_line(argv, add=(('--resume', None),))} (the clients keep "
                "retrying for their --retry-deadline)")
    if command == "client":
        return (f"start it again: {_command_line(argv)} (it reconnects and rewinds to "
                "its last checkpoint when the server resumes)")
    if command == "compare":
        return (f"run it again: {_command_line(argv)} (finished cells are skipped, "
                "an interrupted cell resumes from its last checkpoint)")
    return "nothing to resume; run it again"


def silence_stdout() -> None:
    """Point stdout at /dev/null after its reader went away, so the interpreter's final
    flush does not raise a second BrokenPipeError (Python docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout already closed or not a real file
        pass


def stdout_broken() -> bool:
    """Whether stdout's reader went away: its pipe reports an error (POLLERR: no reader
    left). A BrokenPipeError from anything else (a socket) is a failure to report."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real stdout, or no poll()
        return False
