"""The ``audit`` subcommand: argument parsing, the printed table, exit codes (DESIGN §5.4).

The verification itself is :mod:`fedmuscle_secure.records.audit`.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from fedmuscle_secure.errors import ConfigError, DataError, IdentityError
from fedmuscle_secure.records.audit import (
    EXIT_CODES,
    EXIT_MEANINGS,
    PRECEDENCE,
    audit_ledger_file,
    audit_run,
)


def add_audit_parser(subparsers: Any) -> None:
    """Register ``audit`` on the CLI's subparsers (``fedmuscle_secure.cli.main.build_parser``)."""
    codes = "\n".join(textwrap.fill(EXIT_MEANINGS[kind], width=78,
                                    initial_indent=f"  {code:>3}  {kind:<17}",
                                    subsequent_indent=" " * 24)
                      for kind, code in EXIT_CODES.items())
    p = subparsers.add_parser(
        "audit", help="verify privacy ledgers, ε and egress receipts of a run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Verify a run directory (every ledger/<client>.jsonl of config.resolved.yaml's "
            "clients, against receipts.jsonl) or one ledger file: the hash chain and Ed25519 "
            "signatures, the genesis, ε recomputed for every round from the recorded DP "
            "events with an independent accountant (dp-accounting) against the recorded ε, "
            "the budget rules on every entry, and every egress digest against the server's "
            "receipt log. Prints a per-client, per-round table (recorded ε, recomputed ε in "
            "parentheses, budget, releases, bytes released), then each note and failure, "
            "then the verdict (DESIGN §5.4).", width=78) + "\n\n" + textwrap.fill(
            "Keys: with --trusted-keys DIR (the provisioned identities, "
            "<certs>/identities/<client>.pub) each ledger must be signed by its "
            "organisation's identity. Without it, keys/<client>.pub found in the audited "
            "directory are used and the verdict says they are SELF-DECLARED: that proves each "
            "chain is intact under some key, not who wrote it. Unsigned, empty or "
            "genesis-less ledgers always fail.", width=78) + "\n\n" + textwrap.fill(
            "Which ledgers: a simulator run directory must hold the ledger of every "
            "configured client; a deployed organisation's run directory (its genesis says "
            "scope: organisation) holds its own. A missing ledger, config.resolved.yaml or "
            "receipt log is a failure; say --no-receipts if the run has no receipt log. "
            "An egress without a receipt that the client marked when its stream to the "
            "server broke (server_lost) is reported as an unacknowledged release (a note; "
            "its ε stays counted).", width=78),
        epilog=textwrap.fill("exit codes (0 only when everything verifies; with several "
                             "failures the first kind in this order gives the code: "
                             + ", ".join(PRECEDENCE) + "):", width=78) + "\n" + codes)
    p.add_argument("target", metavar="RUN_DIR|LEDGER", type=Path,
                   help="a run directory, or one ledger .jsonl file")
    p.add_argument("--json", action="store_true",
                   help="print the report (verdict, trust, keys, receipts, failures, table, "
                        "notes, exit_code) as JSON")
    p.add_argument("--trusted-keys", metavar="DIR", type=Path, default=None,
                   help="the provisioned Ed25519 identities (<certs>/identities): verify each "
                        "ledger under DIR/<client>.pub; must not lie inside the audited "
                        "directory")
    receipts = p.add_mutually_exclusive_group()
    receipts.add_argument("--receipts", metavar="FILE", type=Path, default=None,
                          help="server receipt log to match egress digests against (default: "
                               "RUN_DIR/receipts.jsonl, or ../receipts.jsonl beside a ledger/ "
                               "folder; absent: a failure)")
    receipts.add_argument("--no-receipts", action="store_true",
                          help="the run has no receipt log: do not match egress digests "
                               "(stated in the verdict)")
    p.add_argument("--public-key", metavar="FILE", type=Path, default=None,
                   help="client's Ed25519 public key (PEM) for a single LEDGER, vouched for by "
                        "the operator (default: ../keys/<client>.pub beside a ledger/ folder, "
                        "self-declared)")
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
                return _usage("--public-key applies to a single LEDGER; for a run directory "
                              "give --trusted-keys DIR")
            report = audit_run(target, receipts_path=args.receipts,
                               trusted_keys=args.trusted_keys, no_receipts=args.no_receipts)
        else:
            if args.public_key is not None and args.trusted_keys is not None:
                return _usage("give --trusted-keys or --public-key, not both")
            report = audit_ledger_file(target, trusted_keys=args.trusted_keys,
                                       public_key=args.public_key,
                                       receipts_path=args.receipts,
                                       no_receipts=args.no_receipts)
    except (ConfigError, DataError, IdentityError) as exc:
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
    print(report.verdict())
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
