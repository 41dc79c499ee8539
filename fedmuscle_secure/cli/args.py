"""Argument checking for the CLI: a parser whose errors are one line, ``type=`` validators for
numeric and address flags, and checks of the folders a command will read or write.

Why here and not where the values are used: a bad flag must stop the command before it
builds models or splits data (seconds to minutes), and the message must name the flag. A
value that reaches ``torch.set_num_threads(-2)`` or ``time.sleep(-1)`` fails with a
traceback that names neither. Every check raises (argparse's ``ArgumentTypeError``, or
:class:`~fedmuscle_secure.errors.ConfigError` naming the flag); ``cli.main`` turns it into
exit 2 with one line.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.transport.address import split_host_port

__all__ = ["OneLineParser", "host_port", "non_negative_float", "non_negative_int",
           "positive_float", "positive_int", "writable_dir"]


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr, exit 2.

    argparse prints the whole usage block before the error; in a log or a CI job the line
    that says what is wrong is then buried. ``--help`` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(text: str, kind: type, what: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _bounded(kind: type, what: str, ok: Callable[[float], bool], name: str, doc: str):
    """An argparse ``type=`` that parses a ``kind`` and refuses values ``ok`` rejects."""
    def parse(text: str):
        value = _number(text, kind, what)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__, parse.__doc__ = name, doc
    return parse


positive_int = _bounded(int, "a positive integer", lambda v: v >= 1, "positive_int",
                        'An integer >= 1 (``--threads``, ``--jobs``, byte limits): 0 does not '
                        'mean "all".')
non_negative_int = _bounded(int, "an integer >= 0", lambda v: v >= 0, "non_negative_int",
                            "An integer >= 0 (``--seed``).")
positive_float = _bounded(float, "a positive number of seconds", lambda v: v > 0,
                          "positive_float", "Seconds > 0 (timeouts, retry waits).")
non_negative_float = _bounded(float, "a number of seconds >= 0", lambda v: v >= 0,
                              "non_negative_float",
                              "Seconds >= 0, where 0 turns the limit off (``--stage-timeout``).")


def host_port(text: str) -> str:
    """``HOST:PORT`` (port 0-65535; ``[::1]:PORT`` for IPv6), returned unchanged. A gRPC
    target with a scheme (``dns:///host:port``, ``unix:path``) is passed through as is."""
    if "://" in text or text.startswith(("unix:", "unix-abstract:")):
        return text
    try:
        split_host_port(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT (e.g. 127.0.0.1:50051, port 0-65535), got {text!r}") from None
    return text


def writable_dir(path: Path, flag: str) -> Path:
    """``path`` is, or can be made, a directory this process may write: check it before the
    command spends minutes and then fails on its first write. Nothing is left behind: the
    check makes (and removes) a temporary directory in ``path`` or its nearest existing
    parent, which is also the only test that holds for root and read-only mounts."""
    here = path
    while not here.exists():
        if here.parent == here:
            break
        here = here.parent
    if here.exists() and not here.is_dir():
        what = "is a file" if here == path else f"cannot be made: {here} is a file"
        raise ConfigError(flag, f"{path} {what}; expected a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".fedmuscle-write-check-", dir=here))
    except OSError as exc:
        raise ConfigError(flag, f"{path}: cannot write in {here} "
                                f"({exc.strerror or exc}); choose a writable directory") from None
    return path

