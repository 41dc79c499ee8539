"""GRAM: the Gramian-volume contrastive loss, the ``gram`` baseline (DESIGN §2.3).

Cicchetti, Grassucci, Sigillo, Comminiello, "Gramian Multimodal Representation Learning
and Alignment", ICLR 2025. GRAM aligns n ≥ 2 modalities at once by scoring a tuple of
unit vectors with the volume of the parallelotope they span, vol = sqrt(det G) with G the
Gram matrix of the tuple: aligned tuples have volume near 0. Its contrastive loss uses
−vol/τ as the similarity and the matching tuple as the positive.

Adaptation to heterogeneous models/tasks: a "modality" is a client's model. The anchor is
z_i^n (client n's own encoder, with its graph); the other vectors are the M selected
peers' representations of public sample j (the *same* index j for every peer, as GRAM
pairs the modalities of one sample), so the denominator runs over B tuples, not B^M. The
loss is one-directional (anchor → tuple, like the ``pairwise`` baseline here), whereas
GRAM also uses the tuple → anchor direction; only client n's encoder is trained by it.
The server reuses the PeerTerms reply without log α (DESIGN §2.1's S^n = Z^m/τ); the
client re-normalises its rows, which also puts noisy peer rows (§5.1) back on the sphere.
The temperature is the uniform τ of the config (``muscle.temperature``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gram_logits", "gram_loss", "gram_volumes"]

# det(G) of (nearly) dependent unit vectors can round to ≤ 0; sqrt needs a floor whose
# gradient stays finite (d sqrt(x)/dx = 1/(2 sqrt(x)) ≤ 1/(2·1e-4) at the floor).
_DET_FLOOR = 1e-8


def gram_volumes(anchor: Tensor, peers: Tensor) -> Tensor:
    """vol[i, j] = sqrt(det G_ij), G_ij the Gram matrix of [a_i, p^1_j, ..., p^M_j].

    ``anchor`` (B, d) and ``peers`` (M, B, d) must have unit rows. Built from dot products
    only, batched: G is a (B, B, M+1, M+1) tensor, its determinants one ``linalg.det`` call,
    in float64 (a 4×4 determinant of near-parallel rows loses float32 precision).
    """
    if anchor.dim() != 2 or peers.dim() != 3 or peers.shape[1:] != anchor.shape:
        raise ValueError(f"expected anchor (B, d) and peers (M, B, d); got {tuple(anchor.shape)} "
                         f"and {tuple(peers.shape)}")
    a = anchor.double()
    p = peers.double()
    b, m = a.shape[0], p.shape[0]
    cross = torch.einsum("id,kjd->ijk", a, p)          # (B_i, B_j, M): a_i · p^k_j
    among = torch.einsum("kjd,ljd->jkl", p, p)         # (B_j, M, M):  p^k_j · p^l_j
    g = a.new_empty((b, b, m + 1, m + 1))
    g[..., 0, 0] = (a * a).sum(-1)[:, None]
    g[..., 0, 1:] = cross
    g[..., 1:, 0] = cross
    g[..., 1:, 1:] = among.unsqueeze(0).expand(b, b, m, m)
    det = torch.linalg.det(g)
    return det.clamp_min(_DET_FLOOR).sqrt().to(anchor.dtype)


def gram_logits(anchor: Tensor, peers: Tensor, tau: float) -> Tensor:
    """(B, B) logits −vol[i, j]/τ after re-normalising every row to the unit sphere."""
    if tau <= 0:
        raise ValueError(f"temperature must be positive, got {tau}")
    return -gram_volumes(F.normalize(anchor, dim=-1), F.normalize(peers, dim=-1)) / tau


def gram_loss(anchor: Tensor, peers: Tensor, tau: float) -> Tensor:
    """Mean over anchors of cross-entropy over the B tuples, positive j = i."""
    logits = gram_logits(anchor, peers, tau)
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))
