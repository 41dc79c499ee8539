"""``audit``'s match of a client's egress entries against the server's receipts (DESIGN §5.4).

Every receipt must match an egress (a receipt without one is a release the ledger hides:
always a failure). Every egress must match a receipt, with one exception: a release the
client itself marked as possibly not received. When a client's stream to the server breaks
(the server died), the client appends a signed ``server_lost`` entry naming the seq range
of egress entries it cannot know were received (:meth:`fedmuscle_secure.records.ledger.Ledger.
mark_server_lost`); such an egress without a receipt is reported as *unacknowledged* (a
note; its ε stays counted), not as tampering. Egress outside every marked range are matched
first, so a marked release never takes a receipt an unmarked one needs.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from fedmuscle_secure.records.audit_report import AuditReport, fail
from fedmuscle_secure.records.ledger import canonical_json, scan_file

__all__ = ["check_receipts", "load_receipts", "unacknowledged_ranges"]


def _key(receipt_or_body: dict, client: str) -> str:
    """What an egress and its receipt must share: client, round, exchange, digest, size."""
    return canonical_json([client, *(receipt_or_body.get(k) for k in
                                     ("round", "exchange", "sha256", "bytes"))])


def unacknowledged_ranges(client: str, ordered: list[dict],
                          report: AuditReport) -> list[tuple[int, int]]:
    """The (first, last) egress seq ranges of the ledger's ``server_lost`` entries; a range
    must lie before the entry that declares it (a malformed one is a failure, not a range)."""
    ranges = []
    for e in ordered:
        if e["kind"] != "server_lost":
            continue
        span = e["body"].get("unacknowledged_seqs")
        if span is None:
            continue
        if not (isinstance(span, list) and len(span) == 2
                and all(isinstance(s, int) and not isinstance(s, bool) for s in span)
                and 0 <= span[0] <= span[1] < e["seq"]):
            report.failures.append(fail(
                "malformed", client, e["seq"], "server_lost body: unacknowledged_seqs must be "
                f"null or [first, last] seqs before this entry, got {span!r}"))
            continue
        ranges.append((span[0], span[1]))
    return ranges


def check_receipts(client: str, ordered: list[dict], receipts: list[dict],
                   report: AuditReport) -> None:
    """Match ``client``'s egress entries one to one against its receipts (module docstring)."""
    ranges = unacknowledged_ranges(client, ordered, report)
    mine = Counter(_key(r, client) for r in receipts if r.get("client") == client)
    egress = [e for e in ordered if e["kind"] == "egress"]

    def marked(seq: int) -> bool:
        return any(first <= seq <= last for first, last in ranges)

    for e in sorted(egress, key=lambda e: (marked(e["seq"]), e["seq"])):
        k, b = _key(e["body"], client), e["body"]
        if mine[k] > 0:
            mine[k] -= 1
            continue
        what = (f"egress of round {b.get('round')} exchange {b.get('exchange')} "
                f"(sha256 {str(b.get('sha256'))[:12]}…, {b.get('bytes')} bytes)")
        if marked(e["seq"]):
            report.notes.append(f"{client}: seq {e['seq']}: unacknowledged release: {what} "
                                "has no server receipt; the client marked it as possibly not "
                                "received when its stream to the server broke (server_lost). "
                                "It stays counted in ε")
        else:
            report.failures.append(fail("receipt_mismatch", client, e["seq"],
                                        f"{what} has no matching server receipt"))
    for k, n in mine.items():
        for _ in range(n):
            _, rnd, exch, digest, size = json.loads(k)
            report.failures.append(fail(
                "receipt_mismatch", client, None,
                f"server receipt of round {rnd} exchange {exch} (sha256 {str(digest)[:12]}…, "
                f"{size} bytes) has no matching egress entry in the ledger"))


def load_receipts(default_dir: Path | None, receipts_path: str | Path | None, *,
                  no_receipts: bool, report: AuditReport) -> list[dict] | None:
    """The receipts to match against: ``receipts_path``, else ``default_dir/receipts.jsonl``.
    None when the operator said there are none (``no_receipts``, noted) or when the log that
    should be there is not (a ``missing`` failure, never a silent skip)."""
    if no_receipts:
        report.receipts = {"log": None, "checked": False}
        report.notes.append("no receipt log (--no-receipts): egress digests were not matched "
                            "against what the server received")
        return None
    if receipts_path is None:
        default = default_dir / "receipts.jsonl" if default_dir is not None else None
        if default is None or not default.is_file():
            where = f"{default} is absent" if default is not None else "none given"
            report.failures.append(fail(
                "missing", None, None, f"server receipt log: {where}; pass --receipts FILE "
                "(the server's receipts.jsonl) or, if the run has none, --no-receipts"))
            return None
        receipts_path = default
    receipts_path = Path(receipts_path)
    if not receipts_path.is_file():
        report.failures.append(fail("missing", None, None,
                                    f"server receipt log {receipts_path} not found"))
        return None
    report.receipts = {"log": str(receipts_path), "checked": True}
    scan = scan_file(receipts_path, public_key=None)
    for p in scan.problems:
        where = f"line {p.line}: " if p.line is not None else ""
        report.failures.append(fail(p.kind, None, p.seq,
                                    f"receipt log {receipts_path}: {where}{p.message}"))
    if scan.tail is not None:
        report.failures.append(fail("malformed", None, None, f"receipt log {receipts_path}: "
                                    f"torn last line ({len(scan.tail)} bytes)"))
    return [{"seq": e["seq"], "client": e["client"], **e["body"]}
            for e in scan.entries if e["kind"] == "receipt"]
