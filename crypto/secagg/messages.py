"""Messages of one secure-aggregation instance (DESIGN §4.2), one frozen dataclass per stage.

Server → client messages name their ``recipient``, client → server messages their
``sender``; every message carries the ``instance_id`` it belongs to, so a message replayed
from another instance is rejected. Keys, shares and ciphertexts are bytes; the masked
input is an int64 tensor (elements of Z_(2^64)). Nothing here holds a secret: the
private keys and the self-mask seed live only inside :class:`SecAggClient`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

#: No secure sum over fewer members than this, whatever the threshold: with two members
#: each learns the other's input by subtracting its own from the sum.
MIN_GROUP = 3


def min_group(threshold: int) -> int:
    """The fewest members any stage of an instance may continue with: max(3, t)."""
    return max(MIN_GROUP, threshold)


def exchange_label(round_: int, epoch: int, batch: int | None) -> str:
    """The exchange an instance serves, as signed into its survivor views."""
    return f"round {round_}, epoch {epoch}, batch {batch}"


class SecAggStage(enum.Enum):
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


def frozen_map(d: Mapping) -> Mapping:
    return MappingProxyType(dict(d))


# -- server → client -----------------------------------------------------------------
@dataclass(frozen=True)
class SecAggSetup:
    """Start of an instance: the group (in share order: participant i holds x = i + 1),
    the threshold t and the length of the int64 vector to be summed."""

    recipient: str
    instance_id: bytes
    participants: tuple[str, ...]
    threshold: int
    vector_length: int


@dataclass(frozen=True)
class KeyBook:
    """Every advertisement the server received (the set U1)."""

    recipient: str
    instance_id: bytes
    adverts: tuple[AdvertiseKeys, ...]


@dataclass(frozen=True)
class ShareInbox:
    """The encrypted shares addressed to ``recipient``, by sender (the senders form U2)."""

    recipient: str
    instance_id: bytes
    ciphertexts: Mapping[str, bytes]


@dataclass(frozen=True)
class ConsistencyCheck:
    """The server's view of the instance after the masked inputs: survivors (sent a masked
    input, U3) and dropped clients (U2 \\ U3). Each survivor signs exactly this view
    (Bonawitz et al.'s consistency round) before any share is revealed."""

    recipient: str
    instance_id: bytes
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class UnmaskRequest:
    """The view every signer signed (survivors U3, dropped U2 \\ U3) and the signatures
    themselves, by signer (U4). A client reveals shares only if at least max(3, t) valid
    signatures cover the very view it signed: a server that told different clients
    different survivor sets cannot gather them."""

    recipient: str
    instance_id: bytes
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: Mapping[str, bytes]


# -- client → server -----------------------------------------------------------------
@dataclass(frozen=True)
class AdvertiseKeys:
    """Two fresh X25519 public keys, signed with the sender's Ed25519 identity key:
    ``cipher_public`` for share encryption, ``mask_public`` for pairwise masks."""

    sender: str
    instance_id: bytes
    cipher_public: bytes
    mask_public: bytes
    signature: bytes


@dataclass(frozen=True)
class EncryptedShares:
    """AES-GCM ciphertexts of (self-mask-seed share, mask-key share), by recipient."""

    sender: str
    instance_id: bytes
    ciphertexts: Mapping[str, bytes]


@dataclass(frozen=True)
class MaskedInput:
    sender: str
    instance_id: bytes
    masked: torch.Tensor  # (vector_length,) int64


@dataclass(frozen=True)
class ConsistencySignature:
    """Ed25519 signature (identity key) over the view of a :class:`ConsistencyCheck`."""

    sender: str
    instance_id: bytes
    signature: bytes


@dataclass(frozen=True)
class UnmaskShares:
    """Shamir shares (y values; x is the sender's share index): of the self-mask seed for
    each survivor, of the mask-agreement key for each dropped client."""

    sender: str
    instance_id: bytes
    seed_shares: Mapping[str, int]
    key_shares: Mapping[str, int]


ServerToClient = SecAggSetup | KeyBook | ShareInbox | ConsistencyCheck | UnmaskRequest
ClientToServer = (AdvertiseKeys | EncryptedShares | MaskedInput | ConsistencySignature
                  | UnmaskShares)

#: The stage each client → server message belongs to.
STAGE_OF = {AdvertiseKeys: SecAggStage.ADVERTISE_KEYS, EncryptedShares: SecAggStage.SHARE_KEYS,
            MaskedInput: SecAggStage.MASKED_INPUT, ConsistencySignature: SecAggStage.CONSISTENCY,
            UnmaskShares: SecAggStage.UNMASK}
ORDER = [SecAggStage.ADVERTISE_KEYS, SecAggStage.SHARE_KEYS, SecAggStage.MASKED_INPUT,
         SecAggStage.CONSISTENCY, SecAggStage.UNMASK, SecAggStage.DONE]


def secagg_payload_bytes(msg: ServerToClient | ClientToServer) -> int:
    """Bytes a wire format must move for ``msg`` (keys, ciphertexts, shares, tensors)."""
    total = len(msg.instance_id)
    if isinstance(msg, AdvertiseKeys):
        total += len(msg.cipher_public) + len(msg.mask_public) + len(msg.signature)
    elif isinstance(msg, KeyBook):
        total += sum(secagg_payload_bytes(a) for a in msg.adverts)
    elif isinstance(msg, (EncryptedShares, ShareInbox)):
        total += sum(len(c) for c in msg.ciphertexts.values())
    elif isinstance(msg, MaskedInput):
        total += msg.masked.numel() * 8
    elif isinstance(msg, ConsistencySignature):
        total += len(msg.signature)
    elif isinstance(msg, UnmaskRequest):
        total += sum(len(sig) for sig in msg.signatures.values())
    elif isinstance(msg, UnmaskShares):
        total += 66 * (len(msg.seed_shares) + len(msg.key_shares))  # M521 field elements
    return total
