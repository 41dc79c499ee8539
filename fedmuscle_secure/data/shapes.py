"""The embedded procedural benchmark ``shapes`` (DESIGN §8), in the spirit of dSprites.

Each image shows one filled figure rendered from latent factors — its shape (square,
ellipse, triangle, cross), scale, rotation, position, intensity and, with three channels,
colour — over a grey background with clutter (thin distractor strokes and pixel noise).
As many images as asked are rendered, deterministically per seed, with vectorised numpy
(signed distances on the pixel grid, anti-aliased; :mod:`.shape_masks`).

The label of an image is the index of its *latent cell*: shape × scale bin × orientation
bin × quadrant (4 × 3 × 3 × 4 = 144 cells). Cells are drawn uniformly and the continuous
factors uniformly inside their cell's bins, away from the bin edges (:data:`BIN_MARGIN`),
so the cell decides every task's target exactly and no target sits on a bin boundary
that a pixel cannot resolve. Intensity, colour, the exact position and the clutter are
nuisance factors: no task reads them.

The generator is ``np.random.default_rng(seed)``: data generation, an experiment seed in
the sense of DESIGN §13.2, never used for anything secret.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from fedmuscle_secure.data.shape_masks import FIGURES, coverage, segment

SHAPE_NAMES: tuple[str, ...] = ("square", "ellipse", "triangle", "cross")
SCALE_NAMES: tuple[str, ...] = ("small", "medium", "large")
#: Rotation bins over [0°, 90°): every figure repeats itself within 90° only for the
#: square and the cross, so one quarter turn keeps every orientation distinguishable.
ORIENTATION_NAMES: tuple[str, ...] = ("0-30deg", "30-60deg", "60-90deg")
#: Quadrant of the figure's centre, image rows growing downwards.
QUADRANT_NAMES: tuple[str, ...] = ("upper_left", "upper_right", "lower_left", "lower_right")
#: Factor sizes, most significant first: label = ((shape·3 + scale)·3 + orientation)·4 + quadrant.
CELL_SHAPE: tuple[int, ...] = (len(SHAPE_NAMES), len(SCALE_NAMES), len(ORIENTATION_NAMES),
                               len(QUADRANT_NAMES))
NUM_CELLS = math.prod(CELL_SHAPE)
#: Cells per partition group: the private shards are skewed over shape × scale (12 groups).
CELLS_PER_GROUP = CELL_SHAPE[2] * CELL_SHAPE[3]

#: Figure size r (the radius of the disc of equal area) in units of the half image width.
SCALE_RANGE = (0.25, 0.60)
ROTATION_RANGE = (0.0, math.pi / 2)
#: Distance of the centre from each image axis, in half image widths: never on an axis.
OFFSET_RANGE = (0.12, 0.38)
#: Fraction of each bin's width left unused at either edge, so neighbouring bins are apart.
BIN_MARGIN = 0.1
INTENSITY_RANGE = (0.55, 1.0)
BACKGROUND_RANGE = (0.0, 0.15)
NOISE_STD_RANGE = (0.0, 0.05)
STROKE_INTENSITY_RANGE = (0.15, 0.40)
#: At most this many distractor strokes per image (0..MAX_STROKES, uniformly).
MAX_STROKES = 2
#: Stroke half width, in pixels.
STROKE_HALF_WIDTH = 0.5
#: Pixels rendered per chunk: keeps the working arrays in cache whatever the image size.
_CHUNK_PIXELS = 1 << 17


@dataclass(frozen=True, eq=False)
class ShapeFactors:
    """The latent factors of ``n`` images, one array entry per image.

    Positions are in half image widths from the centre (x right, y down); ``rotation`` in
    radians, clockwise on screen; ``scale`` the radius of the disc of equal area.
    """

    shape: np.ndarray  # int64 (n,) index into SHAPE_NAMES
    scale: np.ndarray  # float64 (n,)
    rotation: np.ndarray  # float64 (n,)
    x: np.ndarray  # float64 (n,)
    y: np.ndarray  # float64 (n,)
    intensity: np.ndarray  # float64 (n,)
    colour: np.ndarray  # float64 (n, 3), max 1 per row (used with 3 channels)
    background: np.ndarray  # float64 (n,)
    noise_std: np.ndarray  # float64 (n,)
    strokes: np.ndarray  # float64 (n, MAX_STROKES, 4): x0, y0, x1, y1
    stroke_intensity: np.ndarray  # float64 (n, MAX_STROKES); 0 where a stroke is absent

    def __len__(self) -> int:
        return len(self.shape)

    def without_clutter(self) -> ShapeFactors:
        """The same figures with no distractor strokes and no pixel noise."""
        return replace(self, noise_std=np.zeros_like(self.noise_std),
                       stroke_intensity=np.zeros_like(self.stroke_intensity))


def encode_cells(shape: np.ndarray, scale_bin: np.ndarray, orientation_bin: np.ndarray,
                 quadrant: np.ndarray) -> np.ndarray:
    """The cell label (int64) of each combination of factor bins."""
    idx = np.ravel_multi_index((shape, scale_bin, orientation_bin, quadrant), CELL_SHAPE)
    return np.asarray(idx, dtype=np.int64)


def decode_cells(labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(shape, scale_bin, orientation_bin, quadrant)`` of each cell label."""
    return tuple(np.asarray(a, dtype=np.int64)
                 for a in np.unravel_index(np.asarray(labels, dtype=np.int64), CELL_SHAPE))


