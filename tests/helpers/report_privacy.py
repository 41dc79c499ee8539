"""What a server receives in reports under each privacy setting: the configs and the one
simulated round the report-policy tests (unit and end to end) read the messages of."""

from __future__ import annotations

import json

from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import RoundReport
from fedmuscle_secure.simulator import build_federation, run_round
from helpers.tiny import tiny_config

PRIVATE = {"val_metric", "task_loss"}
FROM_THE_MODEL = {"test_metric", "cl_loss", "cl_steps", "clipped_values"}

RECORD_LEVEL = {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0, "expected_batch_size": 8}}
CLIENT_LEVEL = {"representation_noise": {"enabled": True, "noise_multiplier": 1.0}}
SECAGG = {"protection": "secagg", "muscle.method": "muscle_sum", "muscle.exchange": "per_epoch"}


def report_config(privacy: dict, **over):
    return tiny_config(**{"training.rounds": 1, "compare_local": False, "privacy": privacy,
                          **over})


def round_as_the_server_sees_it(cfg, record_dir):
    """One round of the simulator; the reports the server received, and the rows."""
    fed = build_federation(cfg, make_split(cfg), cfg.muscle.method, record_dir=record_dir)
    received: list[RoundReport] = []
    handle = fed.server.handle

    def spy(msg):
        if isinstance(msg, RoundReport):
            received.append(msg)
        return handle(msg)

    fed.server.handle = spy
    try:
        rows = run_round(fed, 1)
    finally:
        fed.close()
    assert sorted(r.client for r in received) == ["a", "b", "c"]
    return fed, {r.client: r for r in received}, rows


def ledger_reports(record_dir, client):
    lines = (record_dir / "ledger" / f"{client}.jsonl").read_text().splitlines()
    return [e["body"] for e in map(json.loads, lines) if e["kind"] == "report"]

