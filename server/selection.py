"""Peer subsampling (Algorithm 1, line 10): for each client n, M peers Q_n ⊂ [N] \\ {n}.

The draw comes from the server's round seed (an experiment seed, recorded in the run
directory), so every run with the same seed selects the same peers; it is not a secret.
"""

from __future__ import annotations

import torch


def select_peers(active: list[int], num_selected: int, generator: torch.Generator) -> dict[int, list[int]]:
    """For every active client, ``num_selected`` distinct other active clients, uniformly.

    Returns ``{n: [m_1..m_M]}`` in draw order (the order fixes k in S^n and log α^n).
    """
    if len(active) <= num_selected:
        raise ValueError(
            f"cannot select M={num_selected} peers among {len(active)} active clients (need M <= N-1)"
        )
    out: dict[int, list[int]] = {}
    for n in active:
        others = [m for m in active if m != n]
        perm = torch.randperm(len(others), generator=generator)[:num_selected]
        out[n] = [others[i] for i in perm.tolist()]
    return out


def selection_tensor(selection: dict[int, list[int]], order: list[int]) -> torch.Tensor:
    """The selection as an (N_active, M) index tensor into the stacked order of ``order``."""
    pos = {cid: i for i, cid in enumerate(order)}
    return torch.tensor([[pos[m] for m in selection[n]] for n in order], dtype=torch.long)
