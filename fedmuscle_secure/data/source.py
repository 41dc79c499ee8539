"""The labelled image source an experiment splits (DESIGN §8): digits, the rendered shapes,
CIFAR or a folder."""

from __future__ import annotations

import numpy as np

from fedmuscle_secure.config import DataConfig, ShapesConfig
from fedmuscle_secure.data.digits import load_digits_images
from fedmuscle_secure.data.loaders import load_cifar, load_image_folder
from fedmuscle_secure.data.shapes import make_shapes, partition_groups

#: Image size of the rendered shapes when ``data.image_size`` is null: the clients' default.
SHAPES_IMAGE_SIZE = 16


def load_dataset(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """All labelled images of the configured source, float32 (N, C, H, W) in [0, 1]."""
    if cfg.dataset == "digits":
        return load_digits_images()
    if cfg.dataset == "shapes":
        s = cfg.shapes or ShapesConfig()
        x, y, _ = make_shapes(s.num_images, seed=s.seed, channels=s.channels, clutter=s.clutter,
                              image_size=cfg.image_size or SHAPES_IMAGE_SIZE)
        return x, y
    assert cfg.path is not None  # checked by config validation
    if cfg.dataset in ("cifar10", "cifar100"):
        xs, ys = zip(
            *(load_cifar(cfg.path, variant=cfg.dataset, split=s) for s in ("train", "test")),
            strict=True,
        )
        return np.concatenate(xs), np.concatenate(ys)
    x, y, _ = load_image_folder(cfg.path, image_size=cfg.image_size or 32)
    return x, y


def split_groups(cfg: DataConfig, y: np.ndarray) -> np.ndarray | None:
    """What the private shards are skewed over (``federated_split``'s ``groups``): the
    shapes' shape × scale group of each cell label; None (the labels) for other datasets."""
    return partition_groups(y) if cfg.dataset == "shapes" else None
