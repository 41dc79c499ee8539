"""Stage deadlines of the deployment's coordinator (DESIGN §6), without sockets.

The adversary (or a hung organisation) keeps its connection open and stops answering in
the middle of a stage. Without a deadline the server waits for it until the round timeout
(an hour), holding every other member hostage. The coordinator is driven exactly as the
gRPC servicer drives it (``connect`` / ``submit``), with the real state machines on both
sides and a fake clock, so "a stage waited longer than its timeout" is a clock value.
"""

from __future__ import annotations

import grpc
import pytest

from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.messages import ExchangeAborted, RoundPlan, SecAggEnvelope, SumTerms
from fedmuscle_secure.server.coordinator import Abort, Coordinator
from fedmuscle_secure.simulator import build_federation
from helpers.clock import Clock
from helpers.tiny import tiny_config

TIMEOUT = 30.0
FOUR = [{"name": "a", "model": "test_resnet", "image_size": 8, "task": "coarse"},
        {"name": "b", "model": "test_resnet", "image_size": 8, "task": "attributes"},
        {"name": "c", "model": "resnet10t", "image_size": 8, "task": "digit10",
         "projection": {"kind": "linear"}},
        {"name": "d", "model": "test_resnet", "image_size": 8, "task": "digit10"}]



class Harness:
    """The coordinator, every client's state machine and outbox, and a fake clock."""

    def __init__(self, cfg) -> None:
        self.fed = build_federation(cfg, make_split(cfg), cfg.muscle.method)
        self.clock = Clock()
        self.coordinator = Coordinator(self.fed.server, final_round=cfg.training.rounds + 1,
                                       stage_timeout_s=TIMEOUT, clock=self.clock)
        self.boxes = {c: self.coordinator.connect(c) for c in self.fed.clients}
        self.received: dict[str, list] = {c: [] for c in self.fed.clients}
        self.held: dict[str, list] = {}   # a silent client's unsent replies

    def pump(self, silent_after=None) -> None:
        """Deliver until quiet; ``silent_after(client, msg)`` true: that client stops
        answering from ``msg`` on (it still receives, as an open connection does)."""
        busy = True
        while busy:
            busy = False
            for c, box in self.boxes.items():
                while not box.empty():
                    msg = box.get_nowait()
                    busy = True
                    self.received[c].append(msg)
                    if isinstance(msg, Abort):
                        continue
                    if c in self.held or (silent_after and silent_after(c, msg)):
                        self.held.setdefault(c, []).append(msg)
                        continue
                    for reply in self.fed.clients[c].handle(msg):
                        self.coordinator.submit(c, reply)

    def wake(self, client: str) -> None:
        """The silent client comes back: it handles what it held, in order."""
        for msg in self.held.pop(client):
            for reply in self.fed.clients[client].handle(msg):
                self.coordinator.submit(client, reply)
        self.pump()

    def later(self, seconds: float, *, pump: bool = True) -> None:
        self.clock.now += seconds
        self.coordinator.check_deadline()
        if pump:
            self.pump()


def _secagg_config(rounds: int = 2):
    return tiny_config(clients=FOUR, protection="secagg", compare_local=False, **{
        "muscle.method": "muscle_sum", "muscle.exchange": "per_batch", "training.rounds": rounds,
        "data.public_size": 64})


def _stalls_on_share_inbox(client: str, msg) -> bool:
    return client == "d" and isinstance(msg, SecAggEnvelope) \
        and type(msg.body).__name__ == "ShareInbox" and (msg.round, msg.batch) == (1, 0)


