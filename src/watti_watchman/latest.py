"""`Latest[T]`: the one-way hand-over of readings from a producer task to its consumers."""

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from watti_watchman.clock import Clock

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Stamped(Generic[T]):
    """A value with the monotonic time (s) it was taken and its sequence number (1, 2, …)."""

    value: T
    at_s: float
    seq: int


class Latest(Generic[T]):
    """Holds the newest value of one producer plus a short history; consumers never block it."""

    def __init__(self, clock: Clock, history: int = 16) -> None:
        self._clock = clock
        self._history: deque[Stamped[T]] = deque(maxlen=history)
        self._seq = 0
        self._changed = asyncio.Event()

    def publish(self, value: T, at_s: float | None = None) -> Stamped[T]:
        """Store `value` taken at `at_s` (default: now) and wake every waiter."""
        self._seq += 1
        stamped = Stamped(value, self._clock() if at_s is None else at_s, self._seq)
        self._history.append(stamped)
        self._changed.set()
        self._changed = asyncio.Event()
        return stamped

    def clear(self) -> None:
        """Forget every value (the source vanished); `get` returns None until the next publish."""
        self._history.clear()

    @property
    def seq(self) -> int:
        """Sequence number of the newest value, 0 before the first."""
        return self._seq

    def snapshot(self) -> Stamped[T] | None:
        """The newest value regardless of age, or None."""
        return self._history[-1] if self._history else None

    def history(self) -> tuple[Stamped[T], ...]:
        """The retained values, oldest first."""
        return tuple(self._history)

    def age_s(self) -> float | None:
        """Seconds since the newest value was taken, or None when there is none."""
        newest = self.snapshot()
        return None if newest is None else self._clock() - newest.at_s

    def get(self, max_age_s: float) -> T | None:
        """The newest value if it is at most `max_age_s` old, else None (never a stale value)."""
        newest = self.snapshot()
        if newest is None or self._clock() - newest.at_s > max_age_s:
            return None
        return newest.value

    def is_fresh(self, max_age_s: float) -> bool:
        """True when a value at most `max_age_s` old is present."""
        return self.get(max_age_s) is not None

    async def wait_newer(self, seq: int, timeout_s: float | None) -> Stamped[T] | None:
        """Wait until a value with sequence > `seq` exists; None on timeout."""
        newest = self.snapshot()
        if newest is not None and newest.seq > seq:
            return newest
        changed = self._changed
        try:
            async with asyncio.timeout(timeout_s):
                await changed.wait()
        except TimeoutError:
            return None
        return self.snapshot()
