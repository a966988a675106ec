"""Shared benchmark plumbing: a real broker, percentiles and Markdown tables."""

import contextlib
import statistics
from collections.abc import AsyncIterator, Sequence

from tests.support.brokers import TestBroker, make_broker


@contextlib.asynccontextmanager
async def running_broker() -> AsyncIterator[TestBroker]:
    """Mosquitto on a free loopback port when installed, else the embedded broker."""
    broker = make_broker()
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def percentile(values: Sequence[float], share: float) -> float:
    """The `share` (0..1) quantile of `values` (inclusive method)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(share * 1000) - 1]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a Markdown table (pastes straight into docs/BENCHMARKS.md)."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
