"""PKI for the mutual-TLS deployment: CA, server and organization certificates, CRL (DESIGN §6).

DESIGN §6: "A provisioning command creates a CA, the server's certificate and one
key+certificate per organization (each org may instead generate its key locally and send a
CSR). A client's identity is its certificate's subject; the server refuses unknown or
revoked identities." This module is that PKI, built only on ``cryptography``'s X.509 API.

Key algorithm: **ECDSA P-256 with SHA-256 signatures** for every key and certificate. gRPC's
TLS stack (BoringSSL) accepts it in TLS 1.2 and 1.3 in every language binding. Ed25519 does
not work there: with grpcio 1.85 an Ed25519 chain fails the mutual-TLS handshake with
``NO_COMMON_SIGNATURE_ALGORITHMS`` (Ed25519 is not in BoringSSL's default verify list).
The ledger's Ed25519 identity keys (:mod:`fedmuscle_secure.identity`) are a separate matter.

A CA directory (``provision init --out DIR``)::

    ca/ca.key  ca/ca.crt            the CA (key 0600; keep ca.key offline if you can)
    server/server.key server.crt    the gRPC server (SANs: every configured host)
    orgs/<org>/<org>.key <org>.crt  one per organization (no .key when it sent a CSR)
    orgs/<org>/revoked/<serial>.*   certificates replaced after revocation
    crl.pem                         signed CRL (the server refuses what it lists)
    clients.yaml                    certificate subject CN -> client id
    project.resolved.yaml           the project as provisioned (name, hosts, validity)

The server needs only ``ca/ca.crt``, ``crl.pem``, ``clients.yaml`` and ``server/``:
:func:`load_trust` never reads the CA key. gRPC checks the chain in the handshake;
:meth:`Trust.verify_peer` then maps the peer certificate to a client id and refuses
expired, revoked, unknown or mis-used certificates (raise, never return a bool).
The command line is :mod:`fedmuscle_secure.provision_cli`.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmuscle_secure.errors import ConfigError, DataError, IdentityError
from fedmuscle_secure.identity import _write_atomic, check_client_name

__all__ = [
    "Authority", "CertStatus", "CsrFiles", "Project", "SignedCert", "Trust", "Usage",
    "ValidityDays", "generate_key", "init_ca_dir", "issue_certificate", "list_certificates",
    "load_authority", "load_project", "load_trust", "make_csr", "new_authority",
    "refresh_crl", "revoke", "sign_csr",
]

#: ``not_valid_before`` is back-dated by this much so a peer whose clock is a little behind
#: the CA's does not see a fresh certificate as "not yet valid".
CLOCK_SKEW = timedelta(minutes=5)
CLIENTS_FILE = "clients.yaml"
CRL_FILE = "crl.pem"
RESOLVED_PROJECT = "project.resolved.yaml"
#: What ``init --force`` replaces in an existing directory; anything else there is left alone.
_MANAGED = ("ca", "server", "orgs", CRL_FILE, CLIENTS_FILE, RESOLVED_PROJECT)
_HASH = hashes.SHA256
_EKU_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
              ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


class Usage(enum.Enum):
    """What a leaf certificate is for: its ExtendedKeyUsage (serverAuth or clientAuth)."""

    SERVER = "server"
    CLIENT = "client"


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return now


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key from the OS CSPRNG (module docstring: why P-256)."""
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem(obj: x509.Certificate | x509.CertificateRevocationList
         | x509.CertificateSigningRequest) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def _subject(common_name: str, federation: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation)] if federation else []
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if len(values) == 1 else None


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
        return _attr(self.cert.subject, NameOID.ORGANIZATION_NAME) or ""


