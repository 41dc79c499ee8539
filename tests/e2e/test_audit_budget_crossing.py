"""``audit`` holds every entry to the budget rules, not only the ``epsilon`` entries: a
signed ledger whose dp_events go on past its last ``epsilon`` entry until they cross the
budget (the ε of each prefix is the oracle's, over up to six record-level events). The
other budget rules are in tests/unit/records/test_audit_budget.py."""

from __future__ import annotations

import pytest

from fedmuscle_secure.dp.accounting import EPSILON_RTOL
from fedmuscle_secure.records.audit import audit_run
from helpers.audit_fixtures import RECORD, ROUNDS, build_run, eps_after, kinds, lines

pytestmark = pytest.mark.slow


def test_dp_events_after_the_last_epsilon_crossing_the_budget_fail(tmp_path):
    """A client that keeps releasing after its last epsilon entry (it crashed before the
    round closed, or never wrote one) was never checked against its budget. The first
    dp_event whose cumulative ε crosses it is the one reported."""
    crossing = 5  # the 5th record-level event crosses: ε(4) < budget < ε(5) / (1 + rtol)
    budget = (eps_after("record", crossing - 1)
              + eps_after("record", crossing) / (1 + EPSILON_RTOL)) / 2
    assert eps_after("record", ROUNDS) < budget  # the recorded rounds are within it

    def keep_spending(led, _receipts):
        for r in range(ROUNDS, ROUNDS + 4):  # events 3..6, no epsilon entry after them
            led.append("dp_event", {"round": r, "exchange": None, **RECORD})

    run = build_run(tmp_path, clients=("a",), budget_record=budget, after_last=keep_spending)
    report = audit_run(run)
    assert kinds(report) == {"budget_exceeded"} and report.exit_code() == 16
    seqs = [e["seq"] for e in lines(run / "ledger" / "a.jsonl")
            if e["kind"] == "dp_event" and e["body"]["guarantee"] == "record"]
    (failure,) = report.failures
    assert failure.seq == seqs[crossing - 1] and "no epsilon entry follows" in failure.message
