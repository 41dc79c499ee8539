"""The secure-aggregation primitives, in one small private module (DESIGN §4.2).

Everything cryptographic the secagg protocol does goes through the recipes here, built on
``cryptography``'s hazmat layer: X25519 key agreement, HKDF-SHA256, AES-256-GCM, ChaCha20
as the mask PRG, Ed25519 signatures on advertised keys. The protocol code
(:mod:`crypto.secagg.client`, :mod:`crypto.secagg.server`) never touches a primitive
directly, so there is one place to review.

Choices that have no safe default are explicit and versioned: every HKDF ``info`` and every
signed or authenticated byte string starts with a label naming the protocol version and
the purpose, followed by the instance id and the parties, so a key or a signature made for
one purpose, instance or pair of parties is useless for any other. Verifications raise
(never return a bool); library errors are wrapped with the peer and stage, never with
secret material. All randomness comes from the OS CSPRNG (``os.urandom`` inside
``cryptography``'s key generation, ``secrets`` here).
"""

from __future__ import annotations

import secrets
import struct

import numpy as np
import torch
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedmuscle_secure.errors import IdentityError, ProtocolError

PROTOCOL = b"fedmuscle-secure/secagg/v1"
INSTANCE_ID_BYTES = 32
SEED_BYTES = 32
X25519_PUBLIC_BYTES = 32
_NONCE_BYTES = 12

__all__ = [
    "INSTANCE_ID_BYTES",
    "PROTOCOL",
    "SEED_BYTES",
    "X25519_PUBLIC_BYTES",
    "AgreementKey",
    "check_agreement_public",
    "fresh_instance_id",
    "fresh_seed",
    "mask_stream",
    "open_share",
    "pair_mask_seed",
    "seal_share",
    "sign_advert",
    "sign_survivor_set",
    "verify_advert",
    "verify_survivor_set",
]


def _field(value: bytes | str) -> bytes:
    """Length-prefixed field, so concatenations of labels and names cannot collide."""
    raw = value.encode() if isinstance(value, str) else bytes(value)
    return struct.pack(">I", len(raw)) + raw


def _context(purpose: str, instance_id: bytes, *parts: str | bytes) -> bytes:
    return _field(PROTOCOL) + _field(purpose) + _field(instance_id) + b"".join(_field(p) for p in parts)


def fresh_instance_id() -> bytes:
    return secrets.token_bytes(INSTANCE_ID_BYTES)


def fresh_seed() -> bytes:
    """A self-mask seed: 32 bytes from the OS CSPRNG, used for one instance only."""
    return secrets.token_bytes(SEED_BYTES)


class AgreementKey:
    """A per-instance X25519 key pair. The private half leaves this object only as Shamir
    shares (:meth:`private_bytes`), never in serializable state."""

    def __init__(self, private: X25519PrivateKey | None = None) -> None:
        self._private = private if private is not None else X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> AgreementKey:
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                           serialization.NoEncryption())

    def derive(self, peer_public: bytes, *, purpose: str, instance_id: bytes, a: str, b: str) -> bytes:
        """HKDF-SHA256 over the X25519 shared secret with ``peer_public`` of ``b`` (``a`` is
        this key's owner); the parties are bound in sorted order so both ends derive the
        same 32-byte key. An unusable key is ``b``'s fault: the error names ``b``."""
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # wrong length, or an all-zero (low-order) shared secret
            raise ProtocolError(b, purpose, f"unusable X25519 public key: {exc}") from None
        lo, hi = sorted((a, b))
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=instance_id,
                    info=_context(purpose, instance_id, lo, hi)).derive(shared)


def check_agreement_public(public: bytes, *, peer: str, stage: str, what: str) -> None:
    """Raise :class:`ProtocolError` naming ``peer`` unless ``public`` (its ``what`` key) is
    a usable X25519 public key.

    A point of small order (order 1, 2, 4 or 8, in any of its encodings, canonical or not)
    gives the all-zero shared secret with every clamped scalar, so every peer's exchange
    with it fails (or, in an implementation that does not refuse it, yields a key the
    whole world knows). ``cryptography`` refuses an all-zero shared secret (RFC 7748
    §6.1), so one exchange with a throwaway key tells, without any curve arithmetic here.
    """
    if not isinstance(public, bytes) or len(public) != X25519_PUBLIC_BYTES:
        size = len(public) if isinstance(public, (bytes, bytearray)) else type(public).__name__
        raise ProtocolError(peer, stage, f"advertised {what} must be {X25519_PUBLIC_BYTES} bytes "
                            f"(a raw X25519 public key), got {size}")
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise ProtocolError(peer, stage, f"advertised {what} is a low-order X25519 point: every "
                            "key agreement with it gives the all-zero secret") from None