def new_authority(federation: str, *, days: int, now: datetime | None = None) -> Authority:
    """Self-signed CA (BasicConstraints CA=true pathlen 0; KeyUsage keyCertSign+cRLSign).

    pathlen 0 and CA=false on every leaf: nothing below this CA can sign certificates, so a
    stolen organization key cannot mint other identities.
    """
    now, key = _now(now), generate_key()
    name = _subject(f"{federation} CA", federation)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, _HASH()))
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
    builder = (x509.CertificateBuilder().subject_name(_subject(common_name, ca.federation))
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
    return builder.sign(ca.key, _HASH())


def _leaf_window(days: int, now: datetime) -> dict[str, datetime]:
    return {"not_before": now - CLOCK_SKEW, "not_after": now + timedelta(days=days)}


def _build_crl(ca: Authority, revoked: list[x509.RevokedCertificate], number: int, days: int,
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
    return builder.sign(ca.key, _HASH())


# --- project.yaml ------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidityDays:
    """Validity in days of the CA, server and organization certificates, and of each CRL."""

    ca: int = 3650
    server: int = 365
    org: int = 365
    crl: int = 30


@dataclass(frozen=True)
class Organization:
    """One member of the federation: its certificate CN and the client id it trains as."""

    name: str
    client_id: str


@dataclass(frozen=True)
class Project:
    """The federation ``project.yaml`` describes (validated by :func:`parse_project`)."""

    name: str
    server_name: str
    server_hosts: tuple[x509.GeneralName, ...]
    organizations: tuple[Organization, ...]
    validity: ValidityDays

    def to_dict(self) -> dict[str, Any]:
        """The resolved project as plain YAML-able data (``project.resolved.yaml``)."""
        return {"name": self.name,
                "server": {"name": self.server_name,
                           "hosts": [str(h.value) for h in self.server_hosts]},
                "organizations": [{"name": o.name, "client_id": o.client_id}
                                  for o in self.organizations],
                "validity_days": dict(self.validity.__dict__)}


_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_KEYS = {"<root>": {"name", "server", "organizations", "validity_days"},
         "server": {"name", "hosts"}, "validity_days": set(ValidityDays.__dataclass_fields__)}


def _host(host: Any) -> x509.GeneralName | str:
    """A SAN for ``host`` (IP address or DNS name), or the problem with it."""
    if not isinstance(host, str) or not host:
        return f"expected a DNS name or IP address string, got {host!r}"
    if ":" in host or all(c.isdigit() or c == "." for c in host):
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return f"{host!r} is not a valid IPv4/IPv6 address"
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels) \
            or labels[-1].isdigit():
        return (f"{host!r} is neither an IP address nor a DNS name (labels of 1-63 letters, "
                "digits and inner hyphens, separated by dots)")
    return x509.DNSName(host.rstrip("."))


def _name_problem(value: Any, limit: int = 64) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"expected a non-empty string, got {value!r}"
    return f"{value!r} is longer than {limit} characters (X.509 name limit)" \
        if len(value) > limit else None


def _parse_orgs(raw: Any, problems: list[tuple[str, str]]) -> list[Organization]:
    if not isinstance(raw, list) or not raw:
        problems.append(("organizations", (f"expected a non-empty list of {{name, client_id}}, "
                                          f"got {raw!r}")))
        return []
    orgs, seen = [], {"name": {}, "client_id": {}}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"name", "client_id"}:
            problems.append((f"organizations.{i}", (f"expected a mapping with exactly 'name' "
                                                   f"and 'client_id', got {item!r}")))
            continue
        ok = True
        for key in ("name", "client_id"):
            value = item[key]
            try:
                if not isinstance(value, str):
                    raise ConfigError(key, f"expected a string, got {value!r}")
                _check_org(value, key)
            except ConfigError as exc:
                problems.append((f"organizations.{i}.{key}", str(exc).split(": ", 1)[1]))
                ok = False
                continue
            if value in seen[key]:
                problems.append((f"organizations.{i}.{key}", (f"duplicate {key} {value!r} "
                                 f"(also organizations.{seen[key][value]}.{key})")))
                ok = False
            seen[key].setdefault(value, i)
        if ok:
            orgs.append(Organization(item["name"], item["client_id"]))
    return orgs


