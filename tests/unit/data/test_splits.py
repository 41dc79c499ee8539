"""Federated split (DESIGN §8): disjointness, sizes, determinism, label skew, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmuscle_secure.data import FederatedSplit, federated_split, load_digits_images
from fedmuscle_secure.errors import ConfigError


def unique_data(n: int, num_classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x[i] holds the value i, so every sample can be traced back to its index."""
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
    y = np.random.default_rng(seed).permutation(np.arange(n) % num_classes).astype(np.int64)
    return x, y


def ids(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a)).astype(np.int64)


def all_ids(split: FederatedSplit) -> list[np.ndarray]:
    parts = [ids(split.public_x), ids(split.test_x)]
    for s in split.shards:
        parts += [ids(s.x_train), ids(s.x_val)]
    return parts


def assert_consistent(split: FederatedSplit, y: np.ndarray) -> None:
    """No index reused anywhere, and every label still belongs to its sample."""
    every = np.concatenate(all_ids(split))
    assert len(every) == len(np.unique(every)), "a sample was reused"
    np.testing.assert_array_equal(split.test_y, y[ids(split.test_x)])
    for s in split.shards:
        np.testing.assert_array_equal(s.y_train, y[ids(s.x_train)])
        np.testing.assert_array_equal(s.y_val, y[ids(s.x_val)])
        assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int64


def split(x, y, **kw) -> FederatedSplit:
    args = {
        "num_clients": 4,
        "public_size": 300,
        "test_size": 200,
        "shard_size": 50,
        "partition": "dirichlet",
        "seed": 0,
    }
    args.update(kw)
    return federated_split(x, y, **args)


@pytest.mark.parametrize("partition", ["dirichlet", "classes", "iid"])
@pytest.mark.parametrize("shard_size", [50, None])
def test_disjoint_and_sizes(partition, shard_size):
    x, y = unique_data(1000)
    s = split(x, y, partition=partition, shard_size=shard_size, classes_per_client=3)
    assert_consistent(s, y)
    assert len(s.public_x) == 300 and len(s.test_x) == len(s.test_y) == 200
    assert len(s.shards) == 4 and s.num_classes == 10
    sizes = {len(sh.y_train) + len(sh.y_val) for sh in s.shards}
    assert len(sizes) == 1, "shards must have equal size"
    n = sizes.pop()
    if shard_size is not None:
        assert n == shard_size
    elif partition != "classes":
        assert n == (1000 - 500) // 4  # equal parts of the private pool
    for sh in s.shards:
        assert len(sh.y_val) == max(1, round(0.2 * n))


def test_public_has_no_labels_and_test_is_stratified():
    x, y = unique_data(1000)
    s = split(x, y)
    assert not hasattr(s, "public_y")
    hist = np.bincount(s.test_y, minlength=10)
    assert hist.sum() == 200 and hist.min() >= 19 and hist.max() <= 21  # 100 per class


def test_deterministic_in_seed_and_seeds_differ():
    x, y = unique_data(1000)
    a, b, c = split(x, y, seed=7), split(x, y, seed=7), split(x, y, seed=8)
    for pa, pb in zip(all_ids(a), all_ids(b), strict=True):
        np.testing.assert_array_equal(pa, pb)
    assert not all(np.array_equal(pa, pc) for pa, pc in zip(all_ids(a), all_ids(c), strict=True))


def test_val_fraction_zero_and_rounding():
    x, y = unique_data(1000)
    s = split(x, y, val_fraction=0.0, shard_size=10)
    assert all(len(sh.y_val) == 0 and len(sh.y_train) == 10 for sh in s.shards)
    s = split(x, y, val_fraction=0.01, shard_size=10)  # round(0.1) = 0, but at least 1
    assert all(len(sh.y_val) == 1 and len(sh.y_train) == 9 for sh in s.shards)


