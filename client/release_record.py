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

The exchange key alone is not enough, because the same *content* can come back under
another key. :class:`ReleaseGuard` adds two rules:

* **Same encoder, same rows.** An exchange that ends without a reply (an abort) leaves the
  encoder unchanged, and the next exchange may cover the same public rows (every CL epoch
  permutes the whole public set): a server that withheld the sums of epoch e and set up
  epoch e + 1 over a smaller group would get the same releases again, permuted. The guard
  counts encoder changes (every optimizer step, every LocalUpdate) and refuses rows
  already released from the current encoder.
* **A re-run round.** After a restart the client rewinds to the end of the previous round
  and LocalUpdate, seeded from the experiment seed, can rebuild the very encoder it had
  released from before the crash; the in-memory rule above does not survive the restart.
  So in a round its ledger shows releases for, the client releases nothing more.

What a client does when the guard says no is decided by the state machine
(:mod:`client.state`): it *sits out* that exchange (a
:class:`~fedmuscle_secure.messages.SitOut`, counted as a drop for that exchange only); a
second setup within the same attempt is a protocol violation and is refused.
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

    def __iter__(self):
        return iter(self._released)


class ReleaseGuard:
    """Whether a client may release for an exchange (module docstring): the ledger's record
    of exchanges, the encoder's version and the rows released from it, the round re-run."""

    def __init__(self, record: ReleaseRecord) -> None:
        self.record = record
        self._version = 0
        self._rows: set[int] = set()      # public rows released from encoder version _rows_at
        self._rows_at = -1
        self._rerun: int | None = None    # a round the ledger shows releases for

    def start_round(self, round_: int) -> None:
        """A round plan arrived: is this a re-run of a round released in before?"""
        self._rerun = round_ if any(k[0] == round_ for k in self.record) else None

    def encoder_changed(self) -> None:
        """An optimizer step or a LocalUpdate changed what the client would release."""
        self._version += 1

    def refusal(self, round_: int, epoch: int, batch: int | None, rows: Iterable[int]) -> str | None:
        """Why the client must not release for this exchange, or None when it may."""
        key = exchange_key(round_, epoch, batch)
        if key in self.record:
            return (f"already released for exchange (round {round_}, epoch {epoch}, batch "
                    f"{batch}); a client releases at most once per exchange")
        if self._rerun == round_:
            return (f"round {round_} runs again after a restart and this client released in its "
                    "first run; the re-run could rebuild the same encoder, so it releases "
                    "nothing more this round")
        if self._rows_at == self._version and not self._rows.isdisjoint(int(i) for i in rows):
            return ("these public rows were already released from the current encoder (no "
                    "step since the last release): a second release would repeat it")
        return None

    def released(self, round_: int, epoch: int, batch: int | None, rows: Iterable[int]) -> None:
        self.record.mark(exchange_key(round_, epoch, batch))
        if self._rows_at != self._version:
            self._rows, self._rows_at = set(), self._version
        self._rows.update(int(i) for i in rows)