# -- signed key advertisements -------------------------------------------------------
def _advert_message(instance_id: bytes, sender: str, cipher_public: bytes, mask_public: bytes) -> bytes:
    return _context("advertise-keys", instance_id, sender, cipher_public, mask_public)


def sign_advert(identity: Ed25519PrivateKey, instance_id: bytes, sender: str,
                cipher_public: bytes, mask_public: bytes) -> bytes:
    return identity.sign(_advert_message(instance_id, sender, cipher_public, mask_public))


def verify_advert(identity: Ed25519PublicKey, signature: bytes, instance_id: bytes, sender: str,
                  cipher_public: bytes, mask_public: bytes) -> None:
    """Raise :class:`IdentityError` unless ``signature`` is ``sender``'s over these keys."""
    try:
        identity.verify(signature, _advert_message(instance_id, sender, cipher_public, mask_public))
    except InvalidSignature:
        raise IdentityError(f"the key advertisement of {sender!r} does not verify under its "
                            "identity key") from None


# -- signed survivor sets (consistency round) -------------------------------------------
def _view_message(instance_id: bytes, label: str, signer: str, survivors: tuple[str, ...],
                  dropped: tuple[str, ...]) -> bytes:
    """The signed bytes of a survivor view: the instance id and the exchange ``label`` it
    serves (a signature cannot be replayed into another exchange, even one that reuses the
    id), then both sets length-prefixed name by name, with their sizes, so no two
    different views (or signers) share a message."""
    return _context("consistency", instance_id, label, signer,
                    struct.pack(">I", len(survivors)), *survivors,
                    struct.pack(">I", len(dropped)), *dropped)


def sign_survivor_set(identity: Ed25519PrivateKey, instance_id: bytes, label: str, signer: str,
                      survivors: tuple[str, ...], dropped: tuple[str, ...]) -> bytes:
    return identity.sign(_view_message(instance_id, label, signer, survivors, dropped))


def verify_survivor_set(identity: Ed25519PublicKey, signature: bytes, instance_id: bytes,
                        label: str, signer: str, survivors: tuple[str, ...],
                        dropped: tuple[str, ...]) -> None:
    """Raise :class:`IdentityError` unless ``signature`` is ``signer``'s over exactly this
    view (survivors and dropped clients, in this order) of this instance."""
    try:
        identity.verify(signature, _view_message(instance_id, label, signer, survivors, dropped))
    except InvalidSignature:
        raise IdentityError(f"the survivor-set signature of {signer!r} does not verify under "
                            "its identity key over this view of the instance") from None


# -- share encryption ----------------------------------------------------------------
def _share_aad(instance_id: bytes, sender: str, recipient: str) -> bytes:
    return _context("share-keys", instance_id, sender, recipient)


def seal_share(key: bytes, plaintext: bytes, *, instance_id: bytes, sender: str, recipient: str) -> bytes:
    """AES-256-GCM under ``key`` with a fresh random nonce; the instance, stage, sender and
    recipient are authenticated as associated data. Returns ``nonce || ciphertext``."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _share_aad(instance_id, sender, recipient))


def open_share(key: bytes, sealed: bytes, *, instance_id: bytes, sender: str, recipient: str) -> bytes:
    """Decrypt a :func:`seal_share` blob; raise :class:`ProtocolError` naming the sender."""
    if len(sealed) <= _NONCE_BYTES:
        raise ProtocolError(sender, "share_keys", "encrypted share is too short")
    try:
        return AESGCM(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:],
                                   _share_aad(instance_id, sender, recipient))
    except InvalidTag:
        raise ProtocolError(sender, "share_keys", f"the share {sender!r} sent to {recipient!r} fails "
                            "to decrypt (wrong key, tampered, or from another instance)") from None


# -- masks ---------------------------------------------------------------------------
def pair_mask_seed(key: AgreementKey, peer_public: bytes, *, instance_id: bytes, me: str, peer: str) -> bytes:
    """The seed of the pairwise mask between ``me`` and ``peer`` (same on both ends)."""
    return key.derive(peer_public, purpose="pair-mask", instance_id=instance_id, a=me, b=peer)


def mask_stream(seed: bytes, length: int) -> torch.Tensor:
    """``length`` uniform elements of Z_(2^64) as int64: one ChaCha20 keystream per mask
    (key = ``seed``; the all-zero nonce is safe because every seed is used for one mask)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seed must be {SEED_BYTES} bytes, got {len(seed)}")
    enc = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    raw = enc.update(bytes(8 * length))
    return torch.from_numpy(np.frombuffer(raw, dtype="<i8").copy())
