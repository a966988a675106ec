"""Latency: a value change on the grid Modbus server → the setpoint message on the broker.

Real broker (Mosquitto when installed), real pymodbus servers, the Venus OS emulator and
`watti-watchman run` as its own process on the demo configuration (all services on). The benchmark
writes a new grid window every 200 ms (alternating between two loads, so every window changes the
command) and timestamps, in the same process and on the same monotonic clock, the first changed
`AcPowerSetpoint` message that follows. The plant is not closed here: only the path is measured.

Run: `uv run python -m benchmarks.bench_latency [--windows N]`.
"""

import argparse
import asyncio
import json
import time

import aiomqtt

from benchmarks.support import percentile, print_table, running_broker
from tests.support.service import service_process
from watti_watchman.domain.readings import PowerSample
from watti_watchman.sim.demo import PORTAL_ID, simulated_site
from watti_watchman.sim.plant import constant
from watti_watchman.sim.world import EnergyCounters, janitza_values

WINDOW_S = 0.2
LOADS_W = (1500.0, 300.0)
WARMUP_WINDOWS = 25


async def measure(windows: int) -> tuple[list[float], str]:
    """Latencies (s) of `windows` grid changes; returns them and the broker kind."""
    async with (
        running_broker() as broker,
        simulated_site(constant(0.0), constant(0.0), mqtt_port=broker.port, run_plant=False) as site,
    ):
        latencies: list[float] = []
        received = asyncio.Queue[tuple[float, int]]()

        async def listen() -> None:
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench_latency") as client:
                await client.subscribe(f"W/{PORTAL_ID}/vebus/+/Hub4/L1/AcPowerSetpoint")
                async for message in client.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b"{}"
                    received.put_nowait((time.monotonic(), int(json.loads(payload)["value"])))

        grid_energy = EnergyCounters.starting_at(1e6, 1e5)
        battery_energy = EnergyCounters.starting_at(1e5, 1e5)
        listener = asyncio.create_task(listen())
        async with service_process(site):
            next_s = time.monotonic() + WINDOW_S
            last_value: int | None = None
            for index in range(windows + WARMUP_WINDOWS):
                await asyncio.sleep(max(0.0, next_s - time.monotonic()))
                next_s += WINDOW_S
                load_w = LOADS_W[index % 2] / 3
                grid = PowerSample(load_w, load_w, load_w, 3 * load_w)
                battery_w = 0.1 * (index % 2)
                site.battery_server.set_values(
                    janitza_values(PowerSample(battery_w, 0.0, 0.0, battery_w), battery_energy)
                )
                site.grid_server.set_values(janitza_values(grid, grid_energy))
                changed_at_s = time.monotonic()
                deadline_s = changed_at_s + WINDOW_S * 0.9
                while True:
                    try:
                        arrived_s, value = await asyncio.wait_for(
                            received.get(), max(0.0, deadline_s - time.monotonic())
                        )
                    except TimeoutError:
                        break
                    if value != last_value:
                        last_value = value
                        if index >= WARMUP_WINDOWS:
                            latencies.append(arrived_s - changed_at_s)
                        break
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        return latencies, broker.kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=300, help="grid windows to measure (200 ms each)")
    args = parser.parse_args()
    latencies, kind = asyncio.run(measure(args.windows))
    ms = sorted(value * 1000 for value in latencies)
    print(
        f"\nregister change → setpoint on the broker ({kind} broker, "
        f"{len(ms)} of {args.windows} windows answered)\n"
    )
    print_table(
        ["p50 ms", "p90 ms", "p99 ms", "max ms", "target"],
        [
            [
                f"{percentile(ms, 0.5):.1f}",
                f"{percentile(ms, 0.9):.1f}",
                f"{percentile(ms, 0.99):.1f}",
                f"{ms[-1]:.1f}",
                "p50 ≤ 5, p99 ≤ 15",
            ]
        ],
    )


if __name__ == "__main__":
    main()
