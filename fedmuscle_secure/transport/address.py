"""Network addresses as the deployment writes them: ``HOST:PORT`` or ``[IPv6]:PORT``.

Parsed here, beside the streams and TLS probes that dial them, so that the server, the
client and the CLI's flag checks agree on one grammar.
"""

from __future__ import annotations

__all__ = ["split_host_port"]


def split_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port); raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or int(port) > 65535:
        raise ValueError(text)
    return host, int(port)
