"""A client releases at most once per exchange (DESIGN §4.4), in every mode.

Attacks reproduced here, in the in-process simulator (the re-run of a whole round in every
mode is in ``tests/e2e/test_release_once_rerun.py``, the gRPC restart path in
``tests/e2e/test_grpc.py``):

* a server that crashed (or says it did) after it had every client's release of an
  exchange re-runs the round after ``--resume``; the clients rewind to their checkpoints.
  Without the rule a second sum over {a, b} after one over {a, b, c} gives c's release as
  the difference; with it, every client that had released sits the exchange out, so no
  second release exists, and the re-run round still finishes;
* an active server (no crash) holds back the reply of a secure exchange and opens a second
  instance for the same (round, epoch, batch) over a smaller group: every client refuses;
* the same content under another key: the server withholds the reply of epoch 0 (an abort
  instead of the sums), so no client steps, and sets up epoch 1, which covers the same
  public rows: the releases would repeat, permuted. Every client sits epoch 1 out.
"""

from __future__ import annotations

from collections import deque

import pytest
import torch

from fedmuscle_secure.crypto.secagg.server import SecAggServer
from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import (
    ExchangeAborted,
    PeerSums,
    Representations,
    SecAggEnvelope,
    SitOut,
    SumTerms,
)
from fedmuscle_secure.records.ledger import read_entries
from fedmuscle_secure.simulator import build_federation, run_round
from helpers.release_once import crash_and_rerun_round_2
from helpers.release_once import release_config as _config
from helpers.release_once import release_of as _release_of
from helpers.round_driver import drive


def test_a_partly_released_exchange_runs_with_the_others_only(tmp_path):
    """Crash after a and b released (round 2, batch 0) but before c and d did (per_batch,
    plain): after the restart a and b sit it out, c and d release it once, and every
    client's round ends."""
    def two_released(first, fed) -> bool:
        return len([m for m in first if _release_of(m) and _release_of(m)[1:] == (2, 0, 0)]) == 2

    fed, first, second = crash_and_rerun_round_2(_config("plain", exchange="per_batch"),
                                                  tmp_path, two_released)
    early = {m.client for m in first if _release_of(m)}
    assert {m.client for m in second if isinstance(m, SitOut)} == early
    assert {x[0] for m in second if (x := _release_of(m)) and x[1:] == (2, 0, 0)} == \
        set(fed.clients) - early
    fed.close()


def test_a_second_secure_setup_for_a_released_exchange_is_refused(tmp_path):
    """An active server holds back the sums of (round 1, epoch 0) once every masked input is
    in, and opens a second instance for the same exchange over {a, b, d}: c's input would
    be the difference of the two sums. Every client refuses the second setup."""
    cfg = _config("secagg")
    fed = build_federation(cfg, make_split(cfg), "muscle_sum", record_dir=tmp_path)
    sent: list = []

    def masked_all(msg, fed) -> bool:
        return len([m for m in sent if _release_of(m)]) == len(fed.clients)

    assert not drive(fed, 1, stop=masked_all, seen=sent)
    enc = fed.server.protection.encoding
    group = ["a", "b", "d"]
    second = SecAggServer(group, 3, enc.vector_length)
    for setup in second.start():
        env = SecAggEnvelope(setup.recipient, 1, 0, None, setup, enc)
        with pytest.raises(ProtocolError, match="second secure-sum setup") as info:
            fed.clients[setup.recipient].handle(env)
        assert (info.value.peer, info.value.stage) == ("server", "setup")
    fed.close()
    for name in fed.clients:  # one masked input each, nothing more
        entries, _ = read_entries(tmp_path / "ledger" / f"{name}.jsonl")
        assert [e["body"]["exchange"] for e in entries if e["kind"] == "egress"] == [[0, None]]


@pytest.mark.parametrize("protection", ["plain", "secagg"])
def test_withheld_reply_then_the_same_rows_again_is_sat_out(protection):
    """The server receives every release of (round 1, epoch 0), answers with ExchangeAborted
    instead of the reply (no client steps), and asks for epoch 1, which covers the same public
    rows: the same encoder would release the same representations again (under secagg, over
    a group the server picks). Every client sits epoch 1 out."""
    cfg = _config(protection)
    fed = build_federation(cfg, make_split(cfg), "muscle_sum")
    queue = deque(fed.server.start_round(1))
    sent: list = []
    while queue:
        msg = queue.popleft()
        if isinstance(msg, (SumTerms, PeerSums)) and msg.epoch == 0:
            msg = ExchangeAborted(msg.client, 1, 0, msg.batch, "the server withholds the sums")
        for rep in fed.clients[msg.client].handle(msg):
            sent.append(rep)
            queue.extend(fed.server.handle(rep))
    assert {x[0] for m in sent if (x := _release_of(m)) and x[2] == 0} == set(fed.clients)
    assert not [x for m in sent if (x := _release_of(m)) and x[2] == 1]
    sat = [m for m in sent if isinstance(m, SitOut)]
    assert sorted(m.client for m in sat) == sorted(fed.clients)
    assert all("current encoder" in m.reason for m in sat)
    assert fed.server.round_complete  # and the round still ends


