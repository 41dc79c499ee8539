"""Tasks and metrics (DESIGN §8): label maps from the written definitions, sklearn oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import accuracy_score, f1_score

from fedmuscle_secure.data import TASK_NAMES, accuracy, get_task, micro_f1
from fedmuscle_secure.errors import ConfigError

# Written from the definitions in tasks.py's docstring, not from a run:
#          even  >=5  prime  closed loop
ATTRIBUTES = {
    0: (1, 0, 0, 1),
    1: (0, 0, 0, 0),
    2: (1, 0, 1, 0),
    3: (0, 0, 1, 0),
    4: (1, 0, 0, 1),
    5: (0, 1, 1, 0),
    6: (1, 1, 0, 1),
    7: (0, 1, 1, 0),
    8: (1, 1, 0, 1),
    9: (0, 1, 0, 1),
}
# round {0,6,8,9} -> 0, straight {1,4,7} -> 1, curved-open {2,3,5} -> 2
COARSE = {0: 0, 1: 1, 2: 2, 3: 2, 4: 1, 5: 2, 6: 0, 7: 1, 8: 0, 9: 0}


def test_task_names():
    assert set(TASK_NAMES) == {"digit10", "attributes", "coarse", "classify", "shape", "scale",
                               "orientation", "quadrant", "shape_scale", "shape_attrs"}


def test_attribute_table():
    t = get_task("attributes")
    assert (t.kind, t.num_outputs, t.metric) == ("multilabel", 4, "micro_f1")
    got = t.targets(np.arange(10))
    assert got.dtype == torch.float32 and got.shape == (10, 4)
    for d, row in ATTRIBUTES.items():
        assert tuple(int(v) for v in got[d]) == row, f"digit {d}"


def test_coarse_and_digit10_and_classify():
    c = get_task("coarse")
    assert (c.kind, c.num_outputs, c.metric) == ("multiclass", 3, "accuracy")
    assert c.targets(np.arange(10)).tolist() == [COARSE[d] for d in range(10)]
    d = get_task("digit10")
    assert d.num_outputs == 10 and d.targets(np.array([3, 9])).tolist() == [3, 9]
    assert d.targets(np.array([3])).dtype == torch.int64
    k = get_task("classify", num_classes=100)
    assert k.num_outputs == 100 and k.targets(torch.tensor([0, 99])).tolist() == [0, 99]


def test_unknown_task_and_wrong_num_classes():
    with pytest.raises(ConfigError, match="unknown task 'x'; expected one of") as e:
        get_task("x")
    assert e.value.field == "task"
    with pytest.raises(ConfigError, match="num_classes=10"):
        get_task("attributes", num_classes=100)


def test_label_out_of_range():
    with pytest.raises(ConfigError, match=r"label 10 out of range \[0, 10\)"):
        get_task("digit10").targets(np.array([1, 10]))
    with pytest.raises(ConfigError, match="label -1"):
        get_task("coarse").targets(np.array([-1]))


def test_loss_and_evaluate():
    torch.manual_seed(0)
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    m = get_task("digit10")
    logits = torch.randn(8, 10)
    tgt = m.targets(labels)
    assert torch.isclose(m.loss(logits, tgt), torch.nn.functional.cross_entropy(logits, tgt))
    perfect = torch.nn.functional.one_hot(tgt, 10).float() * 5
    assert m.evaluate(perfect, tgt) == 1.0
    a = get_task("attributes")
    tgt = a.targets(labels)
    logits = torch.randn(8, 4)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, tgt)
    assert torch.isclose(a.loss(logits, tgt), ref)
    assert a.evaluate(tgt * 10 - 5, tgt) == 1.0
    pred = a.predict(logits)
    assert set(pred.unique().tolist()) <= {0, 1}
    ref_f1 = f1_score(tgt.numpy(), pred.numpy(), average="micro", zero_division=0)
    assert a.evaluate(logits, tgt) == pytest.approx(ref_f1)


def test_loss_has_gradient():
    logits = torch.randn(4, 3, requires_grad=True)
    c = get_task("coarse")
    c.loss(logits, c.targets(np.array([0, 1, 2, 3]))).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_accuracy():
    assert accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 0.75
    assert accuracy(np.array([0]), np.array([1])) == 0.0
    with pytest.raises(ValueError):
        accuracy(np.array([]), np.array([]))
    with pytest.raises(ValueError):
        accuracy(np.array([1, 2]), np.array([1]))


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 20),
    k=st.integers(2, 6),  # sklearn reads a single column as binary/multiclass, not multilabel
)
def test_micro_f1_matches_sklearn(data, n, k):
    pred = data.draw(arrays(np.int64, (n, k), elements=st.integers(0, 1)))
    true = data.draw(arrays(np.int64, (n, k), elements=st.integers(0, 1)))
    ref = f1_score(true, pred, average="micro", zero_division=0)
    assert micro_f1(pred, true) == pytest.approx(ref)
    assert micro_f1(torch.from_numpy(pred), torch.from_numpy(true)) == pytest.approx(ref)


def test_micro_f1_zero_division_cases():
    z = np.zeros((3, 4), dtype=np.int64)
    assert micro_f1(z, z) == 0.0 == f1_score(z, z, average="micro", zero_division=0)
    o = np.ones((3, 4), dtype=np.int64)
    assert micro_f1(o, o) == 1.0
    assert micro_f1(z, o) == 0.0 and micro_f1(o, z) == 0.0


@settings(max_examples=30, deadline=None)
@given(pred=st.lists(st.integers(0, 3), min_size=1, max_size=30), seed=st.integers(0, 1000))
def test_accuracy_matches_sklearn(pred, seed):
    true = np.random.default_rng(seed).integers(0, 4, len(pred))
    assert accuracy(np.array(pred), true) == pytest.approx(accuracy_score(true, pred))
