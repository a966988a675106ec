"""/metrics render time with all meters and services on, populated by the running demo stack.

Builds the demo Application in this process against the simulated plant, lets it run so every
family is populated, then renders the exposition repeatedly (what one scrape costs the service).
Run: `uv run python -m benchmarks.bench_metrics_render [--renders 2000]`.
"""

import argparse
import asyncio
import time

from benchmarks.support import percentile, print_table, running_broker
from watti_watchman.app import Application
from watti_watchman.sim.demo import simulated_site
from watti_watchman.sim.scenario import load_scenario

POPULATE_S = 8.0


async def measure(renders: int) -> tuple[list[float], int, int]:
    """(render times s, body bytes, sample lines) of `renders` renders of a populated exposition."""
    scenario = load_scenario("demo")
    async with (
        running_broker() as broker,
        simulated_site(scenario.load_w, scenario.pv_w, mqtt_port=broker.port) as site,
    ):
        app = Application(site.config(0), http_host="127.0.0.1", http_port=0)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        await asyncio.sleep(POPULATE_S)
        times: list[float] = []
        body = b""
        for _ in range(renders):
            started = time.perf_counter()
            body = app.exposition.render()
            times.append(time.perf_counter() - started)
            await asyncio.sleep(0)
        stop.set()
        await task
    samples = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    return times, len(body), samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=2000)
    args = parser.parse_args()
    times, size, samples = asyncio.run(measure(args.renders))
    ms = sorted(value * 1000 for value in times)
    print(f"\n/metrics render, all meters and services, {args.renders} renders\n")
    print_table(
        ["samples", "bytes", "p50 ms", "p99 ms", "max ms", "target"],
        [
            [
                samples,
                size,
                f"{percentile(ms, 0.5):.2f}",
                f"{percentile(ms, 0.99):.2f}",
                f"{ms[-1]:.2f}",
                "p99 ≤ 2",
            ]
        ],
    )


if __name__ == "__main__":
    main()
