"""Privacy ledger, receipt log, identity keys and payload digests (DESIGN §5.3, §5.4)."""

from __future__ import annotations

import hashlib
import json
import stat

import pytest
import torch

from fedmuscle_secure.crypto.identity import (
    generate_identity,
    load_private,
    load_public,
    public_pem,
    sign_entry_hash,
    verify_entry_signature,
)
from fedmuscle_secure.errors import IdentityError, LedgerError
from fedmuscle_secure.records.identity_files import save_identity
from fedmuscle_secure.records.ledger import (
    GENESIS_PREV,
    Ledger,
    ReceiptLog,
    canonical_json,
    entry_hash,
    payload_digest,
    read_entries,
    read_receipts,
)


@pytest.fixture(scope="module")
def key():
    return generate_identity()


def _write(path, entries):
    path.write_text("".join(canonical_json(e) + "\n" for e in entries), encoding="utf-8")


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------- identity


def test_identity_roundtrip_and_file_modes(tmp_path, key):
    key_path, pub_path = save_identity(key, tmp_path / "keys", "org-a")
    assert key_path.name == "org-a.key" and pub_path.name == "org-a.pub"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in key_path.read_bytes()
    assert b"BEGIN PUBLIC KEY" in pub_path.read_bytes()
    loaded = load_private(key_path)
    pub = load_public(pub_path)
    assert public_pem(loaded) == public_pem(key) == public_pem(pub)
    sig = sign_entry_hash(loaded, "ab" * 32)
    verify_entry_signature(pub, "ab" * 32, sig)  # raises on failure, returns None
    with pytest.raises(IdentityError, match="does not verify"):
        verify_entry_signature(pub, "cd" * 32, sig)
    with pytest.raises(IdentityError, match="already exists"):
        save_identity(key, tmp_path / "keys", "org-a")
    save_identity(generate_identity(), tmp_path / "keys", "org-a", overwrite=True)


def test_identity_errors_name_the_file(tmp_path):
    with pytest.raises(IdentityError, match="nope.key"):
        load_private(tmp_path / "nope.key")
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(IdentityError, match="bad.pub"):
        load_public(bad)
    with pytest.raises(IdentityError, match="cannot name a key file"):
        save_identity(generate_identity(), tmp_path, "../escape")


# ----------------------------------------------------------------------------- ledger


def test_append_writes_canonical_chained_signed_lines(tmp_path, key):
    path = tmp_path / "ledger" / "a.jsonl"
    with Ledger.open(path, client="a", signing_key=key) as led:
        assert led.head == GENESIS_PREV and led.repaired is None
        g = led.append("genesis", {"client": "a", "public_key": public_pem(key), "delta": 1e-5})
        e = led.append("egress", {"round": 0, "exchange": (0, None), "sha256": "0" * 64,
                                  "bytes": 12})
        assert led.head == e["hash"]
    assert e["body"]["exchange"] == [0, None]  # normalised as written
    raw = path.read_text(encoding="utf-8")
    assert raw.endswith("\n") and raw.count("\n") == 2
    lines = raw.splitlines()
    entries = [json.loads(x) for x in lines]
    assert [canonical_json(x) for x in entries] == lines  # canonical on disk
    assert entries == [g, e]
    assert entries[0]["seq"] == 0 and entries[0]["prev"] == GENESIS_PREV
    assert entries[1]["prev"] == entries[0]["hash"]
    for x in entries:
        assert set(x) == {"seq", "prev", "time", "client", "kind", "body", "hash", "sig"}
        content = {k: v for k, v in x.items() if k not in ("hash", "sig")}
        assert x["hash"] == hashlib.sha256(canonical_json(content).encode()).hexdigest()
        verify_entry_signature(key.public_key(), x["hash"], x["sig"])


