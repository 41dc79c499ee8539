"""Augmentation views of images (DESIGN §8.1: per-client random affine views helped) and of
texts (token dropout, DESIGN §8.2).

Data, not training: the contrastive phase of every method and the ``simclr`` baseline draw
their views from here, each from its own seeded generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Share of a text's tokens a view drops (replaces by padding, which the encoder masks).
TOKEN_DROPOUT = 0.1


def random_view(x: torch.Tensor, generator: torch.Generator, *, size: int) -> torch.Tensor:
    """A random view of each sample: an affine warp of an image, token dropout of a text
    (token ids, any integer dtype)."""
    if x.is_floating_point():
        return random_affine_view(x, generator, size=size)
    return token_dropout_view(x, generator)


def token_dropout_view(ids: torch.Tensor, generator: torch.Generator, *,
                       p: float = TOKEN_DROPOUT, pad_id: int = 0) -> torch.Tensor:
    """Each text with every token but the first dropped with probability ``p``: set to the
    padding id, so the encoder's attention and pooling skip it (the first token, [CLS] for
    a BERT tokenizer, keeps every view non-empty). Padding stays padding."""
    drop = torch.rand(ids.shape, generator=generator) < p
    drop[:, 0] = False
    return ids.masked_fill(drop, pad_id)


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
