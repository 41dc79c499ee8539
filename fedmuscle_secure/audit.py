"""``audit``: verify privacy ledgers and egress receipts from a run's files alone (DESIGN §5.4).

For each client ledger: the hash chain and signatures (:mod:`fedmuscle_secure.ledger`),
ε recomputed for every recorded round from the recorded DP events with an independent
accountant (dp-accounting, :func:`fedmuscle_secure.dp.accounting.independent_epsilon`),
the configured budgets, and — when the server's receipt log is given — every egress
digest against a receipt and every receipt against an egress. Every problem is collected
(never the first only); the exit code names the most basic kind found (``EXIT_CODES``,
precedence ``PRECEDENCE``).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedmuscle_secure.errors import DataError, FedMuscleError, IdentityError, LedgerError
from fedmuscle_secure.identity import load_public, load_public_pem
from fedmuscle_secure.ledger import canonical_json, scan_file

__all__ = [
    "EXIT_CODES",
    "PRECEDENCE",
    "AuditFailure",
    "AuditReport",
    "audit_ledger",
    "audit_run",
]

EXIT_CODES: dict[str, int] = {
    "ok": 0, "usage": 2, "malformed": 10, "edited": 11, "deleted": 12, "reordered": 13,
    "signature": 14, "epsilon_mismatch": 15, "budget_exceeded": 16, "receipt_mismatch": 17,
}
PRECEDENCE: tuple[str, ...] = (
    "malformed", "edited", "deleted", "reordered", "signature", "epsilon_mismatch",
    "budget_exceeded", "receipt_mismatch",
)
_STOPS = ("refusal", "leave")


class AuditFailure(NamedTuple):
    """One verification failure; ``seq`` is the ledger entry at fault when there is one."""

    code: int
    kind: str
    client: str | None
    seq: int | None
    message: str


def _fail(kind: str, client: str | None, seq: int | None, message: str) -> AuditFailure:
    return AuditFailure(EXIT_CODES[kind], kind, client, seq, message)


@dataclass
class AuditReport:
    """Everything an audit found: failures, the per-client/per-round table, notes."""

    failures: list[AuditFailure] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)
    ledgers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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

    def to_dict(self) -> dict:
        return {"exit_code": self.exit_code(), "ok": not self.failures, "ledgers": self.ledgers,
                "failures": [f._asdict() for f in self.failures], "table": self.table,
                "notes": self.notes}


def _key(receipt_or_body: dict, client: str) -> str:
    """What an egress and its receipt must share: client, round, exchange, digest, size."""
    return canonical_json([client, *(receipt_or_body.get(k) for k in
                                     ("round", "exchange", "sha256", "bytes"))])


def _isclose(recorded: float, recomputed: float, rtol: float) -> bool:
    return math.isclose(recorded, recomputed, rel_tol=rtol, abs_tol=1e-12)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@contextmanager
def _quiet_accountants() -> Iterator[None]:
    """dp-accounting logs (through absl) every fractional RDP order whose series it drops;
    expected and harmless here, so keep them out of the audit's output."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


@lru_cache(maxsize=256)
def _independent_epsilon(events: tuple, delta: float) -> float:
    """dp-accounting's ε, cached: clients of one config record identical event sequences."""
    from fedmuscle_secure.dp.accounting import independent_epsilon

    with _quiet_accountants():
        return float(independent_epsilon(events, delta))


