"""Run-time trust for the mutual-TLS server: CA certificate, CRL, subject -> client id.

What the gRPC server needs from a CA directory made by :mod:`fedmuscle_secure.provision.ca`
(DESIGN §6: "the server refuses unknown or revoked identities"): ``ca/ca.crt``, ``crl.pem``
and ``clients.yaml``. :func:`load_trust` never reads the CA key. gRPC checks the chain in
the handshake; :meth:`Trust.verify_peer` then maps the peer certificate to a client id and
refuses expired, revoked, unknown or mis-used certificates (raise, never return a bool).

The readers of those files (and the validity/revocation checks) live here and are shared
with the provisioning operations, so the server side never imports the signing code.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmuscle_secure.errors import DataError, IdentityError

__all__ = ["CLIENTS_FILE", "CRL_FILE", "MAX_CRL_BYTES", "Trust", "load_cert", "load_cert_file",
           "load_crl", "load_trust", "name_attribute", "parse_crl", "pem_bytes", "read_clients",
           "read_crl_file", "read_file", "revocation_entry", "utc_now", "validity_problem"]

CLIENTS_FILE = "clients.yaml"
CRL_FILE = "crl.pem"
_EKU_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
              ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


def utc_now(now: datetime | None) -> datetime:
    """``now`` (which must be timezone-aware), or the current UTC time when it is None."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return now


def pem_bytes(obj: x509.Certificate | x509.CertificateRevocationList
         | x509.CertificateSigningRequest) -> bytes:
    """The PEM bytes of a certificate, CRL or CSR, as the CA directory stores them."""
    return obj.public_bytes(serialization.Encoding.PEM)


def name_attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    """The one value of ``oid`` in ``name``, or None when it is absent or repeated."""
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if len(values) == 1 else None


# --- files of a CA directory (public parts) ---------------------------------------------


def read_file(path: Path, what: str) -> bytes:
    """The bytes of ``path``, or :class:`IdentityError` naming the file and ``what`` it is."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def load_cert(data: bytes, source: str) -> x509.Certificate:
    """A PEM or DER certificate, or :class:`IdentityError` naming ``source``."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise IdentityError(f"{source}: not a PEM or DER X.509 certificate ({exc})") from None


#: The largest CRL file read (a CRL entry is about 40 bytes: far more than a federation's).
MAX_CRL_BYTES = 16 << 20


def read_crl_file(path: Path) -> bytes:
    """The bytes of the CRL file ``path``, or :class:`IdentityError`. The running server
    re-reads this file under its coordinator's lock, and whoever can write it can put
    anything there: a FIFO would block ``open`` until someone writes to it (freezing the
    run) and a link to ``/dev/zero`` would be read until memory runs out. So the file is
    opened without blocking and must be a regular file of at most :data:`MAX_CRL_BYTES`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read the CRL: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IdentityError(f"{path}: not a regular file; expected the CRL (PEM)")
        data = f.read(MAX_CRL_BYTES + 1)
    if len(data) > MAX_CRL_BYTES:
        raise IdentityError(f"{path}: larger than {MAX_CRL_BYTES} bytes; expected a CRL")
    return data


def load_cert_file(path: Path, what: str) -> x509.Certificate:
    """The certificate in ``path`` (``what`` names it in errors)."""
    return load_cert(read_file(path, what), str(path))


def load_crl(ca_dir: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    """The CRL of the CA directory ``ca_dir``, its signature checked against ``ca_cert``."""
    path = ca_dir / CRL_FILE
    return parse_crl(read_crl_file(path), path, ca_cert)


def parse_crl(data: bytes, path: Path, ca_cert: x509.Certificate,
               ) -> x509.CertificateRevocationList:
    """``data`` (the bytes of ``path``) as a CRL signed by ``ca_cert``, or raise
    :class:`IdentityError`: a CRL the CA did not sign is never trusted."""
    # The parser is partly lazy: a malformed version is its own exception type, and a
    # malformed issuer name only fails when it is read. Both are a file that is not a CRL
    # of ours, never an exception out of the server's run loop.
    try:
        crl = x509.load_pem_x509_crl(data)
        signed = crl.issuer == ca_cert.subject and crl.is_signature_valid(ca_cert.public_key())
    except (ValueError, x509.InvalidVersion) as exc:
        raise IdentityError(f"{path}: not a PEM CRL ({exc})") from None
    if not signed:
        raise IdentityError(f"{path}: CRL is not signed by the CA {ca_cert.subject.rfc4514_string()}")
    return crl


def read_clients(ca_dir: Path) -> dict[str, str]:
    """The subject CN → client id map of ``ca_dir`` (``clients.yaml``), one subject per id."""
    path = ca_dir / CLIENTS_FILE
    try:
        raw = yaml.safe_load(read_file(path, "client map"))
    except yaml.YAMLError as exc:
        raise DataError(str(path), f"not valid YAML: {exc}") from None
    clients = raw.get("clients") if isinstance(raw, dict) else None
    if not isinstance(clients, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in clients.items()):
        raise DataError(str(path), "expected a mapping 'clients: {<subject CN>: <client id>}'")
    # One certificate subject per client id, as provisioning writes it: with two, revoking
    # one organisation's certificate would leave a second way in under the same id.
    seen: dict[str, str] = {}
    for cn, cid in clients.items():
        if cid in seen:
            raise DataError(str(path), f"client id {cid!r} is mapped from two subjects, "
                                       f"{seen[cid]!r} and {cn!r}; expected one subject per id")
        seen[cid] = cn
    return clients


def revocation_entry(crl: x509.CertificateRevocationList, serial: int,
                     ) -> tuple[datetime, str] | None:
    """``(revocation date, reason)`` of ``serial`` in ``crl``, or None if it is not revoked."""
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    if entry is None:
        return None
    try:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
    except x509.ExtensionNotFound:
        reason = "unspecified"
    return entry.revocation_date_utc, reason


def validity_problem(cert: x509.Certificate, now: datetime) -> tuple[str, str] | None:
    """``(status, detail)`` when ``now`` is outside the certificate's validity, else None."""
    if now < cert.not_valid_before_utc:
        return "not yet valid", f"not yet valid (from {cert.not_valid_before_utc.isoformat()})"
    if now > cert.not_valid_after_utc:
        return "expired", f"expired on {cert.not_valid_after_utc.isoformat()}"
    return None


