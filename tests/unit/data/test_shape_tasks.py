"""The shapes tasks (DESIGN §8): targets decoded from cell labels agree with the factors the
images were rendered from, read independently from the written task definitions."""

from __future__ import annotations

import numpy as np
import pytest

from fedmuscle_secure.data import TASK_NAMES, get_task
from fedmuscle_secure.data.shapes import NUM_CELLS, make_shapes
from fedmuscle_secure.data.tasks import task_dataset
from fedmuscle_secure.errors import ConfigError

SHAPES = ("square", "ellipse", "triangle", "cross")


def _factor_oracle(seed: int = 11, n: int = 2000) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels, and every task's expected target recomputed from the continuous factors with
    the definitions in shape_tasks.py's docstring (scale r in [0.25, 0.60) in three equal
    bins, rotation in 30° bins over [0°, 90°), quadrant by the sign of x right and y down)."""
    _, y, f = make_shapes(n, seed=seed)
    shape = f.shape
    scale = np.digitize(f.scale, [0.25 + 0.35 / 3, 0.25 + 2 * 0.35 / 3])
    orientation = np.digitize(np.degrees(f.rotation), [30.0, 60.0])
    upper, left = f.y < 0, f.x < 0
    quadrant = np.select([upper & left, upper & ~left, ~upper & left], [0, 1, 2], 3)
    attrs = np.stack([scale == 2, shape == 1, shape != 3, upper,
                      (np.degrees(f.rotation) >= 30) & (np.degrees(f.rotation) < 60)], axis=1)
    return y, {"shape": shape, "scale": scale, "orientation": orientation,
               "quadrant": quadrant, "shape_scale": shape * 3 + scale,
               "shape_attrs": attrs.astype(np.float32)}


@pytest.mark.parametrize("name", ["shape", "scale", "orientation", "quadrant", "shape_scale",
                                  "shape_attrs"])
def test_targets_agree_with_the_rendered_factors(name):
    y, expected = _factor_oracle()
    got = get_task(name, NUM_CELLS).targets(y).numpy()
    np.testing.assert_array_equal(got, expected[name])


@pytest.mark.parametrize(("name", "kind", "outputs", "metric"), [
    ("shape", "multiclass", 4, "accuracy"), ("scale", "multiclass", 3, "accuracy"),
    ("orientation", "multiclass", 3, "accuracy"), ("quadrant", "multiclass", 4, "accuracy"),
    ("shape_scale", "multiclass", 12, "accuracy"), ("shape_attrs", "multilabel", 5, "micro_f1")])
def test_task_kinds_outputs_and_metrics(name, kind, outputs, metric):
    t = get_task(name, NUM_CELLS)
    assert (t.kind, t.num_outputs, t.metric, t.num_classes) == (kind, outputs, metric, NUM_CELLS)
    assert len(t.output_names) == outputs


def test_output_names():
    assert get_task("shape", 100).output_names == SHAPES
    assert get_task("shape_attrs", NUM_CELLS).output_names == (
        "large", "round", "convex", "upper", "diagonal")
    names = get_task("shape_scale", NUM_CELLS).output_names
    assert names[:3] == ("small_square", "medium_square", "large_square")
    assert names[-1] == "large_cross"


def test_every_class_of_every_task_occurs():
    """No task has a dead output: each class (or attribute value) is some cell's target."""
    cells = np.arange(NUM_CELLS)
    for name in ("shape", "scale", "orientation", "quadrant", "shape_scale"):
        t = get_task(name, NUM_CELLS)
        assert set(t.targets(cells).tolist()) == set(range(t.num_outputs))
    rows = get_task("shape_attrs", NUM_CELLS).targets(cells).numpy()
    # positive rates from the definitions: 1/3 large, 1/4 round, 3/4 convex, 1/2 upper, 1/3
    np.testing.assert_allclose(rows.mean(axis=0), [1 / 3, 1 / 4, 3 / 4, 1 / 2, 1 / 3])


def test_labels_outside_the_cells_are_refused():
    with pytest.raises(ConfigError, match=r"label 144 out of range \[0, 144\)"):
        get_task("shape", NUM_CELLS).targets(np.array([0, 144]))
    with pytest.raises(ConfigError, match="needs num_classes <= 144"):
        get_task("quadrant", 200)


def test_task_dataset():
    assert {t for t in TASK_NAMES if task_dataset(t) == "shapes"} == {
        "shape", "scale", "orientation", "quadrant", "shape_scale", "shape_attrs"}
    assert {t for t in TASK_NAMES if task_dataset(t) == "digits"} == {
        "digit10", "attributes", "coarse"}
    assert task_dataset("classify") is None
