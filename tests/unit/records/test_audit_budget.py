"""``audit`` holds every entry to the budget rules, not only the ``epsilon`` entries.

Each test is a ledger (properly signed, as a client with its own key could write it, or
one cut short by a crash) that the audit used to pass and must not (dp_events past the last
``epsilon`` entry that cross the budget: tests/e2e/test_audit_budget_crossing.py).
"""

from __future__ import annotations

import pytest

from fedmuscle_secure.records.audit import EXIT_CODES, audit_run
from helpers.audit_fixtures import RECORD, ROUNDS, build_run, eps_after, lines, release


def test_trailing_dp_events_within_the_budget_pass(tmp_path):
    def one_more(led, _receipts):
        led.append("dp_event", {"round": ROUNDS, "exchange": None, **RECORD})

    assert eps_after("record", ROUNDS + 1) < 20.0
    assert audit_run(build_run(tmp_path, clients=("a",), budget_record=20.0,
                               after_last=one_more)).failures == []


@pytest.mark.parametrize("recorded", [None, 1e9])
def test_epsilon_entry_dropping_the_declared_budget_fails(tmp_path, recorded):
    """The genesis declares a record-level budget; epsilon entries that record none (or
    another) escaped the budget check, which read the entry's own budget."""
    run = build_run(tmp_path, clients=("a",), budget_record=0.5 * eps_after("record", 1),
                    epsilon_budget=lambda g, b: recorded if g == "record" else b)
    report = audit_run(run)
    assert report.exit_code() == EXIT_CODES["budget_exceeded"]
    messages = [f.message for f in report.failures]
    assert any("the budget was dropped or changed" in m for m in messages)
    assert any("exceeds the budget" in m for m in messages)  # held to the declared one


@pytest.mark.parametrize("stop", ["refusal", "leave"])
def test_egress_after_a_refusal_or_leave_fails(tmp_path, stop):
    """Only dp_events were checked after a stop; a payload released afterwards (here with
    representation noise off, so no dp_event goes with it; the server received it) passed."""
    def stop_then_release(led, receipts):
        led.append(stop, {"round": ROUNDS, "reason": "budget"})
        release(led, receipts, ROUNDS, [0, None], b"after the stop", dp_event=False)

    run = build_run(tmp_path, clients=("a",), after_last=stop_then_release, client_sigma=None)
    report = audit_run(run)
    (failure,) = report.failures
    assert failure.kind == "budget_exceeded" and "released a payload" in failure.message
    assert failure.seq == lines(run / "ledger" / "a.jsonl")[-1]["seq"]
    assert report.exit_code() == EXIT_CODES["budget_exceeded"]


def test_egress_without_its_dp_event_fails_when_noise_is_on(tmp_path):
    """Representation noise is declared on: a release with no client-level dp_event for
    its (round, exchange) is outside the accounting (its ε was never counted), even if the
    server received it."""
    def unaccounted(led, receipts):
        release(led, receipts, ROUNDS, [1, None], b"accounted")
        release(led, receipts, ROUNDS, [2, None], b"unaccounted", dp_event=False)

    run = build_run(tmp_path, clients=("a",), after_last=unaccounted)
    report = audit_run(run)
    (failure,) = report.failures
    assert failure.kind == "budget_exceeded" and "outside the accounting" in failure.message
    assert failure.seq == lines(run / "ledger" / "a.jsonl")[-1]["seq"]
    off = build_run(tmp_path / "off", clients=("a",), after_last=unaccounted, client_sigma=None)
    assert audit_run(off).failures == []  # noise off: no dp_event is expected
