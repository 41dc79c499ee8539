"""Files of the Ed25519 identity keys: ``<client>.key`` (mode 0600) and ``<client>.pub``.

An organisation's public key file is what its run directory's ``keys/`` folder and an
auditor's trust rest on (DESIGN §5.4, §6); the private key file is written only by
``provision`` (``identities/``) and, for simulation only, by the simulator. Serialisation is
:mod:`fedmuscle_secure.crypto.identity`'s; this module adds the file rules: names checked,
an existing key never replaced silently, every write atomic.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedmuscle_secure.crypto.identity import check_client_name, private_pem, public_pem
from fedmuscle_secure.durable import write_atomic
from fedmuscle_secure.errors import IdentityError

__all__ = ["save_identity", "save_public"]


def save_identity(
    key: Ed25519PrivateKey, dir: str | os.PathLike, client: str, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``dir/<client>.key`` (PKCS8 PEM, unencrypted, mode 0600) and ``dir/<client>.pub``.

    Used by the simulator, which holds every simulated organisation's key in its run
    directory; in deployment the private key never leaves the organisation. An existing
    key is never replaced silently: pass ``overwrite=True`` to rotate it.
    Returns ``(private_path, public_path)``.
    """
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"identity key for {client!r} must be an Ed25519PrivateKey, "
                            f"got {type(key).__name__}")
    check_client_name(client)
    folder = Path(dir)
    key_path, pub_path = folder / f"{client}.key", folder / f"{client}.pub"
    if not overwrite and (key_path.exists() or pub_path.exists()):
        raise IdentityError(f"{key_path}: an identity for {client!r} already exists; "
                            "load it with load_private() or pass overwrite=True")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(key_path, private_pem(key), 0o600)
        write_atomic(pub_path, public_pem(key).encode("ascii"), 0o644)
    except OSError as exc:
        raise IdentityError(f"{folder}: cannot write the identity of {client!r}: {exc}") from exc
    return key_path, pub_path


def save_public(key: Ed25519PrivateKey | Ed25519PublicKey, dir: str | os.PathLike,
                client: str) -> Path:
    """Write only ``dir/<client>.pub`` (what a deployed organisation's run directory holds:
    its private identity key stays in its provisioned ``identities/``). Returns the path."""
    check_client_name(client)
    folder = Path(dir)
    path = folder / f"{client}.pub"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(path, public_pem(key).encode("ascii"), 0o644)
    except OSError as exc:
        raise IdentityError(f"{path}: cannot write the public identity of {client!r}: "
                            f"{exc}") from exc
    return path
