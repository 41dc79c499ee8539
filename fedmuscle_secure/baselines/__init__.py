"""The paper's baselines as methods of the same harness (DESIGN §2.3).

Same data, models, seeds and message flow as FedMuscle; one module per method:
:mod:`.gram` (GRAM volume loss), :mod:`.fedhenn` (CKA kernel alignment), :mod:`.pseudo_label`
(self-training), :mod:`.cofed` (voted pseudo-labels per output space), :mod:`.feddf`
(ensemble distillation per output space), :mod:`.simclr` (public data alone). The client
side of each is a small :class:`~fedmuscle_secure.baselines.phases.PublicPhase` (what to
release, which loss for a reply); the server side is batched torch in the modules.

This package's ``__init__`` imports nothing heavy so the client's loss dispatch can import
its modules without a cycle. The method names and kinds live in the registry
:mod:`fedmuscle_secure.methods`.
"""
