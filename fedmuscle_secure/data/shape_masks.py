"""Signed distances and anti-aliased coverage of the ``shapes`` benchmark's figures (DESIGN §8).

Every function takes pixel coordinates already moved into the figure's own frame (centred,
unrotated) as arrays of any common shape, with per-image sizes broadcast against them, and
returns a signed distance: negative inside, positive outside, in the same units. Coverage
from a distance (:func:`coverage`) is the linear ramp over one pixel width, the usual
anti-aliasing of distance-field rendering, so an edge that crosses a pixel paints it in
proportion to how far inside the pixel centre lies.

Sizes are chosen so every figure of size ``r`` covers the area of a disc of radius ``r``
(π r²): the scale factor then means the same covered area for every figure, and the scale
task cannot be solved by telling figures apart.
"""

from __future__ import annotations

import math

import numpy as np

SQRT3 = math.sqrt(3.0)
#: Half side of a square of area π r², per unit r.
BOX_HALF = math.sqrt(math.pi) / 2.0
#: Semi-axes of the ellipse (aspect 1.25 : 0.8, area π r²), per unit r.
ELLIPSE_AXES = (1.25, 0.8)
#: Half side of an equilateral triangle of area π r² ((√3/4)·s² = π r²), per unit r.
TRIANGLE_HALF = math.sqrt(math.pi / SQRT3)
#: The cross: two bars of half length L and half width 0.4·L; area 8Lw − 4w² = 2.56 L² = π r².
CROSS_HALF_LENGTH = math.sqrt(math.pi / 2.56)
CROSS_HALF_WIDTH = 0.4 * CROSS_HALF_LENGTH


def box(px: np.ndarray, py: np.ndarray, hx: np.ndarray | float,
        hy: np.ndarray | float) -> np.ndarray:
    """Exact distance to an axis-aligned rectangle of half sides ``hx``, ``hy``."""
    qx = np.abs(px) - hx
    qy = np.abs(py) - hy
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


def square(px: np.ndarray, py: np.ndarray, r: np.ndarray) -> np.ndarray:
    """A square of area π r²."""
    half = BOX_HALF * r
    return box(px, py, half, half)


def ellipse(px: np.ndarray, py: np.ndarray, r: np.ndarray) -> np.ndarray:
    """An ellipse of area π r², long axis along x.

    The first-order approximation |p/ab|·(|p/ab| − 1)/|p/ab²| (exact on the boundary, where
    coverage is decided; its error grows only far from the edge, where coverage is 0 or 1).
    At the centre itself it is undefined and the distance is the short semi-axis."""
    a, b = ELLIPSE_AXES[0] * r, ELLIPSE_AXES[1] * r
    k0 = np.hypot(px / a, py / b)
    k1 = np.hypot(px / (a * a), py / (b * b))
    safe = np.where(k1 > 0.0, k1, 1.0)
    return np.where(k1 > 0.0, k0 * (k0 - 1.0) / safe, -b)


def triangle(px: np.ndarray, py: np.ndarray, r: np.ndarray) -> np.ndarray:
    """An equilateral triangle of area π r², centred on its centroid, one side parallel to x
    (exact distance: fold onto one edge by the triangle's symmetry, then distance to it)."""
    h = TRIANGLE_HALF * r
    x = np.abs(px) - h
    y = py + h / SQRT3
    fold = x + SQRT3 * y > 0.0
    x, y = np.where(fold, (x - SQRT3 * y) / 2.0, x), np.where(fold, (-SQRT3 * x - y) / 2.0, y)
    x = x - np.clip(x, -2.0 * h, 0.0)
    return -np.hypot(x, y) * np.sign(y)


def cross(px: np.ndarray, py: np.ndarray, r: np.ndarray) -> np.ndarray:
    """A plus sign of area π r²: the union (minimum) of a horizontal and a vertical bar."""
    length, width = CROSS_HALF_LENGTH * r, CROSS_HALF_WIDTH * r
    return np.minimum(box(px, py, length, width), box(px, py, width, length))


def segment(px: np.ndarray, py: np.ndarray, ax: np.ndarray, ay: np.ndarray,
            bx: np.ndarray, by: np.ndarray, half_width: float) -> np.ndarray:
    """A stroke: the points within ``half_width`` of the segment from a to b."""
    dx, dy = bx - ax, by - ay
    qx, qy = px - ax, py - ay
    length2 = np.maximum(dx * dx + dy * dy, 1e-12)
    t = np.clip((qx * dx + qy * dy) / length2, 0.0, 1.0)
    return np.hypot(qx - t * dx, qy - t * dy) - half_width


def coverage(distance: np.ndarray, pixel: float) -> np.ndarray:
    """Fraction of a pixel of width ``pixel`` covered: 1 well inside, 0 well outside, a
    linear ramp over one pixel across the edge (0.5 on it)."""
    return np.clip(0.5 - distance / pixel, 0.0, 1.0)


#: The figures in the order of the ``shape`` factor (DESIGN §8).
FIGURES = (square, ellipse, triangle, cross)
