"""Checks of a ``--certs`` folder before ``server`` or ``client`` builds anything.

Why: the deployment reads its certificates and keys deep inside the run (the TLS files only
when it first connects, after the model, split and checkpoint are built). A folder of the
wrong organisation, a missing file or a certificate of another CA then surfaces seconds
later as a traceback, or, for a certificate the server's CA did not sign, as "server not
reachable" after the whole retry deadline. These checks read the same files first and say
which one is wrong and what was expected, as :class:`~fedmuscle_secure.errors.ConfigError`
(exit 2). They decide nothing the server does not decide again: the server's TLS handshake
and :meth:`~fedmuscle_secure.transport.tls_trust.Trust.verify_peer` stay the authority.
"""

from __future__ import annotations

import errno
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.methods import protection_mode

__all__ = ["check_client_certs", "check_listen", "check_server_certs"]

CKKS_SECRET, CKKS_PUBLIC = Path("ckks") / "secret.ctx", Path("ckks") / "public.ctx"


def _folder(certs: Path) -> None:
    if not certs.is_dir():
        what = "is a file" if certs.exists() else "does not exist"
        raise ConfigError("--certs", f"{certs} {what}; expected the certificate folder laid out "
                                     "as README 'Deployment' shows (ca/, orgs/ or server/, "
                                     "identities/)")


def _need(certs: Path, rel: Path | str, what: str) -> Path:
    path = certs / rel
    if not path.is_file():
        raise ConfigError("--certs", f"{path} is missing: expected {what}")
    return path


def _certificate(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise ConfigError("--certs", f"{path} is not a PEM or DER X.509 certificate") from None


def _common_name(cert: x509.Certificate) -> str | None:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if len(values) == 1 else None


def _authorities(path: Path) -> list[x509.Certificate]:
    """Every CA certificate in ``path`` (a bundle may hold the old and the new CA while a
    federation moves to a new one; gRPC trusts each of them)."""
    data = path.read_bytes()
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise ConfigError("--certs", f"{path} is not a PEM or DER X.509 certificate") from None


def _issued_by(cert: x509.Certificate, path: Path, ca_path: Path) -> None:
    cas = _authorities(ca_path)
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            break
        except (ValueError, TypeError, InvalidSignature):
            continue
    else:
        names = "; ".join(ca.subject.rfc4514_string() for ca in cas)
        same = " (a CA of the same name but another key: another 'provision init')" if any(
            ca.subject == cert.issuer for ca in cas) else ""
        raise ConfigError("--certs", f"{path} is not issued by the CA in {ca_path} ({names}; "
                                     f"the certificate's issuer is "
                                     f"{cert.issuer.rfc4514_string()}{same}): the two sides "
                                     "would refuse each other's TLS handshake; use the files "
                                     "of one CA folder")
    now = datetime.now(UTC)
    if now > cert.not_valid_after_utc:
        raise ConfigError("--certs", f"{path} expired on {cert.not_valid_after_utc.isoformat()}; "
                                     "ask the CA operator for a new one")


def _matching_key(key_path: Path, cert: x509.Certificate, cert_path: Path) -> None:
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise ConfigError("--certs", f"{key_path} is not an unencrypted PEM private key") from None
    if key.public_key().public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo) != \
            cert.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ConfigError("--certs", f"{key_path} is not the key of {cert_path}")


def _signed_adverts(cfg: ExperimentConfig) -> bool:
    """Whether every process needs every organisation's public identity (secagg's signed key
    advertisements; the condition under which the deployment loads them)."""
    return protection_mode(cfg.protection, cfg.muscle.method) == "secagg"


def _org_folders(certs: Path) -> list[str]:
    orgs = certs / "orgs"
    return sorted(p.name for p in orgs.iterdir() if p.is_dir()) if orgs.is_dir() else []


