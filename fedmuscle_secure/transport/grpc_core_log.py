"""The server's log of refused TLS handshakes: peer address and reason, as one line.

Why this exists: the server asks gRPC for mutual TLS (``require_client_auth``), so a
client certificate that does not verify against the federation's CA (another CA, expired,
no certificate) fails inside gRPC's C core. The connection never becomes a call: the
servicer, which logs every refusal it decides (revoked, unknown), never sees it. All that
is left is the C core's own log on stderr (file descriptor 2, not Python's ``logging``):
``Handshake failed with error ... CERTIFICATE_VERIFY_FAILED ...`` without the peer.

What this module does (and no more): before gRPC is imported it turns on the core's
``handshaker`` tracer, whose record of a failed handshake carries the peer address
(``grpc.internal.endpoint_peer_address``), and it routes file descriptor 2 through a pipe
read by a thread. That thread

* turns each failed handshake into one WARNING on the ``fedmuscle_secure.server`` logger:
  ``TLS handshake from 127.0.0.1:50412 failed: its certificate is not issued by this
  federation's CA (CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate)``;
* drops the tracer's other records (every handshake step; it was turned on only for this);
* passes every other byte through to the real stderr unchanged.

Python's own stderr (``sys.stderr``, the logging handlers) writes to the real stderr
directly, not through the pipe. A client installs it too (``side="client"``, no tracer):
there the core's line about the server's handshake becomes an INFO record, since the
client explains the failure itself in one line (:mod:`fedmuscle_secure.transport.tls_probe`). The line formats are gRPC's, not an API: the test
``tests/e2e/test_handshake_errors_processes.py`` pins them with a real server and a
foreign-CA client, so a gRPC upgrade that changes them fails there. When gRPC was imported before :func:`install`
(the tracer could not be turned on), the reason is still logged, with the peer unknown.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Callable

__all__ = ["CoreLogBridge", "install"]

TRACER = "handshaker"
#: The glog-style prefix of a core log record: ``I1205 13:54:33.484516   18962 file.cc:155] ``.
_HEADER = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ (?P<file>[\w.+-]+):\d+\] ")
_PEER = re.compile(r"grpc\.internal\.endpoint_peer_address=(?:ipv[46]:)?(?P<peer>[^,}\s]+)")
_REASON = re.compile(r"(?:OPENSSL_internal|SSL routines):(?P<reason>[A-Z0-9_]+(?:: [^\n]*?)?)"
                     r"(?:: OK)?\s*(?:\n|$)")
_FOREIGN = "its certificate is not issued by this federation's CA"
_ERROR = re.compile(r"error=(?:[A-Z_]+: )?(?P<error>[^\n]+)")
_MEANINGS = (
    ("unable to get local issuer certificate", _FOREIGN),
    ("self signed certificate in certificate chain", f"{_FOREIGN} (its chain: another root)"),
    ("self signed certificate", f"{_FOREIGN} (self-signed)"),
    ("certificate has expired", "its certificate has expired"),
    ("certificate is not yet valid", "its certificate is not valid yet"),
    ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "it sent no client certificate"),
    ("WRONG_VERSION_NUMBER", "it did not speak TLS (a plaintext client?)"),
    ("HTTP_REQUEST", "it sent plain HTTP, not TLS"),
    ("Socket closed", "the peer closed the connection during the handshake"),
)


def _meaning(reason: str) -> str:
    for needle, meaning in _MEANINGS:
        if needle in reason:
            return f"{meaning} ({reason})"
    return reason


class CoreLogBridge:
    """Groups core log lines into records and handles each (module docs). ``feed`` and
    ``flush`` do no I/O of their own: ``emit`` logs a failed handshake, ``passthrough``
    writes the rest, so the parsing can be exercised on recorded text.

    ``side``: on the ``server`` a failure names the peer (from the tracer's record when
    ``traced``); on a ``client`` it is the server's handshake, which the client itself
    explains (:mod:`fedmuscle_secure.transport.tls_probe`), so it is logged at the caller's level.
    ``keep_trace``: the operator asked for the tracer too, so its records pass through."""

    def __init__(self, emit: Callable[[str], None], passthrough: Callable[[str], None], *,
                 traced: bool, side: str = "server", keep_trace: bool = False) -> None:
        self.emit, self.passthrough, self.traced = emit, passthrough, traced
        self.side, self.keep_trace = side, keep_trace
        self._record: list[str] = []
        self._file = ""

    def feed(self, line: str) -> None:
        """One line of core output (with its newline); a header starts a new record."""
        m = _HEADER.match(line)
        if m:
            self.flush()
            self._file = m.group("file")
        elif not self._record:  # not a core record: someone else's bytes
            self.passthrough(line)
            return
        self._record.append(line)

    def flush(self) -> None:
        """Handle the record gathered so far (at the next header, or when output pauses)."""
        if not self._record:
            return
        text, self._record = "".join(self._record), []
        try:
            self._handle(self._file, text)
        except Exception:  # noqa: BLE001 - never lose core output over a parsing slip
            self.passthrough(text)

    def _handle(self, file: str, text: str) -> None:
        if file.startswith("ssl_transport_security") and "Handshake failed" in text:
            if self.side == "client":
                self.emit(f"TLS handshake with the server failed: {_reason(text)}")
            elif not self.traced:  # no tracer record will follow with the peer
                self.emit(_failure(None, text))
            return
        tracer = (file.startswith(("handshaker", "channel_trace"))
                  or file.startswith("trace") and "gRPC Tracers:" in text)
        if (self.side == "server" and file.startswith("handshaker")
                and "CallNextHandshakerLocked: error=" in text and "error=OK" not in text):
            peer = _PEER.search(text)
            self.emit(_failure(peer.group("peer") if peer else None, text))
        if not tracer or self.keep_trace:
            self.passthrough(text)


def _reason(text: str) -> str:
    """The TLS library's reason (``CERTIFICATE_VERIFY_FAILED: unable to get local issuer
    certificate``), else the core's error text, else the record's first line."""
    if m := _REASON.search(text):
        return m.group("reason").strip()
    if m := _ERROR.search(text):
        return m.group("error").strip()
    return text.split("] ", 1)[-1].splitlines()[0].strip()


def _failure(peer: str | None, text: str) -> str:
    who = peer if peer else "an unknown peer (gRPC was loaded before the handshake trace)"
    return f"TLS handshake from {who} failed: {_meaning(_reason(text))}"


def _request_trace() -> bool:
    """Turn the core's handshake tracer on, which works only before gRPC is imported."""
    if "grpc" in sys.modules:
        return False
    current = [t for t in os.environ.get("GRPC_TRACE", "").split(",") if t]
    if TRACER not in current and "all" not in current:
        os.environ["GRPC_TRACE"] = ",".join([*current, TRACER])
    return True


