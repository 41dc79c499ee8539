"""`run` on the on-disk dataset layouts (CIFAR python pickles, image folders), end to end."""

import pickle

import numpy as np
import pytest
from PIL import Image

from fedmuscle_secure.experiment.run import run_experiment
from helpers.tiny import tiny_config


def _write_cifar10(root, per_file=40):
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:  # the real layout, written as CIFAR ships it
            pickle.dump({b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, per_file).tolist()}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [b"x"] * 10}, fh)


def _write_folder(root, per_class=50):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog", "owl"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["cifar10", "image_folder"])
def test_run_on_disk_datasets(tmp_path, dataset):
    data = tmp_path / "data"
    if dataset == "cifar10":
        _write_cifar10(data)
    else:
        _write_folder(data)
    cfg = tiny_config(**{
        "data": {"dataset": dataset, "path": str(data), "image_size": 8, "public_size": 64,
                 "test_size": 30, "shard_size": 16, "val_fraction": 0.25},
        "clients": [{"name": n, "model": m, "image_size": 16, "task": "classify"}
                    for n, m in (("a", "test_resnet"), ("b", "test_vit"), ("c", "test_resnet"))],
        "training.rounds": 1, "muscle.batch_size": 32, "compare_local": False})
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    assert set(res.final["muscle"]) == {"a", "b", "c"}
    assert all(0.0 <= v <= 1.0 for v in res.final["muscle"].values())