def check_client_certs(cfg: ExperimentConfig, certs: Path, org: str, client_id: str) -> None:
    """``certs`` holds what organisation ``org`` (client ``client_id``) needs to take part:
    the CA certificate, its own TLS key and certificate (CN ``org``, issued by that CA, not
    expired), its identity key and, by protection, its peers' identities or the CKKS
    secret context."""
    names = [c.name for c in cfg.clients]
    if client_id not in names:
        mapped = f" (client id {client_id!r} in clients.yaml)" if client_id != org else ""
        raise ConfigError("--org", f"{org!r}{mapped} is not a client of the config; expected "
                                   f"one of {names}")
    _folder(certs)
    ca_path = _need(certs, Path("ca") / "ca.crt", "the federation's CA certificate")
    crt = certs / "orgs" / org / f"{org}.crt"
    if not crt.is_file():
        others = [o for o in _org_folders(certs) if o != org]
        held = (f"; it holds the certificates of {others}: pass the --certs folder of {org!r}"
                f" or --org {others[0]}") if others else ""
        raise ConfigError("--certs", f"{certs} has no certificate for organisation {org!r} "
                                     f"(expected {crt}){held}")
    cert = _certificate(crt)
    if (cn := _common_name(cert)) != org:
        raise ConfigError("--certs", f"{crt} is the certificate of {cn!r}, not of {org!r}")
    key = _need(certs, Path("orgs") / org / f"{org}.key", f"the TLS key of {org!r}")
    _matching_key(key, cert, crt)
    _issued_by(cert, crt, ca_path)
    _need(certs, Path("identities") / f"{client_id}.key",
          f"the Ed25519 identity key of {client_id!r} (provision init or provision identity)")
    if _signed_adverts(cfg):
        for peer in names:
            _need(certs, Path("identities") / f"{peer}.pub",
                  f"the public identity of every organisation under secagg ({peer!r})")
    if cfg.protection == "ckks":
        _need(certs, CKKS_SECRET, "the federation's secret CKKS context (provision ckks)")


def check_server_certs(cfg: ExperimentConfig, certs: Path) -> None:
    """``certs`` holds what the server needs: the CA certificate, its TLS key and
    certificate (issued by that CA), the CRL, the client map and, by protection, every
    organisation's public identity or the public CKKS context."""
    _folder(certs)
    ca_path = _need(certs, Path("ca") / "ca.crt", "the federation's CA certificate")
    crt = _need(certs, Path("server") / "server.crt", "the server's TLS certificate")
    cert = _certificate(crt)
    _matching_key(_need(certs, Path("server") / "server.key", "the server's TLS key"), cert, crt)
    _issued_by(cert, crt, ca_path)
    _need(certs, "crl.pem", "the CA's revocation list (copy it from the CA folder)")
    _need(certs, "clients.yaml", "the map of certificate names to client ids (from the CA "
                                 "folder)")
    if _signed_adverts(cfg):
        for c in cfg.clients:
            _need(certs, Path("identities") / f"{c.name}.pub",
                  f"the public identity of every organisation under secagg ({c.name!r})")
    if cfg.protection == "ckks":
        _need(certs, CKKS_PUBLIC, "the federation's public CKKS context (provision ckks)")


def check_listen(listen: str) -> None:
    """The server can listen on ``listen``: asked of the operating system directly, because
    gRPC's own error says only "Failed to bind" (the address may be in use, e.g. by a server
    still running, or not be an address of this machine)."""
    import socket

    from fedmuscle_secure.transport.address import split_host_port

    try:
        host, port = split_host_port(listen)
    except ValueError:
        return  # a gRPC target form (unix:...): gRPC checks it
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError("--listen", f"cannot resolve {host!r}: {exc.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                sock.bind(address)
            except OSError as exc:
                raise ConfigError("--listen", f"cannot listen on {listen}: {exc.strerror}"
                                  + (" (another server may still be running there)"
                                     if exc.errno == errno.EADDRINUSE else "")) from None
