"""Releases in flight when the server died: marked by the client, reported, not tampering.

When the server dies mid-round, the release a client had just sent may never have been
received, so it has no receipt; after ``--resume`` the audit of every organisation used to
fail (17) as if the ledger had been tampered with. The client now marks, in a signed
``server_lost`` entry, the releases the server may not have received
(:meth:`Ledger.mark_server_lost`); ``audit`` reports such an egress without a receipt as
an unacknowledged release. Anything else stays a failure.
"""

from __future__ import annotations

import pytest

from fedmuscle_secure.crypto.identity import generate_identity, load_private
from fedmuscle_secure.records.audit import EXIT_CODES, audit_run
from fedmuscle_secure.records.ledger import Ledger, ReceiptLog
from helpers.audit_fixtures import build_run, kinds, lines, rechain, release, write


def _release(led: Ledger, r: int, batch: int, data: bytes) -> int:
    return release(led, None, r, [0, batch], data)


def test_mark_server_lost_names_the_releases_of_the_round_in_flight(tmp_path):
    with Ledger.open(tmp_path / "a.jsonl", client="a", signing_key=generate_identity()) as led:
        _release(led, 1, 0, b"r1")  # round 1 completed: its releases were answered
        first = _release(led, 2, 0, b"r2b0")
        last = _release(led, 2, 1, b"r2b1")
        mark = led.mark_server_lost(1, "stream broke")
        assert mark["kind"] == "server_lost" and mark["body"]["round"] == 2
        assert mark["body"]["unacknowledged_seqs"] == [first, last]
        again = _release(led, 2, 0, b"r2b0")  # the round runs again after --resume
        second = led.mark_server_lost(1, "broke again")  # only what came after the last mark
        assert second["body"]["unacknowledged_seqs"] == [again, again]
        assert led.mark_server_lost(2, "idle")["body"]["unacknowledged_seqs"] is None


def _crash_run(tmp_path, *, mark: bool):
    """Client a released round 2 batch 1 as the server died (no receipt); after the restart
    round 2 runs again and a sits out both batches it had released (never a second release
    for an exchange), then releases batch 2 with a receipt."""
    def restart(led: Ledger, receipts: ReceiptLog) -> None:
        for batch, received in ((0, True), (1, False)):
            release(led, receipts if received else None, 2, [0, batch], b"r2 batch %d" % batch)
        if mark:
            led.mark_server_lost(1, "stream to the server broke (UNAVAILABLE)")
        for batch in (0, 1):
            led.append("sit_out", {"round": 2, "exchange": [0, batch], "reason": "released"})
        release(led, receipts, 2, [0, 2], b"r2 batch 2")

    return build_run(tmp_path, clients=("a",), after_last=restart)


def test_marked_release_without_receipt_is_unacknowledged_not_tampering(tmp_path):
    run = _crash_run(tmp_path, mark=True)
    report = audit_run(run, trusted_keys=tmp_path / "identities")
    assert report.failures == [] and report.exit_code() == 0
    notes = [n for n in report.notes if "unacknowledged release" in n]
    lost = [e for e in lines(run / "ledger" / "a.jsonl") if e["kind"] == "egress"]
    # the in-flight one is the marked batch-1 release
    assert len(notes) == 1 and f"seq {lost[-2]['seq']}:" in notes[0]
    assert "stays counted in ε" in notes[0]


def test_unmarked_missing_receipt_still_fails(tmp_path):
    report = audit_run(_crash_run(tmp_path, mark=False))
    assert kinds(report) == {"receipt_mismatch"} and report.exit_code() == 17


def test_receipt_without_egress_stays_a_failure_under_a_mark(tmp_path):
    run = _crash_run(tmp_path, mark=True)
    with ReceiptLog.open(run / "receipts.jsonl") as receipts:
        receipts.append("a", 2, (0, 1), "ab" * 32, 12)
    report = audit_run(run)
    assert kinds(report) == {"receipt_mismatch"}
    assert "has no matching egress entry" in report.failures[0].message


@pytest.mark.parametrize("span", [[5, 2], [0, 10_000], "all"])
def test_a_mark_must_name_earlier_seqs(tmp_path, span):
    run = _crash_run(tmp_path, mark=True)
    path = run / "ledger" / "a.jsonl"
    entries = lines(path)
    lost = next(e for e in entries if e["kind"] == "server_lost")
    lost["body"]["unacknowledged_seqs"] = span
    write(path, rechain(entries, sign=load_private(run / "keys" / "a.key")))
    report = audit_run(run)
    assert report.exit_code() == EXIT_CODES["malformed"]
    assert any(f.seq == lost["seq"] and "unacknowledged_seqs" in f.message
               for f in report.failures)
