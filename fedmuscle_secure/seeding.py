"""Experiment seeds (DESIGN §13.2): explicit, recorded, and never for secrets.

Every random draw of an experiment (data split, model init, shuffling, views, peer
selection) comes from a generator seeded by :func:`derive_seed` from the experiment seed
and labels, so a resumed run repeats an uninterrupted one exactly. Keys, masks and DP
noise never come from here: they use the OS CSPRNG.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the experiment seed and labels (round, client, purpose).

    Stable across processes and Python versions (SHA-256 of the repr).
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def public_batches(seed: int, round_: int, *, public_size: int, batch_size: int,
                   cl_epochs: int) -> torch.Tensor:
    """(T, nb, B) public row indices of round ``round_``: one permutation of the public set
    per CL epoch, cut into nb = public_size // B batches. The server plans rounds with it and
    every client checks the plan it receives against it (a server that picks the rows itself
    could make two exchanges cover the same rows)."""
    nb = public_size // batch_size
    round_seed = derive_seed(seed, "server", round_)
    out = []
    for t in range(cl_epochs):
        g = torch.Generator().manual_seed(derive_seed(round_seed, "batches", t))
        out.append(torch.randperm(public_size, generator=g)[: nb * batch_size].view(nb, -1))
    return torch.stack(out)
