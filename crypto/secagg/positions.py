"""Where each member stands in one secure-aggregation instance (DESIGN §4.2).

Both sides must agree, without exchanging anything, on two facts about every member: the
Shamir x-coordinate at which it holds its peers' shares, and whether it adds or subtracts
the pair mask it shares with a peer (so that every pair mask cancels in the sum). The
client computes them when it shares and masks, the server when it reconstructs and
unmasks; defining them once here keeps the two state machines independent of each other.
"""

from __future__ import annotations

from collections.abc import Sequence


def pair_sign(me: str, peer: str) -> int:
    """+1 if ``me`` adds the pair mask with ``peer``, −1 if it subtracts it."""
    return 1 if me < peer else -1


def share_x(participants: Sequence[str], client: str) -> int:
    """The Shamir x-coordinate of ``client``: its 1-based position among ``participants``
    (0 is the secret itself, so no member may hold it)."""
    return participants.index(client) + 1
