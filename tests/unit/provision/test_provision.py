"""PKI provisioning for the mutual-TLS deployment (DESIGN §6): fedmuscle_secure.provision.ca."""

from __future__ import annotations

import json
import stat
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmuscle_secure.cli.main import main
from fedmuscle_secure.errors import ConfigError, IdentityError
from fedmuscle_secure.provision import ca as pki
from fedmuscle_secure.provision import csr, revocation

PROJECT = {
    "name": "demo-federation",
    "server": {"name": "fl-server", "hosts": ["localhost", "127.0.0.1", "::1", "fl.example.org"]},
    "organizations": [{"name": "hospital-a", "client_id": "client_0"},
                      {"name": "hospital-b", "client_id": "client_1"}],
    "validity_days": {"ca": 100, "server": 30, "org": 20, "crl": 7},
}


def _write_project(tmp_path: Path, data: dict | None = None) -> Path:
    path = tmp_path / "project.yaml"
    path.write_text(yaml.safe_dump(data if data is not None else PROJECT))
    return path


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    out = tmp_path / "pki"
    assert main(["provision", "init", "--project", str(_write_project(tmp_path)),
                 "--out", str(out)]) == 0
    return out


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _ext(cert: x509.Certificate, cls: type) -> object:
    return cert.extensions.get_extension_for_class(cls).value


# --- init -------------------------------------------------------------------------------


def test_init_creates_valid_chains_and_private_key_files(ca_dir: Path) -> None:
    ca = _cert(ca_dir / "ca" / "ca.crt")
    ca.verify_directly_issued_by(ca)  # self-signed
    bc = _ext(ca, x509.BasicConstraints)
    assert bc.ca is True and bc.path_length == 0
    ku = _ext(ca, x509.KeyUsage)
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == timedelta(days=100, minutes=5)
    leaves = {"server": (ca_dir / "server" / "server", ExtendedKeyUsageOID.SERVER_AUTH)}
    for org in ("hospital-a", "hospital-b"):
        leaves[org] = (ca_dir / "orgs" / org / org, ExtendedKeyUsageOID.CLIENT_AUTH)
    for stem, eku in leaves.values():
        cert = _cert(stem.with_suffix(".crt"))
        cert.verify_directly_issued_by(ca)
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
        assert list(_ext(cert, x509.ExtendedKeyUsage)) == [eku]
        assert _ext(cert, x509.BasicConstraints).ca is False
        key = _key(stem.with_suffix(".key"))
        assert key.curve.name == "secp256r1" and key.public_key() == cert.public_key()
        assert _mode(stem.with_suffix(".key")) == 0o600
    assert _mode(ca_dir / "ca" / "ca.key") == 0o600
    org = _cert(ca_dir / "orgs" / "hospital-a" / "hospital-a.crt")
    assert org.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hospital-a"
    assert org.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == \
        "demo-federation"
    assert org.not_valid_after_utc - org.not_valid_before_utc == timedelta(days=20, minutes=5)
    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.public_key()) and len(list(crl)) == 0
    assert crl.next_update_utc - crl.last_update_utc == timedelta(days=7)
    clients = yaml.safe_load((ca_dir / "clients.yaml").read_text())["clients"]
    assert clients == {"hospital-a": "client_0", "hospital-b": "client_1"}
    trust = pki.load_trust(ca_dir)
    assert trust.verify_peer(org.public_bytes(serialization.Encoding.PEM)) == "client_0"


