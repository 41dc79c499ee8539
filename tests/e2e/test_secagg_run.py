"""``protection: secagg`` end to end (DESIGN §2.2, §3, §4.2, §5.1): whole runs, their ledgers
and resume."""

from __future__ import annotations

import json
import math

import pytest

from fedmuscle_secure.experiment.run import run_experiment
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.records.audit import audit_run
from fedmuscle_secure.simulator import build_federation, run_round
from helpers.tiny import tiny_config


@pytest.mark.slow
@pytest.mark.parametrize("exchange", ["per_batch", "per_epoch"])
def test_secagg_run_steps_equal_plain_sum_form(exchange):
    """Same config, same seeds: every contrastive step's loss under secagg equals plain
    muscle-sum with Q_n = all other clients (up to float32 server math in plain mode)."""
    over = {"muscle.method": "muscle_sum", "muscle.exchange": exchange, "training.rounds": 1}
    plain_cfg = tiny_config(**over)
    secure_cfg = tiny_config(**over, protection="secagg")
    split = make_split(plain_cfg)
    losses = {}
    for name, cfg in (("plain", plain_cfg), ("secagg", secure_cfg)):
        fed = build_federation(cfg, split, "muscle_sum")
        run_round(fed, 1)
        losses[name] = {c: list(client.cl_losses) for c, client in fed.clients.items()}
        fed.close()
    for c in losses["plain"]:
        assert len(losses["secagg"][c]) == len(losses["plain"][c]) > 0
        assert losses["secagg"][c] == pytest.approx(losses["plain"][c], rel=1e-4, abs=1e-5)


@pytest.mark.slow
def test_secagg_dp_run_ledgers_record_guaranteed_noise_and_audit(tmp_path):
    sigma = 3.0
    cfg = tiny_config(**{"muscle.method": "muscle_sum", "muscle.exchange": "per_epoch",
                         "training.rounds": 2, "protection": "secagg", "compare_local": False,
                         "clients": [
                             {"name": n, "model": "test_resnet", "image_size": 8, "task": "digit10"}
                             for n in ("a", "b", "c", "d")],
                         "secagg": {"threshold": 3, "t_collude": 1},
                         "privacy": {"representation_noise": {"enabled": True, "noise_multiplier": sigma}}})
    run_experiment(cfg, tmp_path / "run", progress=False)
    report = audit_run(tmp_path / "run")
    assert not report.failures, report.failures
    for n in "abcd":
        entries = [json.loads(line) for line in (tmp_path / "run" / "ledger" / f"{n}.jsonl").read_text().splitlines()]
        events = [e["body"] for e in entries if e["kind"] == "dp_event"]
        egress = [e["body"] for e in entries if e["kind"] == "egress"]
        assert len(events) == len(egress) == 2 * cfg.training.cl_epochs
        for ev in events:
            assert ev["noise_multiplier"] == sigma  # the guaranteed remainder: the target σ
            share = ev["distributed_noise"]["share_noise_multiplier"]
            assert share == pytest.approx(sigma / math.sqrt(3 - 1))
            assert ev["distributed_noise"]["group"] == 4
        assert all(e["protection"] == "secagg" for e in egress)
    receipts = (tmp_path / "run" / "receipts.jsonl").read_text().splitlines()
    assert len(receipts) == 4 * 2 * cfg.training.cl_epochs


@pytest.mark.slow
def test_abort_when_fewer_than_t_remain_is_recorded_without_release(tmp_path):
    """Client c's client-level budget pays for round 1 only; in round 2 it refuses at the
    setup, the instance (t = 3 of 3) aborts at advertise_keys, and nothing is released."""
    cfg = tiny_config(**{"muscle.method": "muscle_sum", "muscle.exchange": "per_epoch",
                         "training.rounds": 2, "training.cl_epochs": 1, "protection": "secagg",
                         "compare_local": False, "secagg": {"threshold": 3},
                         "privacy": {"representation_noise": {"enabled": True, "noise_multiplier": 2.0}}})
    raw = cfg.model_dump(mode="json")
    raw["clients"][2]["budget"] = {"client_epsilon": 5.0}  # round 1: ε 4.0, round 2: 6.0
    from fedmuscle_secure.federation.checks import parse_config

    cfg = parse_config(raw)
    run_experiment(cfg, tmp_path / "run", progress=False)
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    aborted = [e for e in events if e["event"] == "secagg_aborted"]
    assert aborted and all(e["round"] == 2 for e in aborted)
    assert "threshold" in aborted[0]["reason"]
    for n in ("a", "b"):
        entries = [json.loads(line) for line in (tmp_path / "run" / "ledger" / f"{n}.jsonl").read_text().splitlines()]
        assert not [e for e in entries if e["kind"] in ("dp_event", "egress") and e["body"]["round"] == 2]
        aborts = [e["body"] for e in entries if e["kind"] == "abort"]
        assert aborts and all(not a["masked_input_sent"] for a in aborts)
    c_entries = [json.loads(line) for line in (tmp_path / "run" / "ledger" / "c.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in c_entries if e["kind"] in ("refusal", "leave")] == ["refusal", "leave"]
    assert not audit_run(tmp_path / "run").failures
    summary = (tmp_path / "run" / "summary.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in summary.split("## Secure aggregation")[1].splitlines()
            if line.startswith("| ") and not line.startswith("| client")}
    assert int(rows["a"].split("|")[2]) == len([e for e in aborted if e["stage"] in ("advertise_keys", "setup")])


@pytest.mark.slow
def test_secagg_resume_ends_with_the_same_metrics(tmp_path):
    """Masks and keys are fresh per instance, but the unmasked sums are exact, so a resumed
    secagg run reproduces an uninterrupted one (no DP noise here)."""
    from fedmuscle_secure.errors import RunInterrupted

    cfg = tiny_config(**{"muscle.method": "muscle_sum", "muscle.exchange": "per_epoch",
                         "protection": "secagg", "compare_local": False})
    full = run_experiment(cfg, tmp_path / "full", progress=False)
    with pytest.raises(RunInterrupted):
        run_experiment(cfg, tmp_path / "cut", progress=False, stop_after=1)
    resumed = run_experiment(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed.final == full.final
    assert [(r["round"], r["client"], r.get("cl_loss")) for r in resumed.rows] == \
        [(r["round"], r["client"], r.get("cl_loss")) for r in full.rows]
    assert not audit_run(tmp_path / "cut").failures

