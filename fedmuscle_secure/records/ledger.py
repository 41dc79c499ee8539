"""Tamper-evident privacy ledger and server receipt log (DESIGN §5.3, §5.4).

Each client appends one JSON line per event to its own ledger; every entry hashes the
previous one and, when the client has an identity key, is signed with it. The server keeps
one receipt log for the run with the digest of every payload it received. ``audit``
(:mod:`fedmuscle_secure.records.audit`) replays both.

File format (one entry per line, canonical JSON: sorted keys, no spaces, UTF-8, floats as
Python ``repr``; Python's ``Infinity``/``NaN`` tokens are kept so an infinite ε can be
recorded)::

    {"body": {...}, "client": str, "hash": hex, "kind": str, "prev": hex, "seq": int,
     "sig": hex | null, "time": float}

``hash`` = SHA-256 of the canonical JSON of the entry without ``hash`` and ``sig``;
``prev`` = the previous entry's ``hash`` (64 zeros for seq 0); ``sig`` = Ed25519 over
``LEDGER_SIGNATURE_LABEL || hash bytes`` (:func:`fedmuscle_secure.crypto.identity.sign_entry_hash`).

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
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)

from fedmuscle_secure.crypto.identity import sign_entry_hash
from fedmuscle_secure.durable import fsync_dir
from fedmuscle_secure.errors import LedgerError

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

from fedmuscle_secure.records.ledger_format import (  # noqa: F401 - re-exported
    ENTRY_FIELDS,
    GENESIS_PREV,
    ChainProblem,
    ChainScan,
    canonical_json,
    entry_hash,
    is_hex,
    payload_digest,
    raise_first_problem,
    read_entries,
    read_receipts,
    receipt_view,
    scan_chain,
    scan_file,
    split_tail,
)

log = logging.getLogger(__name__)


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
                fsync_dir(path.parent)
            chunks, offset = [], 0
            while chunk := os.pread(fd, 1 << 20, offset):
                chunks.append(chunk)
                offset += len(chunk)
            body, tail = split_tail(b"".join(chunks))
            public_key = signing_key.public_key() if signing_key is not None else None
            entries, problems = scan_chain(body, public_key=public_key, client=client)
            if problems:
                raise_first_problem(path, problems)
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
    ``refusal``, ``leave``, ``abort``, ``server_lost`` (:meth:`mark_server_lost`) and
    ``repair`` (written by :meth:`open`).
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

    def mark_server_lost(self, completed_round: int, reason: str) -> dict:
        """Record that the stream to the server broke, with the releases it may not have
        received: ``unacknowledged_seqs`` = [first, last] seq of the egress entries, since
        the previous such mark, of rounds after ``completed_round`` (None: there are none).

        Why those: a client completes a round only after the server answered its last
        release of it, and the server writes (and fsyncs) a release's receipt before it acts
        on it; so a release of a completed round was received, one of the round in flight
        may not have been. ``audit`` reports such an egress without a receipt as an
        unacknowledged release instead of tampering (DESIGN §5.4).
        """
        since = max((e["seq"] for e in self.entries if e["kind"] == "server_lost"), default=-1)
        seqs = [e["seq"] for e in self.entries if e["kind"] == "egress" and e["seq"] > since
                and isinstance(e["body"].get("round"), int)
                and e["body"]["round"] > completed_round]
        return self.append("server_lost", {
            "round": completed_round + 1, "reason": reason,
            "unacknowledged_seqs": [seqs[0], seqs[-1]] if seqs else None})


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
        if not is_hex(sha256):
            raise LedgerError("malformed", None, f"{self.path}: receipt sha256 must be 64 "
                              f"lowercase hex characters, got {sha256!r}")
        if not isinstance(bytes, int) or bytes < 0:
            raise LedgerError("malformed", None, f"{self.path}: receipt bytes must be a "
                              f"non-negative int, got {bytes!r}")
        body = {"round": round, "exchange": None if exchange is None else list(exchange),
                "sha256": sha256, "bytes": bytes}
        return self._append(client, "receipt", body)
