"""Contrastive losses: exact Muscle (DESIGN §2.1), muscle-sum (§2.2), pairwise InfoNCE.

The brute-force oracles live in :mod:`fedmuscle_secure.losses.reference` and are not
re-exported: they are for tests and benchmarks only.
"""

from fedmuscle_secure.losses.infonce import pairwise_infonce_loss
from fedmuscle_secure.losses.muscle import (
    muscle_loss,
    muscle_loss_broadcast,
    muscle_loss_from_server,
    server_side_terms,
)
from fedmuscle_secure.losses.muscle_sum import (
    leave_one_out,
    leave_one_out_terms,
    muscle_sum_loss,
    muscle_sum_loss_from_terms,
)
from fedmuscle_secure.losses.temperatures import gamma_from_temperatures, pair_matrix

__all__ = [
    "gamma_from_temperatures",
    "leave_one_out",
    "leave_one_out_terms",
    "muscle_loss",
    "muscle_loss_broadcast",
    "muscle_loss_from_server",
    "muscle_sum_loss",
    "muscle_sum_loss_from_terms",
    "pair_matrix",
    "pairwise_infonce_loss",
    "server_side_terms",
]
