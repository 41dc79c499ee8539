"""A client releases at most once per exchange (DESIGN §4.4), in every mode: the re-run
round after a crash, in the in-process simulator (plain, secagg and ckks, two rounds of four
organisations each). The other release-once attacks are in
tests/unit/client/test_release_once.py, the gRPC restart path in tests/e2e/test_grpc.py.

The attack: a server that crashed (or says it did) after it had every client's release of an
exchange re-runs the round after ``--resume``; the clients rewind to their checkpoints.
Without the rule a second sum over {a, b} after one over {a, b, c} gives c's release as the
difference; with it, every client that had released sits the exchange out, so no second
release exists, and the re-run round still finishes.
"""

from __future__ import annotations

from collections import Counter

import pytest

from fedmuscle_secure.messages import SitOut
from fedmuscle_secure.records.ledger import read_entries
from helpers.release_once import crash_and_rerun_round_2
from helpers.release_once import release_config as _config
from helpers.release_once import release_of as _release_of

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("protection", ["plain", "secagg", "ckks"])
def test_a_rerun_round_gets_no_second_release(tmp_path, protection):
    """Crash once the server holds every client's release of (round 2, epoch 0): after the
    restart each of them sits out that exchange and the rest of the round (LocalUpdate,
    seeded, could rebuild the encoder it released from), and the round finishes. Each
    ledger has exactly one egress per exchange."""
    def all_released_epoch0(first, fed) -> bool:
        got = {x[0] for m in first if (x := _release_of(m)) and x[1:] == (2, 0, None)}
        return got == set(fed.clients)

    fed, _, second = crash_and_rerun_round_2(_config(protection), tmp_path, all_released_epoch0)
    again = [x for m in second if (x := _release_of(m))]
    assert not [x for x in again if x[1:] == (2, 0, None)], "a second release of (2, 0)"
    assert not again, f"releases in a re-run round: {again}"
    assert sorted((m.client, m.epoch) for m in second if isinstance(m, SitOut)) == \
        [(c, e) for c in sorted(fed.clients) for e in (0, 1)]
    fed.close()
    for name in fed.clients:
        entries, _ = read_entries(tmp_path / "ledger" / f"{name}.jsonl")
        per_exchange = Counter((e["body"]["round"], *e["body"]["exchange"])
                               for e in entries if e["kind"] == "egress")
        assert per_exchange and set(per_exchange.values()) == {1}, per_exchange
        assert [(e["body"]["round"], e["body"]["exchange"]) for e in entries
                if e["kind"] == "sit_out"] == [(2, [0, None]), (2, [1, None])]
