"""A client's contrastive phase on the public data (DESIGN §2, Algorithm 1 lines 6–15).

Its own optimizer (§8.1: sharing Adam state with the task optimizer hurt), the round's
views of the public rows (one seeded generator per client and round), the anchors Z^n it
releases, and one optimizer step per public batch from the server's reply. Baselines that
release task outputs or nothing (DESIGN §2.3) bring their own phase
(:func:`~fedmuscle_secure.baselines.phases.public_phase`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedmuscle_secure.baselines.phases import PublicBatch, no_grad_release, public_phase
from fedmuscle_secure.client.contrastive import contrastive_loss
from fedmuscle_secure.client.protection.base import PlainReply
from fedmuscle_secure.client.release_record import ReleaseGuard
from fedmuscle_secure.client.settings import ClientSettings
from fedmuscle_secure.data.tasks import Task
from fedmuscle_secure.data.views import random_view
from fedmuscle_secure.messages import GroupOutputs, SumTerms
from fedmuscle_secure.models import ClientModel
from fedmuscle_secure.models.mixture import MixtureModel
from fedmuscle_secure.seeding import derive_seed


class ContrastivePhase:
    """Views, anchors and steps of the contrastive phase (module docs)."""

    def __init__(self, name: str, model: ClientModel | MixtureModel, task: Task, public_x: torch.Tensor,
                 settings: ClientSettings, guard: ReleaseGuard) -> None:
        self.name, self.model, self.task = name, model, task
        self.public_x = public_x
        self.settings = settings
        self.guard = guard  # told when the encoder changes (a new release may follow)
        # Baselines that release outputs or nothing (DESIGN §2.3); None: representations.
        # cofed/feddf: the partnered form until begin_round reads the round's members; either
        # form trains the same parameters, so the optimizer below fits both.
        self.phase = public_phase(settings.method)
        # Baselines that train on labels/logits of the public data move the head too; a
        # frozen backbone (adapters, DESIGN §2.5) stays out of either optimizer.
        params = model.trainable_parameters() if self.phase is not None and self.phase.trains_head \
            else model.encoder_parameters()
        self.optimizer = torch.optim.Adam(params, lr=settings.cl_lr,
                                          weight_decay=settings.weight_decay,
                                          fused=settings.fused_optimizer)
        self.losses: list[float] = []               # this round's, one per step
        self._views: torch.Generator | None = None
        self._pending: torch.Tensor | None = None   # per_batch: anchor with its graph

    @property
    def communicates(self) -> bool:
        """False for the baselines whose phase sends nothing (e.g. simclr)."""
        return self.phase is None or self.phase.communicates

    def begin_round(self, r: int, members: tuple[str, ...]) -> None:
        """Seed the round's views and the phase's module randomness; an output-space
        baseline takes its unpartnered form when none of ``members`` (the round plan's)
        shares its output space."""
        s = self.settings
        if self.phase is not None:
            self.phase = public_phase(s.method, partnered=any(p in members for p in s.output_partners))
        self._views = torch.Generator().manual_seed(derive_seed(s.seed, self.name, r, "views"))
        torch.manual_seed(derive_seed(s.seed, self.name, r, "cl-modules"))

    def train_silently(self, batches: torch.Tensor) -> None:
        """A phase that sends nothing: one local step per public batch of the plan."""
        assert self.phase is not None
        for idx in batches.reshape(-1, batches.shape[-1]):
            self._optimize(self.phase.local_loss(self.model, self.task, self._batch(idx)))

    def representations(self, batches: torch.Tensor, batch: int | None) -> torch.Tensor:
        """Z^n of one exchange over ``batches`` (one CL epoch's), (nb, B, d); per_batch keeps
        the anchor's graph for the step."""
        if self.phase is not None:  # cofed / feddf: task outputs on the plain rows
            rows = batches if batch is None else batches[batch:batch + 1]
            return no_grad_release(self.phase, self.model, self.task, [self.public_x[i] for i in rows])
        if batch is not None:
            self._pending = self._anchor(batches[batch])
            z = self._pending.detach().unsqueeze(0)
        else:
            self.model.eval()
            with torch.no_grad():
                z = torch.stack([self.model.represent(self.public_x[idx]) for idx in batches])
        return z.float().contiguous()

    def learn(self, reply: PlainReply | None, batches: torch.Tensor, batch: int | None,
              released: torch.Tensor | None,
              own_sq_norm: Callable[[int], torch.Tensor | None]) -> None:
        """The steps of one exchange from the server's ``reply`` (None: aborted, no step).
        per_batch uses the anchor computed at release time; per_epoch recomputes each
        anchor with the current encoder."""
        if batch is not None:
            if reply is not None:
                self._step(batches[batch], reply, 0, released, own_sq_norm, anchor=self._pending)
            self._pending = None
            return
        for b in range(batches.shape[0] if reply is not None else 0):
            self._step(batches[b], reply, b, released, own_sq_norm)

    def drop_pending(self) -> None:
        """Forget the anchor of an exchange that will get no reply."""
        self._pending = None

    def _random_view(self, x: torch.Tensor) -> torch.Tensor:
        assert self._views is not None
        return random_view(x, self._views, size=self.model.image_size)

    def _anchor(self, idx: torch.Tensor) -> torch.Tensor:
        self.model.train()
        x = self.public_x[idx]
        return self.model.represent(self._random_view(x) if self.settings.augment else x)

    def _batch(self, idx: torch.Tensor) -> PublicBatch:
        """A public batch for a baseline's phase (its training view drawn like the anchor's)."""
        x = self.public_x[idx]
        train_x = self._random_view(x) if self.settings.augment else x
        assert self._views is not None
        return PublicBatch(x, train_x, self._views, self.model.image_size)

    def _step(self, idx: torch.Tensor, reply: PlainReply, index: int,
              released: torch.Tensor | None, own_sq_norm: Callable[[int], torch.Tensor | None],
              anchor: torch.Tensor | None = None) -> None:
        """One optimizer step on public batch ``idx`` from the reply's batch ``index``
        (``anchor``: Z^n computed at release time, per_batch only)."""
        if isinstance(reply, GroupOutputs):
            assert self.phase is not None
            self._optimize(self.phase.reply_loss(self.model, self.task, self._batch(idx), reply,
                                                 index, self.name))
            return
        group = reply.peers if isinstance(reply, SumTerms) else reply.peers[index]
        if not group:  # every peer has left the federation: nothing to align to
            return
        s = self.settings
        loss = contrastive_loss(s.method, anchor if anchor is not None else self._anchor(idx),
                                reply, index, tau=s.tau, gamma=s.gamma,
                                released=released[index] if released is not None else None,
                                released_sq_norm=own_sq_norm(index))
        self._optimize(loss)

    def _optimize(self, loss: torch.Tensor | None) -> None:
        """One step of the contrastive-phase optimizer (None: nothing to learn here)."""
        if loss is None:
            return
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.guard.encoder_changed()
        self.losses.append(float(loss.detach()))
