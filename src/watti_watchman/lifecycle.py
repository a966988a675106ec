"""`async with` for anything that starts and stops."""

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class StartStop(ABC):
    """`async with x:` runs `start()` on entry and `stop()` on exit."""

    @abstractmethod
    async def start(self) -> None:
        """Start (listen, connect); return once ready."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop and release everything."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.stop()
