"""The server's side of the weight-sharing methods (DESIGN §2.7): sample-weighted means of the
clients' shared parameters, each part over its own group.

A release's parts (:data:`~fedmuscle_secure.methods.PART_SCOPES`) are averaged over every releasing client
(``backbone``) or over the releasing clients with the same task (``head``: M-Fed's
within-task scope, and FedAvg's whole model when every client has the same task). Each
client receives the means of its own parts, in its own layout. Pure torch on ``device``.
"""

from __future__ import annotations

from collections import Counter

import torch

from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.messages import WeightAverage, WeightRelease
from fedmuscle_secure.methods import PART_SCOPES

#: The largest FedAvg weight a client may claim (its training-set size): bounds the means.
MAX_SAMPLES = 2 ** 31


def check_weight_release(msg: WeightRelease, stage: str) -> None:
    """The round's one weight exchange (epoch 0, whole round); a finite float32 vector whose
    length is the sum of its known parts'; an integer weight in [1, MAX_SAMPLES]."""
    if (msg.epoch, msg.batch) != (0, None):
        raise ProtocolError(msg.client, stage, f"a WeightRelease belongs to exchange (epoch 0, "
                            f"batch None), got (epoch {msg.epoch}, batch {msg.batch})")
    names = [n for n, _ in msg.parts]
    if not names or any(n not in PART_SCOPES for n in names) or len(set(names)) != len(names) \
            or any(int(k) < 1 for _, k in msg.parts):
        raise ProtocolError(msg.client, stage, f"WeightRelease parts must be distinct, known "
                            f"({sorted(PART_SCOPES)}) and non-empty; got {list(msg.parts)}")
    total = sum(int(k) for _, k in msg.parts)
    w = msg.w
    if w.dtype != torch.float32 or w.shape != (total,) or not torch.isfinite(w).all():
        raise ProtocolError(msg.client, stage, f"WeightRelease must be finite float32 of shape "
                            f"({total},); got {w.dtype} {tuple(w.shape)}")
    if type(msg.samples) is not int or not 1 <= msg.samples <= MAX_SAMPLES:
        raise ProtocolError(msg.client, stage, f"WeightRelease samples must be an integer in "
                            f"[1, {MAX_SAMPLES}], got {msg.samples!r}")


def weight_averages(r: int, epoch: int, batch: int | None, order: list[str],
                    releases: dict[str, WeightRelease], spaces: dict[str, str], *,
                    device: torch.device) -> list[WeightAverage]:
    """Every releasing client's :class:`WeightAverage` (module docs). Clients that share a
    part must give it the same length (the same architecture): otherwise ProtocolError
    naming the client."""
    segments: dict[str, dict[str, torch.Tensor]] = {c: {} for c in order}
    for c in order:
        offset = 0
        for name, k in releases[c].parts:
            segments[c][name] = releases[c].w[offset:offset + int(k)]
            offset += int(k)
    def group_of(name: str, c: str) -> tuple[str, str]:
        """Which group client ``c``'s part ``name`` is averaged over: all, or its task's."""
        return (name, "all" if PART_SCOPES[name] == "all" else spaces[c])

    means: dict[tuple[str, str], tuple[torch.Tensor, tuple[str, ...]]] = {}
    for c in order:
        for name in segments[c]:
            key = group_of(name, c)
            if key in means:
                continue
            group = tuple(m for m in order if name in segments[m] and group_of(name, m) == key)
            _same_sizes(name, {m: segments[m][name].numel() for m in group})
            stacked = torch.stack([segments[m][name] for m in group]).to(device, torch.float64)
            mean = _sample_weighted_mean(stacked, [releases[m].samples for m in group])
            means[key] = (mean.float().cpu(), group)
    out = []
    for c in order:
        parts = [means[group_of(name, c)] for name, _ in releases[c].parts]
        out.append(WeightAverage(c, r, epoch, batch, tuple(g for _, g in parts),
                                 torch.cat([m for m, _ in parts]).contiguous()))
    return out


def similarity_steps(r: int, epoch: int, batch: int | None, order: list[str],
                     releases: dict[str, WeightRelease], *, beta: float,
                     device: torch.device) -> list[WeightAverage]:
    """MIRA-style aggregation (DESIGN §2.7): every client's adapters take a step towards its
    neighbours', θ_k ← (1 − β) θ_k + β Σ_l a_kl θ_l, with a_kl (l ≠ k) the positive part of
    the cosine similarity of θ_k and θ_l, normalised over l (uniform when no neighbour is
    similar): clients whose adapters point the same way, related tasks, pull each other most.
    One part, ``backbone`` (the adapters), the same length for every client."""
    for c in order:
        if [n for n, _ in releases[c].parts] != ["backbone"]:
            raise ProtocolError(c, "collecting", f"mira releases one part, the adapters; got "
                                f"{list(releases[c].parts)}")
    _same_sizes("backbone", {c: releases[c].w.numel() for c in order})
    theta = torch.stack([releases[c].w for c in order]).to(device, torch.float64)
    a = similarity_matrix(theta)
    moved = (1.0 - beta) * theta + beta * (a @ theta)
    peers = tuple(order)
    return [WeightAverage(c, r, epoch, batch, (peers,), moved[k].float().cpu().contiguous())
            for k, c in enumerate(order)]


