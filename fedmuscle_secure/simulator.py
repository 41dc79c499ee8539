"""In-process simulator: builds the federation from a config and drives the state machines.

It only moves messages between the server and client objects (the role a network transport
plays in deployment) and measures what a transport would: bytes of payload each way and
each client's compute time.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedmuscle_secure.client.report_policy import policy_for
from fedmuscle_secure.client.state import ClientSettings, FedMuscleClient, LabelledData, PlanSpec
from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.console.rounds import PhaseTracker
from fedmuscle_secure.data import FederatedSplit, get_task
from fedmuscle_secure.federation.privacy import calibrate, dp_enabled, identity_key
from fedmuscle_secure.losses.temperatures import gamma_from_temperatures, pair_matrix
from fedmuscle_secure.messages import (
    Message,
    RoundReport,
    payload_bytes,
)
from fedmuscle_secure.models import build_client_model
from fedmuscle_secure.seeding import derive_seed
from fedmuscle_secure.server.computation import resolve_device
from fedmuscle_secure.server.receipts import carries_release, record_receipt
from fedmuscle_secure.server.state import FedMuscleServer, ServerSettings


@dataclass
class Federation:
    server: FedMuscleServer
    clients: dict[str, FedMuscleClient]
    method: str
    receipts: object | None = None   # the server's ReceiptLog when ledgers are written

    def close(self) -> None:
        """Release the ledgers' and the receipt log's file locks."""
        for client in self.clients.values():
            if client.privacy is not None and client.privacy.ledger is not None:
                client.privacy.ledger.close()
        if self.receipts is not None:
            self.receipts.close()


def _labelled(task, x: np.ndarray, y: np.ndarray) -> LabelledData:
    return LabelledData(torch.from_numpy(np.ascontiguousarray(x)), task.targets(y))


@dataclass(frozen=True)
class FederationSetup:
    """What the server side and every client side share, derived once from the config:
    the temperature matrices, the public set, the secagg identities, the CKKS provisioning
    and the DP calibration (DESIGN §6: the deployment builds each side from these alone)."""

    tau: torch.Tensor
    gamma: torch.Tensor
    public_x: torch.Tensor
    in_chans: int
    secure: bool
    identities: dict
    provisioned: tuple | None
    calibration: object | None


def federation_setup(cfg: ExperimentConfig, split: FederatedSplit, method: str,
                     record_dir: Path | None = None, identities: dict | None = None,
                     ckks_contexts: tuple | None = None) -> FederationSetup:
    """The shared pieces of :func:`build_federation`. A deployment passes what its side
    holds: ``identities`` (the organisations' Ed25519 identities) and ``ckks_contexts``
    (``(params, secret bytes or None, public bytes or None)``, from
    :mod:`fedmuscle_secure.provision.keys`) instead of making them in-process."""
    n = len(cfg.clients)
    tau = pair_matrix(cfg.muscle.temperature, n, "muscle.temperature").to(torch.float32)
    tau_p = pair_matrix(cfg.muscle.temperature_prime, n, "muscle.temperature_prime").to(torch.float32)
    secure = cfg.protection == "secagg" and method == "muscle_sum"
    if identities is None:
        identities = _identities(cfg, record_dir) if secure else {}
    calibration = None
    if dp_enabled(cfg):
        calibration = calibrate(cfg, {c.name: len(split.shards[i].y_train)
                                      for i, c in enumerate(cfg.clients)})
    return FederationSetup(
        tau=tau, gamma=gamma_from_temperatures(tau, tau_p),
        public_x=torch.from_numpy(np.ascontiguousarray(split.public_x)),
        in_chans=int(split.public_x.shape[1]), secure=secure, identities=identities,
        provisioned=(ckks_contexts or provision_ckks_bytes(
            cfg, calibration.representation_sigma if calibration else None))
        if cfg.protection == "ckks" and method != "local" else None,
        calibration=calibration)


def build_client(cfg: ExperimentConfig, split: FederatedSplit, method: str, name: str,
                 setup: FederationSetup, record_dir: Path | None = None,
                 identity=None) -> FedMuscleClient:
    """One organisation's :class:`FedMuscleClient` (model initialised from the experiment
    seed and its name, so it is the same object in the simulator and in a deployment).

    ``identity``: the organisation's provisioned Ed25519 private key, which signs its
    ledger (a deployment passes it; the ledger's genesis then says ``scope:
    organisation``). None: the simulator's own key for it in ``record_dir/keys``."""
    i = next((k for k, c in enumerate(cfg.clients) if c.name == name), None)
    if i is None:
        from fedmuscle_secure.errors import ConfigError

        raise ConfigError("clients", f"no client named {name!r}; expected one of "
                                     f"{[c.name for c in cfg.clients]}")
    c, tr = cfg.clients[i], cfg.training
    tau, gamma, calibration = setup.tau, setup.gamma, setup.calibration
    task = get_task(c.task, split.num_classes)
    torch.manual_seed(derive_seed(cfg.seed, c.name, "init"))
    model = build_client_model(
        model=c.model, model_kwargs=c.model_kwargs, in_chans=setup.in_chans, image_size=c.image_size,
        dim=cfg.muscle.dim, num_outputs=task.num_outputs, projection=c.projection.kind,
        hidden=c.projection.hidden, field=f"clients.{i}.model")
    if calibration is not None and calibration.dpsgd_sigma:
        from fedmuscle_secure.client.dp_sgd import make_private_model

        model = make_private_model(model, client=c.name)  # BatchNorm → GroupNorm etc.
    shard = split.shards[i]
    train = _labelled(task, shard.x_train, shard.y_train)
    privacy, dpsgd = None, None
    if record_dir is not None or calibration is not None:
        privacy, dpsgd = _client_privacy(cfg, c.name, model, task, train, calibration,
                                         record_dir, method, identity)
    secure_client = None
    if setup.secure:
        secure_client = _secure_client(cfg, c.name, setup.identities, calibration, privacy)
    settings = ClientSettings(
        method=method, local_epochs=tr.local_epochs, local_batch_size=tr.local_batch_size,
        lr=c.lr or tr.lr, cl_lr=c.cl_lr or tr.cl_lr, weight_decay=tr.weight_decay,
        augment=tr.augment, tau=float(tau[0, 1]), gamma=float(gamma[0, 1]), seed=cfg.seed,
        report=policy_for(cfg, method),
        plan=PlanSpec(exchange=cfg.muscle.exchange, public_size=int(setup.public_x.shape[0]),
                      batch_size=cfg.muscle.batch_size, cl_epochs=tr.cl_epochs))
    return FedMuscleClient(
        c.name, model, task, train=train, val=_labelled(task, shard.x_val, shard.y_val),
        test=_labelled(task, split.test_x, split.test_y), public_x=setup.public_x, settings=settings,
        privacy=privacy, dpsgd=dpsgd, secure=secure_client,
        ckks=_ckks_client(cfg, c.name, method, setup.provisioned, tau, gamma)
        if setup.provisioned else None)


