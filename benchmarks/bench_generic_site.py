"""Regulation of a Victron-free installation in real time: SDM630 (register map, RS485 bridge) as grid
meter, MqttMeter as battery meter, MqttBattery driving the simulated plant through an inverter bridge.

For each SDM630 polling period, 2 kW load steps on L1 (on, off, on, off …): time until the grid is
within ±50 W for five consecutive 200 ms windows, the worst window after the step and the energy
exported during the step's first 5 s (the costly error of a zero-feed-in plant). The plant is the
demo's (medium inverter, 97 % of the command minus 25 W per phase); each SDM630 reply spends
0.17 s on the RS485 wire.

Run: `uv run python -m benchmarks.bench_generic_site [--steps N]`
"""

import argparse
import asyncio
import statistics
import time

from benchmarks.support import print_table, running_broker
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.sim.generic_site import GenericSite, generic_site, generic_stack
from watti_watchman.sim.plant import constant
from watti_watchman.sim.virtual import default_controller_config

BASE_LOAD_W = (300.0, 200.0, 250.0)
STEP_W = 2000.0
BAND_W = 50.0
SETTLED_WINDOWS = 5
OBSERVE_S = 5.0
POLL_INTERVALS_S = (0.5, 0.25)


async def observe_step(site: GenericSite) -> tuple[float | None, float, float]:
    """(settle time s or None, worst |grid| W, exported Wh) over OBSERVE_S after a step."""
    plant = site.world.plant
    export_before_wh = plant.export_wh
    started = time.monotonic()
    settled_s: float | None = None
    good, worst_w, last_end = 0, 0.0, -1.0
    while time.monotonic() - started < OBSERVE_S:
        window = site.world.last_windows.get("grid")
        if window is not None and window.end_s != last_end:
            last_end = window.end_s
            worst_w = max(worst_w, abs(window.sample.total_w))
            good = good + 1 if abs(window.sample.total_w) <= BAND_W else 0
            if good == SETTLED_WINDOWS and settled_s is None:
                settled_s = time.monotonic() - started
        await asyncio.sleep(0.02)
    return settled_s, worst_w, plant.export_wh - export_before_wh


async def run_interval(interval_s: float, steps: int) -> list[object]:
    """One table row: the step figures of one SDM630 polling period."""
    extra_w = [0.0]

    def load(t_s: float) -> tuple[float, float, float]:
        return (BASE_LOAD_W[0] + extra_w[0], BASE_LOAD_W[1], BASE_LOAD_W[2])

    results: list[tuple[float | None, float, float]] = []
    async with running_broker() as broker, generic_site(load, constant(0.0), mqtt_port=broker.port) as site:
        connection = MqttConnectionConfig(name="site", host=broker.host, port=broker.port, client_id="bench")
        config = default_controller_config(
            grid_meter_name="grid", battery_meter_name="battery", battery_controller_name="inverter"
        )
        async with generic_stack(site, connection, controller_config=config, grid_interval_s=interval_s):
            await observe_step(site)  # start-up and trim convergence
            for step in range(steps):
                extra_w[0] = STEP_W if step % 2 == 0 else 0.0
                results.append(await observe_step(site))
    settle = [r[0] for r in results if r[0] is not None]
    return [
        f"{interval_s:g}",
        len(results),
        f"{statistics.median(settle):.2f}" if settle else "—",
        f"{max(settle):.2f}" if len(settle) == len(results) else "not settled",
        f"{max(r[1] for r in results):.0f}",
        f"{statistics.fmean(r[2] for r in results[1::2]):.3f}" if len(results) > 1 else "—",
    ]


async def main(steps: int) -> None:
    """Measure every polling period and print the table."""
    rows = [await run_interval(interval_s, steps) for interval_s in POLL_INTERVALS_S]
    print_table(
        (
            "SDM630 poll (s)",
            "steps",
            f"settle to ±{BAND_W:g} W p50 (s)",
            "settle max (s)",
            "worst window |grid| (W)",
            "export per 2 kW load drop (Wh)",
        ),
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="steps per polling period (on/off pairs)")
    asyncio.run(main(parser.parse_args().steps))