@dataclass(frozen=True)
class Trust:
    """What the server trusts: CA certificate, its CRL and the subject CN -> client id map."""

    ca_cert: x509.Certificate
    crl: x509.CertificateRevocationList
    clients: Mapping[str, str]
    source: Path

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate as PEM (``grpc.ssl_server_credentials(root_certificates=...)``)."""
        return pem_bytes(self.ca_cert)

    def revocation(self, cert: x509.Certificate) -> str | None:
        """Why this CRL revokes ``cert`` (date, reason and CRL file), or None. Only the
        CRL: a connected member is checked with it when the CRL changes mid-run."""
        if (revoked := revocation_entry(self.crl, cert.serial_number)) is None:
            return None
        return (f"revoked on {revoked[0].isoformat()} (reason {revoked[1]}) by "
                f"{self.source / CRL_FILE}")

    def verify_peer(self, cert: bytes | str | x509.Certificate, *,
                    now: datetime | None = None) -> str:
        """The client id of a peer certificate (PEM or DER), or raise :class:`IdentityError`.

        Call it with ``context.auth_context()["x509_pem_cert"][0]`` in a gRPC servicer.
        Refuses, naming the reason: not signed by our CA, expired / not yet valid, revoked
        (in the CRL, or the CRL itself is stale), a CA certificate or no clientAuth EKU,
        and a subject CN with no client id (DESIGN §6: unknown or revoked identities).
        """
        now = utc_now(now)
        if isinstance(cert, str):
            cert = cert.encode("ascii", errors="replace")
        if not isinstance(cert, x509.Certificate):
            cert = load_cert(cert, "peer certificate")
        cn = name_attribute(cert.subject, NameOID.COMMON_NAME)
        who = f"peer certificate CN={cn!r} serial {cert.serial_number:x}"
        ca_name = self.ca_cert.subject.rfc4514_string()
        try:
            cert.verify_directly_issued_by(self.ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise IdentityError(f"{who}: not signed by our CA {ca_name} (issuer "
                                f"{cert.issuer.rfc4514_string()})") from None
        if (window := validity_problem(cert, now)) is not None:
            raise IdentityError(f"{who}: {window[1]}")
        next_update = self.crl.next_update_utc
        if next_update is None or now > next_update:
            raise IdentityError(f"{self.source / CRL_FILE}: CRL is stale (next update was "
                                f"{next_update}); refusing every peer until the CA re-signs "
                                "it (fedmuscle-secure provision crl)")
        if (revoked := self.revocation(cert)) is not None:
            raise IdentityError(f"{who}: {revoked}")
        ext = {type(e.value): e.value for e in cert.extensions}
        bc, eku = ext.get(x509.BasicConstraints), list(ext.get(x509.ExtendedKeyUsage, []))
        if bc is not None and bc.ca:
            raise IdentityError(f"{who}: is a CA certificate; expected a leaf with EKU clientAuth")
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            got = ", ".join(_EKU_NAMES.get(o, o.dotted_string) for o in eku) or "none"
            raise IdentityError(f"{who}: wrong EKU ({got}); expected clientAuth")
        if cn is None or cn not in self.clients:
            raise IdentityError(f"{who}: unknown subject {cert.subject.rfc4514_string()!r}: "
                                f"no client id for it in {self.source / CLIENTS_FILE}")
        return self.clients[cn]


def load_trust(ca_dir: str | os.PathLike) -> Trust:
    """Read ``ca/ca.crt``, ``crl.pem`` (signature checked) and ``clients.yaml``; no CA key.

    Reload it (call again) to pick up a revocation: the returned object is immutable.
    """
    ca_dir = Path(ca_dir)
    ca_cert = load_cert_file(ca_dir / "ca" / "ca.crt", "CA certificate")
    return Trust(ca_cert, load_crl(ca_dir, ca_cert),
                 MappingProxyType(dict(read_clients(ca_dir))), ca_dir)
