"""Which exchanges this client has released for: at most one release per exchange (DESIGN §4.4).

Without representation noise a client's release for an exchange is the same every time the
exchange is run, so two sums over groups that differ by one member give that member's
input exactly (S_A − S_B); with noise under ``secagg``, the difference isolates one noise
*share*, smaller than the σ the ledger records. Both happen when an exchange runs twice:
after a server restart (``--resume`` re-runs the interrupted round and the clients rewind)
or when an active server opens a second instance for the same exchange. So a client
releases at most once per exchange (round, epoch, batch), in every mode.

The ledger is the memory of what left the client, so the rule survives a restart of either
side: :meth:`ReleaseRecord.from_ledger` reads every ``egress`` entry. Without a ledger (an
in-memory run) the record lives as long as the client object, across rewinds.

What a client does when asked again for a released exchange is decided by the state
machine (:mod:`client.state`): on a re-run of the round it *sits out* that exchange (a
:class:`~fedmuscle_secure.messages.SitOut`, counted as a drop for that exchange only);
a second setup within the same attempt is a protocol violation and is refused.
"""

from __future__ import annotations

from collections.abc import Iterable

Exchange = tuple[int, int, int | None]  # (round, epoch, batch); batch None: a whole epoch


def exchange_key(round_: int, epoch: int, batch: int | None) -> Exchange:
    return (int(round_), int(epoch), None if batch is None else int(batch))


class ReleaseRecord:
    """The set of exchanges released for; see the module docstring."""

    def __init__(self, released: Iterable[Exchange] = ()) -> None:
        self._released: set[Exchange] = set(released)

    @classmethod
    def from_ledger(cls, entries: Iterable[dict]) -> ReleaseRecord:
        """Every exchange an ``egress`` entry of the ledger names (a release left)."""
        out = set()
        for e in entries:
            if e.get("kind") != "egress":
                continue
            body = e["body"]
            epoch, batch = body["exchange"]
            out.add(exchange_key(body["round"], epoch, batch))
        return cls(out)

    def __contains__(self, key: Exchange) -> bool:
        return key in self._released

    def mark(self, key: Exchange) -> None:
        self._released.add(key)

    def __len__(self) -> int:
        return len(self._released)
