"""The ``provision`` subcommand: PKI for the mutual-TLS deployment (DESIGN §6).

The work is :mod:`fedmuscle_secure.provision.ca` (with :mod:`~fedmuscle_secure.provision.project`
for project.yaml and :mod:`~fedmuscle_secure.transport.tls_trust` for ``verify``); this module parses
arguments and prints.
Errors propagate to :func:`fedmuscle_secure.cli.main.main`, which maps them to the exit codes
(0 ok, 1 failure, 2 bad usage or configuration).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cryptography import x509

from fedmuscle_secure.cli.args import writable_dir
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.provision import ca as pki
from fedmuscle_secure.provision import csr, revocation
from fedmuscle_secure.provision.keys import IDENTITIES, make_identity, provision_ckks
from fedmuscle_secure.provision.project import load_project
from fedmuscle_secure.transport.tls_trust import CLIENTS_FILE, CRL_FILE, load_trust

#: ``--reason`` values: RFC 5280 CRLReason names, as ``x509.ReasonFlags`` spells them.
REASONS = ("unspecified", "keyCompromise", "affiliationChanged", "superseded",
           "cessationOfOperation", "privilegeWithdrawn")


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer number of days, got {text!r}")
    return value


def _ca_folder(text: str) -> Path:
    """``--ca DIR``: a folder holding ``ca/ca.crt`` (what every CA operation reads first)."""
    path = Path(text)
    if not (path / "ca" / "ca.crt").is_file():
        state = ("is not a directory" if path.exists() and not path.is_dir() else
                 "has no ca/ca.crt" if path.is_dir() else "does not exist")
        raise argparse.ArgumentTypeError(f"{text} {state}; expected a CA directory made by "
                                         "'provision init'")
    return path


def cmd_init(args: argparse.Namespace) -> int:
    """``provision init``: CA, server and organization certificates, CRL, clients.yaml."""
    project = load_project(args.project)
    writable_dir(args.out, "--out")
    out = pki.init_ca_dir(project, args.out, days=args.days, force=args.force)
    for org in project.organizations:
        make_identity(org.client_id, out, force=args.force)
    print(f"CA directory: {out}")
    print(f"  CA:      {out / 'ca' / 'ca.crt'}  (key ca/ca.key: keep it offline)")
    print(f"  server:  {out / 'server' / 'server.crt'}  hosts "
          + ", ".join(str(h.value) for h in project.server_hosts))
    for org in project.organizations:
        print(f"  org:     {out / 'orgs' / org.name / (org.name + '.crt')}  -> {org.client_id}")
    print(f"  CRL:     {out / CRL_FILE};  subject -> client id: {out / CLIENTS_FILE}")
    print(f"  identities (Ed25519; .key stays with its org, .pub to server and peers): "
          f"{out / IDENTITIES}")
    return 0


def cmd_identity(args: argparse.Namespace) -> int:
    """``provision identity``: an organization's own Ed25519 identity."""
    writable_dir(args.out, "--out")
    key, pub = make_identity(args.client_id, args.out, force=args.force)
    print(f"identity key (keep it here, mode 0600): {key}")
    print(f"public identity (send to the server operator and every peer): {pub}")
    return 0


def cmd_ckks(args: argparse.Namespace) -> int:
    """``provision ckks``: the federation's CKKS context, made by the key-holding org."""
    from fedmuscle_secure.federation.checks import load_config

    cfg = load_config(args.config)
    writable_dir(args.out, "--out")
    files = provision_ckks(cfg, args.out, force=args.force)
    print(f"secret context (to every organization, over a channel you trust; NEVER to the "
          f"server): {files.secret_path}")
    print(f"public context (to the server): {files.public_path}")
    return 0