def test_reopen_verifies_and_continues(tmp_path, key):
    path = tmp_path / "a.jsonl"
    with Ledger.open(path, client="a", signing_key=key) as led:
        for r in range(3):
            led.append("round_end", {"round": r})
    with Ledger.open(path, client="a", signing_key=key) as led:
        assert len(led.entries) == 3 and led.repaired is None
        led.append("leave", {"round": 3})
    entries, tail = read_entries(path)
    assert [e["seq"] for e in entries] == [0, 1, 2, 3] and tail is None


def test_unsigned_ledger(tmp_path):
    path = tmp_path / "a.jsonl"
    with Ledger.open(path, client="a", signing_key=None) as led:
        assert led.append("round_end", {"round": 0})["sig"] is None
    Ledger.open(path, client="a", signing_key=None).close()


def test_one_writer_at_a_time(tmp_path, key):
    path = tmp_path / "a.jsonl"
    with Ledger.open(path, client="a", signing_key=key):
        with pytest.raises(LedgerError) as err:
            Ledger.open(path, client="a", signing_key=key)
        assert err.value.kind == "locked"
    Ledger.open(path, client="a", signing_key=key).close()


def test_body_must_be_json(tmp_path, key):
    with Ledger.open(tmp_path / "a.jsonl", client="a", signing_key=key) as led:
        with pytest.raises(LedgerError, match="not JSON-serialisable"):
            led.append("dp_event", {"x": object()})
        with pytest.raises(LedgerError, match="kind"):
            led.append("", {})
        assert led.entries == []


def _three(tmp_path, key):
    path = tmp_path / "a.jsonl"
    with Ledger.open(path, client="a", signing_key=key) as led:
        for r in range(3):
            led.append("round_end", {"round": r})
    return path


@pytest.mark.parametrize("tamper, kind, seq", [
    ("edit_body", "edited", 1),
    ("delete", "deleted", 1),
    ("swap", "reordered", 1),
    ("mid_garbage", "malformed", None),
    ("missing_field", "malformed", 1),
    ("rehash_rechain", "signature", 1),
    ("other_client", "malformed", 1),
])
def test_reopen_refuses_corruption(tmp_path, key, tamper, kind, seq):
    path = _three(tmp_path, key)
    entries = _lines(path)
    if tamper == "edit_body":
        entries[1]["body"]["round"] = 7
    elif tamper == "delete":
        del entries[1]
    elif tamper == "swap":
        entries[1], entries[2] = entries[2], entries[1]
    elif tamper == "missing_field":
        del entries[1]["prev"]
    elif tamper == "other_client":
        entries[1]["client"] = "b"
    elif tamper == "rehash_rechain":
        entries[1]["body"]["round"] = 7
        for i in (1, 2):
            entries[i]["prev"] = entries[i - 1]["hash"]
            entries[i]["hash"] = entry_hash(entries[i])
    _write(path, entries)
    if tamper == "mid_garbage":
        text = path.read_text().splitlines(keepends=True)
        path.write_text(text[0] + "{not json\n" + "".join(text[1:]))
    before = path.read_bytes()
    with pytest.raises(LedgerError) as err:
        Ledger.open(path, client="a", signing_key=key)
    assert err.value.kind == kind and err.value.seq == seq
    assert str(path) in str(err.value)
    assert path.read_bytes() == before  # nothing repaired or appended on real corruption


def test_reopen_with_another_key_fails(tmp_path, key):
    path = _three(tmp_path, key)
    with pytest.raises(LedgerError) as err:
        Ledger.open(path, client="a", signing_key=generate_identity())
    assert err.value.kind == "signature" and err.value.seq == 0


