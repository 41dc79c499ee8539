"""FedHeNN kernel alignment: linear CKA against a numpy formula, batched server kernels."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmuscle_secure.baselines.fedhenn import fedhenn_loss, linear_cka, peer_kernels
from fedmuscle_secure.server.selection import select_peers, selection_tensor


def _np_cka(k, l):
    b = k.shape[0]
    h = np.eye(b) - np.ones((b, b)) / b
    hsic = lambda x, y: np.trace(x @ h @ y @ h)
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_cka_matches_numpy_formula():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9, 5, generator=g, dtype=torch.float64), torch.randn(9, 3, generator=g, dtype=torch.float64)
    k, l = x @ x.T, y @ y.T
    assert float(linear_cka(k, l)) == pytest.approx(_np_cka(k.numpy(), l.numpy()), rel=1e-10)


def test_cka_of_a_kernel_with_itself_is_one_and_scale_invariant():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    k = x @ x.T
    assert float(linear_cka(k, k)) == pytest.approx(1.0)
    assert float(linear_cka(k, 3.5 * k)) == pytest.approx(1.0)
    assert float(fedhenn_loss(x, 2.0 * k)) == pytest.approx(0.0, abs=1e-12)


def test_loss_is_positive_for_unrelated_kernels_and_has_gradient():
    g = torch.Generator().manual_seed(2)
    z = F.normalize(torch.randn(8, 4, generator=g), dim=-1).requires_grad_(True)
    other = F.normalize(torch.randn(8, 4, generator=g), dim=-1)
    loss = fedhenn_loss(z, other @ other.T)
    assert 0 < float(loss.detach()) <= 2
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_peer_kernels_match_a_per_client_loop():
    g = torch.Generator().manual_seed(3)
    z = F.normalize(torch.randn(5, 6, 4, generator=g, dtype=torch.float64), dim=-1)
    sel = selection_tensor(select_peers(list(range(5)), 3, g), list(range(5)))
    got = peer_kernels(z, sel)
    for n in range(5):
        want = sum(z[m] @ z[m].T for m in sel[n].tolist()) / 3
        torch.testing.assert_close(got[n], want)
