"""Client tasks and their metrics (DESIGN §8).

Clients in FedMuscle learn *different* tasks on the same kind of input; a task maps
the original class label of a sample to that client's target. On the embedded
digits data (labels 0..9) the tasks are:

``digit10``
    10-way multiclass, the digit itself; metric accuracy.
``attributes``
    multi-label, 4 binary attributes of the digit, in this order:

    ====  ==========================  =====================
    idx   attribute                   digits with value 1
    ====  ==========================  =====================
    0     ``even``                    0, 2, 4, 6, 8
    1     ``ge5`` (digit >= 5)        5, 6, 7, 8, 9
    2     ``prime``                   2, 3, 5, 7
    3     ``closed_loop``             0, 4, 6, 8, 9
    ====  ==========================  =====================

    ``closed_loop`` counts 4 as closed: in this dataset's style (UCI optdigits,
    written in boxes) most 4s are drawn with the closed triangular top. The choice is
    fixed here so results are comparable across runs. Metric micro-F1.
``coarse``
    3-way multiclass by shape: 0 = round {0, 6, 8, 9}, 1 = straight {1, 4, 7},
    2 = curved-open {2, 3, 5}; metric accuracy.

``classify`` is the generic task for any dataset (CIFAR, image folders, shapes):
multiclass over all ``num_classes`` original labels, accuracy.

The ``shapes`` benchmark's tasks (``shape``, ``scale``, ``orientation``, ``quadrant``,
``shape_scale``, ``shape_attrs``) decode its latent cell labels; they are defined in
:mod:`.shape_tasks`. :func:`task_dataset` says which dataset a task is defined on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from fedmuscle_secure.data.shape_tasks import SHAPE_TASK_NAMES, shape_task_table
from fedmuscle_secure.data.shapes import NUM_CELLS
from fedmuscle_secure.errors import ConfigError

DIGIT_TASK_NAMES: tuple[str, ...] = ("digit10", "attributes", "coarse")
TASK_NAMES: tuple[str, ...] = (*DIGIT_TASK_NAMES, "classify", *SHAPE_TASK_NAMES)

ATTRIBUTE_NAMES: tuple[str, ...] = ("even", "ge5", "prime", "closed_loop")
_ATTRIBUTE_DIGITS: tuple[frozenset[int], ...] = (
    frozenset({0, 2, 4, 6, 8}),
    frozenset({5, 6, 7, 8, 9}),
    frozenset({2, 3, 5, 7}),
    frozenset({0, 4, 6, 8, 9}),
)
COARSE_NAMES: tuple[str, ...] = ("round", "straight", "curved_open")
_COARSE_DIGITS: tuple[frozenset[int], ...] = (
    frozenset({0, 6, 8, 9}),
    frozenset({1, 4, 7}),
    frozenset({2, 3, 5}),
)


@dataclass(frozen=True)
class Task:
    """A client's learning task: how labels become targets, the loss and the metric.

    ``table`` maps an original label ``c`` to its target: for multiclass an int class
    id (``table[c]``), for multilabel a row of 0/1 (``table[c][j]``).
    """

    name: str
    kind: str  # "multiclass" | "multilabel"
    num_outputs: int
    metric: str  # "accuracy" | "micro_f1"
    num_classes: int  # original labels accepted: [0, num_classes)
    table: tuple = field(repr=False)
    output_names: tuple[str, ...] = field(default=(), repr=False)

    def targets(self, labels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Original labels -> targets: int64 ids (multiclass) or float32 {0,1} (n, outputs)."""
        if isinstance(labels, torch.Tensor):
            lab = labels.detach().to(torch.int64).reshape(-1)
        else:
            lab = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
        if lab.numel():
            lo, hi = int(lab.min()), int(lab.max())
            if lo < 0 or hi >= self.num_classes:
                bad = lo if lo < 0 else hi
                raise ConfigError(
                    "task",
                    f"label {bad} out of range [0, {self.num_classes}) for task {self.name!r}",
                )
        lut = torch.tensor(self.table, device=lab.device)
        if self.kind == "multiclass":
            return lut.to(torch.int64)[lab]
        return lut.to(torch.float32)[lab].reshape(-1, self.num_outputs)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (multiclass) or mean BCE-with-logits (multilabel)."""
        if self.kind == "multiclass":
            return F.cross_entropy(logits, targets.long())
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))

    def nll(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N,) per-sample negative log-likelihood −log p(y | x): the cross-entropy
        (multiclass), or the BCE summed over the outputs (multilabel: independent Bernoulli
        outputs). FedEM's responsibilities and weighted loss read it (DESIGN §2.7)."""
        if self.kind == "multiclass":
            return F.cross_entropy(logits, targets.long(), reduction="none")
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype),
                                                  reduction="none").sum(-1)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Argmax class id (multiclass) or int64 0/1 per output at logit > 0 (multilabel)."""
        logits = torch.as_tensor(logits)
        if self.kind == "multiclass":
            return logits.argmax(dim=-1)
        return (logits > 0).to(torch.int64)

    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        """The task metric in [0, 1] of ``logits`` against ``targets`` (from ``targets()``)."""
        pred = self.predict(logits)
        if self.metric == "accuracy":
            return accuracy(pred, targets)
        return micro_f1(pred, targets)


def task_dataset(name: str) -> str | None:
    """The ``data.dataset`` whose labels task ``name`` is defined on; None for ``classify``,
    which any dataset's labels serve."""
    if name in DIGIT_TASK_NAMES:
        return "digits"
    if name in SHAPE_TASK_NAMES:
        return "shapes"
    return None


