"""The four-organisation federation of the release-once tests (unit and end to end), which
messages a driven round saw carry a release (DESIGN §4.4: at most one per exchange), and the
crash-and-re-run of round 2 both halves stage."""

from __future__ import annotations

from fedmuscle_secure.crypto.secagg.messages import MaskedInput
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import EncryptedRepresentations, Representations, SecAggEnvelope
from fedmuscle_secure.simulator import build_federation, run_round
from helpers.round_driver import drive, restart, snapshot
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


def crash_and_rerun_round_2(cfg, record_dir, crash_when):
    """Round 1 in full; round 2 until ``crash_when(first, fed)`` holds (``first``: what it
    exchanged so far), then a restart of server and clients from their round-1 checkpoints
    and round 2 again, to its end. Returns (the restarted federation, what the first attempt
    exchanged, what the re-run exchanged)."""
    split = make_split(cfg)
    fed = build_federation(cfg, split, "muscle_sum", record_dir=record_dir)
    run_round(fed, 1)
    state = snapshot(fed)
    first: list = []
    assert not drive(fed, 2, stop=lambda msg, fed: crash_when(first, fed), seen=first)
    fed = restart(cfg, split, record_dir, fed, state, "muscle_sum")
    second: list = []
    assert drive(fed, 2, seen=second)  # the re-run round finishes
    return fed, first, second
