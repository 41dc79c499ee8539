"""An organisation that keeps its own key: it makes a CSR at home, the CA signs it (DESIGN §6).

DESIGN §6 "each org may instead generate its key locally and send a CSR": ``provision csr``
(:func:`make_csr`) writes the organisation's key and CSR, and only the CSR leaves it;
``provision sign`` (:func:`sign_csr`) checks the CSR, issues the clientAuth certificate and
maps its CN to a client id in the CA directory of :mod:`fedmuscle_secure.provision.ca`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedmuscle_secure.durable import write_atomic
from fedmuscle_secure.errors import ConfigError, IdentityError
from fedmuscle_secure.provision.ca import (
    SIGNATURE_HASH,
    Usage,
    generate_key,
    issue_certificate,
    key_pem,
    leaf_window,
    load_authority,
    org_paths,
    subject_name,
    validity_days,
    write_clients,
    write_key_cert,
)
from fedmuscle_secure.provision.project import check_org
from fedmuscle_secure.transport.tls_trust import (
    CLIENTS_FILE,
    load_cert_file,
    load_crl,
    name_attribute,
    pem_bytes,
    read_clients,
    read_file,
    utc_now,
)

__all__ = ["CsrFiles", "SignedCert", "make_csr", "sign_csr"]


@dataclass(frozen=True)
class CsrFiles:
    """What ``provision csr`` wrote: the org's key (stays home) and the CSR to send."""

    key_path: Path
    csr_path: Path


def make_csr(org: str, out: str | os.PathLike, *, force: bool = False) -> CsrFiles:
    """An organization's own key (``out/<org>.key``, 0600) and CSR (``out/<org>.csr``).

    DESIGN §6 "each org may instead generate its key locally and send a CSR": only the CSR
    leaves the organization; :func:`sign_csr` never sees the key.
    """
    check_org(org, "--org")
    out = Path(out)
    key_path, csr_path = out / f"{org}.key", out / f"{org}.csr"
    if key_path.exists() and not force:
        raise ConfigError("--out", f"{key_path} already exists; expected no key for {org!r} "
                                   "there (pass --force to make a new one)")
    key = generate_key()
    csr = (x509.CertificateSigningRequestBuilder().subject_name(subject_name(org, None))
           .sign(key, SIGNATURE_HASH()))
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(key_path, key_pem(key), 0o600)
    write_atomic(csr_path, pem_bytes(csr), 0o644)
    return CsrFiles(key_path, csr_path)


@dataclass(frozen=True)
class SignedCert:
    """What ``provision sign`` issued: the org, its client id and where the certificate is."""

    org: str
    client_id: str
    serial: int
    cert_path: Path
    delivered_path: Path


def _archive_revoked(ca_dir: Path, org: str, crl: x509.CertificateRevocationList) -> None:
    """Move a revoked current certificate (and key) of ``org`` to ``revoked/<serial>.*``."""
    key_path, cert_path = org_paths(ca_dir, org)
    if not cert_path.exists():
        return
    old = load_cert_file(cert_path, "organization certificate")
    if crl.get_revoked_certificate_by_serial_number(old.serial_number) is None:
        raise ConfigError("--csr", f"organization {org!r} already has a certificate that is not "
                                   f"revoked ({cert_path}, serial {old.serial_number:x}); "
                                   "revoke it first")
    archive = cert_path.parent / "revoked"
    archive.mkdir(mode=0o700, exist_ok=True)
    for path in (key_path, cert_path):
        if path.exists():
            os.replace(path, archive / f"{old.serial_number:x}{path.suffix}")


def sign_csr(ca_dir: str | os.PathLike, csr_path: str | os.PathLike, client_id: str, *,
             days: int | None = None, cert_out: str | os.PathLike | None = None,
             now: datetime | None = None) -> SignedCert:
    """Issue a clientAuth certificate for a CSR and map its CN to ``client_id``.

    Checks the CSR's self-signature (the requester holds the key), its single CN and its
    key type; builds the subject itself (CN from the CSR, O from the CA) and ignores any
    extensions the CSR asks for. Writes ``orgs/<org>/<org>.crt``, updates ``clients.yaml``
    and delivers a copy to ``cert_out`` (default: beside the CSR, ``<org>.crt``).
    """
    ca_dir, csr_path, now = Path(ca_dir), Path(csr_path), utc_now(now)
    ca = load_authority(ca_dir)
    data = read_file(csr_path, "certificate signing request")
    try:
        csr = (x509.load_pem_x509_csr(data) if data.lstrip().startswith(b"-----BEGIN")
               else x509.load_der_x509_csr(data))
    except ValueError as exc:
        raise IdentityError(f"{csr_path}: not a PEM or DER CSR ({exc})") from None
    if not csr.is_signature_valid:
        raise IdentityError(f"{csr_path}: CSR signature does not verify under the key it carries")
    org = name_attribute(csr.subject, NameOID.COMMON_NAME)
    if org is None:
        raise IdentityError(f"{csr_path}: expected exactly one subject CN (the org name), got "
                            f"{csr.subject.rfc4514_string()!r}")
    check_org(org, f"{csr_path}: subject CN")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise IdentityError(f"{csr_path}: expected an ECDSA P-256 key, got {type(key).__name__}")
    check_org(client_id, "--client-id")
    clients = read_clients(ca_dir)
    if clients.get(org, client_id) != client_id:
        raise ConfigError("--client-id", f"{org!r} is client {clients[org]!r} in "
                                         f"{ca_dir / CLIENTS_FILE}; expected that id")
    other = next((cn for cn, cid in clients.items() if cid == client_id and cn != org), None)
    if other is not None:
        raise ConfigError("--client-id", f"{client_id!r} is already the client id of {other!r}")
    _archive_revoked(ca_dir, org, load_crl(ca_dir, ca.cert))
    cert = issue_certificate(ca, key, common_name=org, usage=Usage.CLIENT,
                             **leaf_window(days or validity_days(ca_dir).org, now))
    cert_path = write_key_cert(ca_dir / "orgs" / org, org, None, cert)
    write_clients(ca_dir, {**clients, org: client_id})
    delivered = Path(cert_out) if cert_out is not None else csr_path.with_name(f"{org}.crt")
    if delivered.resolve() != cert_path.resolve():
        write_atomic(delivered, pem_bytes(cert), 0o644)
    return SignedCert(org, client_id, cert.serial_number, cert_path, delivered)
