"""Public parameters of ``protection: secagg`` derived from the config (DESIGN §4.1, §4.2, §5.1).

Server and clients derive the same values from the shared config: the Shamir threshold t,
the collusion allowance t_collude of the distributed noise, each client's noise share and
the fixed-point :class:`SumEncoding` of an exchange. The server sends the encoding with
every instance's setup and a client refuses one that differs from its own derivation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedmuscle_secure.config import ExperimentConfig, default_threshold
from fedmuscle_secure.crypto.sum_encoding import SumEncoding
from fedmuscle_secure.dp.noise import representation_sensitivity

#: Released coordinates are clipped at 1 (unit rows) plus this many standard deviations
#: of the noise share before encoding; beyond it, clipping is counted and reported.
NOISE_CLIP_SDS = 10.0
_MARGIN = 1e-3  # float rounding of unit-norm rows


@dataclass(frozen=True)
class SecAggParameters:
    threshold: int
    t_collude: int
    share_std: float        # per-coordinate std of one client's noise share (0: no noise)
    dim: int
    rows: int               # B
    value_clip: float | None
    frac_bits: int | None

    def encoding(self, batches: int, group_size: int) -> SumEncoding:
        clip = self.value_clip or (1.0 + _MARGIN + NOISE_CLIP_SDS * self.share_std)
        return SumEncoding(batches=batches, rows=self.rows, dim=self.dim, group_size=group_size,
                           value_clip=clip, sq_norm_clip=(1.0 + _MARGIN) * self.expected_sq_norm,
                           frac_bits=self.frac_bits)

    @property
    def expected_sq_norm(self) -> float:
        """E||z̃||² of a released unit row with this noise share: 1 + d·std²."""
        return 1.0 + self.dim * self.share_std**2


def secagg_parameters(cfg: ExperimentConfig, representation_sigma: float | None) -> SecAggParameters:
    s = cfg.secagg
    n = len(cfg.clients)
    t = s.threshold or default_threshold(n)
    t_collude = s.t_collude if s.t_collude is not None else t - 1
    std = 0.0
    if representation_sigma is not None:
        std = representation_sigma / math.sqrt(t - t_collude) * representation_sensitivity(cfg.muscle.batch_size)
    return SecAggParameters(threshold=t, t_collude=t_collude, share_std=std, dim=cfg.muscle.dim,
                            rows=cfg.muscle.batch_size, value_clip=s.clip, frac_bits=s.frac_bits)
