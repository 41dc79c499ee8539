"""The baselines' test federation: one round of three clients, two of them sharing an output
space (cofed votes and feddf ensembles need a partner)."""

from helpers.tiny import tiny_config

# Two clients share the digit10 output space (cofed votes / feddf ensembles need a
# partner); "a" (coarse) is alone in its space and takes the fallback path.
CLIENTS = [
    {"name": "a", "model": "test_resnet", "image_size": 16, "task": "coarse"},
    {"name": "b", "model": "test_resnet", "image_size": 16, "task": "digit10"},
    {"name": "c", "model": "resnet10t", "image_size": 8, "task": "digit10",
     "projection": {"kind": "linear"}},
]
DATA = {"public_size": 96, "test_size": 30, "shard_size": 20, "val_fraction": 0.25}  # seconds


def baseline_config(method, **over):
    return tiny_config(**{"training.rounds": 1, "clients": CLIENTS, "data": DATA,
                          "muscle.method": method, **over})

