import itertools

import pytest
import torch
import torch.nn.functional as F

from fedmuscle_secure.losses import muscle_loss, muscle_loss_from_server
from fedmuscle_secure.server.computation import membership_matrix, peer_sums, peer_terms
from fedmuscle_secure.server.selection import select_peers, selection_tensor


def _setup(n=5, b=6, d=4, m=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, b, d, generator=g, dtype=torch.float64), dim=-1)
    tau = 0.1 + torch.rand(n, n, generator=g, dtype=torch.float64)
    tau = (tau + tau.T) / 2
    tau_p = 0.1 + torch.rand(n, n, generator=g, dtype=torch.float64)
    tau_p = (tau_p + tau_p.T) / 2
    gamma = 1 / tau_p - 1 / tau
    sel = selection_tensor(select_peers(list(range(n)), m, g), list(range(n)))
    return z, tau, gamma, sel


def test_peer_terms_match_per_client_loops():
    z, tau, gamma, sel = _setup()
    out = peer_terms(z, sel, 1 / tau, gamma)
    n, m = sel.shape
    for i in range(n):
        for k in range(m):
            torch.testing.assert_close(out.scaled_peers[i, k], z[sel[i, k]] / tau[i, sel[i, k]])
        for p, (k, l) in enumerate(itertools.combinations(range(m), 2)):
            a, c = sel[i, k], sel[i, l]
            torch.testing.assert_close(out.log_alpha_pairs[i, p], -gamma[a, c] * z[a] @ z[c].T)


def test_client_loss_from_server_terms_equals_loss_on_raw_peers():
    """The client never sends its own Z through the server's math, yet gets the same loss."""
    z, tau, gamma, sel = _setup()
    out = peer_terms(z, sel, 1 / tau, gamma)
    for i in range(z.shape[0]):
        peers = z[sel[i]]
        ref = muscle_loss(z[i], peers, tau[i, sel[i]], gamma[sel[i]][:, sel[i]])
        got = muscle_loss_from_server(z[i], out.scaled_peers[i], out.log_alpha_pairs[i])
        torch.testing.assert_close(got, ref)


def test_peer_sums_match_loops():
    z, _, _, sel = _setup(n=6, m=2)
    u, q = peer_sums(z, membership_matrix(sel, 6))
    for i in range(6):
        torch.testing.assert_close(u[i], z[sel[i]].sum(0))
        torch.testing.assert_close(q[i], (z[sel[i]] ** 2).sum(-1).sum(0))


def test_selection_excludes_self_and_is_distinct_and_seeded():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = select_peers(list(range(7)), 3, g1)
    assert a == select_peers(list(range(7)), 3, g2)
    for n, peers in a.items():
        assert n not in peers and len(set(peers)) == 3
    counts = torch.zeros(7, 7)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        for n, peers in select_peers(list(range(7)), 3, g).items():
            counts[n, peers] += 1
    off = counts[~torch.eye(7, dtype=torch.bool)]
    # each of the 6 others is picked with probability 1/2: 150 expected of 300, sd ~8.7
    assert off.min() > 100 and off.max() < 200
    with pytest.raises(ValueError):
        select_peers([0, 1, 2], 3, g)


@pytest.mark.gpu
def test_cuda_path_matches_cpu():
    z, tau, gamma, sel = _setup(n=6, b=16, d=8, m=3)
    cpu = peer_terms(z, sel, 1 / tau, gamma, device="cpu")
    gpu = peer_terms(z, sel, 1 / tau, gamma, device="cuda")
    torch.testing.assert_close(gpu.scaled_peers, cpu.scaled_peers)
    torch.testing.assert_close(gpu.log_alpha_pairs, cpu.log_alpha_pairs)
    u_c, q_c = peer_sums(z, membership_matrix(sel, 6), device="cpu")
    u_g, q_g = peer_sums(z, membership_matrix(sel, 6), device="cuda")
    torch.testing.assert_close(u_g, u_c)
    torch.testing.assert_close(q_g, q_c)
