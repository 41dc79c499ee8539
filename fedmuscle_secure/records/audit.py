"""``audit``: verify privacy ledgers and egress receipts from a run's files alone (DESIGN §5.4).

For each client ledger: the hash chain and signatures (:mod:`fedmuscle_secure.records.ledger`)
under a trusted or a self-declared key, the genesis, the set of ledgers the run must hold
(:mod:`~fedmuscle_secure.records.audit_trust`); ε recomputed for every recorded round from the
recorded DP events with an independent accountant (dp-accounting) and the budget rules on
every entry (:mod:`~fedmuscle_secure.records.audit_privacy`); every egress digest against a receipt
and every receipt against an egress (:mod:`~fedmuscle_secure.records.audit_receipts`). Every problem
is collected (never the first only); the exit code names the most basic kind found
(``EXIT_CODES``, precedence ``PRECEDENCE``, :mod:`~fedmuscle_secure.records.audit_report`).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedmuscle_secure.crypto.identity import load_public
from fedmuscle_secure.errors import DataError, FedMuscleError, LedgerError
from fedmuscle_secure.records.audit_receipts import check_receipts, load_receipts
from fedmuscle_secure.records.audit_releases import check_one_release_per_exchange
from fedmuscle_secure.records.audit_report import (
    EXIT_CODES,
    EXIT_MEANINGS,
    PRECEDENCE,
    AuditFailure,
    AuditReport,
    fail,
)
from fedmuscle_secure.records.audit_trust import (
    NONE,
    ORGANISATION,
    SELF_DECLARED,
    TRUSTED,
    VerificationKey,
    check_config_against_geneses,
    check_genesis,
    check_ledger_set,
    check_unsigned,
    configured_clients,
    inside,
    refuse_inside,
    verification_key,
)
from fedmuscle_secure.records.ledger import scan_file

__all__ = [
    "EXIT_CODES",
    "EXIT_MEANINGS",
    "PRECEDENCE",
    "AuditFailure",
    "AuditReport",
    "audit_ledger",
    "audit_ledger_file",
    "audit_run",
]

def audit_ledger(path: str | Path, public_key: Ed25519PublicKey | None, *,
                 receipts: list[dict] | None, client: str | None = None,
                 key_source: str = TRUSTED, key_path: str | None = None) -> AuditReport:
    """Audit one ledger file under ``public_key`` (``key_source``: ``trusted`` when the
    caller vouches for it, ``self-declared`` when it was found in the audited directory).
    ``client`` defaults to the entries' own (else the file stem); ``receipts`` (None: not
    matched) are filtered to it."""
    vkey = VerificationKey(public_key, key_source if public_key is not None or key_path
                           else NONE, key_path)
    return _audit_ledger(Path(path), vkey, receipts=receipts, client=client)[0]


def _audit_ledger(path: Path, vkey: VerificationKey, *, receipts: list[dict] | None,
                  client: str | None) -> tuple[AuditReport, dict | None]:
    """The report of one ledger, and its genesis body when valid."""
    report = AuditReport(ledgers=[str(path)])
    try:
        scan = scan_file(path, public_key=vkey.key)
    except LedgerError as exc:
        report.failures.append(fail("malformed", client or path.stem, None, str(exc)))
        return report, None
    if client is None:
        client = scan.entries[0]["client"] if scan.entries else path.stem
    report.keys[client] = vkey.describe()
    ordered: dict[int, dict] = {}
    for e in scan.entries:
        if e["client"] != client:
            report.failures.append(fail("malformed", client, e["seq"], f"{path}: entry "
                                        f"belongs to client {e['client']!r}"))
        ordered.setdefault(e["seq"], e)
    entries = [ordered[s] for s in sorted(ordered)]
    unsigned = check_unsigned(client, scan.entries, path, report)
    for p in scan.problems:
        if p.kind == "signature" and p.seq in unsigned:
            continue  # already the one unsigned failure
        where = f"line {p.line}: " if p.line is not None else ""
        report.failures.append(fail(p.kind, client, p.seq, f"{path}: {where}{p.message}"))
    if scan.tail is not None:
        last = entries[-1]["seq"] if entries else None
        report.failures.append(fail(
            "malformed", client, None, f"{path}: torn last line ({len(scan.tail)} bytes after "
            f"seq {last}): a crash mid-write that Ledger.open has not yet repaired"))
    if vkey.key is None and vkey.source == NONE and len(unsigned) < len(scan.entries):
        report.failures.append(fail(
            "signature", client, None, f"{path}: entries are signed but no key was given to "
            "verify them: pass --trusted-keys DIR (the provisioned identities)"))
    genesis = check_genesis(client, entries, path, vkey, report)
    for e in entries:
        if e["kind"] == "repair":
            b = e["body"]
            report.notes.append(f"{client}: seq {e['seq']} repaired a torn line of "
                                f"{b.get('dropped_bytes')} bytes after seq {b.get('after_seq')}")
    try:  # deferred: dp-accounting and opacus are heavy, and an audit without them says so
        from fedmuscle_secure.records.audit_privacy import check_privacy

        cells = check_privacy(client, entries, genesis, report)
    except ImportError as exc:
        raise FedMuscleError(f"cannot recompute ε: {exc}") from exc
    check_one_release_per_exchange(client, entries, report)
    if receipts is not None:
        check_receipts(client, entries, receipts, report)
    report.table = _table(client, entries, cells)
    return report, genesis


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


def audit_run(run_dir: str | Path, *, receipts_path: str | Path | None = None,
              trusted_keys: str | Path | None = None, no_receipts: bool = False) -> AuditReport:
    """Audit the run directory ``run_dir``: every ``ledger/<client>.jsonl`` under
    ``trusted_keys/<client>.pub`` (else the self-declared ``keys/<client>.pub``), against
    ``receipts_path`` (default ``run_dir/receipts.jsonl``; ``no_receipts``: the operator
    says there is none), and the set of ledgers against ``config.resolved.yaml``."""
    run_dir = Path(run_dir)
    trusted = Path(trusted_keys) if trusted_keys is not None else None
    if trusted is not None:
        refuse_inside(trusted, run_dir, "--trusted-keys")
        if not trusted.is_dir():
            raise DataError(trusted, "trusted key directory not found")
    ledgers = sorted((run_dir / "ledger").glob("*.jsonl"))
    if not ledgers and not (run_dir / "config.resolved.yaml").is_file():
        raise DataError(run_dir, "no ledgers to audit: expected ledger/<client>.jsonl files "
                                 "and config.resolved.yaml")
    report = AuditReport()
    configured = configured_clients(run_dir, report)
    receipts = load_receipts(run_dir, receipts_path, no_receipts=no_receipts, report=report)
    present: dict[str, dict | None] = {}
    for path in ledgers:
        client = path.stem
        vkey = verification_key(client, trusted_dir=trusted, self_dir=run_dir / "keys",
                                report=report)
        sub, present[client] = _audit_ledger(path, vkey, receipts=receipts, client=client)
        report.extend(sub)
    scope = check_ledger_set(run_dir, configured, present, report)
    if configured is not None:
        check_config_against_geneses(run_dir, present, report)
    if receipts is not None:
        # an organisation's directory holds its own ledger; the receipt log covers everyone
        known = set(configured or ()) if scope == ORGANISATION else set(present)
        for r in receipts:
            if r.get("client") not in known:
                report.failures.append(fail(
                    "receipt_mismatch", r.get("client"), None,
                    f"server receipt seq {r.get('seq')} from {r.get('client')!r} (round "
                    f"{r.get('round')}) but the run has no ledger for that client"))
    return report


def audit_ledger_file(path: str | Path, *, trusted_keys: str | Path | None = None,
                      public_key: str | Path | None = None,
                      receipts_path: str | Path | None = None,
                      no_receipts: bool = False) -> AuditReport:
    """Audit one ledger file as ``audit LEDGER`` does. Key: ``trusted_keys/<client>.pub``,
    else ``public_key`` (given by the operator: trusted, unless it lies in the audited run
    directory), else ``../keys/<client>.pub``
    beside a ``ledger/`` folder (self-declared). Receipts: ``receipts_path``, else
    ``../receipts.jsonl`` beside a ``ledger/`` folder, else a failure unless ``no_receipts``."""
    path = Path(path)
    layout = path.parent.parent if path.parent.name == "ledger" else None
    report = AuditReport()
    try:
        scan = scan_file(path, public_key=None)
        client = scan.entries[0]["client"] if scan.entries else path.stem
    except LedgerError:
        client = path.stem  # reported by the audit itself
    if trusted_keys is not None:
        if layout is not None:
            refuse_inside(Path(trusted_keys), layout, "--trusted-keys")
        if not Path(trusted_keys).is_dir():
            raise DataError(trusted_keys, "trusted key directory not found")
        vkey = verification_key(client, trusted_dir=Path(trusted_keys),
                                self_dir=layout / "keys" if layout else None, report=report)
    elif public_key is not None:  # the operator vouches for it, unless it is the run's own
        source = SELF_DECLARED if layout is not None and inside(Path(public_key), layout) \
            else TRUSTED
        vkey = VerificationKey(load_public(public_key), source, str(public_key))
    else:
        vkey = verification_key(client, trusted_dir=None,
                                self_dir=layout / "keys" if layout else None, report=report)
    receipts = load_receipts(layout, receipts_path, no_receipts=no_receipts, report=report)
    report.extend(_audit_ledger(path, vkey, receipts=receipts, client=None)[0])
    return report

