"""The labelled source an experiment splits (DESIGN §8): digits, the rendered shapes, CIFAR,
a folder of images, or texts from files (token ids)."""

from __future__ import annotations

import numpy as np

from fedmuscle_secure.config import DataConfig, ShapesConfig
from fedmuscle_secure.data.digits import load_digits_images
from fedmuscle_secure.data.loaders import load_cifar, load_image_folder
from fedmuscle_secure.data.shapes import make_shapes, partition_groups
from fedmuscle_secure.data.text import load_text_data

#: Image size of the rendered shapes when ``data.image_size`` is null: the clients' default.
SHAPES_IMAGE_SIZE = 16


def load_dataset(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """All labelled samples of the configured source: images float32 (N, C, H, W) in
    [0, 1], or texts as token ids int64 (N, L)."""
    x, y, _, _ = load_source(cfg)
    return x, y


def load_source(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """:func:`load_dataset`'s samples and labels, the rows the public set is drawn from
    when they are not the labelled ones (a ``text_files`` public file; None: the labelled
    rows, labels dropped), and what the run records about the source (texts: file and
    tokenizer digests, label names, duplicates dropped; images: nothing)."""
    if cfg.dataset == "text_files":
        assert cfg.text is not None  # checked by config validation
        data = load_text_data(cfg.text)
        return data.ids, data.y, data.public_ids, data.info
    if cfg.dataset == "digits":
        x, y = load_digits_images()
        return x, y, None, {}
    if cfg.dataset == "shapes":
        s = cfg.shapes or ShapesConfig()
        x, y, _ = make_shapes(s.num_images, seed=s.seed, channels=s.channels, clutter=s.clutter,
                              image_size=cfg.image_size or SHAPES_IMAGE_SIZE)
        return x, y, None, {}
    assert cfg.path is not None  # checked by config validation
    if cfg.dataset in ("cifar10", "cifar100"):
        xs, ys = zip(
            *(load_cifar(cfg.path, variant=cfg.dataset, split=s) for s in ("train", "test")),
            strict=True,
        )
        return np.concatenate(xs), np.concatenate(ys), None, {}
    x, y, _ = load_image_folder(cfg.path, image_size=cfg.image_size or 32)
    return x, y, None, {}


def split_groups(cfg: DataConfig, y: np.ndarray) -> np.ndarray | None:
    """What the private shards are skewed over (``federated_split``'s ``groups``): the
    shapes' shape × scale group of each cell label; None (the labels) for other datasets."""
    return partition_groups(y) if cfg.dataset == "shapes" else None

