"""A client's side of the weight-sharing methods (DESIGN §2.7): what it shares, the vector it
releases after LocalUpdate, the average it loads back, and the proximal pulls (FedProx's on
every shared weight, M-Fed's on the task head).

The shared parameters are the trainable ones (a backbone with LoRA adapters shares only the
adapters, the starting weights being the same public ones everywhere), grouped in *parts*:
``backbone`` (averaged over every client) and, where the method averages it, ``head``
(averaged over the clients with the same task). Buffers (batch-norm statistics) stay local,
as FedBN keeps them; the projection head, which only the contrastive phase trains, is not
shared. Parts are flattened in the model's own parameter order, so two clients with the same
architecture lay them out identically.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.models import ClientModel
from fedmuscle_secure.models.mixture import MixtureModel


def shared_parts(model: ClientModel | MixtureModel, method: str,
                 scope: str) -> list[tuple[str, list[nn.Parameter]]]:
    """The parts ``method`` shares and their parameters (module docs): M-Fed, MOCHA, FedEM
    and ``scope: model`` share backbone and head, ``scope: encoder`` and MIRA (its adapters)
    the backbone alone. A FedEM mixture shares every component's: each part holds that part
    of component 1, then of component 2, ..., so a mean of the parts is each component's
    mean."""
    members = list(model.components) if isinstance(model, MixtureModel) else [model]
    backbone = [p for m in members for p in m.backbone.parameters() if p.requires_grad]
    parts = [("backbone", backbone)]
    if method in ("mfed", "mocha", "fedem") or (scope == "model" and method != "mira"):
        parts.append(("head", [p for m in members for p in m.head.parameters()]))
    return parts


class WeightPhase:
    """Release, load and proximal term of one client (module docs)."""

    def __init__(self, model: ClientModel | MixtureModel, method: str, scope: str, mu: float,
                 keep: float = 1.0) -> None:
        self.parts = shared_parts(model, method, scope)
        self.keep = keep if method == "feddea" else 1.0  # FedDEA's decoupled update
        # FedProx pulls every shared weight towards the last average; M-Fed pulls the local
        # decoder (the task head) towards its task's global decoder, MOCHA the head towards
        # the combination of the related clients' heads its task relationship gives
        self.mu = mu if method in ("fedprox", "mfed", "mocha") else 0.0
        self.coupled_head = method == "mocha"  # the reply's head is a target, not a mean
        self._target: list[torch.Tensor] | None = None
        self._pulled = self.params if method == "fedprox" else \
            [p for name, ps in self.parts if name == "head" for p in ps]
        self._anchor: list[torch.Tensor] | None = None
        self._start: torch.Tensor | None = None
        # the shared weights the server knows this client to hold: the common starting
        # point, then the last average it loaded or its own last (noised) release
        self._known = self.vector()

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for _, ps in self.parts for p in ps]

    def layout(self) -> tuple[tuple[str, int], ...]:
        return tuple((name, sum(p.numel() for p in ps)) for name, ps in self.parts)

    def vector(self) -> torch.Tensor:
        """The shared parameters as one float32 vector (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params]).float().cpu().contiguous()

    def release(self) -> torch.Tensor:
        """What the client releases: its shared parameters, or under FedDEA the LocalUpdate's
        starting point plus its decoupled update (:func:`decoupled_update`)."""
        w = self.vector()
        if self.keep >= 1.0:
            return w
        return (self.start + decoupled_update(w - self.start, self.keep)).contiguous()

    @torch.no_grad()
    def load(self, w: torch.Tensor) -> None:
        """Set the shared parameters from a vector in :meth:`layout` order; under MOCHA the
        head's segment is not loaded but kept as the target the next LocalUpdate pulls the
        head towards."""
        expected = sum(n for _, n in self.layout())
        if w.ndim != 1 or w.numel() != expected:
            raise ValueError(f"expected a vector of {expected} shared weights, got {tuple(w.shape)}")
        offset, target = 0, []
        for name, ps in self.parts:
            for p in ps:
                value = w[offset:offset + p.numel()].view_as(p).to(p.dtype)
                if self.coupled_head and name == "head":
                    target.append(value.clone())
                else:
                    p.copy_(value)
                offset += p.numel()
        if self.coupled_head:
            self._target = target

    @property
    def known(self) -> torch.Tensor:
        """The shared weights the server knows this client to hold (float32 vector): where a
        release under update noise is measured from (DESIGN §2.7), so what leaves beyond
        what the server has is one clipped, noised update, whatever happened since (an
        average never received, empty plans, a sat-out round)."""
        return self._known

    def mark_known(self, w: torch.Tensor) -> None:
        """The server now knows ``w`` as this client's shared weights (an average it sent,
        or this client's own release)."""
        self._known = w.detach().float().cpu().clone().contiguous()

    def state_dict(self) -> dict:
        """What a checkpoint keeps beyond the model: MOCHA's head target and the weights
        the server knows."""
        return {"target": None if self._target is None else [t.clone() for t in self._target],
                "known": self._known.clone()}

    def load_state_dict(self, state: dict) -> None:
        target = state.get("target")
        self._target = None if target is None else [t.clone() for t in target]
        if state.get("known") is not None:
            self._known = state["known"].clone()

    # -- FedProx ------------------------------------------------------------------------
    def begin_local_update(self) -> None:
        """FedProx / M-Fed: pull towards the weights the LocalUpdate starts from (the last
        average); every method: remember them, the round's update is measured from there
        (FedDEA's decoupling, the secure sum's updates)."""
        if self.coupled_head:  # MOCHA: towards the last target (none before the first)
            self._anchor = self._target if self.mu > 0 else None
        else:
            self._anchor = [p.detach().clone() for p in self._pulled] if self.mu > 0 else None
        self._start = self.vector()

    @property
    def start(self) -> torch.Tensor:
        """The shared parameters the round's LocalUpdate started from (float32 vector)."""
        assert self._start is not None, "begin_local_update first"
        return self._start

    def update(self) -> torch.Tensor:
        """The round's update of the shared parameters as released: :meth:`release` minus
        :attr:`start` (FedDEA's decoupled update)."""
        return self.release() - self.start

    def segments(self, w: torch.Tensor) -> list[torch.Tensor]:
        """``w`` (in :meth:`layout` order) cut into its parts."""
        return list(torch.split(w, [n for _, n in self.layout()]))

    def apply_mean_updates(self, means: list[torch.Tensor | None]) -> None:
        """The secure sums' step (DESIGN §2.7): every part with a mean update moves from
        :attr:`start` by that mean (its group's FedAvg step); a part whose sum aborted
        (None) keeps this client's own weights."""
        start, own = self.segments(self.start), self.segments(self.vector())
        self.load(torch.cat([o if m is None else s + m
                             for s, o, m in zip(start, own, means, strict=True)]))

    @torch.no_grad()
    def add_proximal_gradient(self) -> None:
        """p.grad += mu (p − anchor): the gradient of mu/2 ||w − w_anchor||², added after the
        task gradient (under DP-SGD after the noise: it depends on no private record)."""
        if self._anchor is None:
            return
        for p, a in zip(self._pulled, self._anchor, strict=True):
            if p.grad is None:
                p.grad = self.mu * (p - a)
            else:
                p.grad.add_(p - a, alpha=self.mu)


