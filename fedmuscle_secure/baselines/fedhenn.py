"""FedHeNN: representation-kernel (CKA) alignment, the ``fedhenn`` baseline (DESIGN §2.3).

Makhija, Han, Ho, Ghosh, "Architecture Agnostic Federated Learning for Neural Networks",
ICML 2022. Each client's local objective gets a proximal term η·d(K^n, K̄): the distance
between its representation (kernel) matrix on a shared "representation alignment
dataset" and the server's global kernel, the average of the clients' kernels, with
d = 1 − linear CKA (Kornblith et al. 2019).

Adaptation here: the alignment data is the round's public batch (same rows for every
client, DESIGN §2); the kernels are Z Zᵀ of the unit-norm shared-space representations
(so models of any width compare), and the server's K̄^n averages the kernels of the M
peers selected for n (FedHeNN averages all clients, n included; excluding n keeps the
term from pulling toward itself and reuses the peer selection of Algorithm 1). The term is
minimised as a separate step in the contrastive phase with the contrastive optimizer,
with η = 1 (FedHeNN tunes η per dataset and grows it over rounds; with its own optimizer
and learning rate ``cl_lr`` here, η only rescales that rate, so 1 is kept). Only the
kernel (B × B) is sent back; no peer representation reaches the client.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fedhenn_loss", "linear_cka", "peer_kernels"]

ETA = 1.0


def _centre(k: Tensor) -> Tensor:
    """H K H with H = I − 11ᵀ/B, without forming H."""
    return k - k.mean(-1, keepdim=True) - k.mean(-2, keepdim=True) + k.mean((-2, -1), keepdim=True)


def linear_cka(k: Tensor, l: Tensor, eps: float = 1e-12) -> Tensor:
    """CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for kernel matrices (…, B, B).

    HSIC(K, L) ∝ tr(K H L H) = ⟨HKH, HLH⟩_F (the 1/(B−1)² factors cancel).
    """
    kc, lc = _centre(k), _centre(l)
    hsic_kl = (kc * lc).sum((-2, -1))
    hsic_kk = (kc * kc).sum((-2, -1))
    hsic_ll = (lc * lc).sum((-2, -1))
    return hsic_kl / (hsic_kk * hsic_ll).clamp_min(eps).sqrt()


def fedhenn_loss(anchor: Tensor, global_kernel: Tensor, eta: float = ETA) -> Tensor:
    """η·(1 − CKA(Z Zᵀ, K̄)) for the anchor Z (B, d) and the server's K̄ (B, B)."""
    k = anchor @ anchor.T
    return eta * (1.0 - linear_cka(k, global_kernel.to(k.dtype)))


def peer_kernels(z: Tensor, selection: Tensor, *, device: torch.device | str = "cpu") -> Tensor:
    """K̄^n = mean_{m ∈ Q_n} Z^m Z^mᵀ for every client n at once: (N, B, d) → (N, B, B).

    Batched (DESIGN §3): every client's kernel once (one einsum), then one weighted sum
    with the (N, N) row-normalised membership matrix of the selection.
    """
    dev = torch.device(device)
    z = z.to(dev)
    n, m = selection.shape
    w = torch.zeros(n, n, device=dev, dtype=z.dtype)
    w.scatter_(1, selection.to(dev), 1.0 / m)
    kernels = torch.einsum("nbd,ned->nbe", z, z)
    return torch.einsum("nm,mbe->nbe", w, kernels).cpu()
