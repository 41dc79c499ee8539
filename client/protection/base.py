"""What every client-side protection offers the state machine (DESIGN §4).

The defaults are those of ``plain``: the client releases as soon as an exchange starts, its
release travels as one message, and the server's reply arrives in the clear. ``ckks``
seals the release and opens the reply; ``secagg`` replaces the single release with the
stages of a secure sum that the server opens (:attr:`ClientProtection.server_opens_exchange`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedmuscle_secure.messages import (
    GroupOutputs,
    Message,
    PeerKernel,
    PeerSums,
    PeerTerms,
    Representations,
    SumTerms,
    TaskOutputs,
    WeightAverage,
)

#: The plaintext replies the contrastive step understands (DESIGN §10).
PlainReply = PeerTerms | PeerSums | SumTerms | PeerKernel | GroupOutputs | WeightAverage


class ClientProtection:
    """The hooks :class:`~fedmuscle_secure.client.state.FedMuscleClient` calls (module docs)."""

    #: True: every exchange begins with the server's setup, not with the client's release.
    server_opens_exchange: bool = False
    #: True: a weight-sharing round sums each shared part's update in its own exchange
    #: (0, k) (DESIGN §2.7: secagg, ckks); False: one release of every shared weight.
    weight_parts: bool = False
    #: The server replies this mode accepts while a release is out.
    reply_types: tuple[type, ...] = (PeerTerms, PeerSums, PeerKernel, GroupOutputs, WeightAverage)
    #: Messages of the mode's own stages (a secure sum's), handed to the stage hooks.
    stage_types: tuple[type, ...] = ()

    def open(self, reply: Message) -> PlainReply:
        """The reply as the contrastive step reads it."""
        return reply  # type: ignore[return-value]

    def seal(self, r: int, epoch: int, batch: int | None) -> Callable[[torch.Tensor], object] | None:
        """The last step of the release pipeline (after clip → noise), or None."""
        return None

    def release_message(self, name: str, r: int, epoch: int, batch: int | None, out: object,
                        *, outputs: bool) -> tuple[Message, torch.Tensor | None]:
        """(the message carrying release ``out``, what leave-one-out subtracts, or None)."""
        assert isinstance(out, torch.Tensor)
        if outputs:  # cofed / feddf release task outputs
            return TaskOutputs(name, r, epoch, batch, out), out
        return Representations(name, r, epoch, batch, out), out

    def aborted(self, recorded: bool) -> bool:
        """The server aborted the exchange; whether this client's release had left
        (``recorded``: the release guard holds it)."""
        return recorded

    def own_sq_norm(self, index: int) -> torch.Tensor | None:
        """q of this client's own contribution to a sum that includes it, or None."""
        return None

    def exchange_over(self) -> None:
        """The exchange ended (reply received or aborted)."""

    def round_metrics(self) -> dict[str, float]:
        """The mode's own counters of the round just ended, for the round report."""
        return {}

    # -- the mode's own stages (secagg only) ------------------------------------------
    @property
    def in_progress(self) -> bool:
        """Whether this client already answered a setup of the current exchange."""
        return False

    def is_setup(self, msg: Message) -> bool:
        """Whether stage message ``msg`` opens an exchange."""
        return False

    def begin(self, msg: Message, z: torch.Tensor) -> tuple[Message, torch.Tensor]:
        """Answer setup ``msg`` with representations ``z``: (the reply, own contribution)."""
        raise NotImplementedError

    def begin_weights(self, msg: Message, part: str, update: torch.Tensor) -> Message:
        """Answer setup ``msg`` of weight part ``part``'s secure sum with ``update``."""
        raise NotImplementedError

    def seal_weights(self, r: int, k: int, part: str,
                     update: torch.Tensor) -> tuple[Message, dict[str, object]]:
        """The release of weight part ``part`` (exchange (0, ``k``)) with this round's
        ``update`` of it, and what the ledger's egress entry says of it beyond its digest."""
        raise NotImplementedError

    def check_mean_update(self, part: str, mean: torch.Tensor,
                          peers: tuple[str, ...]) -> None:
        """Refuse a mean update of ``part`` that no honest sum gives (ProtocolError)."""

    def step(self, msg: Message) -> tuple[Message, bool]:
        """Answer a later stage: (the reply, whether it is this client's release)."""
        raise NotImplementedError
