"""The embedded default dataset: scikit-learn's handwritten digits (DESIGN §8).

1,797 real 8×8 grey-level images of the digits 0–9 (the UCI "optdigits" test set),
shipped inside scikit-learn, so the default experiment needs no download.
"""

from __future__ import annotations

import numpy as np

# Pixel values in load_digits are counts of set bits in 4×4 blocks: integers 0..16.
_MAX_PIXEL = 16.0


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)``: x float32 (1797, 1, 8, 8) in [0, 1] (pixels / 16), y int64 digits.

    Fresh arrays on every call, so a caller that mutates them cannot affect another.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / _MAX_PIXEL)[:, None, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    return np.ascontiguousarray(x), y
