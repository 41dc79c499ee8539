"""What an operator sees while a run goes: a live bar on a terminal, plain lines elsewhere.

``run``, ``server`` and ``client`` all report through here, so they behave alike:

* on a terminal, complete lines (run start and end, one per round, warnings) scroll above
  one bar at the bottom, redrawn in place about twice a second (elapsed time, ETA, the
  phase in progress);
* anywhere else (a log file, a pipe, a CI job) only the complete lines, one per event and
  never a carriage return: a redrawn bar written to a file is a flood of ``\\r``-separated
  fragments that no one can read or ``grep``.

Verbosity (``--quiet`` / ``-v`` / ``-vv``): :data:`QUIET` shows warnings, errors and the
final result only; :data:`NORMAL` (the default) adds the operator's lines (log records
marked with :data:`OPERATOR`); :data:`DETAIL` every INFO record (and, in ``run``, every
phase change); :data:`DEBUG` everything.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

QUIET, NORMAL, DETAIL, DEBUG = -1, 0, 1, 2
#: ``extra=`` of a log record meant for the operator at the default verbosity.
OPERATOR = {"operator": True}
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

_LOCK = threading.RLock()          # one writer at a time: bar redraws and log records
_ACTIVE: Progress | None = None    # the bar on screen, cleared around every log record
_CONFIGURED: dict = {"verbosity": NORMAL, "stream": None}


def add_verbosity_options(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` and ``-v/--verbose`` (counted), exclusive; :func:`verbosity_of`
    makes them one level. Shared by ``run``, ``server`` and ``client``."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true",
                   help="only warnings, errors and the final result (default: also the run's "
                        "start and end and one line per round; a bar on a terminal)")
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="more detail: every INFO record (run: each phase as a line, every "
                        "metric); -vv: debug (every message received)")


def verbosity_of(quiet: bool, verbose: int) -> int:
    """The CLI's ``--quiet`` / ``-v`` count as one level (the parsers make them exclusive)."""
    return QUIET if quiet else min(max(verbose, 0), DEBUG)


def is_terminal(stream: TextIO | None) -> bool:
    """Whether ``stream`` is an interactive terminal a bar may be redrawn on (not a file,
    a pipe, a closed stream or a ``TERM=dumb`` console)."""
    try:
        return bool(stream is not None and stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError, OSError):
        return False


def duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03``; ``?`` when unknown (no round finished yet)."""
    if seconds is None:
        return "?"
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def megabytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


class RateEstimate:
    """Elapsed time, seconds per unit and time left, from the units done *in this process*
    (a resumed run's earlier rounds took time this process never saw, so they count as done
    but not in the rate). A unit's seconds are what the caller measured (a round's wall
    time), else the time since the previous unit."""

    def __init__(self, total: int, done: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.done, self.timed, self.spent = total, done, 0, 0.0
        self.clock = clock
        self.t0 = self._mark = clock()

    def skip(self, n: int) -> None:
        """``n`` units were done before this process (resumed from a checkpoint)."""
        self.done += n

    def advance(self, n: int = 1, seconds: float | None = None) -> None:
        now = self.clock()
        self.spent += (now - self._mark) if seconds is None else seconds
        self._mark = now
        self.done += n
        self.timed += n

    def reached(self, done: int, seconds: float | None = None) -> None:
        """``done`` units are done now (a client told to go back a round counts down)."""
        if done > self.done:
            self.advance(done - self.done, seconds)
        else:
            self.done = done

    @property
    def elapsed(self) -> float:
        return self.clock() - self.t0

    @property
    def per_unit(self) -> float | None:
        return self.spent / self.timed if self.timed else None

    @property
    def remaining(self) -> float | None:
        rate = self.per_unit
        return None if rate is None else rate * max(self.total - self.done, 0)

    def summary(self, unit: str = "round") -> str:
        """``3.1 s/round  elapsed 0:12  ETA 0:06`` (rate and ETA once a unit has finished)."""
        rate = self.per_unit
        head = f"{rate:.1f} s/{unit}  " if rate is not None else ""
        return f"{head}elapsed {duration(self.elapsed)}  ETA {duration(self.remaining)}"


class Progress:
    """A run's progress: ``total`` units (rounds), a phase text, and lines for the record.

    ``bar``: redraw a bar on ``stream`` (a terminal); otherwise :meth:`line` writes plain
    lines and :meth:`phase` is remembered for :meth:`render` only. ``status``: called on
    every redraw for the phase text when the phase is not pushed (the server polls the
    stage it waits in). ``show_lines``: False keeps :meth:`line` silent (the deployment
    prints its lines through :mod:`logging` instead).
    """

    def __init__(self, total: int, *, label: str, stream: TextIO | None = None,
                 bar: bool = False, unit: str = "round", status: Callable[[], str] | None = None,
                 refresh_s: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 show_lines: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.label, self.unit, self.status = label, unit, status
        self.bar, self.show_lines = bar, show_lines
        self.rate = RateEstimate(total, clock=clock)
        self._phase = ""
        self._drawn = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if bar:
            global _ACTIVE
            with _LOCK:
                _ACTIVE = self
            if refresh_s > 0:
                self._ticker = threading.Thread(target=self._tick, args=(refresh_s,),
                                                daemon=True, name="progress")
                self._ticker.start()

    # -- what callers report ----------------------------------------------------------
    def phase(self, text: str) -> None:
        """What is running now (``contrastive epoch 1/1, batch 3/8``); shown on the bar."""
        self._phase = text
        if self.bar:
            self.redraw()

    def skip(self, n: int) -> None:
        self.rate.skip(n)

    def reached(self, done: int, seconds: float | None = None) -> None:
        self.rate.reached(done, seconds)
        if self.bar:
            self.redraw()

    def advance(self, n: int = 1, seconds: float | None = None) -> None:
        self.rate.advance(n, seconds)
        if self.bar:
            self.redraw()

    def line(self, text: str) -> None:
        """One complete line for the record (above the bar on a terminal)."""
        if not self.show_lines:
            return
        with _LOCK:
            self._clear()
            self.stream.write(text + "\n")
            self._draw()
            self.stream.flush()

    def close(self) -> None:
        """Stop redrawing and take the bar off the screen (the lines stay)."""
        global _ACTIVE
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join(timeout=2)
        with _LOCK:
            self._clear()
            if _ACTIVE is self:
                _ACTIVE = None
            self.bar = False

    # -- the bar ------------------------------------------------------------------------
    def render(self, width: int = 100) -> str:
        """One bar line, at most ``width`` characters (a wrapped line cannot be redrawn)."""
        r = self.rate
        filled = int(12 * min(r.done, r.total) / r.total) if r.total else 12
        phase = (self.status() if self.status is not None else "") or self._phase
        rate = f"  {r.per_unit:.1f} s/{self.unit}" if r.per_unit is not None else ""
        # the phase before the rate: on a narrow terminal the line is cut at the end
        text = (f"{self.label} [{'#' * filled}{'.' * (12 - filled)}] {r.done}/{r.total} "
                f"{self.unit}s  ETA {duration(r.remaining)}" + (f"  {phase}" if phase else "")
                + f"{rate}  elapsed {duration(r.elapsed)}")
        return text[:max(width - 1, 10)]

    def redraw(self) -> None:
        with _LOCK:
            if self.bar:
                self._clear()
                self._draw()
                self.stream.flush()

    def _draw(self) -> None:
        if self.bar:
            width = shutil.get_terminal_size((100, 20)).columns
            self.stream.write(self.render(width))
            self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")  # to the line's start, erase it
            self._drawn = False

    def _tick(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.redraw()
            except (ValueError, OSError):  # the stream went away (interpreter shutting down)
                return


class BarSafeHandler(logging.StreamHandler):
    """A stream handler that takes the bar off the screen while it writes a record, so
    log lines and the bar never share a line."""

    def emit(self, record: logging.LogRecord) -> None:
        with _LOCK:
            bar = _ACTIVE
            if bar is not None:
                bar._clear()
            super().emit(record)
            if bar is not None:
                bar._draw()
                bar.stream.flush()


def _operator_or_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or bool(getattr(record, "operator", False))


def log_handler(verbosity: int, stream: TextIO) -> BarSafeHandler:
    """The handler a CLI process logs through at ``verbosity``: at the default one only the
    operator's lines and warnings pass."""
    handler = BarSafeHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    if verbosity == NORMAL:
        handler.addFilter(_operator_or_warning)
    return handler


def log_level(verbosity: int) -> int:
    return {QUIET: logging.WARNING, NORMAL: logging.INFO, DETAIL: logging.INFO}.get(
        verbosity, logging.DEBUG)


def configure_logging(verbosity: int, stream: TextIO | None = None) -> None:
    """The root logger for a CLI process at ``verbosity`` (module docs), and whether its
    progress may draw a bar (:func:`bar_stream`). As :func:`logging.basicConfig`, it
    leaves a root logger that already has handlers alone (a test harness's)."""
    stream = stream if stream is not None else sys.stderr
    logging.basicConfig(level=log_level(verbosity), handlers=[log_handler(verbosity, stream)])
    _CONFIGURED.update(verbosity=verbosity, stream=stream)


def bar_stream() -> TextIO | None:
    """Where the deployment's bar goes: the logging stream when :func:`configure_logging`
    set it to a terminal at the default verbosity or above; else None (no bar)."""
    stream = _CONFIGURED["stream"]
    if _CONFIGURED["verbosity"] >= NORMAL and is_terminal(stream):
        return stream
    return None


def configured_verbosity() -> int:
    return int(_CONFIGURED["verbosity"])
