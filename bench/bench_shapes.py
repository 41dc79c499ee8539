"""Render speed of the procedural shapes benchmark (DESIGN §8).

One process, one core (numpy's element-wise kernels run single-threaded): the median
images per second of :func:`make_shapes` over several image sizes, grey and coloured,
with and without clutter; then the time to render the shipped config's images next to
the time to load the embedded digits, measured in the same process. Target: well above
10,000 images/s at the clients' 16 × 16.

    python bench/bench_shapes.py [--images 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os

from _stopwatch import median_seconds

from fedmuscle_secure.data.digits import load_digits_images
from fedmuscle_secure.data.shapes import make_shapes
from fedmuscle_secure.federation.checks import load_config

CASES = ((16, 1, True), (16, 1, False), (16, 3, True), (32, 1, True), (64, 1, True))
SHIPPED = "configs/shapes.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20_000, help="images per call at 16 x 16")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"load average at start {os.getloadavg()[0]:.2f}; {args.repeats} repeats, median")
    print(f"{'size':>5} {'chan':>4} {'clutter':>7} {'images':>7} {'images/s':>10} {'us/image':>9}")
    for size, channels, clutter in CASES:
        n = max(1_000, args.images * 256 // (size * size))  # the same pixels per call

        def render(n=n, size=size, channels=channels, clutter=clutter):
            make_shapes(n, seed=0, image_size=size, channels=channels, clutter=clutter)

        sec = median_seconds(render, args.repeats)
        print(f"{size:>5} {channels:>4} {clutter!s:>7} {n:>7} {n / sec:>10,.0f} "
              f"{1e6 * sec / n:>9.1f}")
    d = load_config(SHIPPED).data
    shipped = median_seconds(lambda: make_shapes(d.shapes.num_images, seed=d.shapes.seed,
                                                  image_size=d.image_size,
                                                  channels=d.shapes.channels), args.repeats)
    digits = median_seconds(load_digits_images, args.repeats)
    print(f"\n{SHIPPED}: {d.shapes.num_images} images rendered in {shipped:.3f} s; the "
          f"embedded digits load in {digits:.3f} s (ratio {shipped / digits:.2f}x)")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
