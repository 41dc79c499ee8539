"""In-process simulator: drives the state machines of a federation built by
:mod:`fedmuscle_secure.federation`.

It only moves messages between the server and client objects (the role a network transport
plays in deployment) and measures what a transport would: bytes of payload each way and
each client's compute time.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from fedmuscle_secure.client.state import FedMuscleClient
from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.console.rounds import PhaseTracker
from fedmuscle_secure.data import FederatedSplit
from fedmuscle_secure.federation.clients import build_client
from fedmuscle_secure.federation.server import build_server, open_receipts
from fedmuscle_secure.federation.setup import federation_setup
from fedmuscle_secure.messages import (
    Message,
    RoundReport,
    payload_bytes,
)
from fedmuscle_secure.records.ledger import ReceiptLog
from fedmuscle_secure.server.receipts import carries_release, record_receipt
from fedmuscle_secure.server.state import FedMuscleServer


@dataclass
class Federation:
    server: FedMuscleServer
    clients: dict[str, FedMuscleClient]
    method: str
    receipts: ReceiptLog | None = None   # the server's receipt log when ledgers are written

    def close(self) -> None:
        """Release the ledgers' and the receipt log's file locks."""
        for client in self.clients.values():
            if client.privacy is not None and client.privacy.ledger is not None:
                client.privacy.ledger.close()
        if self.receipts is not None:
            self.receipts.close()


def build_federation(cfg: ExperimentConfig, split: FederatedSplit, method: str,
                     record_dir: Path | None = None) -> Federation:
    """Clients (models initialised from the experiment seed) and the server for ``method``.

    Every method of one experiment starts from identical models, data and seeds, so the
    local-training reference differs from FedMuscle only by the contrastive phase.
    With ``record_dir``, every client keeps its signed ledger in ``record_dir/ledger/``
    (identity keys in ``record_dir/keys/``, made here: simulation only, a deployment signs
    with the provisioned identities) and the server its receipt log
    (``record_dir/receipts.jsonl``), DESIGN §5.3–5.4. The gRPC deployment (DESIGN §6)
    builds the same objects one side at a time with the same builders.
    """
    setup = federation_setup(cfg, split, method, record_dir)
    clients = {c.name: build_client(cfg, split, method, c.name, setup, record_dir)
               for c in cfg.clients}
    server = build_server(cfg, method, setup)
    return Federation(server, clients, method, open_receipts(record_dir))


def run_round(fed: Federation, r: int, on_phase=None) -> dict[str, dict[str, float]]:
    """Drive one round to completion; per-client metrics plus bytes and wall time.

    The server receives each client's :class:`RoundReport` (only what the client's report
    policy lets leave); the metrics returned are each client's own, full ones, kept by its
    report gate: the simulator plays every organisation, as each deployed organisation keeps
    its own (DESIGN §4.4).
    """
    stats = {c: {"bytes_sent": 0.0, "bytes_received": 0.0, "wall_time_s": 0.0} for c in fed.clients}
    queue: deque[Message] = deque(fed.server.start_round(r))
    reports: dict[str, RoundReport] = {}
    phases = PhaseTracker(members=len(fed.server.active))
    while queue:
        msg = queue.popleft()
        client = fed.clients[msg.client]
        stats[msg.client]["bytes_received"] += payload_bytes(msg)
        if on_phase is not None:
            on_phase(phases.describe(msg))
        t0 = time.perf_counter()
        replies = client.handle(msg)
        stats[msg.client]["wall_time_s"] += time.perf_counter() - t0
        for rep in replies:
            stats[rep.client]["bytes_sent"] += payload_bytes(rep)
            if fed.receipts is not None and carries_release(rep):
                record_receipt(fed.receipts, rep)
            if isinstance(rep, RoundReport):
                reports[rep.client] = rep
            queue.extend(fed.server.handle(rep))
    if not fed.server.round_complete or len(reports) != len(fed.server.active):
        raise RuntimeError(f"round {r} ended without every client's report")
    return {c: {**fed.clients[c].report_gate.kept[r], **stats[c]} for c in fed.server.active}
