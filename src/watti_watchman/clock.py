"""Injectable time sources: every component takes a `Clock` instead of reading time itself."""

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Returns monotonic seconds; only differences are meaningful."""

monotonic: Clock = time.monotonic


class ManualClock:
    """A clock for tests that moves only when told to."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (>= 0)."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        self.now_s += seconds
