"""A tiny experiment config for end-to-end tests (seconds on 2 cores)."""

from fedmuscle_secure.federation.checks import parse_config


def tiny_config(**over):
    raw = {
        "name": "tiny",
        "seed": 7,
        "data": {"public_size": 96, "test_size": 60, "shard_size": 40, "val_fraction": 0.25},
        "clients": [
            {"name": "a", "model": "test_resnet", "image_size": 16, "task": "coarse"},
            {"name": "b", "model": "test_vit", "image_size": 16, "task": "attributes"},
            {"name": "c", "model": "resnet10t", "image_size": 8, "task": "digit10",
             "projection": {"kind": "linear"}},
        ],
        "training": {"rounds": 3, "local_epochs": 1, "local_batch_size": 16},
        "muscle": {"method": "muscle", "num_selected": 2, "batch_size": 32, "dim": 16},
        "server": {"device": "cpu"},
    }
    for dotted, value in over.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value  # a top-level key ("data", "clients") replaces the whole section
    return parse_config(raw)


#: Four small organisations for the deployment tests that need a secure sum to survive a
#: departure (secagg needs at least three members left).
FOUR = ("a", "b", "c", "d")
FOUR_CLIENTS = [{"name": "a", "model": "test_resnet", "image_size": 16, "task": "coarse"},
                {"name": "b", "model": "test_vit", "image_size": 16, "task": "attributes"},
                {"name": "c", "model": "resnet10t", "image_size": 8, "task": "digit10",
                 "projection": {"kind": "linear"}},
                {"name": "d", "model": "test_resnet", "image_size": 8, "task": "digit10"}]
