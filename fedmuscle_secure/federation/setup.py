"""What every side of one federation shares, decided once from the config (DESIGN §6).

:class:`Protection` is the decision "which protection does this method run under, is DP
on, with which σ's", taken in one place and read by every builder; :class:`FederationSetup`
adds the temperature matrices, the public set, the secagg identities and parameters and
the CKKS provisioning. The simulator builds one for all organisations; a deployed server or
client builds the same one for its own side from what it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.crypto.identity import generate_identity
from fedmuscle_secure.data import FederatedSplit
from fedmuscle_secure.federation.ckks import CkksKeys, provision_ckks_keys, validate_ckks
from fedmuscle_secure.federation.privacy import Calibration, calibrate, dp_enabled, identity_key
from fedmuscle_secure.federation.secagg import SecAggParameters, secagg_parameters
from fedmuscle_secure.federation.split import make_split, train_sizes
from fedmuscle_secure.losses.temperatures import gamma_from_temperatures, pair_matrix
from fedmuscle_secure.methods import Mode, protection_mode
from fedmuscle_secure.transport.limits import WireLimits, wire_limits


@dataclass(frozen=True)
class Protection:
    """The protection mode of one method and the DP calibration (None: no DP), decided once
    per process (:func:`decide_protection`): a ckks+DP deployment's CKKS parameters and its
    clients' noise use the same σ."""

    mode: Mode
    calibration: Calibration | None

    @property
    def sigma_client(self) -> float | None:
        """Client-level σ of representation noise (DESIGN §5.1), None when it is off."""
        return self.calibration.sigma_client if self.calibration is not None else None

    def sigma_record(self, client: str) -> float | None:
        """Record-level σ of ``client``'s DP-SGD (DESIGN §5.2), None when it is off."""
        return self.calibration.sigma_record.get(client) if self.calibration is not None else None


def decide_protection(cfg: ExperimentConfig, method: str,
                      split: FederatedSplit | None = None) -> Protection:
    """:class:`Protection` of ``method``; calibrates σ (before any data is touched).
    ``split``: the federation's, when the caller holds it; else made here, and only when
    DP needs the shard sizes."""
    calibration = None
    if dp_enabled(cfg):
        calibration = calibrate(cfg, train_sizes(cfg, split or make_split(cfg)))
    return Protection(protection_mode(cfg.protection, method), calibration)


@dataclass(frozen=True)
class FederationSetup:
    """What the server side and every client side share, derived once from the config:
    the temperature matrices, the public set, the secagg identities and parameters, the
    CKKS provisioning and the DP calibration (DESIGN §6: the deployment builds each side
    from these alone)."""

    cfg: ExperimentConfig
    method: str
    protection: Protection
    tau: torch.Tensor
    gamma: torch.Tensor
    public_x: torch.Tensor
    in_chans: int
    vocab_size: int | None  # the tokenizer's, when the data are texts (token ids)
    num_classes: int        # of the labelled data (a task's output count follows from it)
    identities: dict
    secagg: SecAggParameters | None
    ckks: CkksKeys | None

    @property
    def calibration(self) -> Calibration | None:
        return self.protection.calibration

    @property
    def client_names(self) -> list[str]:
        return [c.name for c in self.cfg.clients]


def federation_setup(cfg: ExperimentConfig, split: FederatedSplit, method: str,
                     record_dir: Path | None = None, identities: dict | None = None,
                     ckks_contexts: CkksKeys | None = None,
                     protection: Protection | None = None) -> FederationSetup:
    """The shared pieces every builder reads. A deployment passes what its side holds:
    ``identities`` (the organisations' Ed25519 identities), ``ckks_contexts`` (from
    :func:`fedmuscle_secure.federation.ckks.server_ckks` / ``client_ckks``) and the
    ``protection`` it calibrated them with, instead of making them in-process."""
    protection = protection or decide_protection(cfg, method, split)
    n = len(cfg.clients)
    tau = pair_matrix(cfg.muscle.temperature, n, "muscle.temperature").to(torch.float32)
    tau_p = pair_matrix(cfg.muscle.temperature_prime, n, "muscle.temperature_prime").to(torch.float32)
    secagg = protection.mode == "secagg"
    if identities is None:
        identities = _identities(cfg, record_dir) if secagg else {}
    ckks = None
    if protection.mode == "ckks":
        ckks = ckks_contexts or provision_ckks_keys(cfg, protection.sigma_client)
    return FederationSetup(
        cfg=cfg, method=method, protection=protection, tau=tau,
        gamma=gamma_from_temperatures(tau, tau_p),
        public_x=torch.from_numpy(np.ascontiguousarray(split.public_x)),
        in_chans=int(split.public_x.shape[1]) if split.public_x.ndim == 4 else 1,
        vocab_size=split.source.get("vocab_size"), num_classes=int(split.num_classes),
        identities=identities,
        secagg=secagg_parameters(cfg, protection.sigma_client) if secagg else None, ckks=ckks)


def _identities(cfg: ExperimentConfig, record_dir: Path | None) -> dict:
    """Every organisation's Ed25519 identity (signs its secagg key advertisements and its
    ledger): from ``record_dir/keys`` when the run keeps records, else made in memory."""
    if record_dir is None:
        return {c.name: generate_identity() for c in cfg.clients}
    return {c.name: identity_key(record_dir / "keys", c.name) for c in cfg.clients}


def public_identity(key):
    """The Ed25519 public key of an identity given as a private or a public key (a
    deployment holds only its own private key and its peers' public keys, DESIGN §6)."""
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def federation_wire_limits(cfg: ExperimentConfig) -> WireLimits:
    """The wire limits both deployment processes decode under. A ``ckks`` config sizes its
    ciphertext bounds from its CKKS parameters whatever the method (``local`` exchanges
    nothing, but its limits are the federation's). The sizes depend on the parameters
    alone, not on σ: no calibration (nor the data it needs) is asked for here."""
    return wire_limits(cfg, validate_ckks(cfg, noise_std=0.0) if cfg.protection == "ckks" else None)