def _check_privacy(client: str, ordered: list[dict], report: AuditReport) -> dict:
    """ε recomputation and budget rules; returns {(round, guarantee): table cells}."""
    fail = report.failures
    cells: dict[tuple[Any, str], dict] = {}
    events: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    stopped_at: dict | None = None
    has_dp = any(e["kind"] in ("dp_event", "epsilon") for e in ordered)
    if not has_dp:
        return cells
    from fedmuscle_secure.dp.accounting import (  # lazy: pulls in dp-accounting and opacus
        EPSILON_RTOL,
        EPSILON_RTOL_MIN_ORDER,
        DpEventRecord,
        compute_epsilon_report,
    )

    for e in ordered:
        body, seq = e["body"], e["seq"]
        if e["kind"] in _STOPS and stopped_at is None:
            stopped_at = e
        if e["kind"] != "dp_event":
            continue
        if stopped_at is not None:
            fail.append(_fail("budget_exceeded", client, seq,
                              f"dp_event recorded after the {stopped_at['kind']} at seq "
                              f"{stopped_at['seq']}: the client kept spending privacy after it "
                              "refused or left"))
        try:
            record = DpEventRecord.from_dict(body)
            if not isinstance(body.get("round"), int):
                raise TypeError("round: expected an int")
        except (KeyError, TypeError, ValueError, FedMuscleError) as exc:
            fail.append(_fail("malformed", client, seq, f"dp_event body does not describe a DP "
                              f"event: {type(exc).__name__}: {exc}"))
            continue
        events[record.guarantee].append((body["round"], record))

    def outside_cross_check(used: list, delta: float, eps: float,
                            independent: float) -> float | None:
        """Opacus's replayed ε when EPSILON_RTOL does not apply (optimal RDP order below
        EPSILON_RTOL_MIN_ORDER, where dp-accounting's bound is the looser one) and the
        recorded ε matches that replay; None otherwise (a real mismatch)."""
        with _quiet_accountants():
            replay = compute_epsilon_report(used, delta)
        if (replay.rdp_order is not None and replay.rdp_order < EPSILON_RTOL_MIN_ORDER
                and independent >= eps and _isclose(eps, replay.epsilon_rdp, EPSILON_RTOL)):
            return replay.epsilon_rdp
        return None

    cache: dict[tuple[str, int, float], tuple[list, float]] = {}
    for e in ordered:
        if e["kind"] != "epsilon":
            continue
        body, seq = e["body"], e["seq"]
        g, r, delta, eps = (body.get(k) for k in ("guarantee", "round", "delta", "epsilon_rdp"))
        budget = body.get("budget")
        if not (isinstance(g, str) and isinstance(r, int) and _is_number(delta)
                and _is_number(eps) and (budget is None or _is_number(budget))):
            fail.append(_fail("malformed", client, seq, "epsilon body needs guarantee (str), "
                              "round (int), delta, epsilon_rdp (numbers), budget (number|null)"))
            continue
        if (g, r, delta) not in cache:
            used = [rec for rnd, rec in events.get(g, []) if rnd <= r]
            try:
                cache[(g, r, delta)] = used, _independent_epsilon(tuple(used), float(delta))
            except (TypeError, ValueError, FedMuscleError) as exc:
                fail.append(_fail("malformed", client, seq, f"cannot recompute ε for {g!r} "
                                  f"round {r}: {type(exc).__name__}: {exc}"))
                continue
        used, recomputed = cache[(g, r, delta)]
        reference = recomputed
        if not _isclose(eps, recomputed, EPSILON_RTOL):
            replayed = outside_cross_check(used, delta, eps, recomputed)
            if replayed is None:
                fail.append(_fail("epsilon_mismatch", client, seq,
                                  f"{g}-level ε after round {r} recorded {eps:.6g}, recomputed "
                                  f"{recomputed:.6g} (dp-accounting RDP) from {len(used)} "
                                  f"recorded events (δ={delta:g}, relative tolerance "
                                  f"{EPSILON_RTOL:g})"))
            else:
                reference = replayed
                report.notes.append(
                    f"{client}: seq {seq}: {g}-level ε {eps:.6g} after round {r} matches the "
                    f"Opacus replay; dp-accounting gives {recomputed:.6g}, looser at RDP orders "
                    f"below {EPSILON_RTOL_MIN_ORDER:g} where the cross-check tolerance does "
                    "not apply")
        if budget is not None:
            if eps > budget:
                fail.append(_fail("budget_exceeded", client, seq, f"{g}-level ε {eps:.6g} after "
                                  f"round {r} exceeds the budget {budget:g}"))
            elif reference > budget * (1 + EPSILON_RTOL):
                fail.append(_fail("budget_exceeded", client, seq, f"{g}-level ε recomputed "
                                  f"{reference:.6g} after round {r} exceeds the budget "
                                  f"{budget:g} (recorded {eps:.6g})"))
        cells[(r, g)] = {f"epsilon_{g}": eps, f"recomputed_{g}": recomputed, f"budget_{g}": budget}
    return cells


