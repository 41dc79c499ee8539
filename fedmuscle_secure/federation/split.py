"""The federation's data split, derived from the config alone (DESIGN §8).

Every process that takes part (the simulator, the gRPC server, each gRPC client and
``provision ckks``) draws the same public / test / private shards from the same seed, so
each side builds its objects from identical data without exchanging any.
"""

from __future__ import annotations

from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.data import FederatedSplit, federated_split
from fedmuscle_secure.data.source import load_source, split_groups


def make_split(cfg: ExperimentConfig) -> FederatedSplit:
    """The public / test / private split of ``cfg``'s dataset (seeded by ``cfg.seed``)."""
    x, y, public, info = load_source(cfg.data)
    d = cfg.data
    return federated_split(
        x, y, num_clients=len(cfg.clients), public_size=d.public_size, test_size=d.test_size,
        shard_size=d.shard_size, partition=d.partition, dirichlet_alpha=d.dirichlet_alpha,
        classes_per_client=d.classes_per_client, val_fraction=d.val_fraction, seed=cfg.seed,
        groups=split_groups(d, y), public_pool=public, source=info)


def train_sizes(cfg: ExperimentConfig, split: FederatedSplit) -> dict[str, int]:
    """Each organisation's number of private training rows (DP-SGD's sampling rate)."""
    return {c.name: len(split.shards[i].y_train) for i, c in enumerate(cfg.clients)}