def partition_groups(labels: np.ndarray) -> np.ndarray:
    """The shape × scale group (0..11) of each cell label: what private shards skew over."""
    return np.asarray(labels, dtype=np.int64) // CELLS_PER_GROUP


def _in_bins(bins: np.ndarray, span: tuple[float, float], count: int,
             rng: np.random.Generator) -> np.ndarray:
    """A value uniform inside each bin of ``span`` cut into ``count``, margins excluded."""
    width = (span[1] - span[0]) / count
    u = BIN_MARGIN + (1.0 - 2.0 * BIN_MARGIN) * rng.random(len(bins))
    return span[0] + (bins + u) * width


def sample_factors(n: int, rng: np.random.Generator) -> tuple[np.ndarray, ShapeFactors]:
    """``(cells, factors)`` of ``n`` images: a uniform cell label each (int64), and the
    factors, the continuous ones drawn inside the cell's bins."""
    cells = rng.integers(0, NUM_CELLS, n).astype(np.int64)
    shape, scale_bin, orientation_bin, quadrant = decode_cells(cells)
    scale = _in_bins(scale_bin, SCALE_RANGE, CELL_SHAPE[1], rng)
    rotation = _in_bins(orientation_bin, ROTATION_RANGE, CELL_SHAPE[2], rng)
    offset = rng.uniform(*OFFSET_RANGE, size=(2, n))
    x = np.where(quadrant % 2 == 1, offset[0], -offset[0])
    y = np.where(quadrant >= 2, offset[1], -offset[1])
    colour = rng.uniform(0.25, 1.0, size=(n, 3))
    colour /= colour.max(axis=1, keepdims=True)
    present = rng.integers(0, MAX_STROKES + 1, n)[:, None] > np.arange(MAX_STROKES)
    return cells, ShapeFactors(
        shape=shape, scale=scale, rotation=rotation, x=x, y=y,
        intensity=rng.uniform(*INTENSITY_RANGE, n), colour=colour,
        background=rng.uniform(*BACKGROUND_RANGE, n),
        noise_std=rng.uniform(*NOISE_STD_RANGE, n),
        strokes=rng.uniform(-1.0, 1.0, size=(n, MAX_STROKES, 4)),
        stroke_intensity=rng.uniform(*STROKE_INTENSITY_RANGE, (n, MAX_STROKES)) * present)


