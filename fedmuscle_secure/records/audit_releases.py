"""``audit``'s release rules: what the ``egress`` entries of one ledger may hold (DESIGN §4.4,
§5.3).

A release belongs to one exchange, named in its body by ``round`` and ``exchange``; both
rules here count releases per exchange with the one key :func:`exchange_key`:

* at most one release per exchange: a re-run exchange is sat out (a ``sit_out`` entry),
  never released again, since two sums over groups that differ by one member reveal that
  member (``second_release``);
* with representation noise on (genesis ``noise_multiplier.client`` not null), each release
  consumes one earlier client-level ``dp_event`` of its exchange: a release without one is
  outside the accounting (``budget_exceeded``).
"""

from __future__ import annotations

from collections import Counter

from fedmuscle_secure.records.audit_report import AuditReport, fail
from fedmuscle_secure.records.ledger import canonical_json

__all__ = ["check_accounted_egress", "check_one_release_per_exchange", "exchange_key"]


def exchange_key(body: dict) -> str:
    """The exchange an entry body belongs to, as one comparable key: (round, exchange)."""
    return canonical_json([body.get("round"), body.get("exchange")])


def check_one_release_per_exchange(client: str, entries: list[dict], report: AuditReport) -> None:
    """A client releases at most once per exchange (module docstring)."""
    first: dict[str, int] = {}
    for e in entries:
        if e["kind"] != "egress":
            continue
        body = e["body"]
        key = exchange_key(body)
        if key in first:
            report.failures.append(fail(
                "second_release", client, e["seq"],
                f"second release for round {body.get('round')} exchange {body.get('exchange')} "
                f"(the first is seq {first[key]}): two sums over groups that differ by one "
                "member reveal that member"))
        else:
            first[key] = e["seq"]


def check_accounted_egress(client: str, ordered: list[dict], noise_on: bool,
                           report: AuditReport) -> None:
    """With representation noise on (``noise_on``), each egress consumes one earlier
    client-level dp_event of the same exchange; one without is a release the accountant
    missed."""
    if not noise_on:
        return
    pending: Counter = Counter()
    for e in ordered:
        body = e["body"]
        key = exchange_key(body)
        if e["kind"] == "dp_event" and body.get("guarantee") == "client":
            pending[key] += 1
        elif e["kind"] == "egress":
            if pending[key] > 0:
                pending[key] -= 1
                continue
            report.failures.append(fail(
                "budget_exceeded", client, e["seq"],
                f"egress of round {body.get('round')} exchange {body.get('exchange')} has no "
                "client-level dp_event for its (round, exchange) although the genesis declares "
                "representation noise: a release outside the accounting"))