def test_torn_tail_is_repaired_and_recorded(tmp_path, key):
    """A half-written line (a crash mid-append) is cut off and recorded, not fatal."""
    path = _three(tmp_path, key)
    whole = path.read_bytes()
    # what append would have written next, cut in half
    nxt = {"seq": 3, "prev": _lines(path)[-1]["hash"], "time": 1.0, "client": "a",
           "kind": "egress", "body": {"round": 3}}
    nxt["hash"] = entry_hash(nxt)
    nxt["sig"] = sign_entry_hash(key, nxt["hash"])
    line = (canonical_json(nxt) + "\n").encode()
    torn = line[: len(line) // 2]
    path.write_bytes(whole + torn)

    entries, tail = read_entries(path)
    assert len(entries) == 3 and tail == torn

    with Ledger.open(path, client="a", signing_key=key) as led:
        rep = led.repaired
        assert rep == {"dropped_bytes": len(torn),
                       "dropped_sha256": hashlib.sha256(torn).hexdigest(),
                       "after_seq": 2, "seq": 3}
        last = led.entries[-1]
        assert last["kind"] == "repair" and last["seq"] == 3
        assert last["body"] == {k: rep[k] for k in ("dropped_bytes", "dropped_sha256",
                                                    "after_seq")}
        led.append("round_end", {"round": 3})
    assert path.read_bytes().startswith(whole)  # committed bytes untouched
    with Ledger.open(path, client="a", signing_key=key) as led:
        assert led.repaired is None
        assert [e["kind"] for e in led.entries][-2:] == ["repair", "round_end"]


def test_torn_first_line_and_non_json_last_line(tmp_path, key):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"seq":0,"pr')
    with Ledger.open(path, client="a", signing_key=key) as led:
        assert led.repaired["after_seq"] is None and led.repaired["dropped_bytes"] == 12
        assert [e["kind"] for e in led.entries] == ["repair"]
    path2 = _three(tmp_path / "x", key)
    with open(path2, "ab") as fh:
        fh.write(b"\x00\x00garbage\n")
    with Ledger.open(path2, client="a", signing_key=key) as led:
        assert led.repaired["dropped_bytes"] == 10 and led.repaired["after_seq"] == 2


# ----------------------------------------------------------------------------- receipts


def test_receipt_log_roundtrip_and_repair(tmp_path):
    path = tmp_path / "receipts.jsonl"
    with ReceiptLog.open(path) as log:
        r0 = log.append("a", 0, (0, 1), "a" * 64, 100)
        log.append("b", 0, [0, None], "b" * 64, 7)
        with pytest.raises(LedgerError, match="sha256"):
            log.append("a", 0, None, "xyz", 1)
    assert r0["body"]["exchange"] == [0, 1] and r0["client"] == "a" and r0["sig"] is None
    with open(path, "ab") as fh:
        fh.write(b'{"bo')
    assert len(read_receipts(path)) == 2  # torn tail ignored when only reading
    with ReceiptLog.open(path) as log:
        assert log.repaired["dropped_bytes"] == 4
        log.append("a", 1, (1, 0), "c" * 64, 3)
    got = read_receipts(path)
    assert [(r["client"], r["round"], r["exchange"], r["sha256"], r["bytes"]) for r in got] == [
        ("a", 0, [0, 1], "a" * 64, 100), ("b", 0, [0, None], "b" * 64, 7),
        ("a", 1, [1, 0], "c" * 64, 3)]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    with pytest.raises(LedgerError) as err:
        read_receipts(path)
    assert err.value.kind == "reordered"


# ----------------------------------------------------------------------------- digests


def test_payload_digest_frames_dtype_and_shape():
    x = torch.arange(6, dtype=torch.float32)
    d1, n1 = payload_digest(x.reshape(2, 3))
    d2, n2 = payload_digest(x.reshape(3, 2))
    d3, _ = payload_digest(x.view(torch.int32).reshape(2, 3))  # same bytes, other dtype
    d4, _ = payload_digest(x[:3], x[3:])  # same bytes, split differently
    d5, _ = payload_digest(x)
    assert n1 == n2 == 24
    assert len({d1, d2, d3, d4, d5}) == 5
    # deterministic, layout-independent (a transposed-then-contiguous copy of equal values)
    y = x.reshape(3, 2).t().contiguous().t()
    assert not y.is_contiguous() and payload_digest(y) == payload_digest(x.reshape(3, 2))
    assert payload_digest(torch.zeros(2, dtype=torch.bfloat16))[1] == 4
    assert payload_digest(b"abc")[1] == 3
    with pytest.raises(TypeError):
        payload_digest([1, 2])
