"""The federation's DP calibration (DESIGN §5), done once per process from the config.

Calibration happens here, once, before any data is touched: a target ε becomes a noise
multiplier for the whole run (representation noise: every released batch of every round;
update noise: every part's update of every round; DP-SGD: every step of every
LocalUpdate, the closing one included), exactly as Opacus's
``make_private_with_epsilon`` does for one training run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.config_weights import update_parts
from fedmuscle_secure.crypto.identity import generate_identity, load_private
from fedmuscle_secure.dp.accounting import calibrate_noise_multiplier
from fedmuscle_secure.dp.noise import MAX_DRAW_SDS, truncation_delta
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.records.identity_files import save_identity


@dataclass(frozen=True)
class Calibration:
    sigma_client: float | None
    sigma_record: dict[str, float]          # per client (their shard sizes differ)
    dpsgd_sample_rate: dict[str, float]
    releases_per_run: int                  # Gaussian events per client over the run


def dp_enabled(cfg: ExperimentConfig) -> bool:
    p = cfg.privacy
    return p.client_noise is not None or p.dp_sgd.enabled


#: Coordinates one release may hold, for the cut-Gaussian allowance (:func:`check_truncation`):
#: a model of up to 10⁹ weights.
MAX_RELEASE_COORDINATES = 10 ** 9
#: The share of δ the noise generator's cut may take.
TRUNCATION_DELTA_FRACTION = 0.01


def check_truncation(field: str, sigma: float, releases: int, delta: float) -> None:
    """The noise is a Gaussian cut at :data:`~fedmuscle_secure.dp.noise.MAX_DRAW_SDS`
    standard deviations; the δ that adds (:func:`~fedmuscle_secure.dp.noise.truncation_delta`)
    must stay below δ/100 over the run, which sets a floor on σ (about 0.03 for a few
    hundred releases at δ = 10⁻⁵). Below it a release could be one the neighbouring dataset
    cannot produce, outside the recorded (ε, δ): a ConfigError naming ``field``."""
    extra = truncation_delta(sigma, releases, MAX_RELEASE_COORDINATES)
    if extra > TRUNCATION_DELTA_FRACTION * delta:
        raise ConfigError(field, f"noise multiplier {sigma:.4g} over {releases} releases is too "
                          f"small for the noise generator, whose draws stop at "
                          f"{MAX_DRAW_SDS:.2f} standard deviations: that cut adds {extra:.3g} "
                          f"to δ = {delta:g} (at most {TRUNCATION_DELTA_FRACTION:g} of it is "
                          "allowed); use a larger noise multiplier or a smaller target_epsilon")


def poisson_batches(train_rows: int, expected_batch_size: int) -> int:
    """Batches per epoch as Opacus's DPDataLoader draws them: len(DataLoader) of the
    original loader, with sample rate q = 1 / that number."""
    return max(1, math.ceil(train_rows / expected_batch_size))


def calibrate(cfg: ExperimentConfig, train_sizes: dict[str, int]) -> Calibration:
    """σ of every mechanism for the whole run; ``train_sizes``: each client's private rows."""
    p, tr = cfg.privacy, cfg.training
    if p.update_noise.enabled:  # one clipped, noised update per shared part and round
        releases = tr.rounds * update_parts(cfg)
    else:  # one Gaussian mechanism per released batch of representations
        releases = tr.rounds * tr.cl_epochs * (cfg.data.public_size // cfg.muscle.batch_size)
    noise = p.client_noise
    sigma_client = None
    if noise is not None:
        sigma_client = noise.noise_multiplier or calibrate_noise_multiplier(
            target_epsilon=noise.target_epsilon, delta=p.delta, sample_rate=1.0, steps=releases)
        field = "update_noise" if p.update_noise.enabled else "representation_noise"
        check_truncation(f"privacy.{field}", sigma_client, releases, p.delta)
    sigmas, rates = _sigmas_record(cfg, train_sizes) if p.dp_sgd.enabled else ({}, {})
    return Calibration(sigma_client, sigmas, rates, releases)


def _sigmas_record(cfg: ExperimentConfig, train_sizes: dict[str, int]
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """Per client σ_record and Poisson sampling rate: every step of every LocalUpdate, the
    closing one included, draws from the client's own shard (sizes differ, so σ's do)."""
    p, tr = cfg.privacy, cfg.training
    updates = tr.rounds + (1 if tr.final_local_update else 0)
    sigmas: dict[str, float] = {}
    rates: dict[str, float] = {}
    for name, n in train_sizes.items():
        batches = poisson_batches(n, p.dp_sgd.expected_batch_size)
        q = 1.0 / batches
        rates[name] = q
        steps = updates * tr.local_epochs * batches
        sigmas[name] = p.dp_sgd.noise_multiplier or calibrate_noise_multiplier(
            target_epsilon=p.dp_sgd.target_epsilon, delta=p.delta, sample_rate=q, steps=steps)
        check_truncation("privacy.dp_sgd", sigmas[name], steps, p.delta)
    return sigmas, rates


def identity_key(keys_dir: Path, client: str):
    """The simulated organisation's Ed25519 identity: made once, reused on resume.

    Simulation only: the simulator plays every organisation, so it makes their keys and
    keeps them in its run directory, and an audit of that directory can only call them
    self-declared. A deployed client signs with its provisioned identity instead."""
    path = keys_dir / f"{client}.key"
    if path.is_file():
        return load_private(path)
    key = generate_identity()
    save_identity(key, keys_dir, client)
    return key
