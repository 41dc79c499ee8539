"""Wires the privacy configuration (DESIGN §5) into each simulated client.

Calibration happens here, once, before any data is touched: a target ε becomes a noise
multiplier for the whole run (representation noise: every released batch of every round;
DP-SGD: every step of every LocalUpdate, the closing one included), exactly as Opacus's
``make_private_with_epsilon`` does for one training run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from fedmuscle_secure.config import ExperimentConfig


@dataclass(frozen=True)
class Calibration:
    representation_sigma: float | None
    dpsgd_sigma: dict[str, float]          # per client (their shard sizes differ)
    dpsgd_sample_rate: dict[str, float]
    releases_per_run: int                  # Gaussian events per client over the run


def dp_enabled(cfg: ExperimentConfig) -> bool:
    p = cfg.privacy
    return p.representation_noise.enabled or p.dp_sgd.enabled


def poisson_batches(train_rows: int, expected_batch_size: int) -> int:
    """Batches per epoch as Opacus's DPDataLoader draws them: len(DataLoader) of the
    original loader, with sample rate q = 1 / that number."""
    return max(1, math.ceil(train_rows / expected_batch_size))


def calibrate(cfg: ExperimentConfig, train_sizes: dict[str, int]) -> Calibration:
    from fedmuscle_secure.dp.accounting import calibrate_noise_multiplier

    p, tr = cfg.privacy, cfg.training
    nb = cfg.data.public_size // cfg.muscle.batch_size
    releases = tr.rounds * tr.cl_epochs * nb
    rep = p.representation_noise
    rep_sigma = None
    if rep.enabled:
        rep_sigma = rep.noise_multiplier or calibrate_noise_multiplier(
            target_epsilon=rep.target_epsilon, delta=p.delta, sample_rate=1.0, steps=releases)
    sigmas: dict[str, float] = {}
    rates: dict[str, float] = {}
    if p.dp_sgd.enabled:
        updates = tr.rounds + (1 if tr.final_local_update else 0)
        for name, n in train_sizes.items():
            batches = poisson_batches(n, p.dp_sgd.expected_batch_size)
            q = 1.0 / batches
            rates[name] = q
            steps = updates * tr.local_epochs * batches
            sigmas[name] = p.dp_sgd.noise_multiplier or calibrate_noise_multiplier(
                target_epsilon=p.dp_sgd.target_epsilon, delta=p.delta, sample_rate=q, steps=steps)
    return Calibration(rep_sigma, sigmas, rates, releases)


def identity_key(keys_dir: Path, client: str):
    """The simulated organisation's Ed25519 identity: made once, reused on resume.

    Simulation only: the simulator plays every organisation, so it makes their keys and
    keeps them in its run directory, and an audit of that directory can only call them
    self-declared. A deployed client signs with its provisioned identity instead."""
    from fedmuscle_secure.crypto.identity import generate_identity, load_private
    from fedmuscle_secure.records.identity_files import save_identity

    path = keys_dir / f"{client}.key"
    if path.is_file():
        return load_private(path)
    key = generate_identity()
    save_identity(key, keys_dir, client)
    return key
