"""Weight-sharing methods in `run`, end to end (DESIGN §2.7): a DP-SGD FedProx run whose
weight releases are in every client's ledger and the server's receipts, and audit passes
(plain, secagg, ckks)."""

import json

import pytest

from fedmuscle_secure.cli.audit import main_audit
from fedmuscle_secure.experiment.run import run_experiment
from helpers.tiny import tiny_config

SAME = [{"name": n, "model": "test_resnet", "image_size": 16, "task": t}
        for n, t in (("a", "coarse"), ("b", "digit10"), ("c", "digit10"))]


@pytest.mark.slow
@pytest.mark.parametrize("method, protection", [("fedprox", "plain"), ("mfed", "plain"),
                                                ("fedprox", "secagg"), ("fedprox", "ckks")])
def test_a_dp_weight_sharing_run_records_its_releases_and_audits(tmp_path, method, protection):
    """Under secagg the release is the masked input of the backbone's secure sum (exchange
    (0, 0)), under ckks its encrypted update for the backbone's sum (exchange (0, 0));
    FedProx's default scope shares the encoder alone."""
    cfg = tiny_config(clients=SAME, compare_local=True, protection=protection,
                      muscle={"method": method, "num_selected": 2, "batch_size": 32, "dim": 16},
                      training={"rounds": 2, "local_epochs": 1, "local_batch_size": 16},
                      privacy={"delta": 1e-5, "dp_sgd": {"enabled": True, "noise_multiplier": 1.0,
                                                         "expected_batch_size": 8}})
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    assert set(res.final[method]) == {"a", "b", "c"}
    for c in ("a", "b", "c"):
        entries = [json.loads(line) for line in
                   (res.run_dir / "ledger" / f"{c}.jsonl").read_text().splitlines()]
        egress = [e["body"] for e in entries if e["kind"] == "egress"]
        exchange = [0, None] if protection == "plain" else [0, 0]
        assert [(e["round"], e["exchange"], e["content"], e["samples"]) for e in egress] == [
            (1, exchange, "weights", 1), (2, exchange, "weights", 1)]  # DP: equal weights
        assert all(e.get("protection") == (None if protection == "plain" else protection)
                   and e.get("part", "backbone") == "backbone" for e in egress)
    receipts = (res.run_dir / "receipts.jsonl").read_text().splitlines()
    assert len(receipts) == 6
    assert main_audit([str(res.run_dir)]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("protection", ["plain", "secagg"])
def test_an_update_noise_run_accounts_every_release_and_audits(tmp_path, protection):
    """DP-FedAvg (client-level noise on the clipped updates): every weight release follows
    its client-level dp_event, the final ε is what audit recomputes, and audit passes."""
    cfg = tiny_config(clients=SAME, compare_local=False, protection=protection,
                      muscle={"method": "fedavg", "num_selected": 2, "batch_size": 32, "dim": 16},
                      training={"rounds": 2, "local_epochs": 1, "local_batch_size": 16},
                      weight_sharing={"update_clip": 1.0},
                      privacy={"delta": 1e-5, "update_noise": {"enabled": True,
                                                               "target_epsilon": 20.0}})
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    for c in ("a", "b", "c"):
        entries = [json.loads(line) for line in
                   (res.run_dir / "ledger" / f"{c}.jsonl").read_text().splitlines()]
        kinds = [(e["kind"], e["body"].get("round")) for e in entries
                 if e["kind"] in ("dp_event", "egress")]
        assert kinds == [("dp_event", 1), ("egress", 1), ("dp_event", 2), ("egress", 2)]
        eps = [e["body"]["epsilon_rdp"] for e in entries if e["kind"] == "epsilon"]
        assert 0 < eps[-1] <= 20.0 * (1 + 1e-6)
    assert main_audit([str(res.run_dir)]) == 0