def final_model_spec(cfg: ExperimentConfig, name: str, setup: FederationSetup,
                     client: FedMuscleClient) -> dict:
    """What :func:`~fedmuscle_secure.models.save_final` records beside an organisation's
    final weights: the arguments :func:`build_client` gave ``build_client_model``, whether
    DP-SGD changed its layers, and the task and metric the model serves."""
    c = next(spec for spec in cfg.clients if spec.name == name)
    return {"client": name, "round": client.round, "task": c.task, "metric": client.task.metric,
            "dp_sgd": client.dpsgd is not None,
            "architecture": {"model": c.model, "model_kwargs": dict(c.model_kwargs),
                             "in_chans": setup.in_chans, "image_size": c.image_size,
                             "dim": cfg.muscle.dim, "num_outputs": client.task.num_outputs,
                             "projection": c.projection.kind, "hidden": c.projection.hidden}}


def build_server(cfg: ExperimentConfig, method: str, setup: FederationSetup) -> FedMuscleServer:
    """The :class:`FedMuscleServer` of ``method`` over every configured client."""
    tau, gamma = setup.tau, setup.gamma
    secure_server = None
    if setup.secure:
        from fedmuscle_secure.federation.secagg import secagg_parameters
        from fedmuscle_secure.server.protection import SecAggServerProtection

        cal = setup.calibration
        params = secagg_parameters(cfg, cal.representation_sigma if cal is not None else None)
        secure_server = SecAggServerProtection(
            threshold=params.threshold,
            identities={k: _public(v) for k, v in setup.identities.items()},
            encoding_for=params.encoding, tau=float(tau[0, 1]), gamma=float(gamma[0, 1]),
            device=resolve_device(cfg.server.device))
    return FedMuscleServer([c.name for c in cfg.clients], ServerSettings(
        method=method, exchange=cfg.muscle.exchange, num_selected=cfg.muscle.num_selected,
        batch_size=cfg.muscle.batch_size, public_size=int(setup.public_x.shape[0]),
        cl_epochs=cfg.training.cl_epochs, inv_tau=1.0 / tau, gamma=gamma, seed=cfg.seed,
        device=resolve_device(cfg.server.device), secure=secure_server,
        output_spaces=tuple(c.task for c in cfg.clients),
        ckks=_ckks_server(cfg, setup.provisioned, float(tau[0, 1])) if setup.provisioned else None))


