"""The mutual-TLS channel of a deployed client (DESIGN §6): retries while the server is not
up, and the refusals that retrying would not cure.

Until the server answers, the connection is retried with exponential backoff
(:class:`RetrySettings`); a TLS handshake that cannot succeed (a certificate one side does
not trust) stops the client at once, saying which file to fix
(:mod:`fedmuscle_secure.transport.tls_probe` tells the cases apart).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

from fedmuscle_secure.errors import FedMuscleError
from fedmuscle_secure.transport.address import split_host_port
from fedmuscle_secure.transport.streams import TransportOptions
from fedmuscle_secure.transport.tls_probe import Probe, Verdict, probe

__all__ = ["ConnectionFailed", "HandshakeRefused", "RetrySettings", "ServerLost", "client_id_of",
           "open_channel"]
log = logging.getLogger("fedmuscle_secure.client")


class ConnectionFailed(FedMuscleError):
    """The server could not be reached, or refused or ended this client's stream."""


class HandshakeRefused(ConnectionFailed):
    """The TLS handshake cannot succeed (a certificate one side does not trust): retrying
    would not help, so the client stops at once."""


class ServerLost(ConnectionFailed):
    """The stream broke because the server went away: reconnect and resume."""


@dataclass(frozen=True)
class RetrySettings:
    """Exponential backoff while the server is not up: ``initial_s`` doubling (× ``factor``)
    up to ``max_s`` between attempts, for at most ``deadline_s`` in all."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 10.0
    deadline_s: float = 300.0


def client_id_of(certs: Path, org: str) -> str:
    """The client id the server maps ``org``'s certificate to (``clients.yaml``)."""
    path = certs / "clients.yaml"
    if path.is_file():
        raw = yaml.safe_load(path.read_text()) or {}
        return str((raw.get("clients") or {}).get(org, org))
    return org


def open_channel(certs: Path, org: str, target: str, options: TransportOptions,
                 retry: RetrySettings, *, reconnecting: bool = False) -> grpc.Channel:
    """A mutual-TLS channel to ``target``, once it is ready (exponential backoff).

    While it is not ready, each attempt also asks :func:`~fedmuscle_secure.transport.tls_probe.probe`
    why: a server that is not up yet is retried until the deadline, but a handshake that
    cannot succeed stops at once (:class:`HandshakeRefused`): the server's certificate does
    not verify against our CA, or the server refused ours twice in a row (twice, so that a
    server going down mid-handshake is not taken for a refusal). ``reconnecting`` (the
    client already ran with this server, which is restarting): a failed handshake says
    nothing about that server, only about whoever holds its port meanwhile, so it is
    retried until the deadline like a server not up yet (a one-off impostor must not end
    the organisation's run)."""
    ca, key = certs / "ca" / "ca.crt", certs / "orgs" / org / f"{org}.key"
    crt = certs / "orgs" / org / f"{org}.crt"
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes(),
                                         private_key=key.read_bytes(),
                                         certificate_chain=crt.read_bytes())
    channel = grpc.secure_channel(target, creds, options=options.channel_options(server=False))
    t_end, wait, refusals = time.monotonic() + retry.deadline_s, retry.initial_s, 0
    while True:
        ready = grpc.channel_ready_future(channel)
        try:
            ready.result(timeout=wait)
            return channel
        except grpc.FutureTimeoutError:
            ready.cancel()  # stop its polling thread before the channel may close
            found = _diagnose(target, ca, crt, key)
            refusals = refusals + 1 if found and found.verdict is Verdict.CLIENT_REFUSED else 0
            if not reconnecting and found and (found.verdict is Verdict.SERVER_UNTRUSTED
                                               or refusals >= 2):
                channel.close()
                raise HandshakeRefused(_refusal_message(found, target, ca, crt)) from None
            if time.monotonic() >= t_end:
                channel.close()
                last = f" (last attempt: {found.detail})" if found else ""
                raise ConnectionFailed(f"server {target} not reachable within "
                                       f"{retry.deadline_s:g} s{last}") from None
            log.info("server %s not ready (%s); retrying in %.1f s", target,
                     found.detail if found else "no answer", wait)
            time.sleep(min(wait, max(0.0, t_end - time.monotonic())))
            wait = min(wait * retry.factor, retry.max_s)


def _diagnose(target: str, ca: Path, crt: Path, key: Path) -> Probe | None:
    """The probe's verdict for a ``HOST:PORT`` target (None for other gRPC target forms)."""
    try:
        host, port = split_host_port(target)
    except ValueError:
        return None
    return probe(host, port, ca=ca, cert=crt, key=key)


def _refusal_message(found: Probe, target: str, ca: Path, crt: Path) -> str:
    if found.verdict is Verdict.SERVER_UNTRUSTED:
        return (f"TLS handshake with {target} failed: the server's certificate is not trusted "
                f"by {ca} ({found.detail}); check --server and that {ca} is this "
                "federation's CA certificate")
    return (f"server {target} refused the TLS handshake: it does not trust this "
            f"organisation's certificate {crt} ({found.detail}); the server trusts another CA "
            "than the one that issued it: ask its operator for a certificate of the "
            "federation's CA")
