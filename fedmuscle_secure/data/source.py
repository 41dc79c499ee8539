"""The labelled image source an experiment splits (DESIGN §8): digits, CIFAR or a folder."""

from __future__ import annotations

import numpy as np

from fedmuscle_secure.config import DataConfig
from fedmuscle_secure.data.digits import load_digits_images
from fedmuscle_secure.data.loaders import load_cifar, load_image_folder


def load_dataset(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """All labelled images of the configured source, float32 (N, C, H, W) in [0, 1]."""
    if cfg.dataset == "digits":
        return load_digits_images()
    assert cfg.path is not None  # checked by config validation
    if cfg.dataset in ("cifar10", "cifar100"):
        xs, ys = zip(
            *(load_cifar(cfg.path, variant=cfg.dataset, split=s) for s in ("train", "test")),
            strict=True,
        )
        return np.concatenate(xs), np.concatenate(ys)
    x, y, _ = load_image_folder(cfg.path, image_size=cfg.image_size or 32)
    return x, y