def build_federation(cfg: ExperimentConfig, split: FederatedSplit, method: str,
                     record_dir: Path | None = None) -> Federation:
    """Clients (models initialised from the experiment seed) and the server for ``method``.

    Every method of one experiment starts from identical models, data and seeds, so the
    local-training reference differs from FedMuscle only by the contrastive phase.
    With ``record_dir``, every client keeps its signed ledger in ``record_dir/ledger/``
    (identity keys in ``record_dir/keys/``, made here: simulation only, a deployment signs
    with the provisioned identities) and the server its receipt log
    (``record_dir/receipts.jsonl``), DESIGN §5.3–5.4. The gRPC deployment (DESIGN §6)
    builds the same objects one side at a time with :func:`build_server` and
    :func:`build_client`.
    """
    setup = federation_setup(cfg, split, method, record_dir)
    clients = {c.name: build_client(cfg, split, method, c.name, setup, record_dir)
               for c in cfg.clients}
    server = build_server(cfg, method, setup)
    return Federation(server, clients, method, open_receipts(record_dir))


def open_receipts(record_dir: Path | None):
    """The server's receipt log in ``record_dir`` (DESIGN §5.4), or None without one."""
    if record_dir is None:
        return None
    from fedmuscle_secure.records.ledger import ReceiptLog

    return ReceiptLog.open(record_dir / "receipts.jsonl")


def ckks_parameters(cfg: ExperimentConfig, representation_sigma: float | None):
    """The federation's CKKS parameters (DESIGN §4.3), re-validated for the noisy values
    when representation noise is on."""
    from fedmuscle_secure.config import validate_ckks
    from fedmuscle_secure.dp.noise import representation_sensitivity

    std = 0.0
    if representation_sigma is not None:
        std = representation_sigma * representation_sensitivity(cfg.muscle.batch_size)
    return validate_ckks(cfg, noise_std=std)


def provision_ckks_bytes(cfg: ExperimentConfig, representation_sigma: float | None) -> tuple:
    """The provisioning step (DESIGN §4.3): one CKKS context for the federation, as
    ``(params, secret bytes, public bytes)``. Clients get the bytes with the secret key, the
    server a public copy without it; both travel as bytes, as they do between organisations
    (:mod:`fedmuscle_secure.provision.keys` writes them to files for a deployment)."""
    from fedmuscle_secure.crypto.ckks import SecretContext

    params = ckks_parameters(cfg, representation_sigma)
    secret = SecretContext.create(params)
    return params, secret.serialize(), secret.to_public().serialize()


def _ckks_client(cfg: ExperimentConfig, name: str, method: str, provisioned: tuple, tau, gamma):
    from fedmuscle_secure.client.protection.ckks import CkksClientProtection
    from fedmuscle_secure.crypto.ckks import SecretContext

    params, secret_bytes, _ = provisioned
    return CkksClientProtection(name, SecretContext.from_bytes(secret_bytes, params), method=method,
                      clients=[c.name for c in cfg.clients], tau=tau, gamma=gamma)


def _ckks_server(cfg: ExperimentConfig, provisioned: tuple, tau: float):
    from fedmuscle_secure.crypto.ckks import PublicContext
    from fedmuscle_secure.server.protection import CkksServerProtection

    params, _, public_bytes = provisioned
    return CkksServerProtection(PublicContext.from_bytes(public_bytes, params), tau, cfg.ckks.galois_keys)


