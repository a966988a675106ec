"""Components run as tasks for the length of a block."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Protocol


class Runnable(Protocol):
    """Anything with a never-returning `run()`."""

    async def run(self) -> None: ...


@contextlib.asynccontextmanager
async def running(*components: Runnable) -> AsyncIterator[None]:
    """Run components as tasks for the block; re-raise anything they died of."""
    tasks = [asyncio.create_task(component.run()) for component in components]
    try:
        yield
    finally:
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError("component crashed") from task.exception()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
