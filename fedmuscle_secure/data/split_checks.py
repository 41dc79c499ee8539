"""The split's inputs checked before anything is drawn (DESIGN §8): the arrays, then every
``data.*`` setting against what the dataset holds; the first problem raises, naming the field."""

from __future__ import annotations

import math

import numpy as np

from fedmuscle_secure.errors import ConfigError

PARTITIONS: tuple[str, ...] = ("dirichlet", "classes", "iid")


def check_arrays(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, C, H, W), returned as float32, or token ids (N, L) of integers, returned
    as int64; labels (N,) int64 >= 0."""
    x = np.asarray(x)
    y = np.asarray(y)
    text = x.ndim == 2 and np.issubdtype(x.dtype, np.integer)
    if x.ndim != 4 and not text:
        raise ValueError(f"x: expected an image array of shape (N, C, H, W) or integer token "
                         f"ids (N, L), got {x.shape} {x.dtype}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"y: expected labels of shape ({len(x)},), got {y.shape}")
    if len(y) == 0:
        raise ValueError("x: expected at least one sample, got 0")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y: expected integer class labels, got dtype {y.dtype}")
    if int(y.min()) < 0:
        raise ValueError(f"y: expected labels >= 0, got {int(y.min())}")
    return x.astype(np.int64 if text else np.float32, copy=False), y.astype(np.int64, copy=False)


def check_public_pool(pool: np.ndarray, x: np.ndarray, public_size: int) -> np.ndarray:
    """Public rows of their own: shaped and typed like ``x``'s rows, enough of them."""
    pool = np.asarray(pool)
    if pool.shape[1:] != x.shape[1:]:
        raise ValueError(f"public_pool: expected rows shaped {x.shape[1:]}, got {pool.shape[1:]}")
    if len(pool) < public_size:
        raise ConfigError("data.public_size", f"the public file holds {len(pool)} texts; "
                          f"expected at least data.public_size = {public_size}")
    return pool.astype(x.dtype, copy=False)


def check_groups(groups: np.ndarray, n: int) -> np.ndarray:
    """Partition groups: one integer >= 0 per sample, as int64."""
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups: expected one group per sample, shape ({n},), got {g.shape}")
    if not np.issubdtype(g.dtype, np.integer):
        raise ValueError(f"groups: expected integer group ids, got dtype {g.dtype}")
    if n and int(g.min()) < 0:
        raise ValueError(f"groups: expected group ids >= 0, got {int(g.min())}")
    return g.astype(np.int64, copy=False)


def check_split_config(
    *,
    n: int,
    num_classes: int,
    num_clients: int,
    public_size: int,
    test_size: int,
    shard_size: int | None,
    partition: str,
    dirichlet_alpha: float,
    classes_per_client: int | None,
    val_fraction: float,
) -> None:
    """Every split setting, checked in this order; the first problem raises."""
    if partition not in PARTITIONS:
        raise ConfigError(
            "data.partition", f"unknown partition {partition!r}; expected one of {PARTITIONS}"
        )
    _check_sizes(n, num_clients, public_size, test_size, shard_size)
    _check_partition(partition, dirichlet_alpha, classes_per_client, num_classes, val_fraction)


def _check_sizes(n: int, num_clients: int, public_size: int, test_size: int,
                 shard_size: int | None) -> None:
    """The clients, test, public and shard sizes fit the ``n`` samples of the dataset."""
    if not _is_int(num_clients) or num_clients < 1:
        raise ConfigError("data.num_clients", f"expected an integer >= 1, got {num_clients!r}")
    for field, value in (("data.public_size", public_size), ("data.test_size", test_size)):
        if not _is_int(value) or value < 0:
            raise ConfigError(field, f"expected an integer >= 0, got {value!r}")
    if test_size > n:
        raise ConfigError("data.test_size", f"{test_size} exceeds the {n} samples available")
    if public_size > n - test_size:
        raise ConfigError(
            "data.public_size",
            f"{public_size} exceeds the {n - test_size} samples left after a test split "
            f"of {test_size} (dataset holds {n})",
        )
    pool = n - test_size - public_size
    if shard_size is not None:
        if not _is_int(shard_size) or shard_size < 1:
            raise ConfigError(
                "data.shard_size", f"expected an integer >= 1 or null, got {shard_size!r}"
            )
        if shard_size * num_clients > pool:
            raise ConfigError(
                "data.shard_size",
                f"{num_clients} clients x {shard_size} samples = {shard_size * num_clients} "
                f"exceeds the private pool of {pool} (dataset {n} - test {test_size} - "
                f"public {public_size})",
            )
    elif pool // num_clients < 1:
        raise ConfigError(
            "data.num_clients",
            f"the private pool of {pool} samples cannot give each of {num_clients} clients a shard",
        )


def _check_partition(partition: str, dirichlet_alpha: float, classes_per_client: int | None,
                     num_classes: int, val_fraction: float) -> None:
    """The validation fraction and the partition's own setting."""
    if not (isinstance(val_fraction, int | float) and 0.0 <= val_fraction < 1.0):
        raise ConfigError("data.val_fraction", f"expected a number in [0, 1), got {val_fraction!r}")
    if partition == "dirichlet" and not (
        isinstance(dirichlet_alpha, int | float)
        and math.isfinite(dirichlet_alpha)
        and dirichlet_alpha > 0
    ):
        raise ConfigError(
            "data.dirichlet_alpha", f"expected a finite number > 0, got {dirichlet_alpha!r}"
        )
    if partition == "classes":
        if classes_per_client is None:
            raise ConfigError(
                "data.classes_per_client", "required when data.partition is 'classes'"
            )
        if not _is_int(classes_per_client) or not 1 <= classes_per_client <= num_classes:
            raise ConfigError(
                "data.classes_per_client",
                f"expected an integer in [1, {num_classes}], got {classes_per_client!r}",
            )


def _is_int(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)