def test_the_server_tells_a_sitting_out_client_when_the_exchange_ends():
    """Plain server: one client sits an exchange out, the others release; the releasers get
    their replies over each other and the sitter an ExchangeAborted."""
    cfg = _config("plain")
    fed = build_federation(cfg, make_split(cfg), "muscle_sum")
    plans = fed.server.start_round(1)
    assert plans
    n_batches = int(plans[0].batches.shape[1])
    z = torch.nn.functional.normalize(torch.randn(n_batches, 32, 16), dim=-1)
    out = fed.server.handle(SitOut("a", 1, 0, None, "already released"))
    assert out == []
    for c in "bcd":
        out += fed.server.handle(Representations(c, 1, 0, None, z.clone()))
    aborted = [m for m in out if isinstance(m, ExchangeAborted)]
    assert [m.client for m in aborted] == ["a"]
    assert sorted(m.client for m in out if not isinstance(m, ExchangeAborted)) == ["b", "c", "d"]
    assert all("a" not in g for m in out if hasattr(m, "peers") for g in m.peers)
    assert fed.server.sat_out == [{"round": 1, "epoch": 0, "batch": None, "clients": ["a"]}]


def test_a_secure_federation_below_three_members_stops_with_an_error():
    """Two of four secagg members have left: every later secure sum would be over two
    members, so the next round does not start; the run ends with QuorumLost (exit 1 at the
    CLI) instead of going on training nothing."""
    from fedmuscle_secure.errors import QuorumLost

    cfg = _config("secagg")
    fed = build_federation(cfg, make_split(cfg), "muscle_sum")
    run_round(fed, 1)
    state = fed.server.state_dict()
    fed.server.load_state_dict({**state, "active": ["a", "b"]})
    with pytest.raises(QuorumLost, match="only 2 clients are left"):
        fed.server.start_round(2)


def test_audit_fails_a_ledger_with_two_releases_for_one_exchange(tmp_path):
    """A ledger that shows two releases for one exchange (a client built before the rule,
    or one that broke it) fails `audit` with its own code, naming the second entry."""
    from fedmuscle_secure.crypto.identity import generate_identity, public_pem
    from fedmuscle_secure.records.audit import audit_ledger
    from fedmuscle_secure.records.audit_report import EXIT_CODES
    from fedmuscle_secure.records.ledger import Ledger

    key = generate_identity()
    path = tmp_path / "ledger" / "a.jsonl"
    with Ledger.open(path, client="a", signing_key=key) as ledger:
        ledger.append("genesis", {"client": "a", "public_key": public_pem(key), "delta": 1e-5,
                                  "method": "muscle_sum", "protection": "plain",
                                  "budget": {"record": None, "client": None},
                                  "noise_multiplier": {"record": None, "client": None},
                                  "max_grad_norm": None, "clients": ["a"], "scope": "organisation"})
        for _ in range(2):
            ledger.append("egress", {"round": 1, "exchange": [0, None], "recipient": "server",
                                     "sha256": "0" * 64, "bytes": 8})
    report = audit_ledger(path, key.public_key(), receipts=None, client="a")
    second = [f for f in report.failures if f.kind == "second_release"]
    assert [f.seq for f in second] == [2] and report.exit_code() == EXIT_CODES["second_release"]


def test_a_release_deadline_lets_go_the_silent_not_the_sitting_out():
    """Plain server: a sits an exchange out, b releases, c and d stay silent. The release
    stage's deadline lets c and d go; a, which answered with its SitOut, stays."""
    cfg = _config("plain")
    fed = build_federation(cfg, make_split(cfg), "muscle_sum")
    plans = fed.server.start_round(1)
    z = torch.nn.functional.normalize(torch.randn(int(plans[0].batches.shape[1]), 32, 16), dim=-1)
    fed.server.handle(SitOut("a", 1, 0, None, "already released"))
    wait = fed.server.waiting()
    assert wait.key[0] == "release" and wait.answered == ("a",)
    fed.server.handle(Representations("b", 1, 0, None, z))
    fed.server.close_stage("deadline")
    assert sorted(fed.server.active) == ["a", "b"]