def cmd_csr(args: argparse.Namespace) -> int:
    """``provision csr``: an organization's own key and certificate signing request."""
    writable_dir(args.out, "--out")
    files = csr.make_csr(args.org, args.out, force=args.force)
    print(f"key (keep it here, mode 0600): {files.key_path}")
    print(f"CSR (send it to the CA operator): {files.csr_path}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """``provision sign``: the CA operator issues a certificate for a CSR."""
    if args.cert_out is not None:
        writable_dir(args.cert_out.parent, "--cert-out")
    signed = csr.sign_csr(args.ca, args.csr, args.client_id, days=args.days,
                          cert_out=args.cert_out)
    print(f"signed {signed.org!r} as client {signed.client_id!r}, serial {signed.serial:x}")
    print(f"  certificate: {signed.cert_path}")
    print(f"  send back:   {signed.delivered_path}  (with {Path(args.ca) / 'ca' / 'ca.crt'})")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """``provision revoke``: add an organization's certificate to the CRL."""
    cert = revocation.revoke(args.ca, args.org, reason=x509.ReasonFlags(args.reason))
    print(f"revoked {args.org!r} serial {cert.serial_number:x} ({args.reason}); "
          f"CRL {Path(args.ca) / CRL_FILE} re-signed: copy it to the server's --certs "
          f"directory (crl.pem). A running server re-reads it when the file changes: it refuses "
          f"{args.org!r} from then on and, if connected, drops it at the next stage boundary")
    return 0


def cmd_crl(args: argparse.Namespace) -> int:
    """``provision crl``: re-sign the CRL before its next update (it must never go stale)."""
    crl = revocation.refresh_crl(args.ca, days=args.days)
    print(f"{Path(args.ca) / CRL_FILE}: {sum(1 for _ in crl)} revoked, next update "
          f"{crl.next_update_utc.isoformat() if crl.next_update_utc else '-'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``provision list``: organizations, serials, validity and revocation status."""
    rows = revocation.list_certificates(args.ca)
    if args.json:
        print(json.dumps({"ca_dir": str(args.ca), "orgs": [asdict(r) for r in rows]}, indent=2))
        return 0
    header = ["org", "client id", "serial", "not before", "not after", "status"]
    body = [[r.org, r.client_id or "-", r.serial[:16] + ("…" if len(r.serial) > 16 else ""),
             r.not_before[:19], r.not_after[:19],
             r.status + (f" {r.revoked_at[:19]} ({r.reason})" if r.revoked_at else "")
             + ("" if r.current else " [archived]")] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    for line in [header, *body]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """``provision verify``: what the server decides about a certificate (its client id)."""
    if not args.cert.is_file():
        state = "is not a file" if args.cert.exists() else "does not exist"
        raise ConfigError("CERT", f"{args.cert} {state}; expected a PEM or DER certificate")
    client_id = load_trust(args.ca).verify_peer(args.cert.read_bytes())
    print(client_id)
    return 0


CA_HELP = "CA directory made by 'provision init'"


def add_provision_parser(subparsers: Any) -> None:
    """Register ``provision`` and its subcommands on the CLI (``cli.build_parser``)."""
    p = subparsers.add_parser(
        "provision", help="PKI for mutual TLS: CA, server/org certificates, CSRs, revocation",
        description="Create and manage the PKI of a cross-silo deployment (DESIGN §6): a CA, "
                    "the server's certificate, one certificate per organization (made here, or "
                    "signed from the organization's own CSR), a signed CRL and the map from "
                    "certificate subject (CN) to client id that the server enforces. Keys are "
                    "ECDSA P-256, signatures SHA-256 (accepted by gRPC/BoringSSL everywhere).")
    sub = p.add_subparsers(dest="provision_command", required=True, metavar="ACTION")
    for add in (_add_init, _add_csr, _add_identity, _add_ckks, _add_sign, _add_revoke, _add_crl,
                _add_list, _add_verify):
        add(sub)


def _add_init(sub: Any) -> None:
    """``provision init``."""
    s = sub.add_parser("init", help="create a CA directory from project.yaml",
                       description="Create DIR/ca (ca.key 0600, ca.crt), DIR/server, "
                                   "DIR/orgs/<org>/ (key 0600 + certificate per organization), "
                                   "DIR/crl.pem (empty, signed), DIR/clients.yaml and one "
                                   "Ed25519 identity per organization in DIR/identities/ "
                                   "(<client_id>.key 0600 + .pub) from a "
                                   "project.yaml: name, server {name, hosts}, organizations "
                                   "[{name, client_id}], optional validity_days {ca, server, "
                                   "org, crl} (defaults 3650, 365, 365, 30).")
    s.add_argument("--project", type=Path, required=True, help="the federation's project.yaml")
    s.add_argument("--out", type=Path, required=True, metavar="DIR", help="CA directory to create")
    s.add_argument("--days", type=_days, default=None,
                   help="validity of the server and organization certificates (overrides "
                        "validity_days.server / .org)")
    s.add_argument("--force", action="store_true",
                   help="replace the CA, server, org, CRL and client files of an existing DIR")
    s.set_defaults(func=cmd_init)


def _add_csr(sub: Any) -> None:
    """``provision csr``."""
    s = sub.add_parser("csr", help="(organization) make your own key and a CSR",
                       description="Write DIR/NAME.key (mode 0600; it never leaves DIR) and "
                                   "DIR/NAME.csr, the request to send to the CA operator.")
    s.add_argument("--org", required=True, metavar="NAME", help="organization name (the CN)")
    s.add_argument("--out", type=Path, required=True, metavar="DIR", help="the org's key folder")
    s.add_argument("--force", action="store_true", help="replace an existing NAME.key")
    s.set_defaults(func=cmd_csr)


def _add_identity(sub: Any) -> None:
    """``provision identity``."""
    s = sub.add_parser("identity", help="(organization) make your own Ed25519 identity",
                       description="Write DIR/identities/ID.key (mode 0600; it never leaves "
                                   "the organization: it signs the org's secagg key adverts "
                                   "and its privacy ledger) and ID.pub, to give to the server "
                                   "operator and every peer (they put it in their own "
                                   "DIR/identities/).")
    s.add_argument("--client-id", required=True, metavar="ID", help="the org's client id")
    s.add_argument("--out", type=Path, required=True, metavar="DIR", help="the org's key folder")
    s.add_argument("--force", action="store_true", help="replace an existing identity")
    s.set_defaults(func=cmd_identity)


def _add_ckks(sub: Any) -> None:
    """``provision ckks``."""
    s = sub.add_parser("ckks", help="(key-holding organization) make the CKKS context",
                       description="For protection 'ckks': write DIR/ckks/secret.ctx (mode 0600; "
                                   "the secret key every organization decrypts with: give it to "
                                   "the other organizations only, never to the server) and "
                                   "DIR/ckks/public.ctx (for the server). Parameters come from "
                                   "the config's ckks section, checked for the noisy values "
                                   "when representation noise is on.")
    s.add_argument("--config", type=Path, required=True, help="the experiment config")
    s.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write")
    s.add_argument("--force", action="store_true", help="replace an existing context")
    s.set_defaults(func=cmd_ckks)


def _add_sign(sub: Any) -> None:
    """``provision sign``."""
    s = sub.add_parser("sign", help="(CA operator) issue a certificate for an org's CSR",
                       description="Check the CSR's signature and CN, issue a clientAuth "
                                   "certificate, write DIR/orgs/<org>/<org>.crt, map the CN to "
                                   "--client-id in clients.yaml and deliver a copy (--cert-out).")
    s.add_argument("--ca", type=_ca_folder, required=True, metavar="DIR", help=CA_HELP)
    s.add_argument("--csr", type=Path, required=True, metavar="FILE", help="the org's CSR")
    s.add_argument("--client-id", required=True, metavar="ID", help="client id of the org")
    s.add_argument("--days", type=_days, default=None,
                   help="validity (default: validity_days.org of the project)")
    s.add_argument("--cert-out", type=Path, default=None, metavar="FILE",
                   help="where to deliver the certificate (default: <org>.crt beside the CSR)")
    s.set_defaults(func=cmd_sign)


def _add_revoke(sub: Any) -> None:
    """``provision revoke``."""
    s = sub.add_parser("revoke", help="revoke an organization's certificate (re-signs the CRL)",
                       description="Add ORG's current certificate serial to DIR/crl.pem, "
                                   "re-signed with a fresh next update. Copy it to the "
                                   "server's --certs: a running server re-reads crl.pem when it "
                                   "changes, refuses the certificate from then on and drops a "
                                   "connected organisation at the next stage boundary.")
    s.add_argument("--ca", type=_ca_folder, required=True, metavar="DIR", help=CA_HELP)
    s.add_argument("org", metavar="ORG", help="organization name")
    s.add_argument("--reason", choices=REASONS, default="unspecified", help="CRL reason code")
    s.set_defaults(func=cmd_revoke)


def _add_crl(sub: Any) -> None:
    """``provision crl``."""
    s = sub.add_parser("crl", help="re-sign the CRL with a new next update",
                       description="The server refuses every peer once the CRL's next update "
                                   "has passed; run this (e.g. from cron) before that.")
    s.add_argument("--ca", type=_ca_folder, required=True, metavar="DIR", help=CA_HELP)
    s.add_argument("--days", type=_days, default=None,
                   help="days until next update (default: validity_days.crl)")
    s.set_defaults(func=cmd_crl)


def _add_list(sub: Any) -> None:
    """``provision list``."""
    s = sub.add_parser("list", help="organization certificates, serials, validity, status",
                       description="Every organization certificate (current and archived) "
                                   "with its client id, serial, validity and revocation status.")
    s.add_argument("--ca", type=_ca_folder, required=True, metavar="DIR", help=CA_HELP)
    s.add_argument("--json", action="store_true", help="print {ca_dir, orgs: [...]} as JSON")
    s.set_defaults(func=cmd_list)


def _add_verify(sub: Any) -> None:
    """``provision verify``."""
    s = sub.add_parser("verify", help="check a peer certificate as the server will",
                       description="Print the client id of CERT, or fail (exit 1) naming why "
                                   "the server would refuse it.")
    s.add_argument("--ca", type=_ca_folder, required=True, metavar="DIR", help=CA_HELP)
    s.add_argument("cert", type=Path, metavar="CERT", help="certificate, PEM or DER")
    s.set_defaults(func=cmd_verify)
