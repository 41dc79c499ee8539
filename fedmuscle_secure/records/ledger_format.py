"""The ledger's on-disk format and its verification (DESIGN §5.3, §5.4).

Reading side of :mod:`fedmuscle_secure.records.ledger`: canonical JSON, entry hashes, payload
digests, and the chain scan that checks sequence numbers, links, hashes and signatures of
a ledger or receipt file without writing anything. ``audit`` and ``Ledger.open`` both use
it. The format itself is described in :mod:`fedmuscle_secure.records.ledger`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedmuscle_secure.crypto.identity import verify_entry_signature
from fedmuscle_secure.errors import IdentityError, LedgerError

log = logging.getLogger("fedmuscle_secure.records.ledger")

GENESIS_PREV = "0" * 64
ENTRY_FIELDS = frozenset({"seq", "prev", "time", "client", "kind", "body", "hash", "sig"})
_HEX = frozenset("0123456789abcdef")


def canonical_json(obj: Any) -> str:
    """The one serialisation that is hashed and written (sorted keys, compact, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(entry: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON of ``entry`` without its ``hash`` and ``sig``."""
    content = {k: v for k, v in entry.items() if k not in ("hash", "sig")}
    return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()


def is_hex(value: Any, length: int | None = 64) -> bool:
    """``value`` is lowercase hex (of ``length`` characters, unless None): a hash or signature."""
    return (isinstance(value, str) and (length is None or len(value) == length)
            and set(value) <= _HEX)


def payload_digest(*parts: Any) -> tuple[str, int]:
    """SHA-256 (hex) and byte size of a released payload (DESIGN §5.4).

    Each part (a ``torch.Tensor``, or ``bytes`` such as a serialised CKKS ciphertext) is
    framed as ``len(header) || header || len(data) || data`` (8-byte big-endian lengths),
    header = canonical JSON ``{"dtype": name, "shape": [...]}``, data = the raw
    contiguous bytes in native (little-endian) order; so tensors of different dtype or
    shape never share a digest. The size is the sum of the raw data bytes. Client and
    server call this on the same tensors (sent vs decoded) and must agree.
    """
    h = hashlib.sha256()
    size = 0
    for part in parts:
        if isinstance(part, (bytes, bytearray, memoryview)):
            data = bytes(part)
            header = {"dtype": "bytes", "shape": [len(data)]}
        else:
            import torch  # deferred: heavy, and an audit reads digests without hashing tensors

            if not isinstance(part, torch.Tensor):
                raise TypeError(f"payload_digest takes tensors or bytes, got {type(part).__name__}")
            t = part.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
            header = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
            data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        head = canonical_json(header).encode("utf-8")
        h.update(len(head).to_bytes(8, "big") + head + len(data).to_bytes(8, "big"))
        h.update(data)
        size += len(data)
    return h.hexdigest(), size


# ----------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class ChainProblem:
    """One thing wrong with a chained log; ``kind`` uses the audit's failure names."""

    kind: str  # malformed | edited | deleted | reordered | signature
    seq: int | None
    line: int | None  # 1-based line number in the file
    message: str


@dataclass
class ChainScan:
    """What a file holds: verified-or-not entries (file order), problems, and a torn tail."""

    path: Path
    entries: list[dict]
    problems: list[ChainProblem]
    tail: bytes | None
    kept_bytes: int  # length of the file up to the end of the last complete line


def _parse_json_line(raw: bytes) -> tuple[Any, str | None]:
    try:
        return json.loads(raw.decode("utf-8")), None
    except UnicodeDecodeError:
        return None, "line is not UTF-8"
    except ValueError as exc:
        return None, f"line is not JSON ({exc.msg} at column {exc.colno})"


def split_tail(data: bytes) -> tuple[bytes, bytes | None]:
    """Split ``data`` into complete lines and a torn tail (what a crash mid-append leaves).

    The tail is everything after the last newline, plus the last complete line if that
    one is not JSON.
    """
    cut = data.rfind(b"\n") + 1
    body, tail = data[:cut], data[cut:]
    if body:
        start = body.rfind(b"\n", 0, len(body) - 1) + 1
        if _parse_json_line(body[start:-1])[1] is not None:
            body, tail = body[:start], body[start:] + tail
    return body, (tail or None)


def _check_fields(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"line is JSON {type(entry).__name__}, expected an object"
    missing = sorted(ENTRY_FIELDS - entry.keys())
    extra = sorted(entry.keys() - ENTRY_FIELDS)
    if missing or extra:
        parts = [f"fields missing {missing}"] if missing else []
        parts += [f"unexpected fields {extra}"] if extra else []
        return " and ".join(parts)
    seq = entry["seq"]
    checks = (
        (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0,
         "seq: a non-negative int"),
        (is_hex(entry["prev"]), "prev: 64 lowercase hex characters"),
        (isinstance(entry["time"], (int, float)) and not isinstance(entry["time"], bool),
         "time: a number"),
        (isinstance(entry["client"], str), "client: a string"),
        (isinstance(entry["kind"], str) and entry["kind"] != "", "kind: a non-empty string"),
        (isinstance(entry["body"], dict), "body: an object"),
        (is_hex(entry["hash"]), "hash: 64 lowercase hex characters"),
        (entry["sig"] is None or is_hex(entry["sig"], None), "sig: hex or null"),
    )
    bad = [what for ok, what in checks if not ok]
    return "expected " + "; ".join(bad) if bad else None


def scan_chain(
    body: bytes, *, public_key: Ed25519PublicKey | None, client: str | None = None
) -> tuple[list[dict], list[ChainProblem]]:
    """Parse complete lines and collect every problem (never raises on content).

    Per line: malformed (not JSON, wrong fields, wrong ``client``), edited (content does
    not match its own hash), signature (hash self-consistent, signature missing or not
    verifying under ``public_key``; skipped when it is None). Across lines: reordered
    (a seq lower than one before it, or repeated), deleted (a seq gap), and a broken link
    (``prev`` ≠ hash of seq-1 while both are present: an entry was re-hashed) as edited.
    """
    problems: list[ChainProblem] = []
    placed = _read_lines(body, public_key, client, problems)
    by_seq = _order(placed, problems)
    _gaps(by_seq, problems)
    _links(by_seq, problems)
    return [entry for _, entry in placed], problems


def _read_lines(body: bytes, public_key: Ed25519PublicKey | None, client: str | None,
                problems: list[ChainProblem]) -> list[tuple[int, dict]]:
    """Each well-formed line as ``(line number, entry)``; a malformed line is reported and
    left out, an edited or badly signed one reported and kept (its seq still counts)."""
    placed: list[tuple[int, dict]] = []
    lines = body.split(b"\n")[:-1] if body else []
    for lineno, raw in enumerate(lines, start=1):
        entry, why = _parse_json_line(raw)
        if why is None:
            why = _check_fields(entry)
        if why is None and client is not None and entry["client"] != client:
            why = f"entry belongs to client {entry['client']!r}, this ledger to {client!r}"
        if why is not None:
            seq = entry.get("seq") if isinstance(entry, dict) else None
            seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
            problems.append(ChainProblem("malformed", seq, lineno, why))
            continue
        seq = entry["seq"]
        if entry_hash(entry) != entry["hash"]:
            problems.append(ChainProblem(
                "edited", seq, lineno, "content does not match its hash (entry was edited)"))
        elif public_key is not None:
            try:
                verify_entry_signature(public_key, entry["hash"], entry["sig"])
            except IdentityError as exc:
                problems.append(ChainProblem("signature", seq, lineno, str(exc)))
        placed.append((lineno, entry))
    return placed


def _order(placed: list[tuple[int, dict]], problems: list[ChainProblem]) -> dict[int, dict]:
    """The first entry of each seq; a seq repeated or lower than one before it is reordered."""
    by_seq: dict[int, dict] = {}
    highest = -1
    for lineno, entry in placed:
        seq = entry["seq"]
        if seq in by_seq:
            problems.append(ChainProblem("reordered", seq, lineno, f"seq {seq} appears twice"))
        elif seq < highest:
            problems.append(ChainProblem(
                "reordered", seq, lineno, f"seq {seq} comes after seq {highest}"))
        by_seq.setdefault(seq, entry)
        highest = max(highest, seq)
    return by_seq


def _gaps(by_seq: dict[int, dict], problems: list[ChainProblem]) -> None:
    """Every run of missing seqs, reported once as deleted."""
    expected = 0
    for seq in sorted(by_seq):
        if seq > expected:
            span = (f"entry {expected} is" if seq - 1 == expected
                    else f"entries {expected}..{seq - 1} are")
            problems.append(ChainProblem(
                "deleted", expected, None, f"{span} missing (next present: {seq})"))
        expected = seq + 1


def _links(by_seq: dict[int, dict], problems: list[ChainProblem]) -> None:
    """A ``prev`` that is not the hash of the entry before it (both present): re-hashed."""
    for seq in sorted(by_seq):
        if seq == 0:
            want = GENESIS_PREV
        elif seq - 1 in by_seq:
            want = by_seq[seq - 1]["hash"]
        else:
            continue  # the gap is already reported as deleted
        if by_seq[seq]["prev"] != want:
            problems.append(ChainProblem(
                "edited", seq, None,
                f"prev does not match the hash of entry {seq - 1}: that entry was re-hashed "
                "or this link was edited" if seq else "prev of entry 0 is not 64 zeros"))


def scan_file(
    path: str | os.PathLike, *, public_key: Ed25519PublicKey | None, client: str | None = None
) -> ChainScan:
    """Read ``path`` and :func:`scan_chain` it; raises :class:`LedgerError` only if unreadable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LedgerError("io", None, f"{path}: cannot read: {exc.strerror or exc}") from exc
    body, tail = split_tail(data)
    entries, problems = scan_chain(body, public_key=public_key, client=client)
    return ChainScan(path, entries, problems, tail, len(body))


def raise_first_problem(path: Path, problems: Sequence[ChainProblem]) -> None:
    """Raise the first of ``problems`` as a :class:`LedgerError` naming ``path`` and the line,
    with how many more there are (a writer refuses a ledger it cannot extend safely)."""
    first = problems[0]
    where = f"line {first.line}: " if first.line is not None else ""
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    raise LedgerError(first.kind, first.seq, f"{path}: {where}{first.message}{more}")


def read_entries(path: str | os.PathLike) -> tuple[list[dict], bytes | None]:
    """Parsed entries and any torn tail, without verification (raises on non-JSON mid-file)."""
    path = Path(path)
    try:
        body, tail = split_tail(path.read_bytes())
    except OSError as exc:
        raise LedgerError("io", None, f"{path}: cannot read: {exc.strerror or exc}") from exc
    entries = []
    for lineno, raw in enumerate(body.split(b"\n")[:-1] if body else [], start=1):
        entry, why = _parse_json_line(raw)
        if why is None and not isinstance(entry, dict):
            why = "line is not a JSON object"
        if why is not None:
            raise LedgerError("malformed", None, f"{path}: line {lineno}: {why}")
        entries.append(entry)
    return entries, tail


def read_receipts(path: str | os.PathLike) -> list[dict]:
    """The receipts of a verified receipt log: dicts with seq, time, client, round,
    exchange, sha256, bytes. A torn tail (an uncommitted receipt) is ignored with a warning;
    any other problem raises :class:`LedgerError`."""
    scan = scan_file(path, public_key=None)
    if scan.problems:
        raise_first_problem(scan.path, scan.problems)
    if scan.tail is not None:
        log.warning("%s: ignoring a torn last line of %d bytes", scan.path, len(scan.tail))
    return [receipt_view(e) for e in scan.entries if e["kind"] == "receipt"]


def receipt_view(entry: Mapping[str, Any]) -> dict:
    """Flatten a receipt-log entry into the record the audit matches on."""
    return {"seq": entry["seq"], "time": entry["time"], "client": entry["client"],
            **{k: entry["body"].get(k) for k in ("round", "exchange", "sha256", "bytes")}}
