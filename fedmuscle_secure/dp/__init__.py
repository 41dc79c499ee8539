"""Differential privacy (DESIGN §5): CSPRNG Gaussian noise and the representation release
(:mod:`~fedmuscle_secure.dp.noise`, §5.1); DP-SGD's Poisson sampling from the same CSPRNG
(:mod:`~fedmuscle_secure.dp.sampling`, §5.2); DP events, ε accounting with Opacus, the
dp-accounting cross-check and noise calibration (:mod:`~fedmuscle_secure.dp.accounting`, §5.3).
"""

from fedmuscle_secure.dp.accounting import (
    EPSILON_RTOL,
    EPSILON_RTOL_MIN_ORDER,
    PRV_EPS_ERROR,
    PRV_PLD_ATOL,
    DpEventRecord,
    EpsilonReport,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    compute_epsilon_report,
    independent_epsilon,
    independent_epsilon_pld,
)
from fedmuscle_secure.dp.noise import (
    clip_rows,
    csprng_normal,
    gaussian_release,
    representation_sensitivity,
    update_sensitivity,
)
from fedmuscle_secure.dp.sampling import CsprngPoissonSampler, poisson_mask

__all__ = [
    "EPSILON_RTOL",
    "EPSILON_RTOL_MIN_ORDER",
    "PRV_EPS_ERROR",
    "PRV_PLD_ATOL",
    "CsprngPoissonSampler",
    "DpEventRecord",
    "EpsilonReport",
    "PrivacyAccountant",
    "calibrate_noise_multiplier",
    "clip_rows",
    "compute_epsilon_report",
    "csprng_normal",
    "gaussian_release",
    "independent_epsilon",
    "independent_epsilon_pld",
    "poisson_mask",
    "representation_sensitivity",
    "update_sensitivity",
]
