"""The words of the progress display: phases named from protocol messages, metric and ε
texts, and ``run``'s one bar over the whole run (:mod:`fedmuscle_secure.console.progress` draws).

Shared by ``run`` (the simulator plays every organisation) and the deployment
(:mod:`fedmuscle_secure.console.deploy`), so a phase or an ε reads the same in both.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TextIO

from fedmuscle_secure.config import ExperimentConfig
from fedmuscle_secure.console.progress import (
    DETAIL,
    NORMAL,
    Progress,
    duration,
    is_terminal,
    megabytes,
)
from fedmuscle_secure.messages import Finish, Message, RoundPlan

#: The metrics a round line shows by default (with -v: every metric).
HEADLINE = ("test_metric", "val_metric", "task_loss", "cl_loss")
GUARANTEES = ("record", "client")


class PhaseTracker:
    """Names the phase a message to a client starts: ``local update``, ``exchange epoch
    1/2, batch 3/8`` (the round plan gives the numbers of epochs and batches), ``final
    local update``. ``members``: how many clients one process plays (the simulator: each
    one's local update is counted ``i/n``)."""

    def __init__(self, members: int | None = None) -> None:
        self.members = members
        self.epochs: int | None = None
        self.batches: int | None = None
        self._plans = 0

    def describe(self, msg: Message) -> str:
        if isinstance(msg, RoundPlan):
            shape = tuple(msg.batches.shape)
            self.epochs, self.batches = (shape[0], shape[1]) if len(shape) >= 2 else (0, 0)
            self._plans += 1
            return "local update" + self._who(msg.client)
        if isinstance(msg, Finish):
            return "final local update" + self._who(msg.client)
        epoch, batch = getattr(msg, "epoch", None), getattr(msg, "batch", None)
        if epoch is None:
            return type(msg).__name__
        text = f"exchange epoch {epoch + 1}/{self.epochs or '?'}"
        where = "whole epoch" if batch is None else f"batch {batch + 1}/{self.batches or '?'}"
        return f"{text}, {where}"

    def _who(self, client: str) -> str:
        if self.members is None:
            return ""
        return f" {client} ({min(self._plans or 1, self.members)}/{self.members})"


def dp_guarantees(cfg: ExperimentConfig, method: str) -> tuple[str, ...]:
    """The guarantees whose ε a round line shows: ``record`` with DP-SGD, ``client`` with
    representation or update noise (never for the ``local`` reference, which releases nothing)."""
    p = cfg.privacy
    out = ("record",) if p.dp_sgd.enabled else ()
    if p.client_noise is not None and method != "local":
        out += ("client",)
    return out


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None  # "not reported", absent


def score_text(value: object) -> str:
    """A test metric as ``0.812``; what is not a number (``not reported``) as it is."""
    v = _number(value)
    return str(value) if v is None else f"{v:.3f}"


def epsilon_value(metrics: Mapping[str, object], guarantee: str) -> str:
    """``1.20`` from a round's ``eps_<guarantee>``; ``?`` where it is not there."""
    v = _number(metrics.get(f"eps_{guarantee}"))
    return "?" if v is None else f"{v:.2f}"


def epsilon_text(metrics: Mapping[str, object], guarantees: tuple[str, ...]) -> str:
    """``ε record 1.20, client 0.45`` from a round's ``eps_record``/``eps_client``; empty
    without DP."""
    parts = [f"{g} {epsilon_value(metrics, g)}" for g in guarantees]
    return ("ε " + ", ".join(parts)) if parts else ""


def metrics_text(metrics: Mapping[str, object], verbosity: int = NORMAL) -> str:
    """``test_metric 0.812  cl_loss 1.234``: the headline metrics (every one at -v; ε and
    bytes are shown apart)."""
    names = [k for k in HEADLINE if k in metrics]
    if verbosity >= DETAIL:
        names += sorted(k for k in metrics if k not in HEADLINE and not k.startswith("eps_")
                        and not k.startswith("bytes_") and k != "wall_time_s")
    out = []
    for k in names:
        v = _number(metrics[k])
        out.append(f"{k} {metrics[k]}" if v is None else f"{k} {v:.4g}")
    return "  ".join(out)


def traffic_text(sent: float, received: float) -> str:
    return f"sent {megabytes(sent)} received {megabytes(received)}"


class RunProgress:
    """``run``'s display: one bar over every method's rounds (the local reference
    included), the phase in progress with its batch i/n, and one line per round.

    ``stream``: stdout by default; ``bar``: None draws one when ``stream`` is a terminal;
    ``verbosity`` :data:`~fedmuscle_secure.console.progress.QUIET` prints nothing, DETAIL adds a
    line per phase where there is no bar.
    """

    def __init__(self, cfg: ExperimentConfig, methods: list[str], *,
                 stream: TextIO | None = None, bar: bool | None = None,
                 verbosity: int = NORMAL) -> None:
        stream = stream if stream is not None else sys.stdout
        shown = verbosity >= NORMAL
        self.rounds, self.methods, self.name = cfg.training.rounds, list(methods), cfg.name
        self.verbosity = verbosity
        self.guarantees = {m: dp_guarantees(cfg, m) for m in methods}
        self.bar = Progress(len(methods) * self.rounds, label=cfg.name, stream=stream,
                            bar=shown and (is_terminal(stream) if bar is None else bar),
                            show_lines=shown)
        self._last_phase = ""

    def started(self, run_dir: object, *, resume: bool = False) -> None:
        what = " then ".join(m if m != "local" else "the local reference" for m in self.methods)
        self.bar.line(f"{self.name}: {'resuming ' if resume else ''}{what}, "
                      f"{self.rounds} rounds each; run directory {run_dir}")

    def resumed(self, method: str, completed: int) -> None:
        """``method`` continues after round ``completed`` (its earlier rounds count as done)."""
        self.bar.skip(completed)
        self.bar.line(f"{method}: resuming after round {completed}/{self.rounds}")

    def phase(self, method: str, r: int | str, text: str) -> None:
        where = f"round {r}/{self.rounds}" if r != "final" else "final"
        full = f"{method} {where}: {text}"
        if full == self._last_phase:  # one update per phase, not per message
            return
        self._last_phase = full
        self.bar.phase(full)
        if self.verbosity >= DETAIL and not self.bar.bar:
            self.bar.line(full)

    def round_end(self, method: str, r: int, per_client: Mapping[str, Mapping[str, object]],
                  seconds: float) -> None:
        self.bar.advance(seconds=seconds)
        clients = []
        for name, m in per_client.items():
            text = f"{name}={score_text(m.get('test_metric'))}"
            eps = epsilon_text(m, self.guarantees[method])
            clients.append(text + (f" ({eps})" if eps else ""))
            if self.verbosity >= DETAIL:
                clients[-1] += f" [{metrics_text(m, self.verbosity)}]"
        sent = sum(_number(m.get("bytes_sent")) or 0.0 for m in per_client.values())
        got = sum(_number(m.get("bytes_received")) or 0.0 for m in per_client.values())
        rate = self.bar.rate
        self.bar.line(f"{method} round {r}/{self.rounds}  {' '.join(clients)}  "
                      f"{traffic_text(sent, got)}  round {seconds:.1f} s  "
                      f"run {rate.done}/{rate.total} rounds  {rate.summary()}")

    def final(self, method: str, per_client: Mapping[str, Mapping[str, object]]) -> None:
        parts = []
        for name, m in per_client.items():
            eps = epsilon_text(m, self.guarantees[method])
            parts.append(f"{name}={score_text(m.get('test_metric'))}" + (f" ({eps})" if eps else ""))
        self.bar.line(f"{method} final  {' '.join(parts)}  "
                      f"elapsed {duration(self.bar.rate.elapsed)}")

    def close(self) -> None:
        self.bar.close()
