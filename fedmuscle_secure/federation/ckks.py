"""The federation's CKKS parameters and contexts (DESIGN §4.3).

The parameters come from the config's ``ckks`` section and are validated for the values
the federation will encrypt: unit rows, or with representation noise rows whose
coordinates carry noise of the calibrated σ. The contexts are made once by the key holder
(:func:`provision_ckks_keys`; ``provision ckks`` writes them to files) and each deployed
side loads only what it may hold: :func:`server_ckks` refuses a context with a secret key,
:func:`client_ckks` one without.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.crypto.ckks import (
    CkksParameters,
    PublicContext,
    SecretContext,
    update_sum_error_bound,
)
from fedmuscle_secure.dp.noise import representation_sensitivity
from fedmuscle_secure.errors import ConfigError
from fedmuscle_secure.methods import SUMMED_WEIGHTS

#: The weight sums' count slot must decrypt to within this of an integer (DESIGN §2.7).
COUNT_MARGIN = 0.25
#: ... and CKKS's error may widen the clip a mean of updates is held to by at most this
#: share of the clip (over the √length coordinates of a part).
NORM_MARGIN = 0.01


def weight_sum_error(cfg: ExperimentConfig, params: CkksParameters) -> float:
    """The most one slot of a weight sum over every client may decrypt off by: N fresh
    encryptions of values at most max(update_clip, 1) (the count slot holds 1)."""
    return update_sum_error_bound(params, len(cfg.clients), cfg.weight_sharing.update_clip)


def check_weight_precision(cfg: ExperimentConfig, params: CkksParameters,
                           lengths: list[int]) -> None:
    """The CKKS error of a mean of updates over a part of each of ``lengths`` must widen
    the clip by at most :data:`NORM_MARGIN` of it (√length · error per coordinate), or a
    server could push a mean well beyond the clip that every check accepts."""
    clip = cfg.weight_sharing.update_clip
    e = weight_sum_error(cfg, params)
    for length in lengths:
        if length ** 0.5 * e > NORM_MARGIN * clip:
            raise ConfigError("ckks.global_scale_bits", f"{params.global_scale_bits}: CKKS's "
                              f"error over a part of {length} weights ({length ** 0.5 * e:.3g} in "
                              f"norm) is above {NORM_MARGIN:g} of weight_sharing.update_clip = "
                              f"{clip:g}; raise it (default 40)")


#: Where ``provision ckks`` writes the contexts under its output (certs) directory.
CKKS_DIR = "ckks"
SECRET_CONTEXT = "secret.ctx"
PUBLIC_CONTEXT = "public.ctx"


class CkksKeys(NamedTuple):
    """One side's CKKS provisioning: the parameters and the serialized contexts it holds
    (clients: the secret one; the server: the public one; the other is None)."""

    params: CkksParameters
    secret: bytes | None
    public: bytes | None


def validate_ckks(cfg: ExperimentConfig, *, noise_std: float) -> CkksParameters:
    """Validate the CKKS parameters for this config (raises :class:`ConfigError` naming
    them) and return them: a row padded to a power of two per slot block, depth 1, and the
    largest value ||U||² of M rows whose coordinates carry noise up to 6 sd (``noise_std``
    per coordinate; 0 for unit rows without noise). The weighted means of the
    weight-sharing methods only add ciphertexts (depth 0) whose slots hold at most N
    updates' coordinates, each within ``weight_sharing.update_clip``, or the count N."""
    params = CkksParameters(**cfg.ckks.model_dump())
    if cfg.muscle.method in SUMMED_WEIGHTS:  # sums of N updates clipped to update_clip (§2.7)
        # additions only: no Galois keys (with them the server could rotate one member's
        # coordinates into the count slot of a "sum")
        params = CkksParameters(**{**cfg.ckks.model_dump(), "galois_keys": False})
        n, clip = len(cfg.clients), cfg.weight_sharing.update_clip
        params.validate(packed_length=1, depth=0, max_abs_value=n * max(clip, 1.0))
        error = weight_sum_error(cfg, params)
        if not error < COUNT_MARGIN:
            raise ConfigError("ckks.global_scale_bits", f"{params.global_scale_bits}: a sum of "
                              f"{n} updates decrypts its count to within {error:.3g}, not below "
                              f"{COUNT_MARGIN}, so a client could not tell a sum over its members "
                              "from one member's ciphertext; raise it (default 40)")
        return params
    d = cfg.muscle.dim
    m = cfg.muscle.num_selected
    params.validate(packed_length=1 << (d - 1).bit_length(), depth=1,
                    max_abs_value=float((m * (1 + 6 * noise_std * d ** 0.5)) ** 2))
    return params


def ckks_parameters(cfg: ExperimentConfig, sigma_client: float | None) -> CkksParameters:
    """The federation's CKKS parameters, re-validated for the noisy values when
    representation noise (client-level σ ``sigma_client``) is on."""
    std = 0.0
    if sigma_client is not None:
        std = sigma_client * representation_sensitivity(cfg.muscle.batch_size)
    return validate_ckks(cfg, noise_std=std)


def provision_ckks_keys(cfg: ExperimentConfig, sigma_client: float | None) -> CkksKeys:
    """The provisioning step: one CKKS context for the federation, with both halves.
    Clients get the bytes with the secret key, the server a public copy without it; both
    travel as bytes, as they do between organisations."""
    params = ckks_parameters(cfg, sigma_client)
    secret = SecretContext.create(params)
    return CkksKeys(params, secret.serialize(), secret.to_public().serialize())


def _read(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise ConfigError("--certs", f"{path} not found; expected {what} "
                                     "(made by `fedmuscle-secure provision ckks`)")
    return path.read_bytes()


def server_ckks(cfg: ExperimentConfig, certs: Path, sigma_client: float | None) -> CkksKeys:
    """The server's CKKS provisioning: parameters and the public context only."""
    if (certs / CKKS_DIR / SECRET_CONTEXT).exists():
        raise ConfigError("--certs", f"{certs / CKKS_DIR / SECRET_CONTEXT} is on the server: the "
                                     "secret CKKS context must never reach the server; remove it "
                                     "and keep only public.ctx there")
    params = ckks_parameters(cfg, sigma_client)
    public = _read(certs / CKKS_DIR / PUBLIC_CONTEXT, "the federation's public CKKS context")
    PublicContext.from_bytes(public, params)  # refuses a context holding a secret key
    return CkksKeys(params, None, public)


def client_ckks(cfg: ExperimentConfig, certs: Path, sigma_client: float | None) -> CkksKeys:
    """An organisation's CKKS provisioning: parameters and the shared secret context."""
    params = ckks_parameters(cfg, sigma_client)
    secret = _read(certs / CKKS_DIR / SECRET_CONTEXT, "the federation's secret CKKS context")
    SecretContext.from_bytes(secret, params)
    return CkksKeys(params, secret, None)

