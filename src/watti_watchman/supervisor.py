"""Reconnect supervision: connect → run → on a transient error back off and start afresh."""

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from watti_watchman.clock import Clock, monotonic
from watti_watchman.failures import FailureLog

HEALTHY_AFTER_S = 30.0
"""A session that held this long was healthy: the next reconnect starts from the initial delay."""


class Backoff:
    """Capped exponential backoff with equal jitter (s); `reset()` after a healthy connection."""

    def __init__(self, initial_s: float = 0.2, cap_s: float = 10.0, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.cap_s = cap_s
        self._attempt = 0
        self._rng = rng or random.Random()

    def next_delay_s(self) -> float:
        """The delay before the next attempt: equal jitter, uniform in [c/2, c], c = min(cap, initial·2^n)."""
        ceiling = min(self.cap_s, self.initial_s * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 30)
        delay_s: float = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        return delay_s

    def reset(self) -> None:
        """Start again from the initial delay."""
        self._attempt = 0


def reraise_swallowed_cancel() -> None:
    """Re-raise a cancellation that Python 3.11's `wait_for` (inside aiomqtt, pymodbus) swallowed."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def supervise(
    session: Callable[[], Awaitable[None]],
    *,
    failures: FailureLog,
    backoff: Backoff,
    classify: Callable[[BaseException], str | None],
    on_reconnect: Callable[[], None] = lambda: None,
    describe: Callable[[BaseException], str] = lambda error: f"{type(error).__name__}: {error}",
    clock: Clock = monotonic,
    healthy_after_s: float = HEALTHY_AFTER_S,
) -> None:
    """Run `session` forever; on an exception `classify` names (transient) wait and run again.

    `classify` returns a reason label for transient errors and None for programming errors,
    which propagate; `describe` words the log line. The backoff starts afresh only after a
    session that lasted `healthy_after_s`, so a peer that accepts and drops at once is not
    hammered (sessions may also reset it on their own sign of health).
    """
    first = True
    while True:
        if not first:
            on_reconnect()
        first = False
        started_s = clock()
        try:
            await session()
            reason, detail = "session_ended", "connection closed"
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # A library's `wait_for` may have turned our cancellation into this error: a task group
            # cancels its children only once, so retrying here would outlive the shutdown.
            reraise_swallowed_cancel()
            reason_or_none = classify(error)
            if reason_or_none is None:
                raise
            reason, detail = reason_or_none, describe(error)
        if clock() - started_s >= healthy_after_s:
            backoff.reset()
        failures.failure(reason, detail)
        await asyncio.sleep(backoff.next_delay_s())


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], logger: logging.Logger, *, attempts: int = 10, wait_s: float = 1.0
) -> None:
    """Cancel `tasks` and wait until they end, cancelling again while any is still running.

    Python 3.11's `asyncio.wait_for` (used inside aiomqtt) can swallow a cancellation that races
    with a completing operation; one more cancel ends such a task instead of hanging shutdown.
    """
    pending = {task for task in tasks if not task.done()}
    for _ in range(attempts):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=wait_s)
        if pending:
            logger.warning(
                "still stopping %s; cancelling again", ", ".join(sorted(t.get_name() for t in pending))
            )
    if pending:
        logger.error("gave up waiting for %s", ", ".join(sorted(t.get_name() for t in pending)))


class SupervisedLink:
    """Base of adapters that own one connection: `run()` keeps `_session` going under `supervise`.

    Subclasses set `_failures`, `_backoff`, `reconnects = 0` and `_classify` (reason label for
    transient errors, None for programming errors) and implement `_session`.
    """

    _failures: FailureLog
    _backoff: Backoff
    _classify: Callable[[BaseException], str | None]
    reconnects: int

    @property
    def errors_by_reason(self) -> Mapping[str, int]:
        """Failed connections, reads and rejected replies, by reason label."""
        return self._failures.by_reason

    async def run(self) -> None:
        """Poll until cancelled; after a transient failure back off and reconnect with a fresh link."""
        await supervise(
            self._session,
            failures=self._failures,
            backoff=self._backoff,
            classify=self._classify,
            on_reconnect=self._count_reconnect,
        )

    async def _session(self) -> None:
        raise NotImplementedError

    def _count_reconnect(self) -> None:
        self.reconnects += 1
