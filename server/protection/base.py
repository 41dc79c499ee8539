"""What every server-side protection offers the state machine (DESIGN §4).

The defaults are those of a mode whose releases arrive as one message per client and that
has no stages of its own (``plain``, ``ckks``); ``secagg`` overrides the stage hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedmuscle_secure.errors import ProtocolError
from fedmuscle_secure.messages import (
    EncryptedRepresentations,
    EncryptedWeightUpdate,
    Message,
    Representations,
    TaskOutputs,
    WeightRelease,
)
from fedmuscle_secure.server.weights import (
    check_weight_release,
    mocha_steps,
    similarity_steps,
    weight_averages,
)

Release = (Representations | EncryptedRepresentations | TaskOutputs | WeightRelease
           | EncryptedWeightUpdate)


@dataclass(frozen=True)
class ReplyInputs:
    """One exchange whose releases are all in: what the replies are computed from.

    ``order``: the releasing clients (active order); ``selections[b]``: (N, M) peer indices
    into ``order`` for batch b; ``inv_tau``/``gamma``: the (N, N) pair matrices of ``order``.
    """

    method: str
    round: int
    epoch: int
    batch: int | None
    order: list[str]
    releases: dict[str, Release]
    selections: list[torch.Tensor]
    inv_tau: torch.Tensor
    gamma: torch.Tensor
    device: torch.device


@dataclass(frozen=True)
class WeightInputs:
    """One weight exchange whose releases are all in (DESIGN §2.7): ``order`` the releasing
    clients (active order), ``spaces`` each one's task, ``beta`` MIRA's step."""

    method: str
    round: int
    epoch: int
    batch: int | None
    order: list[str]
    releases: dict[str, Release]
    spaces: dict[str, str]
    beta: float
    device: torch.device


class ServerProtection:
    """The hooks :class:`~fedmuscle_secure.server.state.FedMuscleServer` calls (module docs)."""

    #: Messages of the mode's own stages, handed to :meth:`on_stage`.
    stage_types: tuple[type, ...] = ()

    @property
    def events(self) -> list[dict]:
        """The mode's own events of the run (for ``events.jsonl``); none by default."""
        return []

    def release_types(self, method: str) -> tuple[type, ...]:
        """The release messages the server collects under ``method``, one per client."""
        raise NotImplementedError

    def check_quorum(self, r: int, active: list[str], completed: int) -> None:
        """Raise :class:`~fedmuscle_secure.errors.QuorumLost` if round ``r`` cannot run."""

    def start_round(self, r: int, plan: torch.Tensor, exchange: str,
                    active: list[str]) -> list[Message]:
        """The mode's own messages opening round ``r`` (after the plans)."""
        return []

    def on_stage(self, msg: Message, active: list[str]) -> list[Message]:
        """A message of :attr:`stage_types`."""
        raise ProtocolError(getattr(msg, "client", "?"), "collecting",
                            f"server cannot accept a {type(msg).__name__}")

    def drop(self, client: str, active: list[str]) -> list[Message]:
        """``client`` left the federation mid-round."""
        return []

    def waiting(self) -> tuple[tuple, tuple[str, ...], tuple[str, ...]] | None:
        """(stage key, who answered, who is awaited) of the mode's own stage, or None."""
        return None

    def close_stage(self, active: list[str]) -> list[Message]:
        """The deadline of the stage :meth:`waiting` names passed."""
        return []

    def check_release(self, msg: Release, nb: int, rows: int, method: str, stage: str) -> None:
        """Refuse a release of the wrong shape: (nb, B, width) finite float32 (weights:
        :func:`~fedmuscle_secure.server.weights.check_weight_release`)."""
        if isinstance(msg, WeightRelease):
            check_weight_release(msg, stage)
            return
        z = msg.outputs if isinstance(msg, TaskOutputs) else msg.z
        if z.ndim != 3 or z.shape[0] != nb or z.shape[1] != rows \
                or z.dtype != torch.float32 or not torch.isfinite(z).all():
            raise ProtocolError(msg.client, stage,
                                f"{type(msg).__name__} must be finite float32 of shape (nb={nb}, "
                                f"B={rows}, width); got {z.dtype} {tuple(z.shape)}")

    def replies(self, inputs: ReplyInputs) -> list[Message]:
        """Every releasing client's reply for one exchange."""
        raise NotImplementedError

    def weight_replies(self, inputs: WeightInputs) -> list[Message]:
        """Every releasing client's reply for one weight exchange: by default the server
        step on the weights in the clear (:mod:`~fedmuscle_secure.server.weights`)."""
        i = inputs
        args = (i.round, i.epoch, i.batch, i.order, i.releases)
        if i.method == "mira":
            return list(similarity_steps(*args, beta=i.beta, device=i.device))
        if i.method == "mocha":
            return list(mocha_steps(*args, device=i.device))
        return list(weight_averages(*args, i.spaces, device=i.device))
