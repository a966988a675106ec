"""Sample age of Janitza readings: phase-locked polling vs blind fixed 100 ms and 200 ms polling.

A simulated meter on 127.0.0.1 refreshes its values on its own clock (`sim/meter_clock.py`:
frequency wander within 49.8–50.2 Hz, ±2 ms jitter and, with `--timing disturbed` (default), a
phase jump of up to ±190 ms every 2–4 s); three meters poll it side by side. The true age of a
reading is the time from the server's recorded value change to the arrival of the reply.
Run: `uv run python -m benchmarks.bench_janitza_sample_age [--timing field|disturbed]`.
"""

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from watti_watchman.config.meters import JanitzaConfig
from watti_watchman.domain.janitza import QUANTITIES_BY_KEY
from watti_watchman.domain.janitza_timing import FixedSchedule
from watti_watchman.meters.janitza import JanitzaMeter
from watti_watchman.sim.janitza_server import JanitzaServer
from watti_watchman.sim.meter_clock import DISTURBED, FIELD, MeterTiming, WindowClock

PERIOD_S = 0.2
METER_PHASE_S = 0.0731
TIMINGS = {"disturbed": DISTURBED, "field": FIELD}
WARMUP_S = 3.0
SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "janitza_grid_sample.json"
MARKER = QUANTITIES_BY_KEY["energy_export_l1"].index


@dataclass
class Refreshes:
    """When the simulated meter showed each window (monotonic s), by window number."""

    at_s: dict[int, float] = field(default_factory=dict)


async def refresh_forever(
    server: JanitzaServer, base: tuple[float, ...], refreshes: Refreshes, timing: MeterTiming
) -> None:
    """New values at each window close of the meter's clock; the window number is in one value."""
    clock = WindowClock(timing, time.monotonic(), METER_PHASE_S)
    window = 0
    while True:
        window += 1
        await asyncio.sleep(max(0.0, clock.close_s(window) - time.monotonic()))
        values = list(base)
        values[MARKER] = base[MARKER] + window
        server.set_values(values)
        refreshes.at_s[window] = server.changed_at_s[-1]


async def record(meter: JanitzaMeter, base: tuple[float, ...], seen: list[tuple[float, int, float]]) -> None:
    """Every published reading as (arrival s, window number, its time stamp s)."""
    seq = 0
    while True:
        stamped = await meter.reading.wait_newer(seq, None)
        if stamped is None:
            continue
        seq = stamped.seq
        window = round(stamped.value.values[MARKER] - base[MARKER])
        seen.append((time.monotonic(), window, stamped.at_s))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def main(seconds: float, timing: MeterTiming) -> None:
    base = tuple(json.loads(SAMPLE.read_text())["values"])
    refreshes = Refreshes()
    async with JanitzaServer(base) as server:
        config = JanitzaConfig(
            type="Janitza", name="bench", host=server.host, port=server.port, interval=PERIOD_S
        )
        meters = {
            "phase-locked": JanitzaMeter(config),
            "fixed 100 ms": JanitzaMeter(config),
            "fixed 200 ms": JanitzaMeter(config),
        }
        meters["fixed 100 ms"].schedule = FixedSchedule(0.1)
        meters["fixed 200 ms"].schedule = FixedSchedule(0.2)
        seen: dict[str, list[tuple[float, int, float]]] = {label: [] for label in meters}
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(refresh_forever(server, base, refreshes, timing))]
            for label, meter in meters.items():
                tasks.append(group.create_task(meter.run()))
                tasks.append(group.create_task(record(meter, base, seen[label])))
            started_s = time.monotonic()
            await asyncio.sleep(WARMUP_S)
            reads_at_warmup = {label: meter.reads for label, meter in meters.items()}
            first_window = max(refreshes.at_s) + 1
            await asyncio.sleep(seconds - WARMUP_S)
            last_window = max(refreshes.at_s) - 1
            measured_s = time.monotonic() - started_s - WARMUP_S
            for task in tasks:
                task.cancel()

    print(f"meter on its own clock, {seconds:.0f} s run, first {WARMUP_S:.0f} s skipped")
    header = (
        f"{'polling':<14}{'age p50 ms':>11}{'age p99 ms':>11}{'age max ms':>11}{'reads/s':>9}{'missed':>8}"
        f"{'stamp err p50 / p99 ms':>24}"
    )
    print(header)
    print("-" * len(header))
    windows = set(range(first_window, last_window + 1))
    for label, meter in meters.items():
        first: dict[int, tuple[float, int, float]] = {}
        for arrived_s, w, stamp_s in seen[label]:
            first.setdefault(w, (arrived_s, w, stamp_s))  # later ones are re-publications
        kept = [entry for w, entry in first.items() if w in windows and w in refreshes.at_s]
        ages_ms = [(arrived_s - refreshes.at_s[w]) * 1000 for arrived_s, w, _ in kept]
        errors_ms = [abs(stamp_s - refreshes.at_s[w]) * 1000 for _, w, stamp_s in kept]
        missed = len(windows - {w for _, w, _ in seen[label]})
        reads_per_s = (meter.reads - reads_at_warmup[label]) / measured_s
        print(
            f"{label:<14}{statistics.median(ages_ms):>11.2f}{percentile(ages_ms, 0.99):>11.2f}"
            f"{max(ages_ms):>11.2f}{reads_per_s:>9.2f}{missed:>8d}"
            f"{statistics.median(errors_ms):>13.2f} / {percentile(errors_ms, 0.99):>6.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="run time (s), default 20")
    parser.add_argument("--timing", choices=list(TIMINGS), default="disturbed", help="meter clock")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.seconds, TIMINGS[args.timing]))
