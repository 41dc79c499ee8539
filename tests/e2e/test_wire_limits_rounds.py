"""Honest federations pass their own wire limits (DESIGN §6): one real round of each
protection mode, every message encoded and decoded by its receiver under the limits and
direction the config gives."""

from __future__ import annotations

import pytest

from fedmuscle_secure.federation.ckks import ckks_parameters
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import SecAggEnvelope
from fedmuscle_secure.simulator import build_federation
from fedmuscle_secure.transport import codec as wire
from fedmuscle_secure.transport.codec import Direction
from fedmuscle_secure.transport.limits import wire_limits
from helpers.tiny import tiny_config

UP, DOWN = Direction.TO_SERVER, Direction.TO_CLIENT


def _round_through_the_wire(cfg) -> set[str]:
    """One round of ``cfg``'s real state machines, every message encoded and decoded by
    its receiver under the federation's limits and direction; the kinds that travelled."""
    fed = build_federation(cfg, make_split(cfg), cfg.muscle.method)
    limits = wire_limits(cfg, ckks_parameters(cfg, None) if cfg.protection == "ckks" else None)
    kinds: set[str] = set()

    def cross(msg, direction: Direction):
        data = wire.encode(msg)
        assert len(data) <= limits.max_payload_bytes, (type(msg).__name__, len(data))
        kinds.add(type(msg.body if isinstance(msg, SecAggEnvelope) else msg).__name__)
        return wire.decode(data, expect=direction, sender="peer", limits=limits)

    pending = fed.server.start_round(1)
    while pending:
        msg = cross(pending.pop(0), DOWN)
        for reply in fed.clients[msg.client].handle(msg):
            pending += fed.server.handle(cross(reply, UP))
    assert fed.server.round == 1
    fed.close()
    return kinds


@pytest.mark.slow
@pytest.mark.parametrize("over", [
    {"muscle.exchange": "per_epoch"},
    {"muscle.method": "pairwise"},
    {"protection": "secagg", "muscle.method": "muscle_sum", "muscle.exchange": "per_epoch"},
    {"protection": "ckks", "muscle.method": "muscle_sum"},
    {"protection": "ckks", "muscle.method": "muscle", "ckks": {"galois_keys": False}},
], ids=["plain-per-epoch", "pairwise", "secagg", "ckks-sum", "ckks-exact"])
def test_every_message_of_an_honest_round_passes_its_receivers_checks(over):
    kinds = _round_through_the_wire(tiny_config(compare_local=False, **{
        "training.rounds": 1, "data.public_size": 64, **over}))
    assert {"RoundPlan", "RoundReport"} <= kinds and len(kinds) >= 4

