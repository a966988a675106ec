"""Reconnect supervision ends when cancelled, even when a library turned the cancellation into an error."""

import asyncio
import logging

from watti_watchman.failures import FailureLog
from watti_watchman.supervisor import Backoff, supervise


async def test_a_cancellation_swallowed_into_an_error_still_ends_supervise_in_a_task_group() -> None:
    connected = asyncio.Event()
    release = asyncio.Event()
    sessions = 0

    async def session() -> None:
        nonlocal sessions
        sessions += 1
        if sessions > 1:  # a retry after the cancellation: only ended by the test's cleanup
            await release.wait()
            raise RuntimeError("retried after cancellation")
        connected.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            # What Python 3.11's wait_for inside aiomqtt does when a cancel races a disconnect.
            raise OSError("disconnected during message iteration") from None

    async def service() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(
                supervise(
                    session,
                    failures=FailureLog(logging.getLogger("test.supervisor"), lambda: 0.0),
                    backoff=Backoff(initial_s=0.01, cap_s=0.01),
                    classify=lambda error: "connect_failed" if isinstance(error, OSError) else None,
                )
            )

    task = asyncio.create_task(service())
    await connected.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    release.set()
    await asyncio.gather(task, return_exceptions=True)
    assert done == {task}, "supervise retried after its cancellation was swallowed"
    assert task.cancelled()
    assert sessions == 1
