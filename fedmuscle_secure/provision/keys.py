"""Keys a deployment needs besides the TLS PKI (DESIGN §4.2, §4.3, §5.3, §6).

* **Ed25519 identities** (``provision identity``; ``provision init`` makes one per
  organization too): an organization's identity signs its secagg key advertisements and its
  privacy ledger. ``DIR/identities/<client_id>.key`` stays with the organization;
  ``<client_id>.pub`` goes to the server and to every peer (secagg verifies adverts with it,
  ``audit`` verifies the ledger with it).
* **The CKKS context** (``provision ckks``), made by one organization, the key holder:
  ``DIR/ckks/secret.ctx`` holds the secret key every organization decrypts with: it travels
  only between organizations, over a channel they trust, **never to the server**;
  ``DIR/ckks/public.ctx`` (encryption, relinearization and Galois keys only) goes to the
  server. Parameters come from the experiment config and are checked for the noisy values
  when representation noise is on, exactly as the simulator provisions them.

Each side then loads only what it may hold
(:func:`fedmuscle_secure.federation.ckks.server_ckks` refuses a context with a secret key,
``client_ckks`` one without).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.crypto.identity import check_client_name, generate_identity
from fedmuscle_secure.durable import write_atomic
from fedmuscle_secure.errors import ConfigError, IdentityError
from fedmuscle_secure.records.identity_files import save_identity

IDENTITIES = "identities"


def make_identity(client_id: str, out: str | os.PathLike, *, force: bool = False) -> tuple[Path, Path]:
    """``out/identities/<client_id>.key`` (0600, stays home) and ``.pub`` (to share)."""
    try:
        check_client_name(client_id)
    except IdentityError as exc:
        raise ConfigError("--client-id", str(exc)) from None
    folder = Path(out) / IDENTITIES
    if not force and ((key := folder / f"{client_id}.key").exists()
                      or (folder / f"{client_id}.pub").exists()):
        raise ConfigError("--out", f"{key.parent}: an identity for {client_id!r} already "
                                   "exists (pass --force to replace it)")
    try:
        return save_identity(generate_identity(), folder, client_id, overwrite=force)
    except IdentityError as exc:
        raise ConfigError("--out", str(exc)) from None


@dataclass(frozen=True)
class CkksFiles:
    secret_path: Path
    public_path: Path


def provision_ckks(cfg: ExperimentConfig, out: str | os.PathLike, *, force: bool = False) -> CkksFiles:
    """One CKKS context for the federation of ``cfg`` (``protection: ckks``)."""
    if cfg.protection != "ckks":
        raise ConfigError("protection", f"provision ckks needs a config with protection 'ckks', "
                                        f"got {cfg.protection!r}")
    # deferred: the federation layer imports torch, opacus and TenSEAL, which the other
    # provisioning commands never need (and opacus configures a bare root logger)
    from fedmuscle_secure.federation.ckks import (
        CKKS_DIR,
        PUBLIC_CONTEXT,
        SECRET_CONTEXT,
        provision_ckks_keys,
    )
    from fedmuscle_secure.federation.setup import decide_protection

    folder = Path(out) / CKKS_DIR
    files = CkksFiles(folder / SECRET_CONTEXT, folder / PUBLIC_CONTEXT)
    if files.secret_path.exists() and not force:
        raise ConfigError("--out", f"{files.secret_path} already exists (pass --force to "
                                   "replace it: every organization must then get the new one)")
    protection = decide_protection(cfg, cfg.muscle.method)  # σ as the federation calibrates it
    _, secret, public = provision_ckks_keys(cfg, protection.sigma_client)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(files.secret_path, secret, 0o600)
    write_atomic(files.public_path, public, 0o644)
    return files


__all__ = ["CkksFiles", "make_identity",
           "provision_ckks"]
