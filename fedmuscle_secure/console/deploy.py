"""What the operators of a deployment see: the server's and each organisation's lines.

Both sides log one INFO line per round, marked for the operator
(:data:`~fedmuscle_secure.console.progress.OPERATOR`, shown at the default verbosity), plus a line
when the run starts and when it ends; on a terminal a bar (:class:`Progress`) shows the
phase in progress between them. Transport code calls these hooks and does nothing else
for display.

What each side can say about ε. An organisation shows its own ε, from its own accountant
(the one that admits every release and writes the signed ledger). The server has no
accountant of its members: it shows the ε each member *reported* in its round report
(``eps_record``/``eps_client`` always leave, report_policy's ACCOUNTING class), labelled
so. It cannot check them while the run goes; ``fedmuscle-secure audit`` recomputes every ε
from the organisation's ledger against the server's receipt log afterwards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.console.progress import (
    DETAIL,
    OPERATOR,
    Progress,
    bar_stream,
    configured_verbosity,
    duration,
)
from fedmuscle_secure.console.rounds import (
    PhaseTracker,
    dp_guarantees,
    epsilon_text,
    epsilon_value,
    metrics_text,
    score_text,
    traffic_text,
)
from fedmuscle_secure.messages import Finish, Message, RoundPlan, payload_bytes


def _bar(total: int, label: str, status=None) -> Progress:
    stream = bar_stream()
    return Progress(total, label=label, stream=stream, bar=stream is not None, status=status,
                    show_lines=False)


class ServerProgress:
    """The server's lines: listening and whom it waits for, one per round (members, bytes,
    the ε members reported, elapsed and ETA), the end of the run. The bar polls the stage
    the server waits in (under the coordinator's lock)."""

    def __init__(self, cfg: ExperimentConfig, method: str, coordinator: Any, *, start: int,
                 log: logging.Logger) -> None:
        self.rounds, self.log, self.coordinator = cfg.training.rounds, log, coordinator
        self.members = list(coordinator.server.clients)
        self.guarantees = dp_guarantees(cfg, method)
        shape = tuple(coordinator.server.public_batches(max(start, 1)).shape)
        self.epochs, self.batches = shape[0], shape[1]
        self.progress = _bar(self.rounds, "server", status=self._status)
        self.progress.skip(start - 1)

    def listening(self, listen: str, port: int, start: int, waiting: list[str]) -> None:
        first = f"resuming at round {start}/{self.rounds}" if start > 1 else \
            f"{self.rounds} rounds"
        self.log.info("listening on %s (port %d), %s; waiting for %s to connect", listen, port,
                      first, ", ".join(waiting), extra=OPERATOR)

    def round_end(self, r: int, seconds: float, per_client: Mapping[str, Mapping[str, Any]],
                  left: list[str]) -> None:
        """Round ``r`` is over; ``per_client``: each remaining member's row as received
        (report and traffic), ``left``: who left in this round."""
        self.progress.reached(r, seconds)
        got = sum(float(m.get("bytes_sent", 0.0)) for m in per_client.values())
        sent = sum(float(m.get("bytes_received", 0.0)) for m in per_client.values())
        parts = [f"round {r}/{self.rounds} complete",
                 f"members {len(per_client)}/{len(self.members)}"
                 + (f" (left: {', '.join(left)})" if left else ""),
                 f"received {got / 1e6:.2f} MB sent {sent / 1e6:.2f} MB"]
        if self.guarantees:
            eps = ", ".join(f"{c} " + "/".join(epsilon_value(m, g) for g in self.guarantees)
                            for c, m in per_client.items())
            parts.append(f"ε reported by members ({'/'.join(self.guarantees)}): {eps}")
        parts += [f"round {seconds:.1f} s", self.progress.rate.summary()]
        self.log.info("  ".join(parts), extra=OPERATOR)
        if configured_verbosity() >= DETAIL:
            for c, m in per_client.items():
                self.log.info("round %d/%d %s: %s", r, self.rounds, c,
                              metrics_text(m, DETAIL))

    def finished(self, finals: Mapping[str, Mapping[str, Any]], run_dir: object) -> None:
        scores = ", ".join(f"{c} {score_text(m.get('test_metric'))}" for c, m in finals.items())
        self.log.info("run finished: %d rounds, final reports from %d/%d members (test_metric: "
                      "%s); elapsed %s; run directory %s", self.rounds, len(finals),
                      len(self.members), scores, duration(self.progress.rate.elapsed), run_dir,
                      extra=OPERATOR)

    def close(self) -> None:
        self.progress.close()

    def _status(self) -> str:
        """The stage the server waits in, for the bar: ``round 2/3: exchange epoch 1/1,
        batch 3/8 (2/3 answered)``."""
        with self.coordinator.cond:
            s = self.coordinator.server
            wait, r = s.waiting(), s.round + 1
            expected = list(s.active)
            missing = [c for c in expected if c not in self.coordinator.outboxes]
            started = self.coordinator.started
        if not started:
            return (f"waiting for {', '.join(missing)} to connect "
                    f"({len(expected) - len(missing)}/{len(expected)} connected)")
        if wait is None:
            if r > self.rounds:
                return "closing local updates and final reports"
            return f"between rounds (after {r - 1}/{self.rounds})"
        n = len(wait.answered) + len(wait.awaited)
        kind = wait.key[0]
        if kind in ("release", "secagg"):
            epoch, batch = wait.key[2], wait.key[3]
            where = "whole epoch" if batch is None else f"batch {batch + 1}/{self.batches}"
            stage = f"exchange epoch {epoch + 1}/{self.epochs}, {where}"
            if kind == "secagg":
                stage += f", secure sum {wait.key[-1]}"
        elif kind == "report" and not wait.answered:
            stage = "local update or reports"
        else:
            stage = str(kind)
        return f"round {r}/{self.rounds}: {stage} ({len(wait.answered)}/{n} answered)"


class ClientProgress:
    """One organisation's lines: connecting, one per round (its own metrics and ε from its
    own accountant, bytes, round time, elapsed and ETA), the end; and the timing its
    ``round_end`` events carry. The bar shows the phase of the last message received."""

    def __init__(self, cfg: ExperimentConfig, method: str, name: str,
                 log: logging.Logger) -> None:
        self.rounds, self.name, self.log = cfg.training.rounds, name, log
        self.guarantees = dp_guarantees(cfg, method)
        self.phases = PhaseTracker()
        self.progress = _bar(self.rounds, name)
        self._t0: float | None = None
        self._sent = self._received = 0.0

    def connecting(self, target: str) -> None:
        self.log.info("%s: connecting to %s (%d rounds)", self.name, target, self.rounds,
                      extra=OPERATOR)

    def connected(self, target: str) -> None:
        self.log.info("%s: connected to %s; waiting for the server to start the round",
                      self.name, target, extra=OPERATOR)

    def received(self, msg: Message) -> None:
        if isinstance(msg, RoundPlan | Finish):  # a round (or the closing update) starts
            self._t0, self._sent, self._received = time.perf_counter(), 0.0, 0.0
        self._received += payload_bytes(msg)
        where = f"round {msg.round}/{self.rounds}" if msg.round <= self.rounds else "final"
        self.progress.phase(f"{where}: {self.phases.describe(msg)}")

    def sent(self, msg: Message) -> None:
        self._sent += payload_bytes(msg)

    def timing(self) -> dict[str, float]:
        """The round so far at this organisation: seconds since its plan, payload bytes."""
        seconds = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
        return {"seconds": seconds, "bytes_sent": self._sent, "bytes_received": self._received}

    def report(self, label: int | str, metrics: Mapping[str, Any],
               timing: Mapping[str, float]) -> None:
        """The round ``label`` (or ``"final"``) is reported: one line."""
        if label != "final":
            self.progress.reached(int(label), timing["seconds"])
            self.progress.phase(f"round {label}/{self.rounds} reported; waiting for the server")
        eps = epsilon_text(metrics, self.guarantees)
        where = "final" if label == "final" else f"round {label}/{self.rounds} complete"
        parts = [f"{self.name}: {where}", metrics_text(metrics, configured_verbosity())]
        if eps:
            parts.append(f"{eps} (own accountant)")
        parts.append(traffic_text(timing["bytes_sent"], timing["bytes_received"]))
        if label == "final":
            parts.append(f"closing update {timing['seconds']:.1f} s")
        else:
            parts += [f"round {timing['seconds']:.1f} s", self.progress.rate.summary()]
        self.log.info("  ".join(p for p in parts if p), extra=OPERATOR)

    def finished(self, run_dir: object) -> None:
        self.log.info("%s: run finished; elapsed %s; own records and final model in %s",
                      self.name, duration(self.progress.rate.elapsed), run_dir, extra=OPERATOR)

    def close(self) -> None:
        self.progress.close()
