"""The procedural shapes benchmark (DESIGN §8): determinism, sizes, and each latent factor
changing the image the way its definition says (oracles from geometry, not from a run)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmuscle_secure.data.shapes import (
    BIN_MARGIN,
    MAX_STROKES,
    NUM_CELLS,
    ShapeFactors,
    decode_cells,
    encode_cells,
    make_shapes,
    partition_groups,
    render,
)

SQUARE, ELLIPSE, TRIANGLE, CROSS = range(4)


def one(shape: int, scale: float = 0.4, rotation: float = 0.3, x: float = 0.0, y: float = 0.0,
        intensity: float = 1.0, colour=(1.0, 1.0, 1.0), background: float = 0.0) -> ShapeFactors:
    """The factors of a single image without clutter."""
    a = np.array
    return ShapeFactors(shape=a([shape]), scale=a([scale]), rotation=a([rotation]), x=a([x]),
                        y=a([y]), intensity=a([intensity]), colour=a([colour]),
                        background=a([background]), noise_std=np.zeros(1),
                        strokes=np.zeros((1, MAX_STROKES, 4)),
                        stroke_intensity=np.zeros((1, MAX_STROKES)))


def image(f: ShapeFactors, size: int = 32, channels: int = 1) -> np.ndarray:
    """The one image of ``f``: (S, S) for one channel, (C, S, S) otherwise."""
    out = render(f, image_size=size, channels=channels)[0]
    return out[0] if channels == 1 else out


def test_same_seed_same_images_other_seed_other_images():
    x1, y1, _ = make_shapes(300, seed=5)
    x2, y2, _ = make_shapes(300, seed=5)
    x3, y3, _ = make_shapes(300, seed=6)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, y3)
    assert np.abs(x1 - x3).mean() > 0.01


@pytest.mark.parametrize(("n", "size", "channels"), [(1, 16, 1), (257, 16, 3), (40, 24, 1),
                                                     (3000, 16, 1)])
def test_sizes_dtype_and_range(n, size, channels):
    x, y, f = make_shapes(n, seed=0, image_size=size, channels=channels)
    assert x.shape == (n, channels, size, size) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64 and len(f) == n
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert y.min() >= 0 and y.max() < NUM_CELLS


def test_rendering_in_chunks_matches_one_image_at_a_time():
    """Large requests are rendered chunk by chunk; each image depends on its factors only."""
    _, _, f = make_shapes(1500, seed=2, clutter=False)
    whole = render(f, image_size=16)
    for i in (0, 511, 512, 1499):
        single = ShapeFactors(**{k: getattr(f, k)[i:i + 1] for k in f.__dataclass_fields__})
        np.testing.assert_allclose(render(single, image_size=16)[0], whole[i], atol=1e-6)


def test_every_cell_is_drawn_and_cells_round_trip():
    _, y, _ = make_shapes(5000, seed=1)
    assert set(np.unique(y)) == set(range(NUM_CELLS))
    cells = np.arange(NUM_CELLS)
    np.testing.assert_array_equal(encode_cells(*decode_cells(cells)), cells)
    shape, scale, _, _ = decode_cells(cells)
    np.testing.assert_array_equal(partition_groups(cells), shape * 3 + scale)


@pytest.mark.parametrize("shape", range(4))
def test_scale_is_the_radius_of_the_disc_of_equal_area(shape):
    """Covered area grows with scale, and equals π r² (r in pixels) for every figure."""
    size = 64
    areas = [image(one(shape, scale=r), size).sum() for r in (0.25, 0.35, 0.45, 0.55)]
    assert all(a < b for a, b in zip(areas, areas[1:], strict=False))
    for r, area in zip((0.25, 0.35, 0.45, 0.55), areas, strict=True):
        assert area == pytest.approx(math.pi * (r * size / 2) ** 2, rel=0.02)


@pytest.mark.parametrize("shape", range(4))
@pytest.mark.parametrize(("x", "y", "quadrant"), [(-0.3, -0.25, "upper_left"),
                                                   (0.3, -0.25, "upper_right"),
                                                   (-0.3, 0.25, "lower_left"),
                                                   (0.3, 0.25, "lower_right")])
def test_position_moves_the_centre_of_mass(shape, x, y, quadrant):
    """The figure's centroid is its position (x right, y down), in the named quadrant."""
    size = 32
    img = image(one(shape, scale=0.3, x=x, y=y), size)
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    cy = (img.sum(axis=1) * coords).sum() / img.sum()
    cx = (img.sum(axis=0) * coords).sum() / img.sum()
    assert (cx, cy) == (pytest.approx(x, abs=0.02), pytest.approx(y, abs=0.02))
    upper = img[: size // 2].sum() > img[size // 2:].sum()
    left = img[:, : size // 2].sum() > img[:, size // 2:].sum()
    assert ("upper" if upper else "lower") + "_" + ("left" if left else "right") == quadrant


@pytest.mark.parametrize("shape", range(4))
def test_a_quarter_turn_of_the_factor_is_a_clockwise_quarter_turn_of_the_image(shape):
    """At the centre of an even-sized grid, rotation by π/2 maps pixels onto pixels."""
    a = image(one(shape, rotation=0.2))
    b = image(one(shape, rotation=0.2 + math.pi / 2))
    np.testing.assert_allclose(b, np.rot90(a, k=-1), atol=1e-5)


def test_rotation_changes_what_the_figure_covers_up_to_its_symmetry():
    def diff(shape, a, b):
        return np.abs(image(one(shape, rotation=a)) - image(one(shape, rotation=b))).sum()

    for shape in (SQUARE, ELLIPSE, TRIANGLE, CROSS):  # 30° apart: a different mask
        assert diff(shape, 0.1, 0.1 + math.pi / 6) > 10.0
    assert diff(SQUARE, 0.1, 0.1 + math.pi / 2) < 1e-3  # 4-fold symmetric
    assert diff(CROSS, 0.1, 0.1 + math.pi / 2) < 1e-3
    assert diff(TRIANGLE, 0.1, 0.1 + 2 * math.pi / 3) < 1e-3  # 3-fold
    assert diff(TRIANGLE, 0.1, 0.1 + math.pi / 2) > 10.0
    assert diff(ELLIPSE, 0.1, 0.1 + math.pi) < 1e-3  # 2-fold
    assert diff(ELLIPSE, 0.1, 0.1 + math.pi / 2) > 10.0


def test_intensity_colour_and_background():
    centre = slice(14, 18)
    grey = image(one(ELLIPSE, intensity=0.7, background=0.1))
    assert grey[centre, centre] == pytest.approx(0.7)
    assert grey[0, 0] == pytest.approx(0.1) and grey[-1, -1] == pytest.approx(0.1)
    rgb = image(one(ELLIPSE, intensity=0.8, colour=(1.0, 0.5, 0.25)), channels=3)
    for c, v in enumerate((0.8, 0.4, 0.2)):
        assert rgb[c, centre, centre] == pytest.approx(v)


def test_edges_are_anti_aliased():
    """A pixel the edge crosses is partly covered; a hard mask would hold only 0 and 1."""
    img = image(one(ELLIPSE, rotation=0.37))
    partial = (img > 0.05) & (img < 0.95)
    assert partial.sum() >= 10


def test_shapes_are_told_apart_at_equal_area():
    imgs = [image(one(s, rotation=0.1), 32) for s in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(imgs[i] - imgs[j]).sum() > 10.0


def test_clutter_adds_strokes_and_noise_to_the_same_figures():
    x, y, f = make_shapes(400, seed=3)
    x0, y0, f0 = make_shapes(400, seed=3, clutter=False)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(f.scale, f0.scale)
    assert (f0.stroke_intensity == 0).all() and (f0.noise_std == 0).all()
    strokes = (f.stroke_intensity > 0).sum(axis=1)
    assert set(np.unique(strokes)) == set(range(MAX_STROKES + 1))
    # without clutter, pixels far from the figure are the flat background
    clean = render(f0, image_size=16)
    assert np.abs(x - clean).max(axis=(1, 2, 3)).min() > 0.0  # noise reaches every image
    painted = render(f.without_clutter(), image_size=16)
    np.testing.assert_array_equal(painted, clean)


def test_continuous_factors_lie_inside_their_cells_away_from_the_edges():
    """An independent reading of the bins from the factors agrees with the labels, and no
    factor is within the margin of a bin edge."""
    _, y, f = make_shapes(3000, seed=4)
    shape, scale_bin, orient_bin, quadrant = decode_cells(y)
    np.testing.assert_array_equal(f.shape, shape)
    for value, bins, lo, width in ((f.scale, scale_bin, 0.25, 0.35 / 3),
                                   (np.degrees(f.rotation), orient_bin, 0.0, 30.0)):
        pos = (value - lo) / width
        np.testing.assert_array_equal(np.floor(pos).astype(int), bins)
        frac = pos - np.floor(pos)
        assert frac.min() >= BIN_MARGIN - 1e-9 and frac.max() <= 1 - BIN_MARGIN + 1e-9
    np.testing.assert_array_equal((f.y > 0) * 2 + (f.x > 0), quadrant)
    assert np.abs(f.x).min() >= 0.12 and np.abs(f.y).min() >= 0.12


def test_bad_arguments():
    with pytest.raises(ValueError, match="n: expected at least one image"):
        make_shapes(0, seed=0)
    with pytest.raises(ValueError, match="channels: expected 1 or 3"):
        render(one(SQUARE), channels=2)
