"""Why a mutual-TLS connection to the server does not come up: a one-shot probe.

gRPC hides the cause: a channel that never becomes ready looks the same whether nothing
listens on the port, the server is restarting, the server refused this organisation's
certificate, or the server's certificate is not one this organisation trusts. The first two
pass (keep retrying); the last two never will, and retrying them for the whole retry
deadline only delays the message the operator needs.

:func:`probe` makes one TCP connection and one TLS handshake with the same CA, certificate
and key the gRPC channel uses (Python's ``ssl``, offering ALPN ``h2`` as gRPC does) and
classifies what happened:

* ``UNREACHABLE``: no TCP connection (refused, no route, name not resolved, timeout);
* ``SERVER_UNTRUSTED``: the server's certificate does not verify against our CA, or does
  not name the host we connect to;
* ``CLIENT_REFUSED``: the server ended the handshake over our certificate: a TLS alert
  (TLS 1.2: during the handshake; TLS 1.3: right after it), or, as gRPC's BoringSSL server
  does, closing the connection right after the handshake without sending a byte, where it
  sends its HTTP/2 settings to a client it accepted;
* ``ACCEPTED``: the server accepted the handshake (its first HTTP/2 bytes arrived);
* ``UNDECIDED``: anything else (a reset, a timeout after the handshake): retry.

The probe sends no application data; the server sees a TLS connection that closes.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

__all__ = ["Probe", "Verdict", "probe"]


class Verdict(Enum):
    UNREACHABLE = "unreachable"
    SERVER_UNTRUSTED = "server certificate not trusted"
    CLIENT_REFUSED = "client certificate refused"
    ACCEPTED = "accepted"
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class Probe:
    """A verdict and the detail it rests on (an errno text, a verify message, an alert)."""

    verdict: Verdict
    detail: str


def _context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its host name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _alert(exc: ssl.SSLError) -> str | None:
    """The TLS alert the peer sent (``TLSV1_ALERT_UNKNOWN_CA`` -> ``unknown CA``), if any."""
    reason = exc.reason or ""
    if "ALERT_" not in reason:
        return None
    return reason.split("ALERT_", 1)[1].replace("_", " ").lower().replace(" ca", " CA")


def probe(host: str, port: int, *, ca: Path, cert: Path, key: Path,
          timeout_s: float = 5.0) -> Probe:
    """Connect to ``host:port`` once and classify the TLS handshake (module docs)."""
    ctx = _context(ca, cert, key)
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        return Probe(Verdict.UNREACHABLE, exc.strerror or str(exc) or type(exc).__name__)
    with raw:
        try:
            tls = ctx.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            return Probe(Verdict.SERVER_UNTRUSTED, exc.verify_message or str(exc))
        except ssl.SSLError as exc:
            if (alert := _alert(exc)) is not None:
                return Probe(Verdict.CLIENT_REFUSED, f"TLS alert: {alert}")
            return Probe(Verdict.UNDECIDED, exc.reason or str(exc))
        except OSError as exc:
            return Probe(Verdict.UNDECIDED, exc.strerror or type(exc).__name__)
        with tls:
            try:
                first = tls.recv(1)
            except ssl.SSLError as exc:
                if (alert := _alert(exc)) is not None:
                    return Probe(Verdict.CLIENT_REFUSED, f"TLS alert: {alert}")
                return Probe(Verdict.UNDECIDED, exc.reason or str(exc))
            except OSError as exc:  # a reset, or no byte within the timeout
                return Probe(Verdict.UNDECIDED, exc.strerror or type(exc).__name__)
    if not first:
        return Probe(Verdict.CLIENT_REFUSED, "the server closed the connection right after the "
                                             "handshake without a byte")
    return Probe(Verdict.ACCEPTED, "handshake accepted")