def test_a_member_silent_inside_a_secure_sum_sits_out_the_round_and_the_others_finish():
    """d stops answering after receiving its shares (before its masked input). Without a
    deadline the exchange waits for d until the round timeout; with it, d is dropped from
    that instance at the deadline (its pairwise masks are recovered from the others'
    shares), sits out the round's later exchanges, stays connected, and takes part again
    in round 2 once it answers."""
    h = Harness(_secagg_config())
    h.coordinator.start_round(1)
    h.pump(silent_after=_stalls_on_share_inbox)
    s = h.fed.server
    assert "d" in h.held and s.waiting().key[-1] == "masked_input"
    assert s.waiting().awaited == ("d",)
    h.later(TIMEOUT - 1)
    assert s.waiting().awaited == ("d",)  # not yet
    assert not any(isinstance(m, SumTerms) for c in "abc" for m in h.received[c])
    h.later(2)
    for c in "abc":  # the exchange completed without d, and the next ones too
        sums = [m for m in h.received[c] if isinstance(m, SumTerms)]
        assert [(m.batch, m.peers) for m in sums] == [(0, ("a", "b", "c")), (1, ("a", "b", "c"))]
    notices = [(m.batch, "sits out" in m.reason) for m in h.received["d"]
               if isinstance(m, ExchangeAborted)]
    assert notices == [(0, True), (1, True)]
    assert "d" in h.coordinator.outboxes and "d" in s.active  # still connected and a member
    assert not any(isinstance(m, Abort) for m in h.received["d"])
    assert [(e["event"], e["dropped"]) for e in s.protection.events] == [
        ("secagg_dropouts", {"d": "masked_input"})]
    assert [(d["round"], d["stage"], d["silent"]) for d in s.deadlines] == [
        (1, "secagg/1/0/0/masked_input", ["d"])]
    h.wake("d")  # its late masked input is ignored; it reports the round
    assert s.round == 1 and s.active == ["a", "b", "c", "d"] and "d" in s.reports
    h.coordinator.start_round(2)
    h.pump()
    assert s.round == 2
    assert [m.peers for m in h.received["d"] if isinstance(m, SumTerms)] == [
        ("a", "b", "c", "d")] * 2
    h.fed.close()


def test_a_member_that_never_answers_again_is_let_go_at_the_report_deadline():
    h = Harness(_secagg_config(rounds=1))
    h.coordinator.start_round(1)
    h.pump(silent_after=_stalls_on_share_inbox)
    h.later(TIMEOUT + 1)  # d sits out; a, b, c finish the round's exchanges and report
    s = h.fed.server
    assert s.waiting().key == ("report", 1) and s.waiting().awaited == ("d",)
    h.later(TIMEOUT + 1)
    assert s.round == 1 and s.active == ["a", "b", "c"]
    assert s.departures[0]["client"] == "d" and "deadline" in s.departures[0]["reason"]
    aborts = [m for m in h.received["d"] if isinstance(m, Abort)]
    assert [a.code for a in aborts] == [grpc.StatusCode.DEADLINE_EXCEEDED]
    assert "'d' missed the deadline of stage 'report' in round 1" in aborts[0].reason
    assert "d" not in h.coordinator.outboxes and "deadline" in h.coordinator.gone["d"]
    h.fed.close()


def test_a_plain_member_that_withholds_its_release_is_a_leave_at_the_deadline():
    cfg = tiny_config(compare_local=False, **{"training.rounds": 1})
    h = Harness(cfg)
    h.coordinator.start_round(1)
    h.pump(silent_after=lambda c, m: c == "c" and isinstance(m, RoundPlan))
    s = h.fed.server
    assert s.waiting().key[0] == "release" and s.waiting().awaited == ("c",)
    h.later(TIMEOUT + 1)
    assert s.round == 1 and s.active == ["a", "b"] and sorted(s.reports) == ["a", "b"]
    assert [(d["client"], d["round"]) for d in s.departures] == [("c", 1)]
    assert [type(m) for m in h.received["c"]][-1] is Abort
    h.fed.close()


def test_no_deadline_runs_before_the_first_member_answers():
    """A round's first exchange follows every member's LocalUpdate, which may take long:
    the clock starts with the first answer, not with the stage."""
    h = Harness(_secagg_config(rounds=1))
    h.coordinator.start_round(1)
    s = h.fed.server
    assert s.waiting().answered == ()
    h.later(100 * TIMEOUT, pump=False)  # every member still in LocalUpdate: nothing closes
    assert s.waiting().key[-1] == "advertise_keys" and s.deadlines == []
    h.pump()
    assert s.round == 1 and s.active == ["a", "b", "c", "d"] and s.deadlines == []
    h.fed.close()


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_stage_timeout_must_be_positive(bad):
    cfg = tiny_config(compare_local=False)
    fed = build_federation(cfg, make_split(cfg), "muscle")
    with pytest.raises(ValueError, match="stage_timeout_s must be positive"):
        Coordinator(fed.server, final_round=2, stage_timeout_s=bad)
    fed.close()
