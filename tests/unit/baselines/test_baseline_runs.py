"""Each baseline end to end through the same harness (tiny config, one round): it
completes, its metrics are finite, only communicating methods send bytes (and write
egress records), and the messages are the method's own."""

import json
import math

import pytest

from fedmuscle_secure.baselines import pseudo_label
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import (
    GroupOutputs,
    PeerKernel,
    PeerTerms,
    Representations,
    RoundReport,
    TaskOutputs,
)
from fedmuscle_secure.methods import OUTPUT_RELEASING, SILENT
from fedmuscle_secure.simulator import build_federation, run_round
from helpers.baselines import baseline_config

NB = 3  # public batches per round: 96 // 32


@pytest.fixture(scope="module")
def split():
    return make_split(baseline_config("gram"))


def _spy(obj, seen):
    """Record the types of the messages ``obj.handle`` returns."""
    orig = obj.handle

    def handle(msg):
        out = orig(msg)
        seen.extend(type(m) for m in out)
        return out

    obj.handle = handle


# (method, exchange, what clients release, what the server replies)
CASES = [
    ("gram", "per_batch", Representations, PeerTerms),
    ("fedhenn", "per_epoch", Representations, PeerKernel),
    ("cofed", "per_batch", TaskOutputs, GroupOutputs),
    ("feddf", "per_epoch", TaskOutputs, GroupOutputs),
    ("pseudo_label", "per_batch", None, None),
    ("simclr", "per_epoch", None, None),
]


@pytest.mark.parametrize(("method", "exchange", "release", "reply"), CASES)
def test_method_runs_one_round_with_its_messages(method, exchange, release, reply, split, tmp_path,
                                                 monkeypatch):
    # every prediction counts as confident, so pseudo_label and cofed's fallback do step
    monkeypatch.setattr(pseudo_label, "THRESHOLD", 0.0)
    fed = build_federation(baseline_config(method, **{"muscle.exchange": exchange}), split, method,
                           record_dir=tmp_path)
    sent, replies = [], []
    for client in fed.clients.values():
        _spy(client, sent)
    _spy(fed.server, replies)
    try:
        metrics = run_round(fed, 1)
    finally:
        fed.close()
    assert all(math.isfinite(m["test_metric"]) and math.isfinite(m["val_metric"])
               for m in metrics.values())
    steps = {c: m["cl_steps"] for c, m in metrics.items()}
    n_rel = NB if exchange == "per_batch" else 1
    lines = (tmp_path / "ledger" / "b.jsonl").read_text().splitlines()
    egress = [json.loads(line)["kind"] for line in lines].count("egress")
    if method in SILENT:
        assert set(sent) == {RoundReport} and all(m["bytes_sent"] == 0 for m in metrics.values())
        assert egress == 0 and steps == {"a": NB, "b": NB, "c": NB}
        return
    # cofed/feddf: "a" (coarse) shares its output space with nobody, so it releases nothing
    releasing = "bc" if method in OUTPUT_RELEASING else "abc"
    assert sent.count(release) == len(releasing) * n_rel and set(sent) == {release, RoundReport}
    assert replies.count(reply) == len(releasing) * n_rel and set(replies) == {reply}
    assert all((m["bytes_sent"] > 0) == (c in releasing) for c, m in metrics.items())
    assert egress == n_rel
    receipts = [json.loads(line)["client"] for line in
                (tmp_path / "receipts.jsonl").read_text().splitlines()]
    assert sorted(receipts) == sorted(releasing * n_rel)
    if method == "feddf":  # "a" has no partner in its output space: no step
        assert steps == {"a": 0, "b": NB, "c": NB}
    elif method == "cofed":  # "a" falls back to its own predictions; b, c keep agreed labels
        assert steps["a"] == NB and all(math.isfinite(metrics[c]["cl_loss"]) or steps[c] == 0
                                        for c in "bc")
    else:
        assert steps == {"a": NB, "b": NB, "c": NB}
        assert all(math.isfinite(m["cl_loss"]) for m in metrics.values())


@pytest.mark.parametrize(("method", "same_as"), [("cofed", "pseudo_label"), ("feddf", "local")])
def test_a_client_without_partner_releases_nothing_and_learns_what_its_fallback_does(
        method, same_as, split, tmp_path, monkeypatch):
    """An organisation whose task no one else has gets nothing from CoFED's vote (it would be
    its own prediction) or FedDF's ensemble (empty): it sends nothing, and its model after
    two rounds is bit for bit that of the method it reduces to."""
    monkeypatch.setattr(pseudo_label, "THRESHOLD", 0.0)
    finals = {}
    for m in (method, same_as):
        fed = build_federation(baseline_config(m, **{"training.rounds": 2}), split, m,
                               record_dir=tmp_path / m)
        sent = []
        _spy(fed.clients["a"], sent)
        try:
            run_round(fed, 1)
            finals[m] = run_round(fed, 2)["a"]
        finally:
            fed.close()
        assert set(sent) == {RoundReport}, f"{m}: client a sent {set(sent)}"
    assert finals[method]["bytes_sent"] == 0
    for key in ("test_metric", "val_metric", "task_loss"):
        assert finals[method][key] == finals[same_as][key], key


@pytest.mark.parametrize("method", ["cofed", "feddf"])
def test_a_client_whose_partner_left_stops_releasing_from_the_next_round(method, split, tmp_path,
                                                                          monkeypatch):
    """c leaves at round 1's plan; b (digit10) then has no partner among the members the
    round-2 plan names, so it releases nothing and takes the unpartnered form (CoFED's
    fallback steps, FedDF's none) instead of sending predictions nobody receives."""
    monkeypatch.setattr(pseudo_label, "THRESHOLD", 0.0)
    fed = build_federation(baseline_config(method, **{"training.rounds": 2}), split, method,
                           record_dir=tmp_path)
    c = fed.clients["c"]
    c.handle = lambda msg: [c._leave(msg.round, "the operator stopped c")]
    sent = []
    _spy(fed.clients["b"], sent)
    try:
        run_round(fed, 1)
        sent.clear()
        metrics = run_round(fed, 2)
    finally:
        fed.close()
    assert set(sent) == {RoundReport} and metrics["b"]["bytes_sent"] == 0
    assert metrics["b"]["cl_steps"] == (NB if method == "cofed" else 0)
