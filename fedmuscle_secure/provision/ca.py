"""PKI for the mutual-TLS deployment: CA, server and organization certificates, CRL (DESIGN §6).

DESIGN §6: "A provisioning command creates a CA, the server's certificate and one
key+certificate per organization (each org may instead generate its key locally and send a
CSR). A client's identity is its certificate's subject; the server refuses unknown or
revoked identities." This module is that PKI, built only on ``cryptography``'s X.509 API.

Key algorithm: **ECDSA P-256 with SHA-256 signatures** for every key and certificate. gRPC's
TLS stack (BoringSSL) accepts it in TLS 1.2 and 1.3 in every language binding. Ed25519 does
not work there: with grpcio 1.85 an Ed25519 chain fails the mutual-TLS handshake with
``NO_COMMON_SIGNATURE_ALGORITHMS`` (Ed25519 is not in BoringSSL's default verify list).
The ledger's Ed25519 identity keys (:mod:`fedmuscle_secure.crypto.identity`) are a separate matter.

A CA directory (``provision init --out DIR``)::

    ca/ca.key  ca/ca.crt            the CA (key 0600; keep ca.key offline if you can)
    server/server.key server.crt    the gRPC server (SANs: every configured host)
    orgs/<org>/<org>.key <org>.crt  one per organization (no .key when it sent a CSR)
    orgs/<org>/revoked/<serial>.*   certificates replaced after revocation
    crl.pem                         signed CRL (the server refuses what it lists)
    clients.yaml                    certificate subject CN -> client id
    project.resolved.yaml           the project as provisioned (name, hosts, validity)

The server needs only ``ca/ca.crt``, ``crl.pem``, ``clients.yaml`` and ``server/``; what it
does with them at run time (:class:`~fedmuscle_secure.transport.tls_trust.Trust`,
:func:`~fedmuscle_secure.transport.tls_trust.load_trust`) is :mod:`fedmuscle_secure.transport.tls_trust`.
Reading and validating ``project.yaml`` is :mod:`fedmuscle_secure.provision.project`.
Both modules' public names are re-exported here. Revoking, re-signing the CRL and listing
certificates is :mod:`fedmuscle_secure.provision.revocation`; an organisation's own key and
CSR, and signing it, :mod:`fedmuscle_secure.provision.csr`. The command line is
:mod:`fedmuscle_secure.cli.provision`.
"""

from __future__ import annotations

import enum
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmuscle_secure.durable import write_atomic
from fedmuscle_secure.errors import ConfigError, IdentityError
from fedmuscle_secure.provision.project import (  # noqa: F401 - re-exported
    Organization,
    Project,
    ValidityDays,
    check_org,
    load_project,
    parse_project,
)
from fedmuscle_secure.transport.tls_trust import (
    CLIENTS_FILE,
    CRL_FILE,
    Trust,
    load_cert_file,
    load_trust,
    name_attribute,
    pem_bytes,
    read_file,
    utc_now,
)

__all__ = [
    "SIGNATURE_HASH", "Authority", "Project", "Trust", "Usage", "ValidityDays", "build_crl",
    "generate_key", "init_ca_dir", "issue_certificate", "key_pem", "leaf_window",
    "load_authority", "load_project", "load_trust", "new_authority", "org_paths", "subject_name",
    "validity_days", "write_clients", "write_key_cert",
]

#: ``not_valid_before`` is back-dated by this much so a peer whose clock is a little behind
#: the CA's does not see a fresh certificate as "not yet valid".
CLOCK_SKEW = timedelta(minutes=5)
RESOLVED_PROJECT = "project.resolved.yaml"
#: What ``init --force`` replaces in an existing directory; anything else there is left alone.
_MANAGED = ("ca", "server", "orgs", CRL_FILE, CLIENTS_FILE, RESOLVED_PROJECT)
SIGNATURE_HASH = hashes.SHA256


class Usage(enum.Enum):
    """What a leaf certificate is for: its ExtendedKeyUsage (serverAuth or clientAuth)."""

    SERVER = "server"
    CLIENT = "client"


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key from the OS CSPRNG (module docstring: why P-256)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def subject_name(common_name: str, federation: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation)] if federation else []
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False)


@dataclass(frozen=True)
class Authority:
    """The CA's key and self-signed certificate: what signs certificates and the CRL."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def federation(self) -> str:
        """The federation name: the CA subject's O, copied into every certificate it issues."""
        return name_attribute(self.cert.subject, NameOID.ORGANIZATION_NAME) or ""


def new_authority(federation: str, *, days: int, now: datetime | None = None) -> Authority:
    """Self-signed CA (BasicConstraints CA=true pathlen 0; KeyUsage keyCertSign+cRLSign).

    pathlen 0 and CA=false on every leaf: nothing below this CA can sign certificates, so a
    stolen organization key cannot mint other identities.
    """
    now, key = utc_now(now), generate_key()
    name = subject_name(f"{federation} CA", federation)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, SIGNATURE_HASH()))
    return Authority(key, cert)