def parse_project(raw: Any, *, source: str = "project.yaml") -> Project:
    """Validate a project mapping, collecting every problem; raise one :class:`ConfigError`.

    Its ``field`` is the first problem's dotted path; its message lists them all, each
    with what was expected (CONVENTIONS "validators that collect and explain").
    """
    if not isinstance(raw, dict):
        raise ConfigError("<root>", f"{source} must be a YAML mapping, got {type(raw).__name__}")
    problems: list[tuple[str, str]] = []
    sections = {"<root>": raw, "server": raw.get("server"),
                "validity_days": raw.get("validity_days")}
    for where, allowed in _KEYS.items():
        section = sections[where]
        for key in sorted(set(section) - allowed) if isinstance(section, dict) else ():
            path = key if where == "<root>" else f"{where}.{key}"
            problems.append((path, f"unknown field; expected one of {sorted(allowed)}"))
    if (p := _name_problem(raw.get("name"), 60)) is not None:
        problems.append(("name", p))
    server, hosts = raw.get("server"), []
    if not isinstance(server, dict):
        problems.append(("server", f"expected a mapping {{name, hosts}}, got {server!r}"))
        server = {}
    elif (p := _name_problem(server.get("name"))) is not None:
        problems.append(("server.name", p))
    raw_hosts = server.get("hosts") if server else []
    if not isinstance(raw_hosts, list) or not raw_hosts:
        if server:
            problems.append(("server.hosts", ("expected a non-empty list of DNS names and/or IP "
                                             f"addresses, got {raw_hosts!r}")))
        raw_hosts = []
    for i, host in enumerate(raw_hosts):
        san = _host(host)
        if isinstance(san, str):
            problems.append((f"server.hosts.{i}", san))
        elif san in hosts:
            problems.append((f"server.hosts.{i}", f"duplicate host {host!r}"))
        else:
            hosts.append(san)
    orgs = _parse_orgs(raw.get("organizations"), problems)
    vraw = raw.get("validity_days") or {}
    if not isinstance(vraw, dict):
        problems.append(("validity_days", (f"expected a mapping {{ca, server, org, crl}} of "
                                          f"days, got {vraw!r}")))
        vraw = {}
    vals = {}
    for key in ValidityDays.__dataclass_fields__:
        value = vraw.get(key, getattr(ValidityDays, key))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append((f"validity_days.{key}", (f"expected a positive integer number of "
                                                     f"days, got {value!r}")))
        else:
            vals[key] = value
    for key in ("server", "org"):
        if key in vals and vals[key] > vals.get("ca", vals[key]):
            problems.append((f"validity_days.{key}", (f"{vals[key]} days exceeds validity_days.ca "
                             f"({vals['ca']}); expected a certificate that expires before its CA")))
    if problems:
        field, first = problems[0]
        more = "".join(f"\n  {f}: {m}" for f, m in problems[1:])
        extra = f" (and {len(problems) - 1} more problem(s):{more})" if more else ""
        exc = ConfigError(field, f"{first} [in {source}]{extra}")
        exc.problems = problems  # type: ignore[attr-defined]
        raise exc
    return Project(raw["name"], server["name"], tuple(hosts), tuple(orgs), ValidityDays(**vals))


