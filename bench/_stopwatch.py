"""Time spent inside wrapped functions, for the benches' "machinery" columns.

A round's wall time moves by ±20 % with training jitter; the time spent inside the code
under test (privacy pipeline, secure aggregation, CKKS) does not, so the benches wrap those
functions and report both.
"""

from __future__ import annotations

import functools
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
