"""Batched server math for plain mode (DESIGN §3): S^n, log α^n and peer sums.

Pure torch on a ``device`` argument, batched over all clients of an exchange (one stacked
tensor, no per-client Python loop): the same code runs on CPU and CUDA.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("server.device is 'cuda' but torch.cuda.is_available() is False")
    return torch.device(name)


def pair_indices(m: int) -> list[tuple[int, int]]:
    """(k, l) with k < l in the order the loss functions expect (itertools.combinations)."""
    return list(itertools.combinations(range(m), 2))


@dataclass(frozen=True)
class PeerTermsBatch:
    """S^n and log α^n for every client of one exchange, stacked along dim 0."""

    scaled_peers: torch.Tensor     # (N, M, B, d): Z^{m_k} / τ_{n,m_k}
    log_alpha_pairs: torch.Tensor  # (N, P, B, B): −γ_{m_k,m_l} Z^{m_k} Z^{m_l ᵀ}


def peer_terms(
    z: torch.Tensor, selection: torch.Tensor, inv_tau: torch.Tensor, gamma: torch.Tensor,
    *, device: torch.device | str = "cpu", with_alpha: bool = True,
) -> PeerTermsBatch:
    """S^n and the pairwise log-α matrices of §2.1 for every client at once.

    ``z``: (N, B, d) stacked representations; ``selection``: (N, M) indices into dim 0;
    ``inv_tau``/``gamma``: (N, N) pair matrices 1/τ and γ. All Gram matrices between
    clients are formed once, (N, N, B, B), then gathered per (n, k, l): O(N²B²d) work.
    """
    dev = torch.device(device)
    z = z.to(dev)
    sel = selection.to(dev)
    inv_tau = inv_tau.to(dev, z.dtype)
    n, m = sel.shape
    rows = torch.arange(n, device=dev).unsqueeze(1)
    scaled = z[sel] * inv_tau[rows, sel][..., None, None]
    pairs = pair_indices(m)
    if not with_alpha or not pairs:
        empty = z.new_zeros((n, 0, z.shape[1], z.shape[1]))
        return PeerTermsBatch(scaled.cpu(), empty.cpu())
    gram = torch.einsum("abd,ced->acbe", z, z)  # (N, N, B, B): Z^a Z^c ᵀ
    k_idx = torch.tensor([k for k, _ in pairs], device=dev)
    l_idx = torch.tensor([l for _, l in pairs], device=dev)
    first, second = sel[:, k_idx], sel[:, l_idx]  # (N, P)
    g = gamma.to(dev, z.dtype)[first, second]
    log_alpha = -g[..., None, None] * gram[first, second]
    return PeerTermsBatch(scaled.cpu(), log_alpha.cpu())


def peer_sums(
    z: torch.Tensor, membership: torch.Tensor, *, device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """U^n = Σ_{m∈Q_n} z^m and q^n = Σ_{m∈Q_n} ||z^m||² (§2.2) for all n in one einsum.

    ``membership``: (N, N) 0/1 matrix, row n marks Q_n.
    """
    dev = torch.device(device)
    z = z.to(dev)
    w = membership.to(dev, z.dtype)
    u = torch.einsum("nm,mbd->nbd", w, z)
    q = torch.einsum("nm,mb->nb", w, (z * z).sum(-1))
    return u.cpu(), q.cpu()


def membership_matrix(selection: torch.Tensor, n: int) -> torch.Tensor:
    """(N, M) selection indices → (N, N) 0/1 membership matrix."""
    w = torch.zeros(n, n)
    w.scatter_(1, selection, 1.0)
    return w


def sum_form_terms(u: torch.Tensor, q: torch.Tensor, *, tau: float, gamma: float,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """S = U/τ and log α = −(γ/2)(||U||² − q) of §2.2 from group sums, batched over the
    exchange's nb batches: U (nb, B, d), q (nb, B) → ((nb, B, d), (nb, B)), float64."""
    dev = torch.device(device)
    u = u.to(dev, torch.float64)
    q = q.to(dev, torch.float64)
    log_alpha = -0.5 * gamma * ((u * u).sum(-1) - q)
    return (u / tau).cpu(), log_alpha.cpu()
