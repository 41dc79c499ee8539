"""Time spent inside wrapped functions, for the benches' "machinery" columns.

A round's wall time moves by ±20 % with training jitter; the time spent inside the code
under test (privacy pipeline, secure aggregation, CKKS) does not, so the benches wrap those
functions and report both.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any


class Stopwatch:
    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
        return wrapper

    def take(self) -> float:
        """The accumulated seconds, and start again from zero."""
        s, self.seconds = self.seconds, 0.0
        return s

    def median_round(self, fed: Any, rounds: int) -> tuple[float, float]:
        """Run rounds 1..``rounds`` of ``fed`` (then close it); the medians of the wall time
        and of the time inside the wrapped functions over rounds 2.. (round 1 warms up)."""
        from fedmuscle_secure.simulator import run_round

        walls, inside = [], []
        try:
            for r in range(1, rounds + 1):
                self.take()
                t0 = time.perf_counter()
                run_round(fed, r)
                walls.append(time.perf_counter() - t0)
                inside.append(self.take())
        finally:
            fed.close()
        return statistics.median(walls[1:]), statistics.median(inside[1:])


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