def mocha_steps(r: int, epoch: int, batch: int | None, order: list[str],
                releases: dict[str, WeightRelease], *, device: torch.device) -> list[WeightAverage]:
    """MOCHA-style aggregation (DESIGN §2.7): the backbone (the shared features) is the
    sample-weighted mean over every client, as FedAvg's; the task heads, one linear model
    per client in one space, are coupled through the learned task relationship Ω
    (:func:`task_relationship`): each client receives, in its head's place, the head that
    minimises the regulariser tr(W Ω⁻¹ Wᵀ) with the others' heads held fixed
    (:func:`mocha_targets`), which its next LocalUpdate pulls its own head towards."""
    for c in order:
        if [n for n, _ in releases[c].parts] != ["backbone", "head"]:
            raise ProtocolError(c, "collecting", f"mocha releases two parts, backbone and head; "
                                f"got {list(releases[c].parts)}")
    nb = {c: int(releases[c].parts[0][1]) for c in order}
    _same_sizes("backbone", nb)
    _same_sizes("head", {c: releases[c].w.numel() - nb[c] for c in order})
    w = torch.stack([releases[c].w for c in order]).to(device, torch.float64)
    k = nb[order[0]]
    backbone = _sample_weighted_mean(w[:, :k], [releases[c].samples for c in order])
    targets = mocha_targets(w[:, k:])
    peers = tuple(order)
    return [WeightAverage(c, r, epoch, batch, (peers, peers),
                          torch.cat([backbone, targets[i]]).float().cpu().contiguous())
            for i, c in enumerate(order)]


def task_relationship(heads: torch.Tensor, floor: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """MOCHA's Ω step (Smith et al., NeurIPS 2017, after Zhang & Yeung 2010): for the (m, p)
    matrix of the clients' linear models (one row each), Ω = (W Wᵀ)^½ / tr((W Wᵀ)^½), the
    minimiser of tr(W Ω⁻¹ Wᵀ) over Ω ⪰ 0 with tr Ω = 1. Returns (Ω, Ω⁻¹); the inverse keeps
    eigenvalues of Ω above ``floor`` times the largest (a rank-deficient W, e.g. two
    identical heads, has no inverse: its null directions are the floor's)."""
    gram = heads @ heads.T
    gram = (gram + gram.T) / 2
    vals, vecs = torch.linalg.eigh(gram)
    root = vals.clamp(min=0.0).sqrt()
    total = root.sum().clamp(min=1e-300)
    omega = (vecs * (root / total)) @ vecs.T
    lam = (root / total).clamp(min=floor * float((root / total).max().clamp(min=1e-300)))
    return omega, (vecs / lam) @ vecs.T


def mocha_targets(heads: torch.Tensor) -> torch.Tensor:
    """(m, p) per client k: argmin over w_k of tr(W Ω⁻¹ Wᵀ) with the other rows fixed,
    −Σ_{l≠k} (Ω⁻¹)_kl w_l / (Ω⁻¹)_kk: the combination of the related clients' heads that
    the task-relationship regulariser pulls client k's head towards."""
    _, prec = task_relationship(heads)
    off = prec - torch.diag(torch.diagonal(prec))
    return -(off @ heads) / torch.diagonal(prec)[:, None]


def similarity_matrix(theta: torch.Tensor) -> torch.Tensor:
    """(N, N) a_kl: positive cosine similarity between rows, zero diagonal, rows summing to
    1 (a row with no positive similarity: uniform over the others)."""
    n = theta.shape[0]
    unit = theta / theta.norm(dim=1, keepdim=True).clamp(min=1e-12)
    a = (unit @ unit.T).clamp(min=0.0)
    a.fill_diagonal_(0.0)
    off = 1.0 - torch.eye(n, dtype=theta.dtype, device=theta.device)
    empty = a.sum(1, keepdim=True) <= 0
    a = torch.where(empty, off, a)
    return a / a.sum(1, keepdim=True).clamp(min=1e-12)


def _sample_weighted_mean(rows: torch.Tensor, samples: list[int]) -> torch.Tensor:
    """FedAvg's mean of the (m, P) ``rows``, each weighted by its client's FedAvg weight."""
    n = torch.tensor([float(s) for s in samples], dtype=rows.dtype, device=rows.device)
    return (n[:, None] * rows).sum(0) / n.sum()


def _same_sizes(part: str, sizes: dict[str, int]) -> None:
    """Every client of a group gives ``part`` the same length; otherwise a ProtocolError
    naming a client whose length differs from the most common one (the first listed on a
    tie), so one odd client cannot get an honest one blamed."""
    if len(set(sizes.values())) <= 1:
        return
    counts = Counter(sizes.values())
    common = max(counts, key=lambda n: (counts[n], -list(sizes.values()).index(n)))
    odd = next(m for m, n in sizes.items() if n != common)
    raise ProtocolError(odd, "collecting", f"its {part} has {sizes[odd]} weights where the "
                        f"group's others have {common}: averaging needs the same architecture")
