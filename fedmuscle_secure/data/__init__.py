"""Data layer (DESIGN §8): the embedded digits data, the rendered shapes benchmark,
real-dataset loaders, the federated split into public / test / private shards, and the
client tasks."""

from fedmuscle_secure.data.digits import load_digits_images
from fedmuscle_secure.data.loaders import load_cifar, load_image_folder
from fedmuscle_secure.data.shapes import make_shapes
from fedmuscle_secure.data.split_checks import PARTITIONS
from fedmuscle_secure.data.splits import FederatedSplit, Shard, federated_split
from fedmuscle_secure.data.tasks import TASK_NAMES, Task, accuracy, get_task, micro_f1

__all__ = [
    "PARTITIONS",
    "TASK_NAMES",
    "FederatedSplit",
    "Shard",
    "Task",
    "accuracy",
    "federated_split",
    "get_task",
    "load_cifar",
    "load_digits_images",
    "load_image_folder",
    "make_shapes",
    "micro_f1",
]
