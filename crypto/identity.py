"""Ed25519 identity keys of organisations (DESIGN §5.4, §6).

A client signs every entry of its privacy ledger with its identity key, so a ledger
rewritten afterwards no longer verifies under the public key the server (or an auditor)
holds. This module is the only place that serialises those keys; the files that hold
them are written by :mod:`fedmuscle_secure.records.identity_files` (one atomic write for
the whole project, in :mod:`fedmuscle_secure.durable`, which ``crypto/`` does not import).

Key custody: **in deployment the private key never leaves the organisation** that
generated it (``provision init`` or ``provision identity``: ``identities/<client>.key``);
only ``<client>.pub`` is shared, and it is the key an auditor trusts. A deployed client
signs with that provisioned key in every protection mode and writes only the public half
into its run directory. The in-process simulator plays every organisation at once, so,
for simulation only, it makes and keeps the simulated organisations' private keys in the
run directory (``keys/<client>.key``, mode 0600) beside their public halves.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedmuscle_secure.errors import IdentityError

__all__ = [
    "LEDGER_SIGNATURE_LABEL",
    "generate_identity",
    "load_private",
    "load_public",
    "load_public_pem",
    "private_pem",
    "public_pem",
    "sign_entry_hash",
    "verify_entry_signature",
]

log = logging.getLogger(__name__)

#: Domain-separation label prefixed to the 32 hash bytes of a ledger entry before signing,
#: so a ledger signature can never be replayed as a signature on anything else the same
#: identity key signs (DESIGN §13.4). Versioned.
LEDGER_SIGNATURE_LABEL = b"fedmuscle-secure/ledger-entry/v1\x00"

_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_client_name(client: str) -> str:
    """Return ``client`` if it is usable as a file name stem (``keys/<client>.pub``), else raise."""
    if not isinstance(client, str) or not _CLIENT_NAME.match(client) or ".." in client:
        raise IdentityError(
            f"client name {client!r} cannot name a key file: expected 1-128 characters "
            "from [A-Za-z0-9_.-], starting with a letter or digit, without '..'")
    return client


def generate_identity() -> Ed25519PrivateKey:
    """A fresh Ed25519 identity key from the OS CSPRNG (DESIGN §13.2)."""
    return Ed25519PrivateKey.generate()


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """SubjectPublicKeyInfo PEM of ``key``'s public half (what the ledger's genesis records)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def private_pem(key: Ed25519PrivateKey) -> bytes:
    """Unencrypted PKCS8 PEM of ``key`` (what ``<client>.key`` holds; the file is mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from exc


def load_private(path: str | os.PathLike) -> Ed25519PrivateKey:
    """Load an unencrypted PKCS8 PEM Ed25519 private key, naming ``path`` on any failure."""
    path = Path(path)
    data = _read(path, "private identity key")
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s: private identity key is readable by group/others (mode %o); "
                        "expected 0600", path, stat.S_IMODE(mode))
    except OSError:
        pass
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IdentityError(f"{path}: not an unencrypted PKCS8 PEM private key "
                            f"({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path}: expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_public_pem(data: str | bytes, *, source: str) -> Ed25519PublicKey:
    """Parse a SubjectPublicKeyInfo PEM Ed25519 public key; ``source`` names it in errors."""
    if isinstance(data, str):
        data = data.encode("ascii", errors="replace")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IdentityError(f"{source}: not a SubjectPublicKeyInfo PEM public key "
                            f"({type(exc).__name__})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise IdentityError(f"{source}: expected an Ed25519 public key, got {type(key).__name__}")
    return key


def load_public(path: str | os.PathLike) -> Ed25519PublicKey:
    """Load a SubjectPublicKeyInfo PEM Ed25519 public key, naming ``path`` on any failure."""
    path = Path(path)
    return load_public_pem(_read(path, "public identity key"), source=str(path))


def _entry_message(entry_hash: str) -> bytes:
    try:
        digest = bytes.fromhex(entry_hash)
    except (ValueError, TypeError):
        digest = b""
    if len(digest) != 32:
        raise IdentityError(f"entry hash {entry_hash!r} is not 64 hex characters")
    return LEDGER_SIGNATURE_LABEL + digest


def sign_entry_hash(key: Ed25519PrivateKey, entry_hash: str) -> str:
    """Hex Ed25519 signature over ``LEDGER_SIGNATURE_LABEL || bytes.fromhex(entry_hash)``."""
    return key.sign(_entry_message(entry_hash)).hex()


def verify_entry_signature(public_key: Ed25519PublicKey, entry_hash: str, sig: str | None) -> None:
    """Raise :class:`IdentityError` unless ``sig`` signs ``entry_hash`` under ``public_key``.

    Returns nothing on success (DESIGN §13.3: raise, never return a bool).
    """
    if sig is None:
        raise IdentityError("entry is unsigned but a public key was given to verify it")
    try:
        raw = bytes.fromhex(sig)
    except (ValueError, TypeError):
        raise IdentityError(f"signature {str(sig)[:16]!r}... is not hex") from None
    try:
        public_key.verify(raw, _entry_message(entry_hash))
    except InvalidSignature:
        raise IdentityError("signature does not verify under the given public key") from None