def get_task(name: str, num_classes: int = 10) -> Task:
    """The task called ``name`` for data with ``num_classes`` original labels."""
    if name not in TASK_NAMES:
        raise ConfigError("task", f"unknown task {name!r}; expected one of {TASK_NAMES}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError("task", f"expected num_classes an integer >= 2, got {num_classes!r}")
    if name == "classify":
        return Task(
            "classify",
            "multiclass",
            num_classes,
            "accuracy",
            num_classes,
            tuple(range(num_classes)),
        )
    if name in SHAPE_TASK_NAMES:
        return _shape_task(name, num_classes)
    if num_classes != 10:
        raise ConfigError(
            "task",
            f"task {name!r} is defined on digit labels 0..9 and needs num_classes=10, got "
            f"{num_classes}; use 'classify' for other datasets",
        )
    if name == "digit10":
        return Task(
            "digit10",
            "multiclass",
            10,
            "accuracy",
            10,
            tuple(range(10)),
            tuple(str(d) for d in range(10)),
        )
    if name == "attributes":
        rows = tuple(tuple(int(d in s) for s in _ATTRIBUTE_DIGITS) for d in range(10))
        return Task(
            "attributes", "multilabel", len(ATTRIBUTE_NAMES), "micro_f1", 10, rows, ATTRIBUTE_NAMES
        )
    ids = tuple(next(g for g, s in enumerate(_COARSE_DIGITS) if d in s) for d in range(10))
    return Task("coarse", "multiclass", len(COARSE_NAMES), "accuracy", 10, ids, COARSE_NAMES)


def _shape_task(name: str, num_classes: int) -> Task:
    """A shapes task over all :data:`NUM_CELLS` cell labels (a split may hold fewer)."""
    if num_classes > NUM_CELLS:
        raise ConfigError(
            "task", f"task {name!r} is defined on the shapes' {NUM_CELLS} latent cells and "
            f"needs num_classes <= {NUM_CELLS}, got {num_classes}")
    kind, table, names = shape_task_table(name)
    if kind == "multiclass":
        return Task(name, kind, len(names), "accuracy", NUM_CELLS, table, names)
    return Task(name, kind, len(names), "micro_f1", NUM_CELLS, table, names)


def _flat(a: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def accuracy(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """Fraction of positions where ``pred == target``; ValueError on empty or mismatched input."""
    p, t = _flat(pred), _flat(target)
    if p.shape != t.shape:
        raise ValueError(f"accuracy: pred shape {p.shape} != target shape {t.shape}")
    if p.size == 0:
        raise ValueError("accuracy: expected at least one prediction, got none")
    return float(np.mean(p == t))


def micro_f1(
    pred_binary: np.ndarray | torch.Tensor, target_binary: np.ndarray | torch.Tensor
) -> float:
    """Micro-averaged F1 over all labels: 2·TP / (2·TP + FP + FN), pooled over every cell.

    Follows ``sklearn.metrics.f1_score(average="micro", zero_division=0)``: when the
    denominator is 0 (no positive predicted and none true) the score is 0.0.
    """
    p, t = _flat(pred_binary), _flat(target_binary)
    if p.shape != t.shape:
        raise ValueError(f"micro_f1: pred shape {p.shape} != target shape {t.shape}")
    p, t = p.astype(bool), t.astype(bool)
    tp = int(np.sum(p & t))
    denom = 2 * tp + int(np.sum(p & ~t)) + int(np.sum(~p & t))
    return 0.0 if denom == 0 else 2.0 * tp / denom
