"""Federated split of one labelled array of images or token ids (DESIGN §8).

One array becomes three disjoint parts:

* a **test** split, stratified by class, used only for the final evaluation;
* an unlabelled **public** set (labels dropped) on which the contrastive phase runs;
* the **private pool**, cut into one shard per client, each shard again cut into a
  train part and a held-out validation part (for tuning; never the test split).

Private shards are non-IID on purpose (the Muscle setting): ``partition="dirichlet"``
gives label skew with per-client class proportions drawn from Dir(alpha)
(Hsu et al., 2019, "Measuring the effects of non-identical data distribution");
``partition="classes"`` gives each client a fixed number of classes; ``"iid"`` is the
control. A dataset with many fine labels may skew the shards over coarser *partition
groups* instead (``groups``; the shapes benchmark's shape × scale, DESIGN §8), so the
skew stays as strong as over the digits' ten classes. Everything is drawn from
``np.random.default_rng(seed)``: this is an experiment seed (DESIGN §13.2), recorded in
the run directory, never used for masks, keys or DP noise.

No sample index ever lands in two parts: every draw removes what it takes from the
pool it draws from, and the tests check disjointness on an array whose samples are
all distinct.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from fedmuscle_secure.data.split_checks import (
    check_arrays,
    check_groups,
    check_public_pool,
    check_split_config,
)
from fedmuscle_secure.errors import ConfigError

# A client needs at least this many training samples (one batch statistic, one
# step of a contrastive pair); fewer is an unusable shard, so the split refuses it.
MIN_TRAIN_PER_CLIENT = 2


@dataclass(frozen=True, eq=False)
class Shard:
    """One client's private data (arrays are never shared between shards).

    ``y_train``/``y_val`` hold the *original* class labels; a client's task maps them
    to its own targets (``fedmuscle_secure.data.tasks``).
    """

    x_train: np.ndarray  # float32 (n, C, H, W) in [0, 1], or int64 token ids (n, L)
    y_train: np.ndarray  # int64 (n,)
    x_val: np.ndarray  # float32 (n_val, C, H, W)
    y_val: np.ndarray  # int64 (n_val,)


@dataclass(frozen=True, eq=False)
class FederatedSplit:
    """The output of :func:`federated_split`: public, test and per-client shards."""

    public_x: np.ndarray  # float32 (n_pub, C, H, W); labels deliberately dropped
    test_x: np.ndarray  # float32 (n_test, C, H, W)
    test_y: np.ndarray  # int64 (n_test,) original labels
    shards: tuple[Shard, ...]
    num_classes: int  # number of original classes
    source: dict = field(default_factory=dict)  # what the run records about the source

    def digest(self) -> str:
        """SHA-256 over every part's arrays: two processes (a server and its clients, a run
        and its resume) hold the same split exactly when their digests agree."""
        h = hashlib.sha256()
        for a in (self.public_x, self.test_x, self.test_y,
                  *(b for s in self.shards for b in (s.x_train, s.y_train, s.x_val, s.y_val))):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def summary(self) -> dict:
        """Sizes and per-shard label histograms, JSON-serialisable (for events.jsonl)."""

        def hist(y: np.ndarray) -> list[int]:
            return np.bincount(y, minlength=self.num_classes).astype(int).tolist()

        return {
            **({"source": self.source} if self.source else {}),
            "digest": self.digest(),
            "num_classes": int(self.num_classes),
            "public_size": len(self.public_x),
            "test_size": len(self.test_x),
            "test_label_histogram": hist(self.test_y),
            "num_clients": len(self.shards),
            "shards": [
                {
                    "client": k,
                    "train_size": len(s.y_train),
                    "val_size": len(s.y_val),
                    "train_label_histogram": hist(s.y_train),
                    "val_label_histogram": hist(s.y_val),
                }
                for k, s in enumerate(self.shards)
            ],
        }


def federated_split(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_clients: int,
    public_size: int,
    test_size: int,
    shard_size: int | None,
    partition: str,
    dirichlet_alpha: float = 1.0,
    classes_per_client: int | None = None,
    val_fraction: float = 0.2,
    seed: int,
    groups: np.ndarray | None = None,
    public_pool: np.ndarray | None = None,
    source: dict | None = None,
) -> FederatedSplit:
    """Split ``(x, y)`` into test, public and ``num_clients`` disjoint private shards.

    Order of draws: the test split first (stratified by class, largest-remainder
    allocation), then the public set uniformly from what is left; the remainder is
    the private pool. ``shard_size=None`` splits the pool into equal parts (for
    ``"classes"``: the largest equal size every client's classes can supply).

    ``partition="dirichlet"``: client k draws ``p_k ~ Dir(alpha·1)`` over the classes
    and its ``shard_size`` samples get per-class counts ``~ Multinomial(shard_size,
    p_k)``, without replacement from the pool; where a class runs out, the excess is
    re-drawn over the client's classes that still have samples, in proportion to
    ``p_k`` (clients are served in order, so with ``shard_size=None`` the last client
    takes what is left and is the least skewed). ``partition="classes"``: client k
    holds classes ``(k·c + j) mod num_classes`` for ``j < c = classes_per_client``,
    so consecutive clients rotate through all classes, with an equal number of
    samples per class. ``partition="iid"``: uniform equal parts.

    ``groups`` (int64, one per sample; default the labels): what ``"dirichlet"`` and
    ``"classes"`` skew over in place of the labels, and what ``classes_per_client`` counts.
    The test split is stratified by label either way. ``source``: what the run records
    about the data's origin (file digests, label names), kept in the summary.

    ``public_pool`` (rows shaped like ``x``): the public set is drawn from it instead of
    from ``x`` (unlabelled texts of their own file); ``x`` then holds only the test split
    and the private pool.

    Each shard is then shuffled and its first ``round(val_fraction·n)`` samples (at
    least 1 when ``val_fraction > 0``; Python's ``round``) become the validation part.

    Raises ``ConfigError`` naming the ``data.*`` field when a value is invalid or a
    size exceeds what the dataset holds; ``ValueError`` when ``x``/``y`` are malformed.
    """
    x, y = check_arrays(x, y)
    num_classes = int(y.max()) + 1
    key = y if groups is None else check_groups(groups, len(y))
    num_keys = int(key.max()) + 1
    if public_pool is not None:
        public_pool = check_public_pool(public_pool, x, public_size)
    check_split_config(n=len(y), num_classes=num_keys, num_clients=num_clients,
                       public_size=0 if public_pool is not None else public_size,
                       test_size=test_size,
                       shard_size=shard_size, partition=partition,
                       dirichlet_alpha=dirichlet_alpha, classes_per_client=classes_per_client,
                       val_fraction=val_fraction)
    rng = np.random.default_rng(seed)

    test_idx = _stratified_sample(y, np.arange(len(y)), test_size, num_classes, rng)
    rest = np.setdiff1d(np.arange(len(y)), test_idx, assume_unique=True)
    if public_pool is None:
        public_idx = rng.choice(rest, size=public_size, replace=False)
        public_x = x[public_idx]
        pool = np.setdiff1d(rest, public_idx, assume_unique=True)
    else:
        public_x = public_pool[rng.choice(len(public_pool), size=public_size, replace=False)]
        pool = rest

    if partition == "iid":
        shard_idx = _iid_shards(pool, num_clients, shard_size, rng)
    elif partition == "dirichlet":
        shard_idx = _dirichlet_shards(key, pool, num_clients, shard_size, dirichlet_alpha,
                                      num_keys, rng)
    else:
        assert classes_per_client is not None  # checked in check_split_config
        shard_idx = _class_shards(key, pool, num_clients, shard_size, classes_per_client,
                                  num_keys, rng)
    shards = tuple(_shard(x, y, idx, val_fraction, rng) for idx in shard_idx)

    test_idx = rng.permutation(test_idx)
    return FederatedSplit(
        public_x=public_x,
        test_x=x[test_idx],
        test_y=y[test_idx],
        shards=shards,
        num_classes=num_classes,
        source=dict(source or {}),
    )


def _shard(x: np.ndarray, y: np.ndarray, idx: np.ndarray, val_fraction: float,
           rng: np.random.Generator) -> Shard:
    """One client's shard: its indices shuffled, the first ``round(val_fraction·n)`` (at
    least 1 when ``val_fraction > 0``) for validation; refuses a shard left with fewer than
    :data:`MIN_TRAIN_PER_CLIENT` training samples."""
    idx = rng.permutation(idx)
    n_val = _val_count(len(idx), val_fraction)
    if len(idx) - n_val < MIN_TRAIN_PER_CLIENT:
        raise ConfigError(
            "data.shard_size",
            f"a client shard of {len(idx)} samples leaves {len(idx) - n_val} for "
            f"training after validation (val_fraction={val_fraction}); expected at "
            f"least {MIN_TRAIN_PER_CLIENT}: raise data.shard_size or lower "
            "data.public_size / data.test_size / data.num_clients",
        )
    val, train = idx[:n_val], idx[n_val:]
    return Shard(x_train=x[train], y_train=y[train], x_val=x[val], y_val=y[val])


def _val_count(n: int, val_fraction: float) -> int:
    if val_fraction <= 0:
        return 0
    return max(1, round(val_fraction * n))


def _stratified_sample(
    y: np.ndarray, idx: np.ndarray, size: int, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``size`` of ``idx`` with per-class counts proportional to class frequency.

    Largest-remainder allocation, ties broken at random, so the counts sum to ``size``
    exactly and never exceed what a class holds.
    """
    if size == 0:
        return np.empty(0, dtype=np.int64)
    counts = np.bincount(y[idx], minlength=num_classes)
    quota = counts * size / counts.sum()
    take = np.floor(quota).astype(np.int64)
    short = size - int(take.sum())
    if short:
        # Tie-break by a random key so no class is favoured systematically.
        order = np.lexsort((rng.random(num_classes), -(quota - take)))
        room = order[take[order] < counts[order]]
        take[room[:short]] += 1
    parts = [
        rng.choice(idx[y[idx] == c], size=int(take[c]), replace=False)
        for c in range(num_classes)
        if take[c]
    ]
    return np.concatenate(parts).astype(np.int64)


def _iid_shards(
    pool: np.ndarray, k: int, shard_size: int | None, rng: np.random.Generator
) -> list[np.ndarray]:
    size = len(pool) // k if shard_size is None else shard_size
    perm = rng.permutation(pool)
    return [perm[i * size : (i + 1) * size] for i in range(k)]


def _dirichlet_shards(
    y: np.ndarray,
    pool: np.ndarray,
    k: int,
    shard_size: int | None,
    alpha: float,
    num_classes: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    size = len(pool) // k if shard_size is None else shard_size
    by_class = [list(rng.permutation(pool[y[pool] == c])) for c in range(num_classes)]
    shards = []
    for _ in range(k):
        p = rng.dirichlet(np.full(num_classes, float(alpha)))
        want = rng.multinomial(size, p)
        avail = np.array([len(b) for b in by_class])
        take = np.minimum(want, avail)
        while (missing := size - int(take.sum())) > 0:
            room = avail - take
            # Prefer the client's own proportions; a tiny floor keeps classes whose
            # p underflowed to 0 reachable, so the loop always terminates (the pool
            # holds >= k * size samples, checked before).
            w = (p + 1e-12) * (room > 0)
            extra = rng.multinomial(missing, w / w.sum())
            take += np.minimum(extra, room)
        shards.append(_pop(by_class, take))
    return shards


def _class_shards(
    y: np.ndarray,
    pool: np.ndarray,
    k: int,
    shard_size: int | None,
    cpc: int,
    num_classes: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    owned = [[(i * cpc + j) % num_classes for j in range(cpc)] for i in range(k)]
    holders = np.bincount(np.concatenate(owned), minlength=num_classes)
    by_class = [list(rng.permutation(pool[y[pool] == c])) for c in range(num_classes)]
    avail = np.array([len(b) for b in by_class])
    if shard_size is None:
        per_class = min(int(avail[c] // holders[c]) for c in range(num_classes) if holders[c])
        size = cpc * min(per_class, (len(pool) // k) // cpc)
        if size == 0:
            raise ConfigError(
                "data.classes_per_client",
                f"the private pool cannot give each of {k} clients samples of all its "
                f"{cpc} classes (class counts in the pool: {avail.tolist()}); lower "
                "data.num_clients or data.public_size / data.test_size",
            )
    else:
        size = shard_size
        if size < cpc:
            raise ConfigError(
                "data.shard_size",
                f"{size} samples cannot cover {cpc} classes per client; expected "
                f"data.shard_size >= data.classes_per_client",
            )
    shards = []
    for i in range(k):
        cls = owned[i]
        take = np.zeros(num_classes, dtype=np.int64)
        base, extra = divmod(size, cpc)
        for j, c in enumerate(cls):
            take[c] = base + (1 if j < extra else 0)
        left = np.array([len(b) for b in by_class])
        take = np.minimum(take, left)
        # Move what a class cannot supply to the client's other classes.
        for c in cls:
            missing = size - int(take.sum())
            if missing <= 0:
                break
            take[c] += min(missing, int(left[c] - take[c]))
        if int(take.sum()) < size or int(take[cls].min()) == 0:
            raise ConfigError(
                "data.shard_size",
                f"client {i} holds classes {cls}, which cannot supply {size} samples "
                f"with at least one of each from the private pool (left per class: "
                f"{left.tolist()}): lower "
                "data.shard_size or raise data.classes_per_client",
            )
        shards.append(_pop(by_class, take))
    return shards


def _pop(by_class: list[list[int]], take: np.ndarray) -> np.ndarray:
    """Remove ``take[c]`` indices from each class list and return them (no reuse)."""
    out: list[int] = []
    for c, t in enumerate(take):
        t = int(t)
        if t:
            out.extend(by_class[c][-t:])
            del by_class[c][-t:]
    return np.asarray(out, dtype=np.int64)
