"""A small in-memory driver for secure-aggregation instances (tests only).

:func:`run_instance` plays one instance end to end: the server's messages go to the clients
in FIFO order, each reply goes back to the server, and when nothing is in flight and the
server still waits, the deadline passes (:meth:`SecAggServer.close_stage`). A dropout plan
``{client: stage_name}`` makes ``client`` stop answering at that stage: it still computes
that stage's message (kept in :attr:`Instance.withheld`, so a test can deliver it late) but
never sends it, and it receives nothing afterwards because the server no longer addresses
it. ``run(inst, stop_at=stage)`` pauses when the server enters ``stage`` (undelivered
messages wait in :attr:`Instance.pending`; a test may tamper with them, deliver a late
message, or call ``server.drop``) and a later ``run(inst)`` resumes. Oracles for sums are
Python integers reduced mod 2**64 (:func:`expected_sum`).

Malicious clients: :attr:`Instance.tamper` maps a client to a function that rewrites each
message it sends. With :attr:`Instance.transport_drops` set, the driver behaves like the
gRPC transport: a :class:`ProtocolError` the server raises on a client's message is kept
in :attr:`Instance.rejected` and that client is dropped (``server.drop``), and the
instance goes on.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, MutableSet
from dataclasses import dataclass, field

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmuscle_secure.crypto.secagg.client import SecAggClient
from fedmuscle_secure.crypto.secagg.messages import STAGE_OF, SecAggStage
from fedmuscle_secure.crypto.secagg.server import SecAggAborted, SecAggServer
from fedmuscle_secure.errors import ProtocolError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MOD = 2**64
LENGTH = 257
STAGES = ("advertise_keys", "share_keys", "masked_input", "consistency", "unmask")
_FINAL = (SecAggStage.DONE, SecAggStage.ABORTED)


def names(n: int) -> list[str]:
    return [f"c{i}" for i in range(n)]


def to_signed(v: int) -> int:
    """``v`` reduced mod 2**64 as a two's-complement int64 value (a Python int)."""
    v %= MOD
    return v - MOD if v > INT64_MAX else v


def expected_sum(vectors: Mapping[str, torch.Tensor], members: Iterable[str]) -> list[int]:
    """Element-wise Σ of the members' vectors in Z_(2^64), as signed Python ints."""
    rows = [vectors[m].tolist() for m in members]
    return [to_signed(sum(col)) for col in zip(*rows, strict=True)]


def edge_vectors(clients: Iterable[str], length: int = LENGTH, *, seed: int = 0,
                 ) -> dict[str, torch.Tensor]:
    """int64 inputs within 2**20 of ±2**63 (and the extremes themselves), so sums wrap."""
    rng = random.Random(seed)
    out = {}
    for c in clients:
        vals = [rng.choice((INT64_MAX - rng.randrange(2**20), INT64_MIN + rng.randrange(2**20)))
                for _ in range(length)]
        vals[0], vals[1] = INT64_MAX, INT64_MIN
        out[c] = torch.tensor(vals, dtype=torch.int64)
    return out


def identities(clients: Iterable[str]) -> dict[str, Ed25519PrivateKey]:
    return {c: Ed25519PrivateKey.generate() for c in clients}


def public(ids: Mapping[str, Ed25519PrivateKey]) -> dict:
    return {c: k.public_key() for c, k in ids.items()}


@dataclass
class Instance:
    server: SecAggServer
    clients: dict[str, SecAggClient]
    vectors: dict[str, torch.Tensor]
    ids: dict[str, Ed25519PrivateKey]
    dropout: dict[str, str] = field(default_factory=dict)  # client → stage it goes silent at
    withheld: dict[str, object] = field(default_factory=dict)  # client → message never sent
    pending: deque = field(default_factory=deque)  # server → client messages not delivered yet
    started: bool = False
    closes: int = 0  # deadlines the driver let pass (close_stage calls)
    error: ProtocolError | None = None
    tamper: dict[str, Callable] = field(default_factory=dict)  # client → rewrites what it sends
    transport_drops: bool = False  # a server-side ProtocolError drops the sender, as over gRPC
    rejected: list[ProtocolError] = field(default_factory=list)


def start(clients: list[str], threshold: int, vectors: Mapping[str, torch.Tensor], *,
          ids: Mapping[str, Ed25519PrivateKey] | None = None, length: int = LENGTH,
          server_identities: bool = True, device: str = "cpu",
          seen_instances: Mapping[str, MutableSet[bytes]] | None = None) -> Instance:
    """Server and clients of a fresh instance, nothing sent yet."""
    ids = dict(ids) if ids is not None else identities(clients)
    pubs = public(ids)
    server = SecAggServer(clients, threshold, length, device=device,
                          identities=pubs if server_identities else None)
    built = {}
    for setup in server.start():
        c = setup.recipient
        seen = seen_instances[c] if seen_instances is not None else None
        built[c] = SecAggClient(c, ids[c], pubs, setup, vectors[c], seen_instances=seen)
    return Instance(server, built, dict(vectors), ids)


def _send(inst: Instance, reply) -> None:
    if reply.sender in inst.tamper:
        reply = inst.tamper[reply.sender](reply)
    if inst.dropout.get(reply.sender) == STAGE_OF[type(reply)].value:
        inst.withheld[reply.sender] = reply
        return
    try:
        inst.pending.extend(inst.server.receive(reply))
    except ProtocolError as exc:
        if not inst.transport_drops or isinstance(exc, SecAggAborted):
            raise
        inst.rejected.append(exc)
        inst.pending.extend(inst.server.drop(reply.sender))  # the stream is cut: a Leave


def run(inst: Instance, dropout: Mapping[str, str] | None = None, *,
        stop_at: str | None = None) -> Instance:
    """Play ``inst`` to the end, or until the server enters stage ``stop_at`` (the undelivered
    messages stay in ``pending`` and a later call resumes), or to the first
    :class:`ProtocolError` (kept in ``error``)."""
    inst.dropout.update(dropout or {})
    unknown = {s for s in inst.dropout.values() if s not in STAGES}
    assert not unknown, f"unknown stages in dropout plan: {unknown}"
    server = inst.server
    try:
        if not inst.started:
            inst.started = True
            for client in inst.clients.values():
                _send(inst, client.advertise())
        while server.stage not in _FINAL and server.stage.value != stop_at:
            if inst.pending:
                msg = inst.pending.popleft()
                _send(inst, inst.clients[msg.recipient].handle(msg))
            else:
                inst.closes += 1
                inst.pending.extend(server.close_stage())  # deadline: the silent ones dropped
    except ProtocolError as exc:
        inst.error = exc
    return inst


def run_instance(n: int, threshold: int, *, vectors: Mapping[str, torch.Tensor] | None = None,
                 dropout: Mapping[str, str] | None = None, length: int = LENGTH,
                 ids: Mapping[str, Ed25519PrivateKey] | None = None,
                 seen_instances: Mapping[str, MutableSet[bytes]] | None = None,
                 stop_at: str | None = None) -> Instance:
    """One full instance over ``names(n)``; returns server, clients, withheld messages and
    any :class:`ProtocolError` (e.g. :class:`SecAggAborted`)."""
    clients = names(n)
    vectors = dict(vectors) if vectors is not None else edge_vectors(clients, length)
    inst = start(clients, threshold, vectors, ids=ids, length=length, seen_instances=seen_instances)
    return run(inst, dropout, stop_at=stop_at)
