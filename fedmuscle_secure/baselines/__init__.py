"""The paper's baselines as methods of the same harness (DESIGN §2.3).

Same data, models, seeds and message flow as FedMuscle; one module per method:
:mod:`.gram` (GRAM volume loss), :mod:`.fedhenn` (CKA kernel alignment), :mod:`.pseudo_label`
(self-training), :mod:`.cofed` (voted pseudo-labels per output space), :mod:`.feddf`
(ensemble distillation per output space), :mod:`.simclr` (public data alone). The client
side of each is a small :class:`~fedmuscle_secure.baselines.phases.PublicPhase` (what to
release, which loss for a reply); the server side is batched torch in the modules.

This package's ``__init__`` imports nothing heavy so the client's loss dispatch can import
its modules without a cycle.
"""

BASELINES: tuple[str, ...] = ("gram", "fedhenn", "pseudo_label", "cofed", "feddf", "simclr")
"""Method names (``muscle.method``) of the baselines."""

SILENT: tuple[str, ...] = ("pseudo_label", "simclr")
"""Baselines that release nothing: no message leaves the client in their public phase."""

OUTPUT_RELEASING: tuple[str, ...] = ("cofed", "feddf")
"""Baselines that release task outputs (predictions, logits) rather than representations."""

PEER_SELECTING: tuple[str, ...] = ("muscle", "muscle_sum", "pairwise", "gram", "fedhenn")
"""Methods whose server reply is built from M selected peers (so need M ≤ N − 1)."""

__all__ = ["BASELINES", "OUTPUT_RELEASING", "PEER_SELECTING", "SILENT"]