def load_project(path: str | os.PathLike) -> Project:
    """Read and validate ``project.yaml``; errors name the file and field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--project", f"{path} does not exist; expected a project.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError("--project", f"{path} is not valid YAML: {exc}") from None
    return parse_project(raw, source=str(path))


# --- files of a CA directory -----------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def _load_cert(data: bytes, source: str) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise IdentityError(f"{source}: not a PEM or DER X.509 certificate ({exc})") from None


def _cert_file(path: Path, what: str) -> x509.Certificate:
    return _load_cert(_read(path, what), str(path))


def load_authority(ca_dir: str | os.PathLike) -> Authority:
    """Read ``ca/ca.key`` and ``ca/ca.crt`` and check that the key is the certificate's."""
    ca_dir = Path(ca_dir)
    cert = _cert_file(ca_dir / "ca" / "ca.crt", "CA certificate")
    key_path = ca_dir / "ca" / "ca.key"
    try:
        key = serialization.load_pem_private_key(_read(key_path, "CA key"), password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{key_path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise IdentityError(f"{key_path}: expected the ECDSA key of {ca_dir / 'ca' / 'ca.crt'}")
    return Authority(key, cert)


def _load_crl(ca_dir: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    path = ca_dir / CRL_FILE
    try:
        crl = x509.load_pem_x509_crl(_read(path, "CRL"))
    except ValueError as exc:
        raise IdentityError(f"{path}: not a PEM CRL ({exc})") from None
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):
        raise IdentityError(f"{path}: CRL is not signed by the CA {ca_cert.subject.rfc4514_string()}")
    return crl


def _read_clients(ca_dir: Path) -> dict[str, str]:
    path = ca_dir / CLIENTS_FILE
    try:
        raw = yaml.safe_load(_read(path, "client map"))
    except yaml.YAMLError as exc:
        raise DataError(str(path), f"not valid YAML: {exc}") from None
    clients = raw.get("clients") if isinstance(raw, dict) else None
    if not isinstance(clients, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in clients.items()):
        raise DataError(str(path), "expected a mapping 'clients: {<subject CN>: <client id>}'")
    return clients


def _write_clients(ca_dir: Path, clients: Mapping[str, str]) -> None:
    text = ("# Certificate subject CN -> client id (DESIGN §6); written by "
            "`fedmuscle-secure provision`.\n"
            + yaml.safe_dump({"version": 1, "clients": dict(sorted(clients.items()))},
                             sort_keys=False))
    _write_atomic(ca_dir / CLIENTS_FILE, text.encode(), 0o644)


def _validity(ca_dir: Path) -> ValidityDays:
    path = ca_dir / RESOLVED_PROJECT
    if not path.is_file():
        return ValidityDays()
    raw = yaml.safe_load(_read(path, "resolved project"))
    days = raw.get("validity_days") if isinstance(raw, dict) else None
    return ValidityDays(**{k: v for k, v in (days or {}).items()
                           if k in ValidityDays.__dataclass_fields__ and isinstance(v, int)})


def _org_paths(ca_dir: Path, org: str) -> tuple[Path, Path]:
    folder = ca_dir / "orgs" / org
    return folder / f"{org}.key", folder / f"{org}.crt"


def _write_key_cert(folder: Path, stem: str, key: ec.EllipticCurvePrivateKey | None,
                    cert: x509.Certificate) -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if key is not None:
        _write_atomic(folder / f"{stem}.key", _key_pem(key), 0o600)
    _write_atomic(folder / f"{stem}.crt", _pem(cert), 0o644)
    return folder / f"{stem}.crt"


def init_ca_dir(project: Project, out: str | os.PathLike, *, days: int | None = None,
                force: bool = False, now: datetime | None = None) -> Path:
    """Create the CA directory for ``project`` (``provision init``); return its path.

    Everything is built in a temporary sibling folder and moved in at the end, so a failure
    leaves no half-made PKI. An existing non-empty ``out`` is refused unless ``force``;
    ``force`` replaces only the entries this function writes. ``days`` overrides the
    server and organization validity.
    """
    out, now = Path(out), _now(now)
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
        _write_key_cert(tmp / "ca", "ca", ca.key, ca.cert)
        key = generate_key()
        cert = issue_certificate(ca, key.public_key(), common_name=project.server_name,
                                 usage=Usage.SERVER, hosts=project.server_hosts,
                                 **_leaf_window(leaf["server"], now))
        _write_key_cert(tmp / "server", "server", key, cert)
        for org in project.organizations:
            key = generate_key()
            cert = issue_certificate(ca, key.public_key(), common_name=org.name,
                                     usage=Usage.CLIENT, **_leaf_window(leaf["org"], now))
            _write_key_cert(tmp / "orgs" / org.name, org.name, key, cert)
        _write_atomic(tmp / CRL_FILE, _pem(_build_crl(ca, [], 1, v.crl, now)), 0o644)
        _write_clients(tmp, {o.name: o.client_id for o in project.organizations})
        _write_atomic(tmp / RESOLVED_PROJECT,
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


@dataclass(frozen=True)
class CsrFiles:
    """What ``provision csr`` wrote: the org's key (stays home) and the CSR to send."""

    key_path: Path
    csr_path: Path


def _check_org(org: str, field: str) -> str:
    try:
        check_client_name(org)
    except IdentityError as exc:
        raise ConfigError(field, str(exc)) from None
    if len(org) > 64:
        raise ConfigError(field, f"{org!r} is longer than 64 characters (X.509 CN limit)")
    return org


def make_csr(org: str, out: str | os.PathLike, *, force: bool = False) -> CsrFiles:
    """An organization's own key (``out/<org>.key``, 0600) and CSR (``out/<org>.csr``).

    DESIGN §6 "each org may instead generate its key locally and send a CSR": only the CSR
    leaves the organization; :func:`sign_csr` never sees the key.
    """
    _check_org(org, "--org")
    out = Path(out)
    key_path, csr_path = out / f"{org}.key", out / f"{org}.csr"
    if key_path.exists() and not force:
        raise ConfigError("--out", f"{key_path} already exists; expected no key for {org!r} "
                                   "there (pass --force to make a new one)")
    key = generate_key()
    csr = (x509.CertificateSigningRequestBuilder().subject_name(_subject(org, None))
           .sign(key, _HASH()))
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_atomic(key_path, _key_pem(key), 0o600)
    _write_atomic(csr_path, _pem(csr), 0o644)
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
    key_path, cert_path = _org_paths(ca_dir, org)
    if not cert_path.exists():
        return
    old = _cert_file(cert_path, "organization certificate")
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
    ca_dir, csr_path, now = Path(ca_dir), Path(csr_path), _now(now)
    ca = load_authority(ca_dir)
    data = _read(csr_path, "certificate signing request")
    try:
        csr = (x509.load_pem_x509_csr(data) if data.lstrip().startswith(b"-----BEGIN")
               else x509.load_der_x509_csr(data))
    except ValueError as exc:
        raise IdentityError(f"{csr_path}: not a PEM or DER CSR ({exc})") from None
    if not csr.is_signature_valid:
        raise IdentityError(f"{csr_path}: CSR signature does not verify under the key it carries")
    org = _attr(csr.subject, NameOID.COMMON_NAME)
    if org is None:
        raise IdentityError(f"{csr_path}: expected exactly one subject CN (the org name), got "
                            f"{csr.subject.rfc4514_string()!r}")
    _check_org(org, f"{csr_path}: subject CN")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise IdentityError(f"{csr_path}: expected an ECDSA P-256 key, got {type(key).__name__}")
    _check_org(client_id, "--client-id")
    clients = _read_clients(ca_dir)
    if clients.get(org, client_id) != client_id:
        raise ConfigError("--client-id", f"{org!r} is client {clients[org]!r} in "
                                         f"{ca_dir / CLIENTS_FILE}; expected that id")
    other = next((cn for cn, cid in clients.items() if cid == client_id and cn != org), None)
    if other is not None:
        raise ConfigError("--client-id", f"{client_id!r} is already the client id of {other!r}")
    _archive_revoked(ca_dir, org, _load_crl(ca_dir, ca.cert))
    cert = issue_certificate(ca, key, common_name=org, usage=Usage.CLIENT,
                             **_leaf_window(days or _validity(ca_dir).org, now))
    cert_path = _write_key_cert(ca_dir / "orgs" / org, org, None, cert)
    _write_clients(ca_dir, {**clients, org: client_id})
    delivered = Path(cert_out) if cert_out is not None else csr_path.with_name(f"{org}.crt")
    if delivered.resolve() != cert_path.resolve():
        _write_atomic(delivered, _pem(cert), 0o644)
    return SignedCert(org, client_id, cert.serial_number, cert_path, delivered)


def _resign_crl(ca_dir: Path, ca: Authority, extra: list[x509.RevokedCertificate],
                days: int | None, now: datetime) -> x509.CertificateRevocationList:
    old = _load_crl(ca_dir, ca.cert)
    number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    crl = _build_crl(ca, [*old, *extra], number + 1, days or _validity(ca_dir).crl, now)
    _write_atomic(ca_dir / CRL_FILE, _pem(crl), 0o644)
    return crl


def revoke(ca_dir: str | os.PathLike, org: str, *,
           reason: x509.ReasonFlags = x509.ReasonFlags.unspecified,
           now: datetime | None = None) -> x509.Certificate:
    """Add ``org``'s current certificate to the CRL, re-signed with a fresh next-update.

    The server sees the revocation once it reloads the trust (:func:`load_trust`).
    Returns the revoked certificate.
    """
    ca_dir, now = Path(ca_dir), _now(now)
    ca = load_authority(ca_dir)
    _, cert_path = _org_paths(ca_dir, _check_org(org, "ORG"))
    if not cert_path.is_file():
        known = sorted(p.name for p in (ca_dir / "orgs").glob("*") if p.is_dir())
        raise ConfigError("ORG", f"no certificate {cert_path} for organization {org!r}; "
                                 f"expected one of {known}")
    cert = _cert_file(cert_path, "organization certificate")
    if _load_crl(ca_dir, ca.cert).get_revoked_certificate_by_serial_number(
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
    return _resign_crl(ca_dir, load_authority(ca_dir), [], days, _now(now))


def _revocation(crl: x509.CertificateRevocationList, serial: int) -> tuple[datetime, str] | None:
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    if entry is None:
        return None
    try:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
    except x509.ExtensionNotFound:
        reason = "unspecified"
    return entry.revocation_date_utc, reason


def _window(cert: x509.Certificate, now: datetime) -> tuple[str, str] | None:
    """``(status, detail)`` when ``now`` is outside the certificate's validity, else None."""
    if now < cert.not_valid_before_utc:
        return "not yet valid", f"not yet valid (from {cert.not_valid_before_utc.isoformat()})"
    if now > cert.not_valid_after_utc:
        return "expired", f"expired on {cert.not_valid_after_utc.isoformat()}"
    return None


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
    ca_dir, now = Path(ca_dir), _now(now)
    ca_cert = _cert_file(ca_dir / "ca" / "ca.crt", "CA certificate")
    crl, clients = _load_crl(ca_dir, ca_cert), _read_clients(ca_dir)
    rows = []
    for folder in sorted(p for p in (ca_dir / "orgs").glob("*") if p.is_dir()):
        current = folder / f"{folder.name}.crt"
        for path in [current, *sorted((folder / "revoked").glob("*.crt"))]:
            if not path.is_file():
                continue
            cert = _cert_file(path, "organization certificate")
            revoked = _revocation(crl, cert.serial_number)
            window = _window(cert, now)
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
        return _pem(self.ca_cert)

    def verify_peer(self, cert: bytes | str | x509.Certificate, *,
                    now: datetime | None = None) -> str:
        """The client id of a peer certificate (PEM or DER), or raise :class:`IdentityError`.

        Call it with ``context.auth_context()["x509_pem_cert"][0]`` in a gRPC servicer.
        Refuses, naming the reason: not signed by our CA, expired / not yet valid, revoked
        (in the CRL, or the CRL itself is stale), a CA certificate or no clientAuth EKU,
        and a subject CN with no client id (DESIGN §6: unknown or revoked identities).
        """
        now = _now(now)
        if isinstance(cert, str):
            cert = cert.encode("ascii", errors="replace")
        if not isinstance(cert, x509.Certificate):
            cert = _load_cert(cert, "peer certificate")
        cn = _attr(cert.subject, NameOID.COMMON_NAME)
        who = f"peer certificate CN={cn!r} serial {cert.serial_number:x}"
        ca_name = self.ca_cert.subject.rfc4514_string()
        try:
            cert.verify_directly_issued_by(self.ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise IdentityError(f"{who}: not signed by our CA {ca_name} (issuer "
                                f"{cert.issuer.rfc4514_string()})") from None
        if (window := _window(cert, now)) is not None:
            raise IdentityError(f"{who}: {window[1]}")
        next_update = self.crl.next_update_utc
        if next_update is None or now > next_update:
            raise IdentityError(f"{self.source / CRL_FILE}: CRL is stale (next update was "
                                f"{next_update}); refusing every peer until the CA re-signs "
                                "it (fedmuscle-secure provision crl)")
        if (revoked := _revocation(self.crl, cert.serial_number)) is not None:
            raise IdentityError(f"{who}: revoked on {revoked[0].isoformat()} "
                                f"(reason {revoked[1]}) by {self.source / CRL_FILE}")
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
    ca_cert = _cert_file(ca_dir / "ca" / "ca.crt", "CA certificate")
    return Trust(ca_cert, _load_crl(ca_dir, ca_cert),
                 MappingProxyType(dict(_read_clients(ca_dir))), ca_dir)
