"""--certs folders whose TLS handshake with a server of our CA cannot succeed: another CA's
certificate, or a bundle trusting both CAs that holds the other's certificate."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers.deploy_driver import provision


def org_folder(root: Path, name: str, *, ca: list[Path], org_dir: Path, org: str = "a",
               identities: Path | None = None) -> Path:
    """An organisation's --certs folder: ``ca/ca.crt`` (the concatenation of ``ca``), its
    TLS key and certificate from ``org_dir``, and the identities of ``identities``."""
    folder = root / name
    (folder / "ca").mkdir(parents=True)
    (folder / "ca" / "ca.crt").write_bytes(b"".join(p.read_bytes() for p in ca))
    shutil.copytree(org_dir, folder / "orgs" / org)
    if identities is not None:
        shutil.copytree(identities, folder / "identities")
    return folder


def tls_files(folder: Path, org: str = "a") -> dict[str, Path]:
    """``org``'s CA bundle, certificate and key in ``folder``, as ``probe`` takes them."""
    return {"ca": folder / "ca" / "ca.crt", "cert": folder / "orgs" / org / f"{org}.crt",
            "key": folder / "orgs" / org / f"{org}.key"}


def two_pkis(root: Path) -> dict[str, Path]:
    """Our CA and another one (same organisation names), and two --certs folders that
    cannot complete a handshake with a server trusting ours only."""
    ours, other = provision(root), provision(root, name="other")  # two CAs, same org names
    ca, ca2 = ours / "ca" / "ca.crt", other / "ca" / "ca.crt"
    return {
        "root": root, "ours": ours, "other": other,
        # all of another CA's files: the server's certificate does not verify against it
        "foreign": org_folder(root, "foreign", ca=[ca2], org_dir=other / "orgs" / "a",
                              identities=ours / "identities"),
        # trusts both CAs (a CA change half done), holds the other CA's certificate: the
        # server, which trusts only ours, refuses it
        "bundle": org_folder(root, "bundle", ca=[ca, ca2], org_dir=other / "orgs" / "a",
                             identities=ours / "identities"),
    }

