"""The method registry (DESIGN §2): every ``muscle.method`` name and what kind it is.

Root vocabulary: the config validates method names against it, and the baselines, the
server and the checks read the kinds from it, so no layer asks another which method is
which.
"""

from __future__ import annotations

from typing import Literal

MUSCLE_METHODS: tuple[str, ...] = ("muscle", "muscle_sum", "pairwise", "local")
"""``muscle``: exact Muscle loss (§2.1); ``muscle_sum``: sum form (§2.2); ``pairwise``:
pairwise InfoNCE (γ = 0); ``local``: no collaboration (Δ reference)."""

BASELINES: tuple[str, ...] = ("gram", "fedhenn", "pseudo_label", "cofed", "feddf", "simclr")
"""Method names (``muscle.method``) of the baselines (§2.3), ``plain`` only."""

WEIGHT_SHARING: tuple[str, ...] = ("fedavg", "fedprox", "mfed", "feddea", "mira", "mocha",
                                   "fedem")
"""Methods that share weights, not representations (DESIGN §2.7): FedAvg, FedProx, M-Fed,
FedDEA, MIRA-style LoRA, MOCHA and FedEM. They need the same architecture where they average,
and release model parameters."""

SUMMED_WEIGHTS: tuple[str, ...] = ("fedavg", "fedprox", "mfed", "feddea", "fedem")
"""Weight-sharing methods whose server step is a weighted mean (of every part, over its
group): under ``secagg`` it is computed from secure sums of the clients' updates, under
``ckks`` from encrypted sums of them (FedEM's parts hold its K components, so a part's mean
is each component's). MIRA's step needs each client's adapters (their pairwise
similarities), and MOCHA's Ω each client's head, which no sum gives."""

PART_SCOPES: dict[str, str] = {"backbone": "all", "head": "task"}
"""The parts a weight-sharing client releases and the group each is averaged over: every
client (``all``) or the clients with the same task (``task``)."""

METHODS: tuple[str, ...] = MUSCLE_METHODS + BASELINES + WEIGHT_SHARING
"""Every method the harness runs."""

SILENT: tuple[str, ...] = ("pseudo_label", "simclr")
"""Baselines that release nothing: no message leaves the client in their public phase."""

OUTPUT_RELEASING: tuple[str, ...] = ("cofed", "feddf")
"""Baselines that release task outputs (predictions, logits) rather than representations."""

PEER_SELECTING: tuple[str, ...] = ("muscle", "muscle_sum", "pairwise", "gram", "fedhenn")
"""Methods whose server reply is built from M selected peers (so need M ≤ N − 1)."""

Mode = Literal["plain", "secagg", "ckks"]


def protection_mode(protection: str, method: str) -> Mode:
    """The protection ``method`` runs under in a federation configured with ``protection``:
    secagg protects the sum form and the weighted means of :data:`SUMMED_WEIGHTS`, ckks every
    collaborative method the config lets it carry (the Muscle losses and those means); the
    ``local`` reference releases nothing, so runs plain."""
    if protection == "secagg" and (method == "muscle_sum" or method in SUMMED_WEIGHTS):
        return "secagg"
    if protection == "ckks" and method != "local":
        return "ckks"
    return "plain"


__all__ = ["BASELINES", "METHODS", "MUSCLE_METHODS", "OUTPUT_RELEASING", "PEER_SELECTING",
           "PART_SCOPES", "SILENT", "SUMMED_WEIGHTS", "WEIGHT_SHARING", "Mode", "protection_mode"]