def issue_certificate(
    ca: Authority, public_key: ec.EllipticCurvePublicKey, *, common_name: str, usage: Usage,
    not_before: datetime, not_after: datetime, hosts: tuple[x509.GeneralName, ...] = (),
) -> x509.Certificate:
    """Sign a leaf certificate for ``public_key`` (subject CN=``common_name``, O=federation).

    Validity is explicit (no default for a dangerous choice); tests issue certificates
    already expired with it. ``Usage.SERVER`` needs ``hosts`` (its SANs); ``Usage.CLIENT``
    gets EKU clientAuth, which :meth:`Trust.verify_peer` requires.
    """
    if not_after <= not_before:
        raise ValueError(f"not_after {not_after} must be later than not_before {not_before}")
    if not_after > ca.cert.not_valid_after_utc:
        raise ConfigError("--days", f"certificate for {common_name!r} would expire {not_after:%F}, "
                                  f"after the CA itself ({ca.cert.not_valid_after_utc:%F}); "
                                  "expected a shorter validity")
    if usage is Usage.SERVER and not hosts:
        raise ValueError("a server certificate needs at least one host (DNS name or IP)")
    eku = ExtendedKeyUsageOID.SERVER_AUTH if usage is Usage.SERVER else \
        ExtendedKeyUsageOID.CLIENT_AUTH
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (x509.CertificateBuilder().subject_name(subject_name(common_name, ca.federation))
               .issuer_name(ca.cert.subject).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_key_usage(ca=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                              critical=False)
               .add_extension(
                   x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                   critical=False))
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(hosts)), critical=False)
    return builder.sign(ca.key, SIGNATURE_HASH())


def leaf_window(days: int, now: datetime) -> dict[str, datetime]:
    return {"not_before": now - CLOCK_SKEW, "not_after": now + timedelta(days=days)}


def build_crl(ca: Authority, revoked: list[x509.RevokedCertificate], number: int, days: int,
               now: datetime) -> x509.CertificateRevocationList:
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
               .last_update(now).next_update(now + timedelta(days=days))
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(
                   x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                   critical=False))
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca.key, SIGNATURE_HASH())


# --- files of a CA directory -----------------------------------------------------------


def load_authority(ca_dir: str | os.PathLike) -> Authority:
    """Read ``ca/ca.key`` and ``ca/ca.crt`` and check that the key is the certificate's."""
    ca_dir = Path(ca_dir)
    cert = load_cert_file(ca_dir / "ca" / "ca.crt", "CA certificate")
    key_path = ca_dir / "ca" / "ca.key"
    try:
        key = serialization.load_pem_private_key(read_file(key_path, "CA key"), password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{key_path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise IdentityError(f"{key_path}: expected the ECDSA key of {ca_dir / 'ca' / 'ca.crt'}")
    return Authority(key, cert)


def write_clients(ca_dir: Path, clients: Mapping[str, str]) -> None:
    text = ("# Certificate subject CN -> client id (DESIGN §6); written by "
            "`fedmuscle-secure provision`.\n"
            + yaml.safe_dump({"version": 1, "clients": dict(sorted(clients.items()))},
                             sort_keys=False))
    write_atomic(ca_dir / CLIENTS_FILE, text.encode(), 0o644)


def validity_days(ca_dir: Path) -> ValidityDays:
    path = ca_dir / RESOLVED_PROJECT
    if not path.is_file():
        return ValidityDays()
    raw = yaml.safe_load(read_file(path, "resolved project"))
    days = raw.get("validity_days") if isinstance(raw, dict) else None
    return ValidityDays(**{k: v for k, v in (days or {}).items()
                           if k in ValidityDays.__dataclass_fields__ and isinstance(v, int)})


def org_paths(ca_dir: Path, org: str) -> tuple[Path, Path]:
    folder = ca_dir / "orgs" / org
    return folder / f"{org}.key", folder / f"{org}.crt"


def write_key_cert(folder: Path, stem: str, key: ec.EllipticCurvePrivateKey | None,
                    cert: x509.Certificate) -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if key is not None:
        write_atomic(folder / f"{stem}.key", key_pem(key), 0o600)
    write_atomic(folder / f"{stem}.crt", pem_bytes(cert), 0o644)
    return folder / f"{stem}.crt"


def init_ca_dir(project: Project, out: str | os.PathLike, *, days: int | None = None,
                force: bool = False, now: datetime | None = None) -> Path:
    """Create the CA directory for ``project`` (``provision init``); return its path.

    Everything is built in a temporary sibling folder and moved in at the end, so a failure
    leaves no half-made PKI. An existing non-empty ``out`` is refused unless ``force``;
    ``force`` replaces only the entries this function writes. ``days`` overrides the
    server and organization validity.
    """
    out, now = Path(out), utc_now(now)
    if days is not None and not 1 <= days <= project.validity.ca:
        raise ConfigError("--days", f"expected 1 to {project.validity.ca} days (the CA's "
                                    f"validity), got {days}")
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError("--out", f"{out} exists and is not empty; expected a new directory "
                                   "(pass --force to replace its CA, server and org files)")
    v = project.validity
    leaf = {"server": days or v.server, "org": days or v.org}
    ca = new_authority(project.name, days=v.ca, now=now)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_key_cert(tmp / "ca", "ca", ca.key, ca.cert)
        key = generate_key()
        cert = issue_certificate(ca, key.public_key(), common_name=project.server_name,
                                 usage=Usage.SERVER, hosts=project.server_hosts,
                                 **leaf_window(leaf["server"], now))
        write_key_cert(tmp / "server", "server", key, cert)
        for org in project.organizations:
            key = generate_key()
            cert = issue_certificate(ca, key.public_key(), common_name=org.name,
                                     usage=Usage.CLIENT, **leaf_window(leaf["org"], now))
            write_key_cert(tmp / "orgs" / org.name, org.name, key, cert)
        write_atomic(tmp / CRL_FILE, pem_bytes(build_crl(ca, [], 1, v.crl, now)), 0o644)
        write_clients(tmp, {o.name: o.client_id for o in project.organizations})
        write_atomic(tmp / RESOLVED_PROJECT,
                      yaml.safe_dump(project.to_dict(), sort_keys=False).encode(), 0o644)
        if not out.exists():
            tmp.chmod(0o755)
            os.replace(tmp, out)
            return out
        for entry in _MANAGED:
            target = out / entry
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(tmp / entry, target)
        tmp.rmdir()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