def _check_receipts(client: str, ordered: list[dict], receipts: list[dict],
                    report: AuditReport) -> None:
    mine = Counter(_key(r, client) for r in receipts if r.get("client") == client)
    for e in ordered:
        if e["kind"] != "egress":
            continue
        k = _key(e["body"], client)
        if mine[k] > 0:
            mine[k] -= 1
        else:
            b = e["body"]
            report.failures.append(_fail(
                "receipt_mismatch", client, e["seq"],
                f"egress of round {b.get('round')} exchange {b.get('exchange')} "
                f"(sha256 {str(b.get('sha256'))[:12]}…, {b.get('bytes')} bytes) has no "
                "matching server receipt"))
    for k, n in mine.items():
        for _ in range(n):
            _, rnd, exch, digest, size = json.loads(k)
            report.failures.append(_fail(
                "receipt_mismatch", client, None,
                f"server receipt of round {rnd} exchange {exch} (sha256 {str(digest)[:12]}…, "
                f"{size} bytes) has no matching egress entry in the ledger"))


def audit_ledger(path: str | Path, public_key: Ed25519PublicKey | None, *,
                 receipts: list[dict] | None, client: str | None = None) -> AuditReport:
    """Audit one ledger file. ``client`` defaults to the entries' own (else the file stem);
    ``receipts`` (from :func:`~fedmuscle_secure.ledger.read_receipts`) are filtered to it."""
    path = Path(path)
    report = AuditReport(ledgers=[str(path)])
    try:
        scan = scan_file(path, public_key=public_key)
    except LedgerError as exc:
        report.failures.append(_fail("malformed", client or path.stem, None, str(exc)))
        return report
    if client is None:
        client = scan.entries[0]["client"] if scan.entries else path.stem
    for p in scan.problems:
        where = f"line {p.line}: " if p.line is not None else ""
        report.failures.append(_fail(p.kind, client, p.seq, f"{path}: {where}{p.message}"))
    ordered: dict[int, dict] = {}
    for e in scan.entries:
        if e["client"] != client:
            report.failures.append(_fail("malformed", client, e["seq"], f"{path}: entry "
                                         f"belongs to client {e['client']!r}"))
        ordered.setdefault(e["seq"], e)
    entries = [ordered[s] for s in sorted(ordered)]
    if scan.tail is not None:
        last = entries[-1]["seq"] if entries else None
        report.failures.append(_fail(
            "malformed", client, None, f"{path}: torn last line ({len(scan.tail)} bytes after "
            f"seq {last}): a crash mid-write that Ledger.open has not yet repaired"))
    signed = any(e["sig"] is not None for e in entries)
    if public_key is None:
        if signed:
            report.failures.append(_fail(
                "signature", client, None, f"{path}: entries are signed but no public key was "
                f"given: pass --public-key or provide keys/{client}.pub"))
        else:
            report.notes.append(f"{client}: unsigned ledger (no identity key); signatures "
                                "not checked")
    else:
        genesis = next((e for e in entries if e["kind"] == "genesis"), None)
        pem = genesis["body"].get("public_key") if genesis else None
        if isinstance(pem, str):
            try:
                declared = load_public_pem(pem, source=f"{path} genesis")
                if declared.public_bytes_raw() != public_key.public_bytes_raw():
                    raise IdentityError("genesis declares a different public key than the "
                                        "one used for verification")
            except IdentityError as exc:
                report.failures.append(_fail("signature", client, genesis["seq"], str(exc)))
    for e in entries:
        if e["kind"] == "repair":
            b = e["body"]
            report.notes.append(f"{client}: seq {e['seq']} repaired a torn line of "
                                f"{b.get('dropped_bytes')} bytes after seq {b.get('after_seq')}")
    try:
        cells = _check_privacy(client, entries, report)
    except ImportError as exc:
        raise FedMuscleError(f"cannot recompute ε: {exc}") from exc
    if receipts is not None:
        _check_receipts(client, entries, receipts, report)
    report.table = _table(client, entries, cells)
    return report


