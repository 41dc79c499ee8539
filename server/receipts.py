"""The server's receipt of each release, digested as it arrived (DESIGN §5.4).

Both drivers of the server state machine record receipts the same way: the in-process
simulator and the deployment's coordinator (:mod:`fedmuscle_secure.server.coordinator`).
"""

from __future__ import annotations

from fedmuscle_secure.crypto.secagg.messages import MaskedInput
from fedmuscle_secure.messages import (
    EncryptedRepresentations,
    EncryptedWeightUpdate,
    Message,
    Representations,
    SecAggEnvelope,
    TaskOutputs,
    WeightRelease,
)
from fedmuscle_secure.records.ledger import ReceiptLog, payload_digest


def carries_release(msg: Message) -> bool:
    """Whether ``msg`` holds a client's release (what a receipt is kept for)."""
    return isinstance(msg, (Representations, EncryptedRepresentations, TaskOutputs,
                            WeightRelease, EncryptedWeightUpdate)) or (
        isinstance(msg, SecAggEnvelope) and isinstance(msg.body, MaskedInput))


def record_receipt(receipts: ReceiptLog,
                   msg: Representations | EncryptedRepresentations | TaskOutputs | SecAggEnvelope
                   | WeightRelease | EncryptedWeightUpdate) -> None:
    """Append the receipt of release ``msg`` (digest and size of its payload) to ``receipts``."""
    if isinstance(msg, (EncryptedRepresentations, EncryptedWeightUpdate)):
        digest, size = payload_digest(*msg.payload_parts())
    elif isinstance(msg, TaskOutputs):
        digest, size = payload_digest(msg.outputs)
    elif isinstance(msg, WeightRelease):
        digest, size = payload_digest(msg.w)
    else:
        digest, size = payload_digest(msg.z if isinstance(msg, Representations) else msg.body.masked)
    receipts.append(msg.client, msg.round, [msg.epoch, msg.batch], digest, size)
