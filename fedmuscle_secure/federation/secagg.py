"""Public parameters of ``protection: secagg`` derived from the config (DESIGN §4.1, §4.2, §5.1).

Server and clients derive the same values from the shared config: the Shamir threshold t,
the collusion allowance t_collude of the distributed noise, each client's noise share and
the fixed-point :class:`SumEncoding` of an exchange. The server sends the encoding with
every instance's setup and a client refuses one that differs from its own derivation.

The value clip and the Gaussian assumption (DESIGN §5.1). With representation noise each
client encodes z + n per coordinate, |z| <= 1 (unit rows) and n ~ N(0, s^2) its noise
share, clipped at ``secagg.clip`` = c. The accountant treats the noised sum as exactly
Gaussian, which holds unless some coordinate was clipped. With c = 1 + k·s one coordinate
is clipped with probability at most erfc(k/sqrt 2); over the C coordinates every client
puts through a secure sum in the run (N · R · T · nb · B · d) the chance p that any is
clipped is at most C · erfc(k/sqrt 2). Outside that event the output is the Gaussian
mechanism's, so the recorded (ε, δ) still holds with δ + (1 + e^ε) · p. We require
p <= δ/100 and never k < 6 (:func:`min_clip_sds`): e.g. C = 2.3e6 coordinates (the shipped
digits config) at δ = 1e-5 needs k >= 7.56; the default k = 10 (:data:`NOISE_CLIP_SDS`)
bounds each coordinate by 1.5e-23. A smaller ``secagg.clip`` is a :class:`ConfigError`
naming the minimum. Without noise nothing is accounted, so a clip below 1 (which cuts
coordinates of unit rows) only costs accuracy: it is logged as a warning.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from fedmuscle_secure.config import ExperimentConfig, default_threshold
from fedmuscle_secure.config_weights import update_parts
from fedmuscle_secure.crypto.secagg.sum_encoding import SumEncoding, mean_update_bound
from fedmuscle_secure.dp.noise import representation_sensitivity, update_sensitivity
from fedmuscle_secure.errors import ConfigError

#: Released coordinates are clipped at 1 (unit rows) plus this many standard deviations
#: of the noise share before encoding; beyond it, clipping is counted and reported.
NOISE_CLIP_SDS = 10.0
#: The floor of the accepted clip, in noise-share sds above 1, and the share of δ the
#: probability of any clipped coordinate may take (module docs).
MIN_CLIP_SDS = 6.0
CLIP_DELTA_FRACTION = 0.01
_MARGIN = 1e-3  # float rounding of unit-norm rows
log = logging.getLogger("fedmuscle_secure.secagg")


def min_clip_sds(coordinates: int, delta: float) -> float:
    """Smallest k >= :data:`MIN_CLIP_SDS` with coordinates · erfc(k/√2) <= δ/100 (module
    docs), to 0.01; bisection on the monotone tail bound."""
    target = CLIP_DELTA_FRACTION * delta / max(1, coordinates)

    def tail(k: float) -> float:
        return math.erfc(k / math.sqrt(2.0))

    lo, hi = MIN_CLIP_SDS, 40.0
    if tail(lo) <= target:
        return lo
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if tail(mid) <= target else (mid, hi)
    return math.ceil(hi * 100) / 100


def _check_clip(cfg: ExperimentConfig, clip: float, share_std: float) -> None:
    """Refuse a clip that breaks the recorded noise's Gaussian assumption (module docs);
    warn about one that only cuts unit-row coordinates (no noise)."""
    if share_std == 0.0:
        if clip < 1.0:
            log.warning("secagg.clip = %g is below 1: coordinates of unit-norm rows above it "
                        "are cut before the secure sum, which biases the sum (accuracy only: "
                        "no representation noise, no privacy accounting)", clip)
        return
    m = cfg.muscle
    coordinates = (len(cfg.clients) * cfg.training.rounds * cfg.training.cl_epochs
                   * (cfg.data.public_size // m.batch_size) * m.batch_size * m.dim)
    k = min_clip_sds(coordinates, cfg.privacy.delta)
    minimum = 1.0 + k * share_std
    if clip < minimum:
        raise ConfigError("secagg.clip", f"{clip:g} is below the minimum {minimum:.4g} = 1 + "
                          f"{k:g} noise-share standard deviations ({share_std:.4g}): a clipped "
                          f"coordinate breaks the Gaussian noise the privacy accounting "
                          f"assumes, and over the run's {coordinates} coordinates that must "
                          f"stay below δ/100; raise secagg.clip or leave it unset "
                          f"(default 1 + {NOISE_CLIP_SDS:g} sds)")


@dataclass(frozen=True)
class SecAggParameters:
    threshold: int
    t_collude: int
    share_std: float        # per-coordinate std of one client's noise share (0: no noise)
    dim: int
    rows: int               # B
    value_clip: float | None
    frac_bits: int | None
    update_clip: float = 1.0     # weight sharing: the L2 bound of one part's update
    update_share_std: float = 0.0  # weight sharing: per-coordinate std of one noise share
    update_releases: int = 1     # weight sharing: updates every client puts in over the run
    delta: float = 1e-5

    def encoding(self, batches: int, group_size: int) -> SumEncoding:
        clip = self.value_clip or (1.0 + _MARGIN + NOISE_CLIP_SDS * self.share_std)
        return SumEncoding(batches=batches, rows=self.rows, dim=self.dim, group_size=group_size,
                           value_clip=clip, sq_norm_clip=(1.0 + _MARGIN) * self.expected_sq_norm,
                           frac_bits=self.frac_bits)

    def weight_encoding(self, length: int, group_size: int) -> SumEncoding:
        """The encoding of one weight part's secure sum (DESIGN §2.7): a client's
        ``[clip(Δ) + noise, 1]`` as one row of ``length`` values and its "squared norm"
        slot holding its count, 1. Each value is at most update_clip in magnitude, plus k
        standard deviations of the noise share where update noise is on, k as for
        representations (module docs: every coordinate of the run, here N·R·parts·length,
        clipped with probability at most δ/100 together, and k never below 10)."""
        clip = self.update_clip
        if self.update_share_std > 0:
            k = max(NOISE_CLIP_SDS, min_clip_sds(self.update_releases * length, self.delta))
            clip = self.update_clip * (1.0 + _MARGIN) + k * self.update_share_std
        return SumEncoding(batches=1, rows=1, dim=length, group_size=group_size,
                           value_clip=clip, sq_norm_clip=1.0, frac_bits=self.frac_bits)

    def mean_update_bound(self, length: int, members: int) -> float:
        """The largest norm a mean of ``members`` honest updates of a ``length``-weight
        part shows: the clip, plus the tail of its noise (std share/√members per
        coordinate) where update noise is on (:func:`mean_update_bound`)."""
        return mean_update_bound(self.update_clip, self.update_share_std / math.sqrt(members),
                                 length)

    def group_threshold(self, group_size: int) -> int:
        """t of a secure sum over a configured group of ``group_size`` clients: the
        federation's t, or every member where the group has fewer than t (a task's clients).
        Never lower than the configured t: a smaller one would let fewer colluders reconstruct
        a member's masks, and an equivocating server split a small group's survivor views."""
        return min(group_size, self.threshold)

    @property
    def expected_sq_norm(self) -> float:
        """E||z̃||² of a released unit row with this noise share: 1 + d·std²."""
        return 1.0 + self.dim * self.share_std**2


def secagg_parameters(cfg: ExperimentConfig, sigma_client: float | None) -> SecAggParameters:
    s = cfg.secagg
    n = len(cfg.clients)
    t = s.threshold or default_threshold(n)
    t_collude = s.t_collude if s.t_collude is not None else t - 1
    std = update_std = 0.0
    ws = cfg.weight_sharing
    if sigma_client is not None and cfg.privacy.update_noise.enabled:
        # the largest share a client may add (all but one member of a sum colluding): it
        # sizes the encoding and the mean's bound; each sum's share is its own (client side)
        update_std = sigma_client * update_sensitivity(ws.update_clip)
    elif sigma_client is not None:
        std = sigma_client / math.sqrt(t - t_collude) * representation_sensitivity(cfg.muscle.batch_size)
    params = SecAggParameters(threshold=t, t_collude=t_collude, share_std=std,
                              dim=cfg.muscle.dim, rows=cfg.muscle.batch_size, value_clip=s.clip,
                              frac_bits=s.frac_bits, update_clip=ws.update_clip,
                              update_share_std=update_std,
                              update_releases=n * cfg.training.rounds * update_parts(cfg),
                              delta=cfg.privacy.delta)
    if s.clip is not None:
        _check_clip(cfg, s.clip, std)
    return params