def _max_class_share(alpha: float, seed: int) -> float:
    x, y = unique_data(6000, seed=seed)
    s = federated_split(
        x,
        y,
        num_clients=20,
        public_size=0,
        test_size=0,
        shard_size=100,
        partition="dirichlet",
        dirichlet_alpha=alpha,
        val_fraction=0.0,
        seed=seed,
    )
    return float(np.mean([np.bincount(sh.y_train, minlength=10).max() / 100 for sh in s.shards]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dirichlet_small_alpha_skews_large_alpha_is_near_uniform(seed):
    # Dir(0.05) puts most of a client's mass on one class (E[max share] ~ 0.8);
    # Dir(1000) is ~uniform, so the top class is ~0.1 plus multinomial noise
    # (~0.17 for 100 draws). Averaged over 20 clients the gap is huge; bounds are loose.
    skewed, uniform = _max_class_share(0.05, seed), _max_class_share(1000.0, seed)
    assert skewed > 0.5
    assert uniform < 0.3


def test_dirichlet_exhausting_pool_still_disjoint():
    x, y = unique_data(400)
    s = federated_split(
        x,
        y,
        num_clients=7,
        public_size=50,
        test_size=50,
        shard_size=None,
        partition="dirichlet",
        dirichlet_alpha=0.01,
        seed=3,
    )
    assert_consistent(s, y)
    assert all(len(sh.y_train) >= 2 for sh in s.shards)
    assert sum(len(sh.y_train) + len(sh.y_val) for sh in s.shards) == 7 * (300 // 7)


@pytest.mark.parametrize("cpc", [1, 2, 3, 10])
def test_classes_partition_gives_exactly_cpc_classes(cpc):
    x, y = unique_data(2000)
    s = split(x, y, partition="classes", classes_per_client=cpc, num_clients=5, shard_size=40)
    assert_consistent(s, y)
    held = [set(np.concatenate([sh.y_train, sh.y_val]).tolist()) for sh in s.shards]
    assert all(len(h) == cpc for h in held)
    if 5 * cpc >= 10:
        assert set().union(*held) == set(range(10)), "rotation must cover every class"
    assert held[0] == set(range(cpc))  # client 0 starts the rotation at class 0


def test_summary_is_json_and_matches():
    x, y = unique_data(1000)
    s = split(x, y)
    summ = json.loads(json.dumps(s.summary()))
    assert summ["public_size"] == 300 and summ["test_size"] == 200
    assert summ["test_label_histogram"] == np.bincount(s.test_y, minlength=10).tolist()
    for row, sh in zip(summ["shards"], s.shards, strict=True):
        assert row["train_size"] == len(sh.y_train)
        assert row["train_label_histogram"] == np.bincount(sh.y_train, minlength=10).tolist()


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"public_size": 900}, "data.public_size"),
        ({"test_size": 1001}, "data.test_size"),
        ({"public_size": -1}, "data.public_size"),
        ({"shard_size": 200}, "data.shard_size"),  # 4 x 200 > 500 left in the pool
        ({"shard_size": 0}, "data.shard_size"),
        ({"shard_size": 2}, "data.shard_size"),  # 1 val leaves 1 train sample
        ({"dirichlet_alpha": 0.0}, "data.dirichlet_alpha"),
        ({"dirichlet_alpha": float("nan")}, "data.dirichlet_alpha"),
        ({"partition": "random"}, "data.partition"),
        ({"partition": "classes"}, "data.classes_per_client"),
        ({"partition": "classes", "classes_per_client": 11}, "data.classes_per_client"),
        ({"partition": "classes", "classes_per_client": 3, "shard_size": 2}, "data.shard_size"),
        (
            {"partition": "classes", "classes_per_client": 1, "shard_size": 120, "num_clients": 4},
            "data.shard_size",
        ),  # 1 class holds ~50 samples in the pool, not 120
        ({"num_clients": 0}, "data.num_clients"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    x, y = unique_data(1000)
    with pytest.raises(ConfigError) as e:
        split(x, y, **kw)
    assert e.value.field == field
    assert field in str(e.value)


def test_malformed_arrays_raise_value_error():
    x, y = unique_data(100)
    with pytest.raises(ValueError, match="shape"):
        split(x[:, 0], y, public_size=0, test_size=0, shard_size=None)
    with pytest.raises(ValueError, match="labels"):
        split(x, y[:-1], public_size=0, test_size=0, shard_size=None)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(60, 300),
    k=st.integers(1, 6),
    partition=st.sampled_from(["dirichlet", "iid", "classes"]),
    alpha=st.floats(0.01, 100.0),
    cpc=st.integers(1, 5),
    pub=st.floats(0.0, 0.4),
    test=st.floats(0.0, 0.3),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_never_reuses_a_sample(n, k, partition, alpha, cpc, pub, test, seed):
    x, y = unique_data(n, num_classes=5, seed=seed % 1000)
    try:
        s = federated_split(
            x,
            y,
            num_clients=k,
            public_size=int(pub * n),
            test_size=int(test * n),
            shard_size=None,
            partition=partition,
            dirichlet_alpha=alpha,
            classes_per_client=cpc,
            seed=seed,
        )
    except ConfigError:
        return  # some combinations are legitimately too small; the error is the contract
    assert_consistent(s, y)
    assert all(len(sh.y_train) >= 2 for sh in s.shards)


def test_digits_images():
    x, y = load_digits_images()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(y.tolist()) == set(range(10))
    from sklearn.datasets import load_digits

    np.testing.assert_allclose(x[5, 0] * 16, load_digits().images[5])


def test_groups_replace_the_labels_in_the_partition_only():
    """With ``groups`` (here: label // 10, six groups of ten labels), ``classes`` hands out
    groups and ``dirichlet`` skews over them; the test split is still stratified by label."""
    x, y = unique_data(2400, num_classes=60)
    groups = y // 10
    s = split(x, y, partition="classes", classes_per_client=2, groups=groups)
    assert_consistent(s, y)
    for k, shard in enumerate(s.shards):
        held = set((np.concatenate([shard.y_train, shard.y_val]) // 10).tolist())
        assert held == {(2 * k + j) % 6 for j in range(2)}
    # 200 test samples over 60 equally frequent labels: 3 or 4 of each
    assert set(np.bincount(s.test_y, minlength=60).tolist()) == {3, 4}
    skewed = split(x, y, partition="dirichlet", dirichlet_alpha=0.05, groups=groups, seed=3)
    for shard in skewed.shards:
        counts = np.bincount(np.concatenate([shard.y_train, shard.y_val]) // 10, minlength=6)
        assert counts.max() >= 0.6 * counts.sum()  # Dir(0.05) over 6 groups: one dominates
    with pytest.raises(ConfigError, match=r"data.classes_per_client: expected an integer in "
                                          r"\[1, 6\]"):
        split(x, y, partition="classes", classes_per_client=7, groups=groups)
    with pytest.raises(ValueError, match=r"groups: expected one group per sample"):
        split(x, y, groups=groups[:-1])
