"""A clock the test sets by hand, for code that takes ``clock: Callable[[], float]``.

Deadlines and rates then depend on values the test writes into ``now``, not on how long the
machine took: "a stage waited past its timeout" is ``clock.now += timeout + 1``, not a sleep.
"""


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
