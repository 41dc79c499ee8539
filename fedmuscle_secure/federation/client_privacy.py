"""One organisation's privacy objects (DESIGN §5.3): its accountants, its signed ledger
and, when configured, its DP-SGD trainer, built from the federation's one calibration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedmuscle_secure.client.dp_sgd import DPSGDConfig, DPSGDTrainer, recommended_grad_sample_mode
from fedmuscle_secure.client.privacy import ClientPrivacy, PrivacySettings
from fedmuscle_secure.client.settings import LabelledData
from fedmuscle_secure.config import ClientConfig
from fedmuscle_secure.config_weights import update_parts
from fedmuscle_secure.crypto.identity import public_pem
from fedmuscle_secure.data import Task
from fedmuscle_secure.dp.noise import csprng_normal
from fedmuscle_secure.federation.privacy import identity_key
from fedmuscle_secure.federation.setup import FederationSetup
from fedmuscle_secure.records.ledger import Ledger


@dataclass(frozen=True)
class Records:
    """Where an organisation keeps its ledger: ``record_dir`` (None: no ledger) and the
    provisioned identity that signs it (None: the simulator's own key in ``record_dir/keys``)."""

    record_dir: Path | None
    identity: object | None = None


def client_privacy(setup: FederationSetup, spec: ClientConfig, model, task: Task,
                   train: LabelledData, records: Records
                   ) -> tuple[ClientPrivacy, DPSGDTrainer | None]:
    """The client's accountants and ledger, and its DP-SGD trainer when configured."""
    p = setup.cfg.privacy
    budget = spec.budget or p.budget
    sigma_client = setup.protection.sigma_client
    settings = PrivacySettings(
        delta=p.delta, sigma_client=sigma_client if setup.method != "local" else None,
        sigma_record=setup.protection.sigma_record(spec.name), max_grad_norm=p.dp_sgd.max_grad_norm,
        record_budget=budget.record_epsilon, client_budget=budget.client_epsilon,
        update_clip=setup.cfg.weight_sharing.update_clip if p.update_noise.enabled else None)
    ledger = None
    if records.record_dir is not None:
        ledger = _open_ledger(setup, spec, settings, records)
    dpsgd = None
    if settings.sigma_record is not None:
        dpsgd = _dpsgd_trainer(setup, spec, model, task, train, settings.sigma_record)
    return ClientPrivacy(spec.name, settings, ledger), dpsgd


def _open_ledger(setup: FederationSetup, spec: ClientConfig, settings: PrivacySettings,
                 records: Records) -> Ledger:
    """The organisation's signed ledger, with its genesis on first open.

    The genesis declares who signs (``public_key``), the federation (``clients``) and where
    the ledgers live (``scope``: ``federation`` when this process plays every organisation
    and keeps all their ledgers in one run directory, ``organisation`` for a deployed
    client's own), so ``audit`` can tell a missing ledger from one kept elsewhere."""
    cfg, name, record_dir = setup.cfg, spec.name, records.record_dir
    p = cfg.privacy
    budget = spec.budget or p.budget
    key = records.identity if records.identity is not None else identity_key(record_dir / "keys", name)
    (record_dir / "ledger").mkdir(parents=True, exist_ok=True)
    ledger = Ledger.open(record_dir / "ledger" / f"{name}.jsonl", client=name, signing_key=key)
    if not ledger.entries:
        ledger.append("genesis", {
            "client": name, "public_key": public_pem(key), "delta": p.delta,
            "method": setup.method, "protection": cfg.protection, "clients": setup.client_names,
            "scope": "federation" if records.identity is None else "organisation",
            "budget": {"record": budget.record_epsilon, "client": budget.client_epsilon},
            "noise_multiplier": {"record": settings.sigma_record,
                                 "client": settings.sigma_client},
            "max_grad_norm": p.dp_sgd.max_grad_norm if settings.sigma_record else None,
            **({"update_noise": {"clip": settings.update_clip, "parts": update_parts(cfg)}}
               if settings.update_clip is not None and settings.sigma_client is not None
               else {})})
    return ledger


def _dpsgd_trainer(setup: FederationSetup, spec: ClientConfig, model, task: Task,
                   train: LabelledData, sigma_record: float) -> DPSGDTrainer:
    """LocalUpdate with DP-SGD (DESIGN §5.2): Poisson batches, clipped per-sample
    gradients, noise from the OS's CSPRNG."""
    p, tr = setup.cfg.privacy, setup.cfg.training
    config = DPSGDConfig(noise_multiplier=sigma_record, max_grad_norm=p.dp_sgd.max_grad_norm,
                         expected_batch_size=p.dp_sgd.expected_batch_size,
                         grad_sample_mode=recommended_grad_sample_mode(model))
    return DPSGDTrainer(model, task, train.x, train.targets, lr=spec.lr or tr.lr,
                        weight_decay=tr.weight_decay, config=config,
                        fused=tr.fused_optimizer,
                        noise_fn=lambda shape, std: csprng_normal(shape, std=std))
