"""The deployed server writes a release's receipt, fsync'd, before it acts on it (DESIGN §5.4).

That order is what lets a client's ``server_lost`` mark cover exactly the releases the
server may not have received: a release the server acted on (answered) has its receipt
on disk, whenever the server dies. Driven through :class:`Coordinator` without sockets.
"""

from __future__ import annotations

import os

import pytest

from fedmuscle_secure.errors import LedgerError
from fedmuscle_secure.federation.split import make_split
from fedmuscle_secure.records.ledger import ReceiptLog, payload_digest, read_receipts
from fedmuscle_secure.server.grpc.process import Coordinator
from fedmuscle_secure.simulator import build_federation, carries_release
from helpers.tiny import tiny_config

ORGS = ("a", "b", "c")


def _coordinator(tmp_path):
    cfg = tiny_config(compare_local=False, **{"training.rounds": 1})
    fed = build_federation(cfg, make_split(cfg), "muscle")
    receipts = ReceiptLog.open(tmp_path / "receipts.jsonl")
    coordinator = Coordinator(fed.server, final_round=2, receipts=receipts)
    boxes = {c: coordinator.connect(c) for c in ORGS}
    coordinator.start_round(1)
    return fed, coordinator, receipts, boxes


def _first_release(fed, boxes):
    """The first message a client sends that carries a release."""
    for c in ORGS:
        while not boxes[c].empty():
            for reply in fed.clients[c].handle(boxes[c].get_nowait()):
                if carries_release(reply):
                    return c, reply
    raise AssertionError("no client released anything")


def test_receipt_is_on_disk_and_fsynced_before_the_server_handles_the_release(tmp_path,
                                                                            monkeypatch):
    fed, coordinator, receipts, boxes = _coordinator(tmp_path)
    synced: list[int] = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), fsync(fd))[1])
    handled = []
    handle = fed.server.handle

    def checked(msg):
        if carries_release(msg):
            digest, size = payload_digest(msg.z)
            on_disk = read_receipts(tmp_path / "receipts.jsonl")
            assert (on_disk[-1]["client"], on_disk[-1]["sha256"], on_disk[-1]["bytes"]) == (
                msg.client, digest, size)
            assert receipts._fd in synced  # written through to the disk, not only to a buffer
            handled.append(msg.client)
        return handle(msg)

    monkeypatch.setattr(fed.server, "handle", checked)
    client, release = _first_release(fed, boxes)
    coordinator.submit(client, release)
    assert handled == [client]
    fed.close()
    receipts.close()


def test_a_release_whose_receipt_cannot_be_written_is_not_acted_on(tmp_path, monkeypatch):
    fed, coordinator, receipts, boxes = _coordinator(tmp_path)
    handled = []
    handle = fed.server.handle
    monkeypatch.setattr(fed.server, "handle", lambda msg: (handled.append(msg), handle(msg))[1])

    def disk_full(*args, **kwargs):
        raise LedgerError("io", None, "receipts.jsonl: cannot append: No space left on device")

    monkeypatch.setattr(receipts, "append", disk_full)
    client, release = _first_release(fed, boxes)
    with pytest.raises(LedgerError, match="No space left"):
        coordinator.submit(client, release)
    assert handled == []
    fed.close()
    receipts.close()