def decoupled_update(delta: torch.Tensor, keep: float) -> torch.Tensor:
    """FedDEA's decoupling of one client's update (DESIGN §2.7): of the dimensions the update
    moves (Δ ≠ 0), the ``keep`` share with the largest response |Δ| (its task-relevant ones)
    is kept, the rest set to zero, and the kept ones rescaled so the update's L1 mass is
    unchanged; averaging such updates lets each task move its own dimensions with less
    interference from the others. The share is of the moving dimensions, not of all: a
    part's coordinates that no gradient reaches (a 3 × 3 convolution on a 1 × 1 feature map
    trains its centre tap only) are not the task's to keep, and counting them would make a
    share below the moving fraction keep every moving coordinate, which is FedAvg."""
    moving = int(torch.count_nonzero(delta))
    k = max(1, round(keep * moving))
    if k >= moving:
        return delta.clone()
    idx = torch.topk(delta.abs(), k, sorted=False).indices  # k < moving: every one moves
    out = torch.zeros_like(delta)
    out[idx] = delta[idx]
    return out * (float(delta.abs().sum()) / float(out.abs().sum()))


def clip_update(client: str, part: str, update: torch.Tensor, clip: float,
                stage: str) -> tuple[torch.Tensor, bool]:
    """What a client puts into a sum of updates (DESIGN §2.7, secagg and ckks): its update
    of ``part``, float64, L2-clipped to ``clip`` (``weight_sharing.update_clip``), and
    whether it was clipped. A non-finite update (training diverged) is a ProtocolError
    naming the client at ``stage``: nothing is released."""
    delta = update.to(torch.float64)
    norm = float(delta.norm())
    if not math.isfinite(norm):
        raise ProtocolError(client, stage, f"its update of part {part!r} is not finite "
                            "(training diverged: lower the learning rate); nothing released")
    clipped = norm > clip
    return (delta * (clip / norm) if clipped else delta), clipped
