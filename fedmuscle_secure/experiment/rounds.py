"""What a finished round leaves in the run directory (DESIGN §11.1): metric rows, the round's
events, the checkpoint and ``metrics.csv``.

The simulator's run loop (:mod:`fedmuscle_secure.experiment.run`) and the gRPC server
(:mod:`fedmuscle_secure.server.grpc.process`) drive the same :class:`FedMuscleServer`; they
record its rounds here, so a deployed run's files read exactly like a simulated one's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.experiment.rundir import RunDir

__all__ = ["RoundRecorder", "metric_row"]


class _Server(Protocol):
    """What the bookkeeping reads of the server state machine (``server.state``)."""

    last_selection: Any
    departures: list[dict[str, Any]]
    sat_out: list[dict[str, Any]]
    deadlines: list[dict[str, object]]
    protection: Any  # the mode's strategy; its ``events`` are the mode's own (secagg's)


def metric_row(cfg: ExperimentConfig, method: str, r: int | str, client: str, metric: str,
               metrics: dict[str, Any]) -> dict[str, Any]:
    """One ``metrics.csv`` row: who (method, client, its model and task), when, and what."""
    spec = next(c for c in cfg.clients if c.name == client)
    return {"method": method, "round": r, "client": client, "model": spec.model,
            "task": spec.task, "metric": metric, **metrics}


@dataclass
class RoundRecorder:
    """The records of one method's rounds in ``run``."""

    run: RunDir
    method: str
    keep: int

    def events(self, r: int, server: _Server, seconds: float,
               metrics: dict[str, dict[str, Any]]) -> None:
        """``round_end``, then what the server decided in round ``r``: passed stage
        deadlines, departures, members that sat an exchange out, secagg's own events."""
        self.run.event("round_end", method=self.method, round=r, seconds=seconds,
                       selection=server.last_selection, metrics=metrics)
        for kind, entries in (("stage_deadline", server.deadlines),
                              ("client_left", server.departures),
                              ("exchange_sat_out", server.sat_out)):
            for e in entries:
                if e["round"] == r:
                    self.run.event(kind, method=self.method, **e)
        for e in server.protection.events:
            if e["round"] == r:
                self.run.event(e["event"], method=self.method,
                               **{k: v for k, v in e.items() if k != "event"})

    def checkpoint(self, r: int | str, state: dict[str, Any], rows: list[dict[str, Any]], *,
                   finished: bool) -> None:
        """The state after round ``r`` (``FINAL``: the finished method) with its rows."""
        self.run.save_checkpoint(self.method, r, {**state, "rows": rows, "finished": finished},
                                 keep=self.keep)
