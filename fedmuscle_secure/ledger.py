"""Tamper-evident privacy ledger and server receipt log (DESIGN §5.3, §5.4).

Each client appends one JSON line per event to its own ledger; every entry hashes the
previous one and, when the client has an identity key, is signed with it. The server keeps
one receipt log for the run with the digest of every payload it received. ``audit``
(:mod:`fedmuscle_secure.audit`) replays both.

File format (one entry per line, canonical JSON: sorted keys, no spaces, UTF-8, floats as
Python ``repr``; Python's ``Infinity``/``NaN`` tokens are kept so an infinite ε can be
recorded)::

    {"body": {...}, "client": str, "hash": hex, "kind": str, "prev": hex, "seq": int,
     "sig": hex | null, "time": float}

``hash`` = SHA-256 of the canonical JSON of the entry without ``hash`` and ``sig``;
``prev`` = the previous entry's ``hash`` (64 zeros for seq 0); ``sig`` = Ed25519 over
``LEDGER_SIGNATURE_LABEL || hash bytes`` (:func:`fedmuscle_secure.identity.sign_entry_hash`).

Durability: every append is one ``write`` of the whole line followed by ``fsync``, so a
crash can only leave a torn *last* line. :meth:`Ledger.open` cuts it off and records
what it dropped in a ``repair`` entry; corruption anywhere else raises
:class:`~fedmuscle_secure.errors.LedgerError`. What a file alone cannot show is the
removal of its last entries: the chain head sent to the server and the server's receipts
are what catch that (DESIGN §5.4).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedmuscle_secure.errors import IdentityError, LedgerError
from fedmuscle_secure.identity import sign_entry_hash, verify_entry_signature

try:  # POSIX advisory lock: one writer per ledger file
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ENTRY_FIELDS",
    "GENESIS_PREV",
    "ChainProblem",
    "ChainScan",
    "Ledger",
    "ReceiptLog",
    "canonical_json",
    "entry_hash",
    "payload_digest",
    "read_entries",
    "read_receipts",
    "scan_file",
]

log = logging.getLogger(__name__)

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


def _is_hex(value: Any, length: int | None = 64) -> bool:
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
            import torch

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
        (_is_hex(entry["prev"]), "prev: 64 lowercase hex characters"),
        (isinstance(entry["time"], (int, float)) and not isinstance(entry["time"], bool),
         "time: a number"),
        (isinstance(entry["client"], str), "client: a string"),
        (isinstance(entry["kind"], str) and entry["kind"] != "", "kind: a non-empty string"),
        (isinstance(entry["body"], dict), "body: an object"),
        (_is_hex(entry["hash"]), "hash: 64 lowercase hex characters"),
        (entry["sig"] is None or _is_hex(entry["sig"], None), "sig: hex or null"),
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
    entries: list[dict] = []
    problems: list[ChainProblem] = []
    lines = body.split(b"\n")[:-1] if body else []
    placed: list[tuple[int, dict]] = []
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
        entries.append(entry)

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
    present = sorted(by_seq)
    expected = 0
    for seq in present:
        if seq > expected:
            span = (f"entry {expected} is" if seq - 1 == expected
                    else f"entries {expected}..{seq - 1} are")
            problems.append(ChainProblem(
                "deleted", expected, None, f"{span} missing (next present: {seq})"))
        expected = seq + 1
    for seq in present:
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
    return entries, problems


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


def _raise_first(path: Path, problems: Sequence[ChainProblem]) -> None:
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
        _raise_first(scan.path, scan.problems)
    if scan.tail is not None:
        log.warning("%s: ignoring a torn last line of %d bytes", scan.path, len(scan.tail))
    return [receipt_view(e) for e in scan.entries if e["kind"] == "receipt"]


def receipt_view(entry: Mapping[str, Any]) -> dict:
    """Flatten a receipt-log entry into the record the audit matches on."""
    return {"seq": entry["seq"], "time": entry["time"], "client": entry["client"],
            **{k: entry["body"].get(k) for k in ("round", "exchange", "sha256", "bytes")}}


# ----------------------------------------------------------------------------- writing


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class _ChainedLog:
    """An fsync'd, hash-chained JSON-lines file opened by exactly one writer."""

    def __init__(self, path: Path, fd: int, entries: list[dict], size: int,
                 signing_key: Ed25519PrivateKey | None) -> None:
        self.path = path
        self.entries: list[dict] = entries
        self.repaired: dict | None = None
        self._fd: int | None = fd
        self._size = size
        self._signing_key = signing_key
        self._lock = threading.Lock()

    @classmethod
    def _open(cls, path: str | os.PathLike, *, signing_key: Ed25519PrivateKey | None,
              client: str | None, repair_client: str):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LedgerError("io", None, f"{path}: cannot open: {exc.strerror or exc}") from exc
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise LedgerError("locked", None, f"{path}: already open for appending "
                                      "(another Ledger object or process holds it)") from None
            if created:
                _fsync_dir(path.parent)
            chunks, offset = [], 0
            while chunk := os.pread(fd, 1 << 20, offset):
                chunks.append(chunk)
                offset += len(chunk)
            body, tail = split_tail(b"".join(chunks))
            public_key = signing_key.public_key() if signing_key is not None else None
            entries, problems = scan_chain(body, public_key=public_key, client=client)
            if problems:
                _raise_first(path, problems)
            self = cls(path, fd, entries, len(body), signing_key)
            if tail is not None:
                self._repair(tail, repair_client)
            return self
        except BaseException:
            os.close(fd)
            raise

    def _repair(self, tail: bytes, client: str) -> None:
        os.ftruncate(self._fd, self._size)
        os.fsync(self._fd)
        info = {"dropped_bytes": len(tail), "dropped_sha256": hashlib.sha256(tail).hexdigest(),
                "after_seq": self.entries[-1]["seq"] if self.entries else None}
        log.warning("%s: torn last line (%d bytes after seq %s, from a crash mid-write) cut "
                    "off and recorded in a repair entry", self.path, len(tail), info["after_seq"])
        entry = self._append(client, "repair", info)
        self.repaired = {**info, "seq": entry["seq"]}

    @property
    def head(self) -> str:
        """Hash of the last entry (64 zeros when empty): what the next message carries."""
        return self.entries[-1]["hash"] if self.entries else GENESIS_PREV

    def _append(self, client: str, kind: str, body: Mapping[str, Any]) -> dict:
        if not isinstance(kind, str) or not kind:
            raise LedgerError("malformed", None, f"{self.path}: entry kind must be a non-empty "
                              f"string, got {kind!r}")
        if not isinstance(body, Mapping):
            raise LedgerError("malformed", None, f"{self.path}: body of a {kind!r} entry must be "
                              f"a dict, got {type(body).__name__}")
        try:  # normalise (tuples -> lists, int keys -> str) so memory matches the file
            body = json.loads(canonical_json(dict(body)))
        except (TypeError, ValueError) as exc:
            raise LedgerError("malformed", None, f"{self.path}: body of a {kind!r} entry is not "
                              f"JSON-serialisable: {exc}") from exc
        with self._lock:
            if self._fd is None:
                raise LedgerError("io", None, f"{self.path}: ledger is closed")
            entry = {"seq": len(self.entries), "prev": self.head, "time": time.time(),
                     "client": client, "kind": kind, "body": body}
            entry["hash"] = entry_hash(entry)
            entry["sig"] = (sign_entry_hash(self._signing_key, entry["hash"])
                            if self._signing_key is not None else None)
            data = (canonical_json(entry) + "\n").encode("utf-8")
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
                os.fsync(self._fd)
            except OSError as exc:
                self._undo_partial_write()
                raise LedgerError("io", entry["seq"], f"{self.path}: cannot append: "
                                  f"{exc.strerror or exc}") from exc
            self._size += len(data)
            self.entries.append(entry)
            return entry

    def _undo_partial_write(self) -> None:
        try:
            os.ftruncate(self._fd, self._size)
            os.fsync(self._fd)
        except OSError:  # leave it to the next open's torn-tail repair; refuse further appends
            self.close()

    def close(self) -> None:
        """Release the file and its lock; further appends raise."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.close()


class Ledger(_ChainedLog):
    """One client's append-only privacy ledger (DESIGN §5.3); see the module docstring.

    Kinds written by the system: ``genesis``, ``dp_event``, ``epsilon``, ``egress``,
    ``refusal``, ``leave``, ``round_end`` and ``repair`` (written by :meth:`open`).
    """

    @classmethod
    def open(cls, path: str | os.PathLike, *, client: str,
             signing_key: Ed25519PrivateKey | None) -> Ledger:
        """Open (creating if missing) and verify ``path``; repair a torn last line.

        Every existing line is checked: chain, ``client``, and signatures under
        ``signing_key``'s public half (when given). A torn last line is cut off and a
        ``repair`` entry appended; ``.repaired`` then holds ``dropped_bytes``,
        ``dropped_sha256``, ``after_seq`` and the repair entry's ``seq``. Anything else
        wrong raises :class:`LedgerError`. One writer per file: a second open of the same
        file while the first is open raises ``LedgerError(kind="locked")``.
        """
        if not isinstance(client, str) or not client:
            raise LedgerError("malformed", None, f"{path}: client must be a non-empty string")
        if signing_key is not None and not isinstance(signing_key, Ed25519PrivateKey):
            raise LedgerError("signature", None, f"{path}: signing_key must be an "
                              f"Ed25519PrivateKey, got {type(signing_key).__name__}")
        self = cls._open(path, signing_key=signing_key, client=client, repair_client=client)
        self.client = client
        return self

    def append(self, kind: str, body: Mapping[str, Any]) -> dict:
        """Append, flush and fsync one entry; returns it as written (body normalised)."""
        return self._append(self.client, kind, body)


class ReceiptLog(_ChainedLog):
    """The server's receipt log: one ``receipt`` entry per payload received (DESIGN §5.4).

    Same chained format as a ledger (``client`` = the sender, ``sig`` null), so the same
    torn-tail repair and verification apply.
    """

    SERVER = "server"

    @classmethod
    def open(cls, path: str | os.PathLike) -> ReceiptLog:
        return cls._open(path, signing_key=None, client=None, repair_client=cls.SERVER)

    def append(self, client: str, round: int, exchange: Sequence[Any] | None, sha256: str,
               bytes: int) -> dict:
        """Record that ``client`` delivered a payload of ``bytes`` bytes with digest ``sha256``."""
        if not isinstance(client, str) or not client:
            raise LedgerError("malformed", None, f"{self.path}: receipt client must be a name")
        if not _is_hex(sha256):
            raise LedgerError("malformed", None, f"{self.path}: receipt sha256 must be 64 "
                              f"lowercase hex characters, got {sha256!r}")
        if not isinstance(bytes, int) or bytes < 0:
            raise LedgerError("malformed", None, f"{self.path}: receipt bytes must be a "
                              f"non-negative int, got {bytes!r}")
        body = {"round": round, "exchange": None if exchange is None else list(exchange),
                "sha256": sha256, "bytes": bytes}
        return self._append(client, "receipt", body)