def _reader(fd: int, bridge: CoreLogBridge) -> None:
    """Feed the pipe's lines to ``bridge``; a record is complete at the next header or
    when the core pauses (nothing more to read for 50 ms)."""
    pending = b""
    while chunk := os.read(fd, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            bridge.feed(line.decode("utf-8", errors="replace") + "\n")
        if not pending and not _more_waiting(fd):
            bridge.flush()
    if pending:
        bridge.feed(pending.decode("utf-8", errors="replace"))
    bridge.flush()
    os.close(fd)


def _more_waiting(fd: int) -> bool:
    import select

    try:
        return bool(select.select([fd], [], [], 0.05)[0])
    except (OSError, ValueError):
        return False


def install(logger: logging.Logger, *, side: str = "server",
            level: int = logging.WARNING) -> Callable[[], None] | None:
    """Route the C core's stderr through a :class:`CoreLogBridge` that logs failed
    handshakes to ``logger`` at ``level`` (on the server, with the peer: see the module
    docs).

    Call it before anything imports ``grpc``. Returns a function that puts stderr back and
    drains the pipe (call it when the server or client has stopped), or None when stderr
    is not a file descriptor this process can redirect (then nothing changed)."""
    try:
        sys.stderr.flush()
        real_fd = os.dup(2)
    except (OSError, ValueError, AttributeError):
        return None
    asked = [t for t in os.environ.get("GRPC_TRACE", "").split(",") if t]
    traced = side == "server" and _request_trace()
    real = open(real_fd, "w", buffering=1, encoding="utf-8",  # noqa: SIM115 - lives on
                errors="replace", closefd=False)
    old = sys.stderr
    for handler in logging.getLogger().handlers:  # Python's own output skips the pipe
        if isinstance(handler, logging.StreamHandler) and handler.stream is old:
            handler.setStream(real)
    sys.stderr = real
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def passthrough(text: str) -> None:
        real.write(text)
        real.flush()

    bridge = CoreLogBridge(lambda message: logger.log(level, "%s", message), passthrough,
                           traced=traced, side=side,
                           keep_trace=TRACER in asked or "all" in asked)
    thread = threading.Thread(target=_reader, args=(read_fd, bridge), daemon=True,
                              name="grpc-core-log")
    thread.start()

    def restore() -> None:
        os.dup2(real_fd, 2)  # the pipe's last writer is gone: the reader drains and ends
        thread.join(timeout=2.0)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is real:
                handler.setStream(old)
        sys.stderr = old

    return restore
