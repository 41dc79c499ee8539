"""Augmentation views of images (DESIGN §8.1: per-client random affine views helped).

Data, not training: the contrastive phase of every method and the ``simclr`` baseline draw
their views from here, each from its own seeded generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine_view(x: torch.Tensor, generator: torch.Generator, *, size: int,
                       max_rotate_deg: float = 12.0, max_shift: float = 0.12,
                       scale_range: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """A random affine view of each image (§8.1: per-client random affine views helped).

    Images are first resized to the model's input size so the warp does not lose the
    little resolution 8×8 digits have.
    """
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    n = x.shape[0]
    u = torch.rand(n, 4, generator=generator)
    angle = (u[:, 0] * 2 - 1) * math.radians(max_rotate_deg)
    scale = scale_range[0] + u[:, 1] * (scale_range[1] - scale_range[0])
    tx, ty = (u[:, 2] * 2 - 1) * max_shift, (u[:, 3] * 2 - 1) * max_shift
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
