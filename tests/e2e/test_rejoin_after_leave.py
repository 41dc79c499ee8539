"""A client that left stays gone after a restart (DESIGN §4.4: nothing leaves it outside
the accounting).

The attack (an operator's restart, no malice needed): client c spends its client-level
budget in round 2, records a refusal and a leave, and the whole site crashes before the
round ends. The server resumes from its round-1 checkpoint, where c is still active, and
the clients load their round-1 checkpoints. Without the ledger telling it, c would rejoin
and run DP-SGD after its own leave (and `audit` would then fail its honest ledger). With
it, c's `left` comes back from its ledger, it answers the re-run round's plan with a Leave,
and the others finish; its ledger shows no spending after the leave.
"""

from __future__ import annotations

import pytest

from fedmuscle_secure.dp.accounting import DpEventRecord, independent_epsilon
from fedmuscle_secure.dp.noise import representation_sensitivity
from fedmuscle_secure.federation.checks import parse_config
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import Leave
from fedmuscle_secure.records.ledger import read_entries
from fedmuscle_secure.simulator import build_federation, run_round
from helpers.round_driver import drive, restart, snapshot
from helpers.tiny import tiny_config

pytestmark = pytest.mark.slow


def _config():
    """c's client-level budget lies between 3 and 4 releases: it leaves in round 2."""
    sigma = 2.0
    event = DpEventRecord(guarantee="client", mechanism="gaussian", noise_multiplier=sigma,
                          sample_rate=1.0, steps=1, sensitivity=representation_sensitivity(32),
                          neighbouring="replace_client_dataset")
    budget = (independent_epsilon([event] * 3, 1e-5) + independent_epsilon([event] * 4, 1e-5)) / 2
    cfg = tiny_config(**{"training.rounds": 2, "compare_local": False, "privacy": {
        "delta": 1e-5, "dp_sgd": {"enabled": True, "noise_multiplier": 1.2,
                                  "expected_batch_size": 8},
        "representation_noise": {"enabled": True, "noise_multiplier": sigma}}})
    raw = cfg.model_dump(mode="json")
    raw["clients"][2]["budget"] = {"client_epsilon": budget}
    return parse_config(raw)


def test_a_client_that_left_does_not_rejoin_after_a_restart(tmp_path):
    cfg = _config()
    split = make_split(cfg)
    fed = build_federation(cfg, split, "muscle", record_dir=tmp_path)
    run_round(fed, 1)
    state = snapshot(fed)
    assert not drive(fed, 2, stop=lambda m, fed: isinstance(m, Leave) and m.client == "c")
    entries, _ = read_entries(tmp_path / "ledger" / "c.jsonl")
    left_at = next(e["seq"] for e in entries if e["kind"] == "leave")

    again = restart(cfg, split, tmp_path, fed, state, "muscle")
    assert again.clients["c"].left is not None and again.clients["c"].left["round"] == 2
    assert drive(again, 2)  # the re-run round finishes without c
    assert "c" not in again.server.active
    again.close()
    entries, _ = read_entries(tmp_path / "ledger" / "c.jsonl")
    assert not [e for e in entries if e["seq"] > left_at and e["kind"] in ("dp_event", "egress")]
    assert [e["kind"] for e in entries].count("leave") == 1
