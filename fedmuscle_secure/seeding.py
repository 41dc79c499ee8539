"""Experiment seeds (CONVENTIONS "Randomness"): explicit, recorded, and never for secrets.

Every random draw of an experiment (data split, model init, shuffling, views, peer
selection) comes from a generator seeded by :func:`derive_seed` from the experiment seed
and labels, so a resumed run repeats an uninterrupted one exactly. Keys, masks and DP
noise never come from here: they use the OS CSPRNG.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the experiment seed and labels (round, client, purpose).

    Stable across processes and Python versions (SHA-256 of the repr).
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
