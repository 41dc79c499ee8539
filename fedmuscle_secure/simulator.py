"""In-process simulator: builds the federation from a config and drives the state machines.

It only moves messages between the server and client objects (the role a network transport
plays in deployment) and measures what a transport would: bytes of payload each way and
each client's compute time.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from fedmuscle_secure.client.state import ClientSettings, FedMuscleClient, LabelledData
from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.data import FederatedSplit, get_task
from fedmuscle_secure.losses.temperatures import gamma_from_temperatures, pair_matrix
from fedmuscle_secure.messages import Message, RoundPlan, RoundReport, payload_bytes
from fedmuscle_secure.models import build_client_model
from fedmuscle_secure.seeding import derive_seed
from fedmuscle_secure.server.computation import resolve_device
from fedmuscle_secure.server.state import FedMuscleServer, ServerSettings


@dataclass
class Federation:
    server: FedMuscleServer
    clients: dict[str, FedMuscleClient]
    method: str


def _labelled(task, x: np.ndarray, y: np.ndarray) -> LabelledData:
    return LabelledData(torch.from_numpy(np.ascontiguousarray(x)), task.targets(y))


def build_federation(cfg: ExperimentConfig, split: FederatedSplit, method: str) -> Federation:
    """Clients (models initialised from the experiment seed) and the server for ``method``.

    Every method of one experiment starts from identical models, data and seeds, so the
    local-training reference differs from FedMuscle only by the contrastive phase.
    """
    n = len(cfg.clients)
    tau = pair_matrix(cfg.muscle.temperature, n, "muscle.temperature").to(torch.float32)
    tau_p = pair_matrix(cfg.muscle.temperature_prime, n, "muscle.temperature_prime").to(torch.float32)
    gamma = gamma_from_temperatures(tau, tau_p)
    tr = cfg.training
    public_x = torch.from_numpy(np.ascontiguousarray(split.public_x))
    in_chans = int(split.public_x.shape[1])
    clients: dict[str, FedMuscleClient] = {}
    for i, c in enumerate(cfg.clients):
        task = get_task(c.task, split.num_classes)
        torch.manual_seed(derive_seed(cfg.seed, c.name, "init"))
        model = build_client_model(
            model=c.model, model_kwargs=c.model_kwargs, in_chans=in_chans, image_size=c.image_size,
            dim=cfg.muscle.dim, num_outputs=task.num_outputs, projection=c.projection.kind,
            hidden=c.projection.hidden, field=f"clients.{i}.model")
        shard = split.shards[i]
        settings = ClientSettings(
            method=method, local_epochs=tr.local_epochs, local_batch_size=tr.local_batch_size,
            lr=c.lr or tr.lr, cl_lr=c.cl_lr or tr.cl_lr, weight_decay=tr.weight_decay,
            augment=tr.augment, tau=float(tau[0, 1]), gamma=float(gamma[0, 1]), seed=cfg.seed)
        clients[c.name] = FedMuscleClient(
            c.name, model, task, train=_labelled(task, shard.x_train, shard.y_train),
            val=_labelled(task, shard.x_val, shard.y_val),
            test=_labelled(task, split.test_x, split.test_y), public_x=public_x, settings=settings)
    server = FedMuscleServer(list(clients), ServerSettings(
        method=method, exchange=cfg.muscle.exchange, num_selected=cfg.muscle.num_selected,
        batch_size=cfg.muscle.batch_size, public_size=int(public_x.shape[0]),
        cl_epochs=cfg.training.cl_epochs, inv_tau=1.0 / tau, gamma=gamma, seed=cfg.seed,
        device=resolve_device(cfg.server.device)))
    return Federation(server, clients, method)


def _phase(msg: Message) -> str:
    if isinstance(msg, RoundPlan):
        return f"local update ({msg.client})"
    where = "whole epoch" if msg.batch is None else f"batch {msg.batch + 1}"
    return f"contrastive epoch {msg.epoch + 1}, {where}"


def run_round(fed: Federation, r: int, on_phase=None) -> dict[str, dict[str, float]]:
    """Drive one round to completion; per-client metrics plus bytes and wall time."""
    stats = {c: {"bytes_sent": 0.0, "bytes_received": 0.0, "wall_time_s": 0.0} for c in fed.clients}
    queue: deque[Message] = deque(fed.server.start_round(r))
    reports: dict[str, RoundReport] = {}
    while queue:
        msg = queue.popleft()
        client = fed.clients[msg.client]
        stats[msg.client]["bytes_received"] += payload_bytes(msg)
        if on_phase is not None:
            on_phase(_phase(msg))
        t0 = time.perf_counter()
        replies = client.handle(msg)
        stats[msg.client]["wall_time_s"] += time.perf_counter() - t0
        for rep in replies:
            stats[rep.client]["bytes_sent"] += payload_bytes(rep)
            if isinstance(rep, RoundReport):
                reports[rep.client] = rep
            queue.extend(fed.server.handle(rep))
    if not fed.server.round_complete or len(reports) != len(fed.server.active):
        raise RuntimeError(f"round {r} ended without every client's report")
    return {c: {**reports[c].metrics, **stats[c]} for c in fed.server.active}
