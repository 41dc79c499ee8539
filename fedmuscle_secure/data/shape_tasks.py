"""The tasks of the ``shapes`` benchmark (DESIGN §8): each decodes a latent cell label.

A shapes label is the index of the image's latent cell (:mod:`.shapes`): shape × scale
bin × orientation bin × quadrant. Every task reads some of these factors, so all tasks
share the latent structure the contrastive phase aligns (FedMuscle's premise):

``shape``        4-way: square, ellipse, triangle, cross; accuracy.
``scale``        3-way: small, medium, large (the figure's area); accuracy.
``orientation``  3-way: rotation in [0°, 30°), [30°, 60°), [60°, 90°); accuracy.
``quadrant``     4-way: upper-left, upper-right, lower-left, lower-right; accuracy.
``shape_scale``  12-way combination: shape × scale ("large ellipse"); accuracy.
``shape_attrs``  multi-label, 5 binary attributes; micro-F1:

    ====  ============  ===============================
    idx   attribute     value 1 when
    ====  ============  ===============================
    0     ``large``     scale is large
    1     ``round``     shape is the ellipse
    2     ``convex``    shape is not the cross
    3     ``upper``     centre in the upper half
    4     ``diagonal``  rotation in [30°, 60°)
    ====  ============  ===============================

Each task here is a table: a row of :func:`shape_task_table` per cell label, built from
:func:`~fedmuscle_secure.data.shapes.decode_cells`; :mod:`.tasks` wraps it in a ``Task``.
"""

from __future__ import annotations

import numpy as np

from fedmuscle_secure.data.shapes import (
    NUM_CELLS,
    ORIENTATION_NAMES,
    QUADRANT_NAMES,
    SCALE_NAMES,
    SHAPE_NAMES,
    decode_cells,
)

SHAPE_TASK_NAMES: tuple[str, ...] = (
    "shape", "scale", "orientation", "quadrant", "shape_scale", "shape_attrs")
SHAPE_ATTRIBUTE_NAMES: tuple[str, ...] = ("large", "round", "convex", "upper", "diagonal")


def _multiclass(name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Per-cell class ids of a multiclass shapes task, and its class names."""
    shape, scale, orientation, quadrant = decode_cells(np.arange(NUM_CELLS))
    if name == "shape":
        return shape, SHAPE_NAMES
    if name == "scale":
        return scale, SCALE_NAMES
    if name == "orientation":
        return orientation, ORIENTATION_NAMES
    if name == "quadrant":
        return quadrant, QUADRANT_NAMES
    names = tuple(f"{z}_{s}" for s in SHAPE_NAMES for z in SCALE_NAMES)
    return shape * len(SCALE_NAMES) + scale, names


def _attributes() -> np.ndarray:
    """(cells, 5) 0/1 rows of ``shape_attrs``, columns as :data:`SHAPE_ATTRIBUTE_NAMES`."""
    shape, scale, orientation, quadrant = decode_cells(np.arange(NUM_CELLS))
    cols = (
        scale == SCALE_NAMES.index("large"),
        shape == SHAPE_NAMES.index("ellipse"),
        shape != SHAPE_NAMES.index("cross"),
        quadrant < 2,  # upper_left, upper_right
        orientation == 1,  # 30-60deg
    )
    return np.stack(cols, axis=1).astype(np.int64)


def shape_task_table(name: str) -> tuple[str, tuple, tuple[str, ...]]:
    """``(kind, table, output_names)`` of the shapes task ``name`` over all cell labels:
    ``table[c]`` a class id (``"multiclass"``) or a 0/1 row (``"multilabel"``)."""
    if name not in SHAPE_TASK_NAMES:
        raise ValueError(f"not a shapes task: {name!r}; expected one of {SHAPE_TASK_NAMES}")
    if name == "shape_attrs":
        rows = tuple(tuple(int(v) for v in row) for row in _attributes())
        return "multilabel", rows, SHAPE_ATTRIBUTE_NAMES
    ids, names = _multiclass(name)
    return "multiclass", tuple(int(v) for v in ids), names
