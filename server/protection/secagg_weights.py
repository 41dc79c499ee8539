"""``protection: secagg`` for the weight-sharing methods (DESIGN §2.7, §4.2): the means of
the shared parts from secure sums of the clients' updates.

Each round runs one secure sum per shared part and averaging group, in a fixed order: the
backbone over every active client (exchange (0, 0)), then the task head over each task's
clients (exchange (0, 1), one instance per task) where the method averages it. A client
puts in ``[clip(Δ), 1]``: its update of the part since the round's LocalUpdate started,
L2-clipped to ``weight_sharing.update_clip``, and a count of 1. Every client weighs 1: the
same private weight (a training-set size) inside every sum would follow from any two sums
whose groups differ by one client, e.g. after a dropout. The server decodes Σ Δ and the
count, checks both (a count other than the survivors' number, or a mean beyond the clip,
shows a forged input: the sum is dropped, ``secagg_invalid_sum``), and every survivor
receives the mean update (:class:`~fedmuscle_secure.messages.WeightAverage` with the
survivors as its one group), which it adds to the weights it started from. The server
never sees one client's weights or update; it learns each group's mean update, which is
what FedAvg publishes anyway.

Every instance keeps the secure sum's rules (:mod:`server.protection.secagg`): a group's
threshold is the federation's t, or every member of a task with fewer than t clients; an
instance that cannot reach max(3, t) members aborts and its members keep their own weights
for that part; a client that misses a stage deadline sits out the rest of the round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedmuscle_secure.crypto.secagg.server import SecAggServer
from fedmuscle_secure.crypto.secagg.sum_encoding import SumEncoding
from fedmuscle_secure.messages import ExchangeAborted, Message, WeightAverage
from fedmuscle_secure.server.protection.secagg import SecAggServerProtection


@dataclass(frozen=True)
class WeightSum:
    """One secure sum of a round: part number ``part`` (its exchange is (0, part)) over the
    configured group ``members``, ``length`` weights, threshold ``threshold``."""

    part: int
    members: tuple[str, ...]
    length: int
    threshold: int


class SecAggWeightProtection(SecAggServerProtection):
    """The secure sums of the weight-sharing methods' rounds (module docs)."""

    def __init__(self, *, sums: list[WeightSum], threshold: int,
                 identities: Mapping[str, Ed25519PublicKey],
                 weight_encoding: Callable[[int, int], SumEncoding],
                 mean_bound: Callable[[int, int], float], device: torch.device | str) -> None:
        super().__init__(threshold=threshold, identities=identities,
                         encoding_for=weight_encoding, tau=1.0, gamma=0.0, device=device)
        keys = [(s.part, s.members) for s in sums]
        if len(set(keys)) != len(keys):
            raise ValueError(f"two secure sums of one part over one group: {keys}")
        self.sums = {(s.part, s.members): s for s in sums}
        self.mean_bound = mean_bound  # (length, members) -> the largest honest mean's norm

    def _round_queue(self, plan: torch.Tensor, exchange: str,
                     ) -> tuple[list[tuple[int, int | None, tuple[str, ...] | None]], int]:
        """Every part's sum over each of its groups, exchange (0, part), whatever the plan."""
        return [(0, part, members) for part, members in self.sums], 1

    def _sum(self, batch: int | None, members: tuple[str, ...] | None) -> WeightSum:
        assert batch is not None and members is not None
        return self.sums[(batch, members)]

    def _threshold(self, members: tuple[str, ...] | None) -> int:
        return next(s.threshold for (_, m), s in self.sums.items() if m == members)

    def _encoding(self, epoch: int, batch: int | None, members: tuple[str, ...] | None,
                  group_size: int) -> SumEncoding:
        return self.encoding_for(self._sum(batch, members).length, group_size)

    def _results(self, inst: SecAggServer, enc: SumEncoding, epoch: int, batch: int | None,
                 to: list[str]) -> list[Message]:
        """Σ Δ / count to every survivor. Every honest member puts in a count of 1 and an
        update of norm at most ``update_clip`` (plus its noise share under update noise): a
        count other than the survivors' number, or a mean beyond ``mean_bound``, shows a
        member's forged input; the sum is then told as an abort (nobody can be named: the
        inputs are masked) and every member keeps its own weights for the part."""
        u, q = enc.decode(inst.result)
        count = float(q.reshape(-1)[0])
        mean = u.reshape(-1).to(torch.float64) / max(count, 1.0)
        survivors = len(inst.survivors)
        norm = float(mean.norm())
        bound = self.mean_bound(int(mean.numel()), survivors)
        if abs(count - survivors) > 1e-6 or not norm <= bound:
            reason = (f"the secure sum is not one of clipped updates (count {count:g} for "
                      f"{survivors} members, mean update norm {norm:.6g} against the bound "
                      f"{bound:.6g}): a member's input was forged; no mean update "
                      "this round")
            self._events.append({"event": "secagg_invalid_sum", "round": self._round,
                                 "epoch": epoch, "batch": batch, "reason": reason})
            return [ExchangeAborted(c, self._round, epoch, batch, reason) for c in to]
        mean = mean.float().contiguous()
        return [WeightAverage(c, self._round, epoch, batch, (tuple(inst.survivors),), mean)
                for c in to]
