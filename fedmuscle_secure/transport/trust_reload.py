"""The running server's trust, re-read when ``crl.pem`` changes (DESIGN §6).

:func:`~fedmuscle_secure.transport.tls_trust.load_trust` reads a CA directory once; a server that kept
that copy for a whole run would go on serving an organisation revoked mid-run (``provision
revoke`` re-signs ``crl.pem``; the operator copies it into the server's ``--certs``).
:class:`LiveTrust` keeps the CA certificate and the subject map of the start and re-reads
the CRL whenever the file changed, checked by ``stat`` (size, inode, modification and
status-change times: ``ctime`` moves on every write and cannot be set back by the writer)
and then by content. The server refreshes it on every new connection and at every stage
boundary of a round (:mod:`fedmuscle_secure.server.coordinator`), so a revoked member is
refused when it connects and cut off when it is already connected.

A CRL file is only a file: whoever can write the server's ``--certs`` could replace it. A
new CRL therefore replaces the current one only when it verifies like the first one (PEM,
issued and signed by the CA) *and* its CRL number is not lower than the current one's: an
older CRL, validly signed before the revocation, would otherwise un-revoke a member. A CRL
that fails either check is logged as an error and recorded (``crl_rejected``), and the
last good one stays in force; the server neither crashes nor trusts more than before. The
file is read without blocking and only if it is a regular file of bounded size
(:func:`~fedmuscle_secure.transport.tls_trust.read_crl_file`): the check runs under the
coordinator's lock, where a FIFO or an endless file would freeze or exhaust the server.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography import x509

from fedmuscle_secure.errors import IdentityError
from fedmuscle_secure.transport.tls_trust import (
    CRL_FILE,
    Trust,
    load_trust,
    parse_crl,
    read_crl_file,
)

__all__ = ["LiveTrust"]
log = logging.getLogger("fedmuscle_secure.server")

EventSink = Callable[..., None]  # RunDir.event: (kind, **fields)


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return -1  # provision always writes one; a CRL without it is older than any with it


class LiveTrust:
    """:class:`~fedmuscle_secure.transport.tls_trust.Trust` of ``ca_dir`` whose CRL follows the file
    (module docs). ``on_event(kind, **fields)`` receives ``crl_reloaded`` and
    ``crl_rejected`` (the run directory's ``events.jsonl``)."""

    def __init__(self, ca_dir: str | os.PathLike, *, on_event: EventSink | None = None) -> None:
        self.path = Path(ca_dir) / CRL_FILE
        self.on_event = on_event
        self._trust: Trust = load_trust(ca_dir)
        self._stamp = self._stat()
        self._digest = hashlib.sha256(read_crl_file(self.path)).digest()
        self.last_error: str | None = None  # why the newest CRL file was not taken

    @property
    def trust(self) -> Trust:
        """The trust in force (without re-reading the file)."""
        return self._trust

    @property
    def ca_pem(self) -> bytes:
        return self._trust.ca_pem

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns

    def refresh(self) -> Trust:
        """Re-read the CRL if the file changed; returns the trust in force (module docs)."""
        stamp = self._stat()
        if stamp == self._stamp:
            return self._trust
        self._stamp = stamp  # a rejected file is reported once, not at every boundary
        try:
            data = read_crl_file(self.path)
            digest = hashlib.sha256(data).digest()
            if digest == self._digest:
                return self._trust
            crl = parse_crl(data, self.path, self._trust.ca_cert)
            old, new = _crl_number(self._trust.crl), _crl_number(crl)
            if new < old:
                raise IdentityError(f"{self.path}: CRL number {new} is older than the CRL in "
                                    f"force (number {old}); an older CRL could un-revoke a "
                                    "certificate")
        except IdentityError as exc:
            self.last_error = str(exc)
            log.error("keeping the CRL in force (number %d): %s", _crl_number(self._trust.crl),
                      exc)
            self._emit("crl_rejected", path=str(self.path), reason=str(exc),
                       in_force=_crl_number(self._trust.crl))
            return self._trust
        self._trust, self._digest, self.last_error = replace(self._trust, crl=crl), digest, None
        log.info("reloaded %s: CRL number %d, %d revoked", self.path, _crl_number(crl),
                 sum(1 for _ in crl))
        self._emit("crl_reloaded", path=str(self.path), crl_number=_crl_number(crl),
                   revoked=sum(1 for _ in crl))
        return self._trust

    def verify_peer(self, cert: bytes | str | x509.Certificate) -> str:
        """:meth:`Trust.verify_peer` against the newest good CRL (a new connection)."""
        return self.refresh().verify_peer(cert)

    def revoked(self, peers: Mapping[str, x509.Certificate]) -> dict[str, str]:
        """Of the connected ``peers`` (client id → its certificate), those the newest good
        CRL revokes, with why. Expiry and CRL staleness are checked when a peer connects;
        mid-run only a revocation cuts a member off."""
        trust = self.refresh()
        return {c: why for c, cert in peers.items() if (why := trust.revocation(cert))}

    def _emit(self, kind: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, **fields)
