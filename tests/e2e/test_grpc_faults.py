"""Malformed messages over a live mutual-TLS connection (DESIGN §6, faults).

A real server (:func:`serve`, in a thread) and two well-behaved clients (:func:`run_client`,
in threads) run a one-round federation while organisation ``a`` speaks raw chunks on its
own authenticated stream: a truncated stream, an out-of-order chunk, an oversize payload,
bytes that are no envelope, a server → client message, a list over its cap, and, mid-round,
representations of the wrong dtype or shape or in another client's name. Each time ``a`` gets ``INVALID_ARGUMENT`` with the reason, and the
server keeps serving the others: wire-level faults come before round 1, so ``a`` then joins
properly and everyone finishes; a mid-round fault drops ``a`` (a Leave) and the round
completes with ``b`` and ``c``.
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import grpc
import pytest
import torch

from fedmuscle_secure.client.grpc.process import RetrySettings, run_client
from fedmuscle_secure.messages import Representations, RoundPlan, RoundReport
from fedmuscle_secure.server.grpc.process import ServeSettings, serve
from fedmuscle_secure.transport.chunks import Chunk, chunk
from fedmuscle_secure.transport.codec import encode
from fedmuscle_secure.transport.limits import wire_limits
from fedmuscle_secure.transport.streams import Direction, Inbound, TransportOptions, outbound
from fedmuscle_secure.transport.wire_pb import fedmuscle_pb2_grpc as rpc
from helpers.deploy_driver import free_port, provision
from helpers.tiny import tiny_config

pytestmark = pytest.mark.slow

OPTIONS = TransportOptions(max_payload_bytes=256 << 10, max_chunk_bytes=64 << 10,
                           max_message_bytes=(64 << 10) + 4096)
CFG = tiny_config(compare_local=False, **{"training.rounds": 1})
B, D = CFG.muscle.batch_size, CFG.muscle.dim


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return provision(tmp_path_factory.mktemp("pki"))


class _Federation:
    """``serve`` and the clients ``orgs`` in threads; :meth:`join` returns the server rows."""

    def __init__(self, tmp: Path, certs: Path) -> None:
        self.tmp, self.certs, self.port = tmp, certs, free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.results: dict[str, object] = {}
        self.threads: list[threading.Thread] = []
        self._start("server", lambda: serve(CFG, certs, self.target, tmp / "server", options=OPTIONS,
                                            settings=ServeSettings(60.0, 60.0)))

    def _start(self, name: str, fn) -> None:
        def body() -> None:
            try:
                self.results[name] = fn()
            except BaseException as exc:  # noqa: BLE001 - reported by join
                self.results[name] = exc

        t = threading.Thread(target=body, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def client(self, org: str) -> None:
        self._start(org, lambda: run_client(CFG, org, self.certs, self.target,
                                            self.tmp / f"client-{org}", options=OPTIONS,
                                            retry=RetrySettings(initial_s=0.1, deadline_s=60)))

    def join(self) -> list[dict]:
        for t in self.threads:
            t.join(timeout=120)
        bad = {k: v for k, v in self.results.items() if isinstance(v, BaseException)}
        assert not bad and len(self.results) == len(self.threads), (bad, self.results)
        return self.results["server"]


class _RawStream:
    """Organisation ``a``'s authenticated stream, driven chunk by chunk."""

    def __init__(self, target: str, certs: Path) -> None:
        org = certs / "orgs" / "a"
        creds = grpc.ssl_channel_credentials((certs / "ca" / "ca.crt").read_bytes(),
                                             (org / "a.key").read_bytes(),
                                             (org / "a.crt").read_bytes())
        self.channel = grpc.secure_channel(target, creds)
        grpc.channel_ready_future(self.channel).result(timeout=60)
        self.sending: queue.Queue = queue.Queue()
        self.responses = rpc.FedMuscleStub(self.channel).Stream(iter(self.sending.get, None),
                                                                   timeout=90)

    def send(self, *pieces: Chunk) -> None:
        for piece in pieces:
            self.sending.put(piece)

    def next_message(self):
        inbound = Inbound(OPTIONS, wire_limits(CFG), expect=Direction.TO_CLIENT, sender="server")
        for piece in self.responses:
            if (msg := inbound.add(piece)) is not None:
                return msg
        raise AssertionError("stream ended without a message")

    def error(self) -> grpc.RpcError:
        """Read to the end: the status the server ended the stream with."""
        try:
            for _ in self.responses:
                pass
        except grpc.RpcError as exc:
            return exc
        finally:
            self.sending.put(None)
            self.channel.close()
        raise AssertionError("the server ended the stream without an error")


