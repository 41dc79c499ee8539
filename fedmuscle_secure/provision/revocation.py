"""Revocation and inventory of a CA directory: ``provision revoke``, ``crl`` and ``list``.

The CRL (``crl.pem``) is signed by the CA and re-signed with a fresh next-update on every
change (its CRL number goes up by one); a running server re-reads its copy when the file
changes and refuses what it lists (:class:`~fedmuscle_secure.transport.trust_reload.LiveTrust`). The CA directory itself is
:mod:`fedmuscle_secure.provision.ca`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from fedmuscle_secure.durable import write_atomic
from fedmuscle_secure.errors import ConfigError, IdentityError
from fedmuscle_secure.provision.ca import (
    Authority,
    build_crl,
    check_org,
    load_authority,
    org_paths,
    validity_days,
)
from fedmuscle_secure.transport.tls_trust import (
    CRL_FILE,
    load_cert_file,
    load_crl,
    pem_bytes,
    read_clients,
    revocation_entry,
    utc_now,
    validity_problem,
)

__all__ = ["CertStatus", "list_certificates", "refresh_crl", "revoke"]


def _resign_crl(ca_dir: Path, ca: Authority, extra: list[x509.RevokedCertificate],
                days: int | None, now: datetime) -> x509.CertificateRevocationList:
    old = load_crl(ca_dir, ca.cert)
    number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    crl = build_crl(ca, [*old, *extra], number + 1, days or validity_days(ca_dir).crl, now)
    write_atomic(ca_dir / CRL_FILE, pem_bytes(crl), 0o644)
    return crl


def revoke(ca_dir: str | os.PathLike, org: str, *,
           reason: x509.ReasonFlags = x509.ReasonFlags.unspecified,
           now: datetime | None = None) -> x509.Certificate:
    """Add ``org``'s current certificate to the CRL, re-signed with a fresh next-update.

    A running server sees the revocation once its ``crl.pem`` is this one
    (:class:`~fedmuscle_secure.transport.trust_reload.LiveTrust` re-reads it when it changes).
    Returns the revoked certificate.
    """
    ca_dir, now = Path(ca_dir), utc_now(now)
    ca = load_authority(ca_dir)
    _, cert_path = org_paths(ca_dir, check_org(org, "ORG"))
    if not cert_path.is_file():
        known = sorted(p.name for p in (ca_dir / "orgs").glob("*") if p.is_dir())
        raise ConfigError("ORG", f"no certificate {cert_path} for organization {org!r}; "
                                 f"expected one of {known}")
    cert = load_cert_file(cert_path, "organization certificate")
    if load_crl(ca_dir, ca.cert).get_revoked_certificate_by_serial_number(
            cert.serial_number) is not None:
        raise IdentityError(f"{cert_path}: serial {cert.serial_number:x} is already revoked")
    entry = (x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
             .revocation_date(now))
    if reason is not x509.ReasonFlags.unspecified:  # RFC 5280 §5.3.1: omit "unspecified"
        entry = entry.add_extension(x509.CRLReason(reason), critical=False)
    _resign_crl(ca_dir, ca, [entry.build()], None, now)
    return cert


def refresh_crl(ca_dir: str | os.PathLike, *, days: int | None = None,
                now: datetime | None = None) -> x509.CertificateRevocationList:
    """Re-sign the CRL with the same entries and a new next-update (before it goes stale)."""
    ca_dir = Path(ca_dir)
    return _resign_crl(ca_dir, load_authority(ca_dir), [], days, utc_now(now))


@dataclass(frozen=True)
class CertStatus:
    """One organization certificate as ``provision list`` shows it."""

    org: str
    client_id: str | None
    serial: str
    not_before: str
    not_after: str
    status: str  # valid | expired | not yet valid | revoked
    revoked_at: str | None
    reason: str | None
    current: bool
    path: str


def list_certificates(ca_dir: str | os.PathLike, *,
                      now: datetime | None = None) -> list[CertStatus]:
    """Every organization certificate in ``ca_dir`` (current and archived), with its status."""
    ca_dir, now = Path(ca_dir), utc_now(now)
    ca_cert = load_cert_file(ca_dir / "ca" / "ca.crt", "CA certificate")
    crl, clients = load_crl(ca_dir, ca_cert), read_clients(ca_dir)
    rows = []
    for folder in sorted(p for p in (ca_dir / "orgs").glob("*") if p.is_dir()):
        current = folder / f"{folder.name}.crt"
        for path in [current, *sorted((folder / "revoked").glob("*.crt"))]:
            if not path.is_file():
                continue
            cert = load_cert_file(path, "organization certificate")
            revoked = revocation_entry(crl, cert.serial_number)
            window = validity_problem(cert, now)
            status = "revoked" if revoked else ("valid" if window is None else window[0])
            rows.append(CertStatus(
                org=folder.name, client_id=clients.get(folder.name),
                serial=f"{cert.serial_number:x}",
                not_before=cert.not_valid_before_utc.isoformat(),
                not_after=cert.not_valid_after_utc.isoformat(), status=status,
                revoked_at=revoked[0].isoformat() if revoked else None,
                reason=revoked[1] if revoked else None, current=path == current,
                path=str(path)))
    return rows
