"""The ``audit`` subcommand: argument parsing, the printed table, exit codes (DESIGN §5.4).

The verification itself is :mod:`fedmuscle_secure.audit`.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from fedmuscle_secure.audit import (
    EXIT_CODES,
    AuditReport,
    _load_receipts,
    audit_ledger,
    audit_run,
)
from fedmuscle_secure.errors import DataError, IdentityError
from fedmuscle_secure.identity import load_public


def add_audit_parser(subparsers: Any) -> None:
    """Register ``audit`` on the CLI's subparsers (``fedmuscle_secure.cli.build_parser``)."""
    codes = "\n".join(f"  {code:>3}  {kind}" for kind, code in EXIT_CODES.items())
    p = subparsers.add_parser(
        "audit", help="verify privacy ledgers, ε and egress receipts of a run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Verify a run directory (every ledger/<client>.jsonl, with keys/<client>.pub and "
            "receipts.jsonl when present) or one ledger file: the hash chain and Ed25519 "
            "signatures, ε recomputed for every round from the recorded DP events with an "
            "independent accountant (dp-accounting) against the recorded ε, the configured "
            "budgets, and every egress digest against the server's receipt log. Prints a "
            "per-client, per-round table (recorded ε, recomputed ε in parentheses, budget, "
            "releases, bytes released), then each failure (DESIGN §5.4).", width=78),
        epilog=("exit codes (0 only when everything verifies; with several failures the\n"
                "first kind in this list, from malformed down, gives the code):\n" + codes))
    p.add_argument("target", metavar="RUN_DIR|LEDGER", type=Path,
                   help="a run directory, or one ledger .jsonl file")
    p.add_argument("--json", action="store_true",
                   help="print the report (failures, table, notes, exit_code) as JSON")
    p.add_argument("--receipts", metavar="FILE", type=Path, default=None,
                   help="server receipt log to match egress digests against (default: "
                        "RUN_DIR/receipts.jsonl, or ../receipts.jsonl beside a ledger/ folder, "
                        "when present)")
    p.add_argument("--public-key", metavar="FILE", type=Path, default=None,
                   help="client's Ed25519 public key (PEM) for a single LEDGER (default: "
                        "../keys/<client>.pub beside a ledger/ folder, when present)")
    p.set_defaults(func=cmd_audit)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """Plain-text per-client, per-round table: recorded ε (recomputed) / budget per guarantee."""
    header = ["client", "round", "ε record (recomp.)", "budget", "ε client (recomp.)", "budget",
              "releases", "bytes"]
    body = [[r["client"], _fmt(r["round"]),
             f"{_fmt(r['epsilon_record'])} ({_fmt(r['recomputed_record'])})",
             _fmt(r["budget_record"]),
             f"{_fmt(r['epsilon_client'])} ({_fmt(r['recomputed_client'])})",
             _fmt(r["budget_client"]), _fmt(r["releases"]), _fmt(r["bytes"])] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
                     for line in [header, *body])


def _usage(message: str) -> int:
    print(f"fedmuscle-secure audit: {message}", file=sys.stderr)
    return EXIT_CODES["usage"]


def cmd_audit(args: argparse.Namespace) -> int:
    """Run the audit the parsed arguments ask for; print; return the exit code."""
    target: Path = args.target
    try:
        if not target.exists():
            return _usage(f"{target}: no such run directory or ledger file")
        if args.receipts is not None and not args.receipts.is_file():
            return _usage(f"{args.receipts}: receipt log not found")
        if target.is_dir():
            if args.public_key is not None:
                return _usage("--public-key applies to a single LEDGER; a run directory uses "
                              "keys/<client>.pub")
            report = audit_run(target, receipts_path=args.receipts)
        else:
            layout = target.parent.parent if target.parent.name == "ledger" else None
            key_path = args.public_key
            if key_path is None and layout is not None:
                guess = layout / "keys" / f"{target.stem}.pub"
                key_path = guess if guess.exists() else None
            key = load_public(key_path) if key_path is not None else None
            report = AuditReport()
            receipts = _load_receipts(layout, args.receipts, report)
            report.extend(audit_ledger(target, key, receipts=receipts))
    except (DataError, IdentityError) as exc:
        return _usage(str(exc))
    code = report.exit_code()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False, default=str))
        return code
    print(format_table(report.table) if report.table else "(no rounds recorded)")
    for note in report.notes:
        print(f"note: {note}")
    for f in report.failures:
        who = f" client {f.client}" if f.client is not None else ""
        at = f" seq {f.seq}" if f.seq is not None else ""
        print(f"FAIL [{f.kind}, {f.code}]{who}{at}: {f.message}")
    if code == 0:
        print(f"audit: OK ({len(report.ledgers)} ledger(s) verified)")
    else:
        first = next(k for k, v in EXIT_CODES.items() if v == code)
        print(f"audit: {len(report.failures)} failure(s); exit code {code} ({first})")
    return code


def main_audit(argv: list[str] | None = None) -> int:
    """``fedmuscle-secure audit ARGV...`` without the rest of the CLI (tests, scripts)."""
    parser = argparse.ArgumentParser(prog="fedmuscle-secure")
    add_audit_parser(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(["audit", *(argv if argv is not None else sys.argv[1:])])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_CODES["usage"]
    return cmd_audit(args)


if __name__ == "__main__":
    sys.exit(main_audit())
