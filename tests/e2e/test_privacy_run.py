"""DP in `run`, end to end: ε per round, ledgers that audit, budgets that are enforced."""

import csv
import json

import pytest

from fedmuscle_secure.cli.audit import main_audit
from fedmuscle_secure.dp.accounting import DpEventRecord, independent_epsilon
from fedmuscle_secure.dp.noise import representation_sensitivity
from fedmuscle_secure.experiment.run import run_experiment
from helpers.tiny import tiny_config


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _entries(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.slow
def test_dp_sgd_run_reports_epsilon_per_round_and_audits(tmp_path):
    cfg = tiny_config(**{"training.rounds": 2, "privacy": {
        "delta": 1e-5, "dp_sgd": {"enabled": True, "noise_multiplier": 1.2, "expected_batch_size": 8}}})
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    rows = [r for r in _rows(res.run_dir / "metrics.csv") if r["method"] == "muscle"]
    for name in ("a", "b", "c"):
        eps = [float(r["eps_record"]) for r in rows if r["client"] == name]
        assert len(eps) == 3 and 0 < eps[0] < eps[1] < eps[2]  # rounds 1, 2 and the closing update
        assert all(float(r["eps_client"]) == 0 for r in rows if r["client"] == name)
    ledger = _entries(res.run_dir / "ledger" / "a.jsonl")
    kinds = [e["kind"] for e in ledger]
    assert kinds[0] == "genesis" and "dp_event" in kinds and "egress" in kinds
    events = [DpEventRecord.from_dict(e["body"]) for e in ledger if e["kind"] == "dp_event"]
    last = [e for e in ledger if e["kind"] == "epsilon"][-1]["body"]
    assert last["epsilon_rdp"] == pytest.approx(independent_epsilon(events, 1e-5), rel=0.02)
    summary = (res.run_dir / "summary.md").read_text()
    assert "Privacy" in summary and "ε record-level" in summary
    assert main_audit([str(res.run_dir)]) == 0
    # any one edited line of a ledger is caught
    path = res.run_dir / "ledger" / "b.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    entry = json.loads(lines[3])
    entry["time"] += 1.0  # any change to any field of any entry
    lines[3] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text("".join(lines))
    assert main_audit([str(res.run_dir)]) != 0


@pytest.mark.slow
def test_client_over_budget_leaves_and_the_others_continue(tmp_path):
    sigma, rows_per_batch = 2.0, 32
    ev = DpEventRecord(guarantee="client", mechanism="gaussian", noise_multiplier=sigma, sample_rate=1.0,
                       steps=1, sensitivity=representation_sensitivity(rows_per_batch),
                       neighbouring="replace_client_dataset")
    per_round = 96 // 32
    # room for exactly one round of releases (3 batches), not for the 4th
    budget = (independent_epsilon([ev] * per_round, 1e-5) + independent_epsilon([ev] * (per_round + 1), 1e-5)) / 2
    cfg = tiny_config(**{"training.rounds": 3, "compare_local": False,
                         "privacy": {"delta": 1e-5, "representation_noise": {"enabled": True,
                                                                            "noise_multiplier": sigma}}})
    raw = cfg.model_dump(mode="json")
    raw["clients"][2]["budget"] = {"client_epsilon": budget}
    from fedmuscle_secure.federation.checks import parse_config

    res = run_experiment(parse_config(raw), tmp_path / "run", progress=False)
    rows = [r for r in _rows(res.run_dir / "metrics.csv") if r["round"] != "final"]
    assert {r["client"] for r in rows if r["round"] == "3"} == {"a", "b"}
    assert {r["client"] for r in rows if r["round"] == "1"} == {"a", "b", "c"}
    final_c = next(r for r in _rows(res.run_dir / "metrics.csv") if r["round"] == "final" and r["client"] == "c")
    assert final_c["left_round"] == "2" and "budget" in final_c["left_reason"].lower()
    assert float(final_c["eps_client"]) <= budget
    ledger = _entries(res.run_dir / "ledger" / "c.jsonl")
    kinds = [e["kind"] for e in ledger]
    refusal = kinds.index("refusal")
    assert "leave" in kinds[refusal:] and "egress" not in kinds[refusal:] and "dp_event" not in kinds[refusal:]
    assert sum(k == "egress" for k in kinds) == per_round
    summary = (res.run_dir / "summary.md").read_text()
    assert "round 2" in summary and "c" in summary
    events = [json.loads(line)["event"] for line in (res.run_dir / "events.jsonl").read_text().splitlines()]
    assert "client_left" in events
    assert main_audit([str(res.run_dir)]) == 0


@pytest.mark.slow
def test_record_level_budget_stops_dp_sgd_before_it_is_exceeded(tmp_path):
    from fedmuscle_secure.federation.checks import parse_config

    cfg = tiny_config(**{"training.rounds": 3, "compare_local": False, "privacy": {
        "delta": 1e-5, "dp_sgd": {"enabled": True, "noise_multiplier": 1.0, "expected_batch_size": 8}}})
    raw = cfg.model_dump(mode="json")
    # client a: 30 train rows, q = 1/4, 4 steps per LocalUpdate; room for two LocalUpdates, not three
    ev = DpEventRecord(guarantee="record", mechanism="poisson_gaussian", noise_multiplier=1.0,
                       sample_rate=0.25, steps=4, sensitivity=1.0, neighbouring="add_remove_record")
    raw["clients"][0]["budget"] = {"record_epsilon": (independent_epsilon([ev] * 2, 1e-5)
                                                      + independent_epsilon([ev] * 3, 1e-5)) / 2}
    res = run_experiment(parse_config(raw), tmp_path / "run", progress=False)
    final_a = next(r for r in _rows(res.run_dir / "metrics.csv") if r["round"] == "final" and r["client"] == "a")
    assert final_a["left_round"] == "3"
    assert float(final_a["eps_record"]) <= raw["clients"][0]["budget"]["record_epsilon"]
    kinds = [e["kind"] for e in _entries(res.run_dir / "ledger" / "a.jsonl")]
    assert sum(k == "dp_event" for k in kinds) == 2 and kinds.index("refusal") < kinds.index("leave")
    assert {r["client"] for r in _rows(res.run_dir / "metrics.csv") if r["round"] == "3"} == {"b", "c"}
    assert main_audit([str(res.run_dir)]) == 0
