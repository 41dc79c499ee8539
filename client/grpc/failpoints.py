"""Fault injection for the deployment's fault tests: deterministic points mid-round at
which a client dies or hangs, which an outside ``kill`` cannot hit reliably. Inert unless
the environment variables below are set."""

from __future__ import annotations

import logging
import os
import signal
import threading

__all__ = ["FAILPOINT_ENV", "STALL_ENV", "STALL_SECONDS_ENV", "describe", "failpoint"]
log = logging.getLogger("fedmuscle_secure.client")


#: Fault injection for the deployment's fault tests (etcd/TiKV-style failpoint): when set,
#: the client SIGKILLs itself on receiving the first message whose description starts with
#: this value (e.g. ``SecAggEnvelope(round 2, epoch 0, batch 0, ShareInbox``), a
#: deterministic point mid-round that an outside ``kill`` cannot hit reliably.
FAILPOINT_ENV = "FEDMUSCLE_FAILPOINT_SIGKILL_ON"
#: Test-only, like the above: on that message the client stops answering but keeps its
#: connection open (a hung organisation), for ``FEDMUSCLE_FAILPOINT_STALL_S`` seconds
#: (default: for good), then goes on as if nothing happened.
STALL_ENV, STALL_SECONDS_ENV = "FEDMUSCLE_FAILPOINT_STALL_ON", "FEDMUSCLE_FAILPOINT_STALL_S"


def failpoint(description: str) -> None:
    point = os.environ.get(FAILPOINT_ENV)
    if point and description.startswith(point):
        log.warning("failpoint %s=%r: SIGKILL", FAILPOINT_ENV, point)
        os.kill(os.getpid(), signal.SIGKILL)
    stall = os.environ.get(STALL_ENV)
    if stall and description.startswith(stall):
        seconds = float(os.environ.get(STALL_SECONDS_ENV, "inf"))
        log.warning("failpoint %s=%r: not answering for %g s", STALL_ENV, stall, seconds)
        threading.Event().wait(None if seconds == float("inf") else seconds)


def describe(msg) -> str:
    """``Kind(round r, epoch e, batch b[, stage])`` for the debug log (fault tests watch it)."""
    parts = [f"round {msg.round}"]
    for field in ("epoch", "batch"):
        if getattr(msg, field, None) is not None:
            parts.append(f"{field} {getattr(msg, field)}")
    body = getattr(msg, "body", None)
    if body is not None:
        parts.append(type(body).__name__)
    return f"{type(msg).__name__}({', '.join(parts)})"