def _pieces(payload: bytes, sid: str = "a-0", size: int = 64 << 10) -> list[Chunk]:
    return chunk(payload, stream_id=sid, max_chunk_bytes=size)


def _rep(**over) -> bytes:
    fields = {"client": "a", "round": 1, "epoch": 0, "batch": 0, "z": torch.zeros(1, B, D)}
    return encode(Representations(**{**fields, **over}))


WIRE_FAULTS = {
    # chunk 0 of 2, then another stream starts
    "truncated": (lambda: [_pieces(_rep(), size=1024)[0], *_pieces(_rep(), sid="a-1")],
                  "truncated: 1 of"),
    "out-of-order": (lambda: [_pieces(_rep(), size=1024)[1]], "out-of-order chunk 1"),
    "oversize": (lambda: _pieces(b"\0" * (300 << 10)), "oversize"),
    "not-an-envelope": (lambda: _pieces(b"\x08\x96\x01 certainly not an envelope"), "wire"),
    # a client posing as the server: refused from the envelope's tags, naming the sender
    "wrong-direction": (lambda: _pieces(encode(RoundPlan("a", 1, "per_batch", torch.zeros(1, 1, B,
                                                                                   dtype=torch.int64)))),
                        "peer 'a', stage 'decode': RoundPlan travels server → client"),
    # a list longer than this federation can have, refused before it is parsed
    "over-cap": (lambda: _pieces(encode(RoundReport("a", 1, {f"m{i}": 0.0 for i in range(65)}))),
                 "metrics: more than 64 entries"),
}


@pytest.mark.parametrize("fault", sorted(WIRE_FAULTS))
def test_malformed_chunks_get_a_clear_error_and_the_server_keeps_serving(tmp_path, certs, fault):
    make, reason = WIRE_FAULTS[fault]
    fed = _Federation(tmp_path, certs)
    fed.client("b")
    raw = _RawStream(fed.target, certs)
    raw.send(*make())
    err = raw.error()
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err
    assert reason in err.details(), err.details()
    fed.client("c")
    fed.client("a")  # before round 1 a client may connect again, properly this time
    rows = fed.join()
    assert sorted(r["client"] for r in rows if r["round"] == "final") == ["a", "b", "c"]


MID_ROUND_FAULTS = {
    "wrong-dtype": (lambda: _rep(z=torch.zeros(1, B, D, dtype=torch.float64)), "float64"),
    "wrong-shape": (lambda: _rep(z=torch.zeros(1, B + 1, D)), f"B={B}"),
    "another-client": (lambda: _rep(client="b"), "names client 'b', not the sender"),
}


@pytest.mark.parametrize("fault", sorted(MID_ROUND_FAULTS))
def test_a_malformed_release_mid_round_drops_only_its_sender(tmp_path, certs, fault):
    make, reason = MID_ROUND_FAULTS[fault]
    fed = _Federation(tmp_path, certs)
    raw = _RawStream(fed.target, certs)
    fed.client("b")
    fed.client("c")
    plan = raw.next_message()
    assert isinstance(plan, RoundPlan) and plan.round == 1
    raw.send(*outbound_bytes(make()))
    err = raw.error()
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err
    assert reason in err.details(), err.details()
    rows = fed.join()
    assert sorted((str(r["round"]), r["client"]) for r in rows) == [
        ("1", "b"), ("1", "c"), ("final", "a"), ("final", "b"), ("final", "c")]
    left = [json.loads(x) for x in (tmp_path / "server" / "events.jsonl").read_text().splitlines()
            if '"client_left"' in x]
    assert [(e["client"], e["round"]) for e in left] == [("a", 1)]
    assert "protocol error" in left[0]["reason"] and reason in left[0]["reason"]
    (a_final,) = [r for r in rows if (r["round"], r["client"]) == ("final", "a")]
    assert (a_final["left_round"], a_final["left_reason"]) == (1, left[0]["reason"])


def outbound_bytes(payload: bytes) -> list[Chunk]:
    return _pieces(payload, sid="a-7")


def test_outbound_and_raw_chunks_agree():
    """The raw stream's chunks are what the transport itself sends (same chunker)."""
    import itertools

    msg = Representations("a", 1, 0, 0, torch.zeros(1, B, D))
    got = list(outbound(msg, "a", itertools.count(7), OPTIONS))
    assert [p.SerializeToString() for p in got] == [p.SerializeToString()
                                                   for p in outbound_bytes(encode(msg))]
