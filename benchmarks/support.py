"""Shared benchmark plumbing: a real broker, the simulated site and `watti-watchman run` as a process."""

import asyncio
import contextlib
import os
import signal
import statistics
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from tempfile import TemporaryDirectory

from tests.support.brokers import TestBroker, make_broker
from watti_watchman.broker import free_port
from watti_watchman.sim.demo import SimulatedSite, demo_config_text


@contextlib.asynccontextmanager
async def running_broker() -> AsyncIterator[TestBroker]:
    """Mosquitto on a free loopback port when installed, else the embedded broker."""
    broker = make_broker()
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@contextlib.asynccontextmanager
async def service_process(site: SimulatedSite, log: Path | None = None) -> AsyncIterator[tuple[int, int]]:
    """`watti-watchman run` on the demo configuration against `site`; yields (pid, http port)."""
    http_port = free_port()
    with TemporaryDirectory(prefix="watti-bench-") as folder:
        config = Path(folder) / "watti_watchman.yml"
        config.write_text(demo_config_text().replace("port: 9292", f"port: {http_port}"))
        log_file = open(log or os.devnull, "wb")  # noqa: SIM115, ASYNC230 - closed below
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "watti_watchman.cli",
            "run",
            "-c",
            str(config),
            env={**os.environ, **site.environment()},
            stdout=log_file,
            stderr=log_file,
        )
        try:
            yield process.pid, http_port
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()
            log_file.close()


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