def _identities(cfg: ExperimentConfig, record_dir: Path | None) -> dict:
    """Every organisation's Ed25519 identity (signs its secagg key advertisements and its
    ledger): from ``record_dir/keys`` when the run keeps records, else made in memory."""
    from fedmuscle_secure.crypto.identity import generate_identity

    if record_dir is None:
        return {c.name: generate_identity() for c in cfg.clients}
    return {c.name: identity_key(record_dir / "keys", c.name) for c in cfg.clients}


def _public(key):
    """The Ed25519 public key of an identity given as a private or a public key (a
    deployment holds only its own private key and its peers' public keys, DESIGN §6)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def _secure_client(cfg: ExperimentConfig, name: str, identities: dict, calibration, privacy):
    from fedmuscle_secure.client.protection.secagg import SecAggClientProtection
    from fedmuscle_secure.config import ConfigError
    from fedmuscle_secure.errors import EncodingError
    from fedmuscle_secure.federation.secagg import secagg_parameters

    sigma = calibration.representation_sigma if calibration is not None else None
    params = secagg_parameters(cfg, sigma)
    try:
        params.encoding(cfg.data.public_size // cfg.muscle.batch_size, len(cfg.clients))
    except EncodingError as exc:
        raise ConfigError("secagg", f"no safe fixed-point encoding: {exc}") from None
    peers = {k: _public(v) for k, v in identities.items() if k != name}
    return SecAggClientProtection(name, identities[name], peers, params, privacy)


def _client_privacy(cfg: ExperimentConfig, name: str, model, task, train: LabelledData,
                    calibration, record_dir: Path | None, method: str, identity=None):
    """The client's accountants and ledger, and its DP-SGD trainer when configured.

    The genesis declares who signs (``public_key``), the federation (``clients``) and where
    the ledgers live (``scope``: ``federation`` when this process plays every organisation
    and keeps all their ledgers in one run directory, ``organisation`` for a deployed
    client's own), so ``audit`` can tell a missing ledger from one kept elsewhere."""
    from fedmuscle_secure.client.privacy import ClientPrivacy, PrivacySettings

    p = cfg.privacy
    spec = next(c for c in cfg.clients if c.name == name)
    budget = spec.budget or p.budget
    dpsgd_sigma = calibration.dpsgd_sigma.get(name) if calibration is not None else None
    rep_sigma = calibration.representation_sigma if calibration is not None else None
    settings = PrivacySettings(
        delta=p.delta, representation_sigma=rep_sigma if method != "local" else None,
        dpsgd_sigma=dpsgd_sigma, max_grad_norm=p.dp_sgd.max_grad_norm,
        record_budget=budget.record_epsilon, client_budget=budget.client_epsilon)
    ledger = None
    if record_dir is not None:
        from fedmuscle_secure.crypto.identity import public_pem
        from fedmuscle_secure.records.ledger import Ledger

        key = identity if identity is not None else identity_key(record_dir / "keys", name)
        (record_dir / "ledger").mkdir(parents=True, exist_ok=True)
        ledger = Ledger.open(record_dir / "ledger" / f"{name}.jsonl", client=name, signing_key=key)
        if not ledger.entries:
            ledger.append("genesis", {
                "client": name, "public_key": public_pem(key), "delta": p.delta, "method": method,
                "protection": cfg.protection, "clients": [c.name for c in cfg.clients],
                "scope": "federation" if identity is None else "organisation",
                "budget": {"record": budget.record_epsilon, "client": budget.client_epsilon},
                "noise_multiplier": {"record": dpsgd_sigma, "client": settings.representation_sigma},
                "max_grad_norm": p.dp_sgd.max_grad_norm if dpsgd_sigma else None})
    dpsgd = None
    if dpsgd_sigma is not None:
        from fedmuscle_secure.client.dp_sgd import (
            DPSGDConfig,
            DPSGDTrainer,
            recommended_grad_sample_mode,
        )
        from fedmuscle_secure.dp.noise import csprng_normal

        config = DPSGDConfig(noise_multiplier=dpsgd_sigma, max_grad_norm=p.dp_sgd.max_grad_norm,
                             expected_batch_size=p.dp_sgd.expected_batch_size,
                             grad_sample_mode=recommended_grad_sample_mode(model))
        dpsgd = DPSGDTrainer(model, task, train.x, train.targets, lr=spec.lr or cfg.training.lr,
                             weight_decay=cfg.training.weight_decay, config=config,
                             noise_fn=lambda shape, std: csprng_normal(shape, std=std))
    return ClientPrivacy(name, settings, ledger), dpsgd


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
