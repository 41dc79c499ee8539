"""What an audit found: failure kinds, their exit codes and precedence, the report (DESIGN §5.4).

Shared by the checks (:mod:`~fedmuscle_secure.records.audit_trust`,
:mod:`~fedmuscle_secure.records.audit_privacy`, :mod:`~fedmuscle_secure.records.audit_receipts`) and the
orchestration in :mod:`fedmuscle_secure.records.audit`. Every check appends to one report, so an
auditor sees every problem, not the first only; the exit code names the most basic kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["EXIT_CODES", "EXIT_MEANINGS", "PRECEDENCE", "AuditFailure", "AuditReport", "fail"]

EXIT_CODES: dict[str, int] = {
    "ok": 0, "usage": 2, "malformed": 10, "edited": 11, "deleted": 12, "reordered": 13,
    "signature": 14, "epsilon_mismatch": 15, "budget_exceeded": 16, "receipt_mismatch": 17,
    "missing": 18, "genesis": 19, "unsigned": 20, "second_release": 21,
}
#: One line per exit code for ``audit --help`` and the README.
EXIT_MEANINGS: dict[str, str] = {
    "ok": "everything verified",
    "usage": "bad usage (a path, key or option that cannot be used)",
    "malformed": "a line that is not a ledger entry, or a torn last line",
    "edited": "an entry whose content or link no longer matches its hash",
    "deleted": "entries missing inside a chain",
    "reordered": "entries out of order or repeated",
    "signature": "a signature or declared key that does not match the key audited against",
    "epsilon_mismatch": "a recorded ε that its recorded DP events do not give",
    "budget_exceeded": "a budget rule broken (ε over budget, release after a refusal or "
                       "leave, release outside the accounting)",
    "receipt_mismatch": "an egress without a server receipt, or a receipt without an egress",
    "missing": "an expected file is absent (a configured client's ledger, the config, the "
               "receipt log)",
    "genesis": "a ledger that is empty or does not start with a valid genesis",
    "unsigned": "ledger entries without a signature",
    "second_release": "two releases for one exchange (round, epoch, batch): two sums over groups "
                      "that differ by one member reveal that member",
}
#: From the most basic kind down: with several failures the first kind found gives the code.
#: The set of files comes first, then whether a file is a ledger at all, then its chain,
#: then who signed it, then what it says.
PRECEDENCE: tuple[str, ...] = (
    "missing", "malformed", "genesis", "edited", "deleted", "reordered", "unsigned",
    "signature", "epsilon_mismatch", "budget_exceeded", "second_release", "receipt_mismatch",
)


class AuditFailure(NamedTuple):
    """One verification failure; ``seq`` is the ledger entry at fault when there is one."""

    code: int
    kind: str
    client: str | None
    seq: int | None
    message: str


def fail(kind: str, client: str | None, seq: int | None, message: str) -> AuditFailure:
    """An :class:`AuditFailure` of ``kind`` with its exit code."""
    return AuditFailure(EXIT_CODES[kind], kind, client, seq, message)


@dataclass
class AuditReport:
    """Everything an audit found: failures, the per-client/per-round table, notes, and what
    the verdict rests on (``keys``: per client, where its verification key came from;
    ``receipts``: the receipt log matched against, ``checked`` false when the operator
    said there is none)."""

    failures: list[AuditFailure] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)
    ledgers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    keys: dict[str, dict] = field(default_factory=dict)
    receipts: dict = field(default_factory=lambda: {"log": None, "checked": False})

    def exit_code(self) -> int:
        """0 when everything verifies, else the code of the most basic failure kind found."""
        if not self.failures:
            return EXIT_CODES["ok"]
        kinds = {f.kind for f in self.failures}
        return EXIT_CODES[next(k for k in PRECEDENCE if k in kinds)]

    def extend(self, other: AuditReport) -> None:
        self.failures += other.failures
        self.table += other.table
        self.ledgers += other.ledgers
        self.notes += other.notes
        self.keys.update(other.keys)

    def trust(self) -> str:
        """``trusted`` when every ledger was verified under a key the auditor supplied,
        ``self-declared`` when any key was found in the audited directory itself, ``none``
        when no key verified anything."""
        sources = {k["source"] for k in self.keys.values()}
        if "self-declared" in sources:
            return "self-declared"
        return "trusted" if sources and sources <= {"trusted"} else "none"

    def verdict(self) -> str:
        """The one line a privacy officer reads: the outcome and what it proves."""
        code = self.exit_code()
        if code != EXIT_CODES["ok"]:
            first = next(k for k, v in EXIT_CODES.items() if v == code)
            return f"audit: {len(self.failures)} failure(s); exit code {code} ({first})"
        trust = self.trust()
        if trust == "trusted":
            what = ("signatures verified under the trusted keys: each ledger was written by "
                    "the holder of its organisation's provisioned identity")
        else:
            what = ("keys SELF-DECLARED (found in the audited directory): this proves each "
                    "chain is intact under some key, not who wrote it; pass --trusted-keys "
                    "DIR (the provisioned identities) to prove that")
        receipts = (f"; egress matched against {self.receipts['log']}"
                    if self.receipts["checked"] else
                    "; egress NOT matched against server receipts (--no-receipts)")
        return f"audit: OK ({len(self.ledgers)} ledger(s) verified; {what}{receipts})"

    def to_dict(self) -> dict:
        return {"exit_code": self.exit_code(), "ok": not self.failures,
                "verdict": self.verdict(), "trust": self.trust(), "keys": self.keys,
                "receipts": self.receipts, "ledgers": self.ledgers,
                "failures": [f._asdict() for f in self.failures], "table": self.table,
                "notes": self.notes}
