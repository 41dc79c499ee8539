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
from fedmuscle_secure.methods import SILENT
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
    assert sent.count(release) == 3 * n_rel and set(sent) == {release, RoundReport}
    assert replies.count(reply) == 3 * n_rel and set(replies) == {reply}
    assert all(m["bytes_sent"] > 0 for m in metrics.values()) and egress == n_rel
    receipts = (tmp_path / "receipts.jsonl").read_text().splitlines()
    assert len(receipts) == 3 * n_rel
    if method == "feddf":  # "a" has no partner in its output space: no step
        assert steps == {"a": 0, "b": NB, "c": NB}
    elif method == "cofed":  # "a" falls back to its own predictions; b, c keep agreed labels
        assert steps["a"] == NB and all(math.isfinite(metrics[c]["cl_loss"]) or steps[c] == 0
                                        for c in "bc")
    else:
        assert steps == {"a": NB, "b": NB, "c": NB}
        assert all(math.isfinite(m["cl_loss"]) for m in metrics.values())
