"""Waiting for a condition in tests without blind sleeps."""

import asyncio
import time
from collections.abc import Callable


async def wait_until(condition: Callable[[], object], timeout_s: float = 5.0, what: str = "") -> None:
    """Poll `condition` every 5 ms until truthy; AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        await asyncio.sleep(0.005)