def test_server_certificate_has_every_host_as_san(ca_dir: Path) -> None:
    import ipaddress

    san = _ext(_cert(ca_dir / "server" / "server.crt"), x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "fl.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("::1")]


def test_init_refuses_an_existing_dir_unless_force(tmp_path: Path, ca_dir: Path) -> None:
    before = (ca_dir / "ca" / "ca.crt").read_bytes()
    (ca_dir / "notes.txt").write_text("mine")
    args = ["provision", "init", "--project", str(tmp_path / "project.yaml"), "--out", str(ca_dir)]
    assert main(args) == 2
    assert (ca_dir / "ca" / "ca.crt").read_bytes() == before
    assert main([*args, "--force"]) == 0
    assert (ca_dir / "ca" / "ca.crt").read_bytes() != before
    assert (ca_dir / "notes.txt").read_text() == "mine"  # --force replaces only its own files
    assert _mode(ca_dir / "ca" / "ca.key") == 0o600
    assert not list(tmp_path.glob(".pki.*"))  # no temporary folder left behind


def test_init_error_names_out_and_force(
        tmp_path: Path, ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["provision", "init", "--project", str(tmp_path / "project.yaml"),
                 "--out", str(ca_dir)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "not empty" in err and "--force" in err


def test_init_days_overrides_leaf_validity(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    assert main(["provision", "init", "--project", str(_write_project(tmp_path)),
                 "--out", str(out), "--days", "3"]) == 0
    cert = _cert(out / "server" / "server.crt")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=3, minutes=5)
    with pytest.raises(ConfigError) as info:
        pki.init_ca_dir(pki.load_project(tmp_path / "project.yaml"), tmp_path / "x", days=101)
    assert info.value.field == "--days"


# --- project.yaml validation --------------------------------------------------------------


def _bad(**changes: object) -> dict:
    data = json.loads(json.dumps(PROJECT))
    for dotted, value in changes.items():
        *head, last = dotted.split("__")
        target = data
        for part in head:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if value is KeyError:
            del target[last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return data


@pytest.mark.parametrize(("data", "field", "words"), [
    (_bad(organizations__1__name="hospital-a"), "organizations.1.name", "duplicate"),
    (_bad(organizations__1__client_id="client_0"), "organizations.1.client_id", "duplicate"),
    (_bad(server__hosts=KeyError), "server.hosts", "non-empty list"),
    (_bad(server__hosts=[]), "server.hosts", "non-empty list"),
    (_bad(server__hosts__1="10.0.0.300"), "server.hosts.1", "not a valid IPv4/IPv6"),
    (_bad(server__hosts__0="bad_host!"), "server.hosts.0", "neither an IP address nor a DNS"),
    (_bad(organizations__0__name="../etc"), "organizations.0.name", "cannot name"),
    (_bad(organizations=[]), "organizations", "non-empty list"),
    (_bad(validity_days__org=0), "validity_days.org", "positive integer"),
    (_bad(validity_days__server=1000), "validity_days.server", "exceeds validity_days.ca"),
    (_bad(name=KeyError), "name", "non-empty string"),
    (_bad(servers={}), "servers", "unknown field"),
])
def test_project_errors_name_the_field(data: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        pki.parse_project(data, source="project.yaml")
    assert info.value.field == field
    assert words in str(info.value) and "project.yaml" in str(info.value)


def test_project_errors_are_collected_and_cli_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _bad(organizations__1__name="hospital-a", server__hosts__1="300.1.1.1",
                validity_days__crl=-1)
    path = _write_project(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        pki.load_project(path)
    fields = [f for f, _ in info.value.problems]
    assert fields == ["server.hosts.1", "organizations.1.name", "validity_days.crl"]
    assert main(["provision", "init", "--project", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert all(f in err for f in fields) and str(path) in err
    assert not (tmp_path / "o").exists()
    assert main(["provision", "init", "--project", str(tmp_path / "missing.yaml"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "--project" in capsys.readouterr().err


# --- CSR flow ---------------------------------------------------------------------------------


def test_csr_sign_flow_keeps_the_key_at_the_org(
        tmp_path: Path, ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "lab-c-home"
    assert main(["provision", "csr", "--org", "lab-c", "--out", str(home)]) == 0
    key_path, csr_path = home / "lab-c.key", home / "lab-c.csr"
    assert _mode(key_path) == 0o600
    key_pem = key_path.read_bytes()
    assert main(["provision", "sign", "--ca", str(ca_dir), "--csr", str(csr_path),
                 "--client-id", "client_2"]) == 0
    assert key_path.read_bytes() == key_pem
    ca_files = [p for p in ca_dir.rglob("*") if p.is_file()]
    assert not any(key_pem.strip() in p.read_bytes() for p in ca_files)
    assert not list((ca_dir / "orgs" / "lab-c").glob("*.key"))
    cert = _cert(ca_dir / "orgs" / "lab-c" / "lab-c.crt")
    assert (home / "lab-c.crt").read_bytes() == cert.public_bytes(serialization.Encoding.PEM)
    cert.verify_directly_issued_by(_cert(ca_dir / "ca" / "ca.crt"))
    assert cert.public_key() == _key(key_path).public_key()
    assert list(_ext(cert, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.rfc4514_string() == "CN=lab-c,O=demo-federation"
    assert pki.load_trust(ca_dir).verify_peer(cert.public_bytes(serialization.Encoding.DER)) \
        == "client_2"
    # the same org again, or another org under a taken client id: refused (bad usage)
    capsys.readouterr()
    assert main(["provision", "sign", "--ca", str(ca_dir), "--csr", str(csr_path),
                 "--client-id", "client_2"]) == 2
    assert "revoke it first" in capsys.readouterr().err
    csr.make_csr("lab-d", home)
    assert main(["provision", "sign", "--ca", str(ca_dir), "--csr", str(home / "lab-d.csr"),
                 "--client-id", "client_0"]) == 2
    assert "already the client id of 'hospital-a'" in capsys.readouterr().err
    assert main(["provision", "csr", "--org", "lab-c", "--out", str(home)]) == 2  # key exists


def test_sign_rejects_a_tampered_csr(tmp_path: Path, ca_dir: Path) -> None:
    files = csr.make_csr("lab-c", tmp_path / "home")
    der = x509.load_pem_x509_csr(files.csr_path.read_bytes()).public_bytes(
        serialization.Encoding.DER)
    assert der.count(b"lab-c") == 1
    forged = tmp_path / "forged.csr"
    forged.write_bytes(der.replace(b"lab-c", b"lab-x"))  # same length: still parses
    with pytest.raises(IdentityError, match="CSR signature does not verify"):
        csr.sign_csr(ca_dir, forged, "client_9")
    assert not (ca_dir / "orgs" / "lab-x").exists()
    assert "lab-x" not in (ca_dir / "clients.yaml").read_text()


def test_resign_after_revocation_archives_the_old_certificate(tmp_path: Path,
                                                              ca_dir: Path) -> None:
    old = _cert(ca_dir / "orgs" / "hospital-b" / "hospital-b.crt")
    revocation.revoke(ca_dir, "hospital-b", reason=x509.ReasonFlags.key_compromise)
    files = csr.make_csr("hospital-b", tmp_path / "home")
    signed = csr.sign_csr(ca_dir, files.csr_path, "client_1")
    archived = ca_dir / "orgs" / "hospital-b" / "revoked" / f"{old.serial_number:x}.crt"
    assert archived.is_file() and archived.with_suffix(".key").is_file()
    trust = pki.load_trust(ca_dir)
    assert trust.verify_peer(signed.cert_path.read_bytes()) == "client_1"
    with pytest.raises(IdentityError, match="revoked"):
        trust.verify_peer(archived.read_bytes())
    rows = revocation.list_certificates(ca_dir)
    assert [(r.org, r.status, r.current) for r in rows if r.org == "hospital-b"] == \
        [("hospital-b", "valid", True), ("hospital-b", "revoked", False)]


# --- revocation, list -----------------------------------------------------------------------


def test_revoke_then_verify_peer_raises_revoked(ca_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pem = (ca_dir / "orgs" / "hospital-b" / "hospital-b.crt").read_bytes()
    before = pki.load_trust(ca_dir)
    assert before.verify_peer(pem) == "client_1"
    assert main(["provision", "revoke", "--ca", str(ca_dir), "hospital-b",
                 "--reason", "keyCompromise"]) == 0
    with pytest.raises(IdentityError, match=r"revoked on .* \(reason keyCompromise\)"):
        pki.load_trust(ca_dir).verify_peer(pem)
    assert before.verify_peer(pem) == "client_1"  # a Trust is a snapshot: reload it
    assert pki.load_trust(ca_dir).verify_peer(
        (ca_dir / "orgs" / "hospital-a" / "hospital-a.crt").read_bytes()) == "client_0"
    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert crl.is_signature_valid(_cert(ca_dir / "ca" / "ca.crt").public_key())
    assert _ext(crl, x509.CRLNumber).crl_number == 2
    assert crl.next_update_utc - crl.last_update_utc == timedelta(days=7)
    capsys.readouterr()
    assert main(["provision", "revoke", "--ca", str(ca_dir), "hospital-b"]) == 1
    assert "already revoked" in capsys.readouterr().err
    assert main(["provision", "revoke", "--ca", str(ca_dir), "nobody"]) == 2
    assert "hospital-a" in capsys.readouterr().err  # names the known orgs


def test_list_json(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    revocation.revoke(ca_dir, "hospital-a", reason=x509.ReasonFlags.cessation_of_operation)
    capsys.readouterr()
    assert main(["provision", "list", "--ca", str(ca_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["org"]: r for r in report["orgs"]}
    assert set(rows) == {"hospital-a", "hospital-b"}
    a, b = rows["hospital-a"], rows["hospital-b"]
    assert a["status"] == "revoked" and a["reason"] == "cessationOfOperation"
    assert b["status"] == "valid" and b["revoked_at"] is None and b["client_id"] == "client_1"
    cert = _cert(ca_dir / "orgs" / "hospital-b" / "hospital-b.crt")
    assert int(b["serial"], 16) == cert.serial_number
    assert datetime.fromisoformat(b["not_after"]) == cert.not_valid_after_utc
    assert main(["provision", "list", "--ca", str(ca_dir)]) == 0
    table = capsys.readouterr().out
    assert "revoked" in table and "client_1" in table


# --- Trust.verify_peer refusals ------------------------------------------------------------


def _issue(ca: pki.Authority, cn: str, *, usage: pki.Usage = pki.Usage.CLIENT,
           start: timedelta = timedelta(days=-1), length: timedelta = timedelta(days=2),
           hosts: tuple[x509.GeneralName, ...] = ()) -> x509.Certificate:
    now = datetime.now(UTC)
    return pki.issue_certificate(ca, pki.generate_key().public_key(), common_name=cn,
                                 usage=usage, not_before=now + start,
                                 not_after=now + start + length, hosts=hosts)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def test_expired_and_not_yet_valid_certificates(ca_dir: Path) -> None:
    ca, trust = pki.load_authority(ca_dir), pki.load_trust(ca_dir)
    expired = _issue(ca, "hospital-a", start=timedelta(days=-10), length=timedelta(days=9))
    with pytest.raises(IdentityError, match="expired on"):
        trust.verify_peer(_pem(expired))
    future = _issue(ca, "hospital-a", start=timedelta(days=1))
    with pytest.raises(IdentityError, match="not yet valid"):
        trust.verify_peer(_pem(future).decode())


def test_certificate_of_another_ca_is_not_signed_by_ours(ca_dir: Path) -> None:
    other = pki.new_authority("demo-federation", days=10)  # same names, different key
    with pytest.raises(IdentityError, match="not signed by our CA"):
        pki.load_trust(ca_dir).verify_peer(_pem(_issue(other, "hospital-a")))


def test_unknown_subject_and_wrong_eku(ca_dir: Path) -> None:
    ca, trust = pki.load_authority(ca_dir), pki.load_trust(ca_dir)
    with pytest.raises(IdentityError, match="unknown subject 'CN=stranger"):
        trust.verify_peer(_pem(_issue(ca, "stranger")))
    server = _issue(ca, "hospital-a", usage=pki.Usage.SERVER, hosts=(x509.DNSName("x"),))
    with pytest.raises(IdentityError, match=r"wrong EKU \(serverAuth\)"):
        trust.verify_peer(_pem(server))
    with pytest.raises(IdentityError, match="is a CA certificate"):
        trust.verify_peer(trust.ca_pem)
    with pytest.raises(IdentityError, match="not a PEM or DER"):
        trust.verify_peer(b"garbage")


def test_stale_crl_refuses_every_peer_until_refreshed(ca_dir: Path) -> None:
    pem = (ca_dir / "orgs" / "hospital-a" / "hospital-a.crt").read_bytes()
    later = datetime.now(UTC) + timedelta(days=8)
    with pytest.raises(IdentityError, match="CRL is stale"):
        pki.load_trust(ca_dir).verify_peer(pem, now=later)
    revocation.refresh_crl(ca_dir, now=later - timedelta(hours=1))
    assert pki.load_trust(ca_dir).verify_peer(pem, now=later) == "client_0"


def test_load_trust_refuses_a_crl_signed_by_another_ca(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.init_ca_dir(pki.load_project(_write_project(tmp_path)), other)
    (ca_dir / "crl.pem").write_bytes((other / "crl.pem").read_bytes())
    with pytest.raises(IdentityError, match="crl.pem: CRL is not signed by the CA"):
        pki.load_trust(ca_dir)


def test_verify_cli(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    org = ca_dir / "orgs" / "hospital-a" / "hospital-a.crt"
    assert main(["provision", "verify", "--ca", str(ca_dir), str(org)]) == 0
    assert capsys.readouterr().out.strip() == "client_0"
    assert main(["provision", "verify", "--ca", str(ca_dir),
                 str(ca_dir / "server" / "server.crt")]) == 1
    assert "wrong EKU" in capsys.readouterr().err


# --- the certificates work in gRPC's TLS (BoringSSL) ------------------------------------------


def test_grpc_mutual_tls_maps_peer_to_client_id(ca_dir: Path) -> None:
    """A loopback gRPC server with these files: handshake, then verify_peer on auth_context."""
    import grpc

    def read(*parts: str) -> bytes:
        return ca_dir.joinpath(*parts).read_bytes()

    def whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
        pem = context.auth_context()["x509_pem_cert"][0]
        try:
            return pki.load_trust(ca_dir).verify_peer(pem).encode()
        except IdentityError as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "fedmuscle.Test", {"WhoAmI": grpc.unary_unary_rpc_method_handler(whoami)})])
    creds = grpc.ssl_server_credentials([(read("server", "server.key"),
                                          read("server", "server.crt"))],
                                        root_certificates=read("ca", "ca.crt"),
                                        require_client_auth=True)
    port = server.add_secure_port("localhost:0", creds)
    server.start()
    try:
        def call(org: str) -> bytes:
            creds = grpc.ssl_channel_credentials(
                read("ca", "ca.crt"), read("orgs", org, f"{org}.key"),
                read("orgs", org, f"{org}.crt"))
            with grpc.secure_channel(f"localhost:{port}", creds) as channel:
                return channel.unary_unary("/fedmuscle.Test/WhoAmI")(b"", timeout=10)

        assert call("hospital-a") == b"client_0"
        revocation.revoke(ca_dir, "hospital-b")
        with pytest.raises(grpc.RpcError) as info:
            call("hospital-b")
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "revoked" in info.value.details()
    finally:
        server.stop(None)
