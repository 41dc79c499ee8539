"""The four-organisation federation of the release-once tests (unit and end to end), and
which messages a driven round saw carry a release (DESIGN §4.4: at most one per exchange)."""

from __future__ import annotations

from fedmuscle_secure.crypto.secagg.messages import MaskedInput
from fedmuscle_secure.messages import EncryptedRepresentations, Representations, SecAggEnvelope
from helpers.tiny import tiny_config

FOUR = [
    {"name": "a", "model": "test_resnet", "image_size": 8, "task": "coarse"},
    {"name": "b", "model": "test_resnet", "image_size": 8, "task": "attributes"},
    {"name": "c", "model": "test_resnet", "image_size": 8, "task": "digit10"},
    {"name": "d", "model": "test_resnet", "image_size": 8, "task": "digit10"},
]


def release_config(protection: str, exchange: str = "per_epoch"):
    return tiny_config(**{"muscle.method": "muscle_sum", "muscle.exchange": exchange,
                          "protection": protection, "compare_local": False, "clients": FOUR,
                          "training.rounds": 2, "training.cl_epochs": 2,
                          "data.public_size": 64})


def release_of(msg) -> tuple | None:
    """(client, round, epoch, batch) of a message that carries a release, else None."""
    if isinstance(msg, SecAggEnvelope) and isinstance(msg.body, MaskedInput) or isinstance(
            msg, (Representations, EncryptedRepresentations)):
        return (msg.client, msg.round, msg.epoch, msg.batch)
    return None