def _table(client: str, entries: list[dict], cells: dict) -> list[dict]:
    rounds: dict[int, dict] = {}

    def row(r: int) -> dict:
        return rounds.setdefault(r, {
            "client": client, "round": r,
            "epsilon_record": None, "recomputed_record": None, "budget_record": None,
            "epsilon_client": None, "recomputed_client": None, "budget_client": None,
            "releases": 0, "bytes": 0})

    for e in entries:
        r = e["body"].get("round")
        if e["kind"] in ("dp_event", "egress", "epsilon") and isinstance(r, int):
            row(r)
        if e["kind"] == "egress" and isinstance(r, int):
            row(r)["releases"] += 1
            size = e["body"].get("bytes")
            row(r)["bytes"] += size if isinstance(size, int) else 0
    for (r, _g), values in cells.items():
        row(r).update(values)
    return [rounds[r] for r in sorted(rounds)]


def audit_run(run_dir: str | Path, *, receipts_path: str | Path | None = None) -> AuditReport:
    """Audit every ``run_dir/ledger/<client>.jsonl`` with ``run_dir/keys/<client>.pub``
    (when present) against ``receipts_path`` (default ``run_dir/receipts.jsonl`` if present)."""
    run_dir = Path(run_dir)
    ledgers = sorted((run_dir / "ledger").glob("*.jsonl"))
    if not ledgers:
        raise DataError(run_dir, "no ledgers to audit: expected ledger/<client>.jsonl files")
    report = AuditReport()
    receipts = _load_receipts(run_dir, receipts_path, report)
    for path in ledgers:
        client = path.stem
        key_path = run_dir / "keys" / f"{client}.pub"
        key = None
        if key_path.exists():
            try:
                key = load_public(key_path)
            except IdentityError as exc:  # still audit the rest; signatures fail below
                report.failures.append(_fail("signature", client, None, str(exc)))
        report.extend(audit_ledger(path, key, receipts=receipts, client=client))
    if receipts is not None:
        known = {p.stem for p in ledgers}
        for r in receipts:
            if r.get("client") not in known:
                report.failures.append(_fail(
                    "receipt_mismatch", r.get("client"), None,
                    f"server receipt seq {r.get('seq')} from {r.get('client')!r} (round "
                    f"{r.get('round')}) but the run has no ledger for that client"))
    return report


def _load_receipts(run_dir: Path | None, receipts_path: str | Path | None,
                   report: AuditReport) -> list[dict] | None:
    if receipts_path is None:
        default = run_dir / "receipts.jsonl" if run_dir is not None else None
        if default is None or not default.exists():
            report.notes.append("no server receipt log: egress digests not matched")
            return None
        receipts_path = default
    receipts_path = Path(receipts_path)
    if not receipts_path.is_file():
        raise DataError(receipts_path, "receipt log not found")
    scan = scan_file(receipts_path, public_key=None)
    for p in scan.problems:
        where = f"line {p.line}: " if p.line is not None else ""
        report.failures.append(_fail(p.kind, None, p.seq,
                                     f"receipt log {receipts_path}: {where}{p.message}"))
    if scan.tail is not None:
        report.failures.append(_fail("malformed", None, None, f"receipt log {receipts_path}: "
                                     f"torn last line ({len(scan.tail)} bytes)"))
    return [{"seq": e["seq"], "client": e["client"], **e["body"]}
            for e in scan.entries if e["kind"] == "receipt"]


# ----------------------------------------------------------------------------- CLI
