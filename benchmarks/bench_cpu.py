"""CPU: the whole service (`watti-watchman run`, demo configuration, all services on) against the
simulated plant, with /metrics scraped every 200 ms as Prometheus would; % of one core.

The plant, the Modbus servers and the Venus emulator run in this process; the service in its own,
whose CPU time is read from /proc. Run: `uv run python -m benchmarks.bench_cpu [--seconds 60]`.
"""

import argparse
import asyncio
import http.client
import os
import time

from benchmarks.support import percentile, print_table, running_broker
from tests.support.service import service_process
from watti_watchman.sim.demo import simulated_site
from watti_watchman.sim.scenario import load_scenario

WARMUP_S = 5.0
SCRAPE_S = 0.2


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (s)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(connection: http.client.HTTPConnection) -> float:
    """GET /metrics on a kept-alive connection, as Prometheus scrapes; the response time (s)."""
    started = time.perf_counter()
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"/metrics answered {response.status}")
    return time.perf_counter() - started


async def measure(seconds: float) -> tuple[list[tuple[str, float, list[float]]], str]:
    """Per phase (label, CPU % of one core, /metrics response times s) and the broker kind.

    One service process, two phases of `seconds` each after warm-up: unscraped, then scraped
    every 200 ms, so the cost of the exposition shows side by side.
    """
    scenario = load_scenario("demo")
    async with (
        running_broker() as broker,
        simulated_site(scenario.load_w, scenario.pv_w, mqtt_port=broker.port) as site,
        service_process(site) as service,
    ):
        pid = service.process.pid
        connection = http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=2)
        await asyncio.sleep(WARMUP_S)
        results: list[tuple[str, float, list[float]]] = []
        for label, scraping in (("no scrapes", False), ("/metrics every 200 ms", True)):
            cpu_start, wall_start = cpu_seconds(pid), time.monotonic()
            scrape_times: list[float] = []
            while time.monotonic() - wall_start < seconds:
                if scraping:
                    scrape_times.append(await asyncio.to_thread(scrape, connection))
                await asyncio.sleep(SCRAPE_S)
            cpu_used = cpu_seconds(pid) - cpu_start
            results.append((label, 100.0 * cpu_used / (time.monotonic() - wall_start), scrape_times))
        return results, broker.kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    args = parser.parse_args()
    results, kind = asyncio.run(measure(args.seconds))
    print(f"\nwhole service on the demo configuration, {args.seconds:g} s per row, {kind} broker\n")
    rows = []
    for label, cpu_percent, scrapes in results:
        ms = sorted(value * 1000 for value in scrapes)
        p50 = f"{percentile(ms, 0.5):.1f}" if ms else "–"
        p99 = f"{percentile(ms, 0.99):.1f}" if ms else "–"
        rows.append([label, f"{cpu_percent:.1f}", "≤ 4", len(ms), p50, p99])
    print_table(["load", "CPU % of one core", "target", "scrapes", "scrape p50 ms", "scrape p99 ms"], rows)


if __name__ == "__main__":
    main()
