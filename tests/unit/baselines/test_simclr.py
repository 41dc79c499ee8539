"""SimCLR's NT-Xent against an explicit loop over the 2B views; views are seeded."""

import math

import pytest
import torch
import torch.nn.functional as F

from fedmuscle_secure.baselines.simclr import nt_xent, simclr_view


def _reference(z1, z2, tau):
    z = [F.normalize(r, dim=0) for r in torch.cat([z1, z2])]
    b, total = z1.shape[0], 0.0
    for i in range(2 * b):
        pos = (i + b) % (2 * b)
        sims = {k: float(z[i] @ z[k]) / tau for k in range(2 * b) if k != i}
        total += math.log(sum(math.exp(s) for s in sims.values())) - sims[pos]
    return total / (2 * b)


def test_nt_xent_matches_explicit_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    assert float(nt_xent(z1, z2, 0.2)) == pytest.approx(_reference(z1, z2, 0.2), rel=1e-9)


def test_identical_views_beat_random_ones():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 8, generator=g)
    assert float(nt_xent(z, z)) < float(nt_xent(z, torch.randn(6, 8, generator=g)))


def test_views_are_resized_random_and_reproducible():
    x = torch.rand(4, 1, 8, 8)
    a = simclr_view(x, torch.Generator().manual_seed(5), size=16)
    b = simclr_view(x, torch.Generator().manual_seed(5), size=16)
    c = simclr_view(x, torch.Generator().manual_seed(6), size=16)
    assert a.shape == (4, 1, 16, 16)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
