"""/metrics render time with all meters and services on, populated by the running demo stack.

Builds the demo Application in this process against the simulated plant, lets it run so every
family is populated, then renders the exposition as Prometheus would scrape it: every 200 ms,
the values having moved in between and the CPU's caches gone cold (the figure of record), and,
side by side, back to back (what a render costs warm and with nothing changed). After each render
the exposition re-reads process_* from /proc when due, as the HTTP server does once a reply is
written; that work is timed apart (no scrape waits for it).
Run: `uv run python -m benchmarks.bench_metrics_render [--renders 300]`.
"""

import argparse
import asyncio
import time

from benchmarks.support import percentile, print_table, running_broker
from watti_watchman.app import Application
from watti_watchman.sim.demo import simulated_site
from watti_watchman.sim.scenario import load_scenario

POPULATE_S = 8.0
SCRAPE_INTERVAL_S = 0.2
PACED = f"every {SCRAPE_INTERVAL_S * 1000:g} ms"
BACK_TO_BACK_RENDERS = 2000


async def measure(renders: int) -> tuple[dict[str, list[float]], int, int]:
    """(render times s by pacing, body bytes, sample lines) of a populated exposition."""
    scenario = load_scenario("demo")
    async with (
        running_broker() as broker,
        simulated_site(scenario.load_w, scenario.pv_w, mqtt_port=broker.port) as site,
    ):
        app = Application(site.config(0), http_host="127.0.0.1", http_port=0)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        await asyncio.sleep(POPULATE_S)
        times: dict[str, list[float]] = {}
        body = b""
        for pacing, count, pause_s in (
            (PACED, renders, SCRAPE_INTERVAL_S),
            ("back to back", BACK_TO_BACK_RENDERS, 0.0),
        ):
            series = times[pacing] = []
            refreshes = times[f"{pacing}: /proc re-read after the reply"] = []
            for _ in range(count):
                started = time.perf_counter()
                body = app.exposition.render()
                rendered = time.perf_counter()
                app.exposition.refresh()
                series.append(rendered - started)
                refreshes.append(time.perf_counter() - rendered)
                await asyncio.sleep(pause_s)
        stop.set()
        await task
    samples = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    return times, len(body), samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=300, help="renders at the scrape interval")
    args = parser.parse_args()
    times, size, samples = asyncio.run(measure(args.renders))
    print(f"\n/metrics render, all meters and services ({samples} samples, {size} bytes)\n")
    rows = []
    for pacing, series in times.items():
        ms = sorted(value * 1000 for value in series)
        rows.append(
            [
                pacing,
                len(ms),
                f"{percentile(ms, 0.5):.2f}",
                f"{percentile(ms, 0.99):.2f}",
                f"{ms[-1]:.2f}",
                "p99 ≤ 2" if pacing == PACED else "–",
            ]
        )
    print_table(["renders", "n", "p50 ms", "p99 ms", "max ms", "target"], rows)


if __name__ == "__main__":
    main()