def figure_coverage(f: ShapeFactors, image_size: int) -> np.ndarray:
    """Anti-aliased coverage (n, S, S) in [0, 1] of each image's figure alone."""
    pixel = 2.0 / image_size
    grid = _grid(image_size)
    px = grid[None, None, :] - f.x.astype(np.float32)[:, None, None]
    py = grid[None, :, None] - f.y.astype(np.float32)[:, None, None]
    rotation = f.rotation.astype(np.float32)[:, None, None]
    cos, sin = np.cos(rotation), np.sin(rotation)
    # rotate the pixels by -rotation: the figure turns by +rotation
    u, v = cos * px + sin * py, cos * py - sin * px
    distance = np.empty_like(u)
    r = f.scale.astype(np.float32)[:, None, None]
    for k, figure in enumerate(FIGURES):
        rows = np.flatnonzero(f.shape == k)
        if len(rows):
            distance[rows] = figure(u[rows], v[rows], r[rows])
    return coverage(distance, pixel)


def _stroke_layer(img: np.ndarray, f: ShapeFactors, grid: np.ndarray, pixel: float) -> None:
    """Paint the distractor strokes over ``img`` (n, S, S), in place (only the images that
    have the stroke are computed: most have fewer than :data:`MAX_STROKES`)."""
    px, py = grid[None, None, :], grid[None, :, None]
    for k in range(MAX_STROKES):
        rows = np.flatnonzero(f.stroke_intensity[:, k] > 0)
        if not len(rows):
            continue
        ends = [f.strokes[rows, k, j].astype(grid.dtype)[:, None, None] for j in range(4)]
        alpha = coverage(segment(px, py, *ends, STROKE_HALF_WIDTH * pixel), pixel)
        level = f.stroke_intensity[rows, k].astype(grid.dtype)[:, None, None]
        img[rows] += alpha * (level - img[rows])


def render(f: ShapeFactors, *, image_size: int = 16, channels: int = 1,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """float32 (n, channels, S, S) in [0, 1]: background, strokes, then the figure over them,
    then Gaussian pixel noise of each image's ``noise_std`` drawn from ``rng`` (none when
    ``rng`` is None). One channel shows the intensity; three show intensity × colour."""
    if channels not in (1, 3):
        raise ValueError(f"channels: expected 1 or 3, got {channels!r}")
    n, pixel, grid = len(f), 2.0 / image_size, _grid(image_size)
    out = np.empty((n, channels, image_size, image_size), dtype=np.float32)
    step = max(1, _CHUNK_PIXELS // (image_size * image_size))
    for lo in range(0, n, step):
        part = _slice(f, lo, lo + step)
        m = len(part)
        base = np.empty((m, image_size, image_size), dtype=np.float32)
        base[:] = part.background[:, None, None]
        _stroke_layer(base, part, grid, pixel)
        alpha = figure_coverage(part, image_size)[:, None]
        paint = part.intensity[:, None] * (part.colour if channels == 3 else np.ones((m, 1)))
        img = base[:, None] + alpha * (paint.astype(np.float32)[:, :, None, None] - base[:, None])
        if rng is not None:
            noise = rng.standard_normal(img.shape, dtype=np.float32)
            img += part.noise_std.astype(np.float32)[:, None, None, None] * noise
        np.clip(img, 0.0, 1.0, out=out[lo:lo + m], casting="unsafe")
    return out


def _grid(image_size: int) -> np.ndarray:
    """Pixel-centre coordinates along one axis, in half image widths (float32)."""
    return ((np.arange(image_size) + 0.5) * (2.0 / image_size) - 1.0).astype(np.float32)


def _slice(f: ShapeFactors, lo: int, hi: int) -> ShapeFactors:
    return ShapeFactors(**{k: getattr(f, k)[lo:hi] for k in f.__dataclass_fields__})


def make_shapes(n: int, *, seed: int, image_size: int = 16, channels: int = 1,
                clutter: bool = True) -> tuple[np.ndarray, np.ndarray, ShapeFactors]:
    """``(x, y, factors)``: ``n`` rendered images float32 (n, C, S, S) in [0, 1], their cell
    labels int64 (n,) and the factors they were rendered from. The same arguments give the
    same images; ``clutter=False`` gives the same figures without strokes or noise."""
    if n < 1:
        raise ValueError(f"n: expected at least one image, got {n!r}")
    rng = np.random.default_rng(seed)
    labels, factors = sample_factors(n, rng)
    if not clutter:
        factors = factors.without_clutter()
    x = render(factors, image_size=image_size, channels=channels, rng=rng)
    return x, labels, factors
