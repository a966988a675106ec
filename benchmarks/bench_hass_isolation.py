"""Control decision latency with the Home Assistant broker up, stopped and black-holed, in one run.

Latency = grid sample arrival (its `Latest` timestamp) → the ChargeController's setpoint write to
the Venus broker done. The plant: a Venus OS emulator on its own broker, a real VictronMeter, grid
and battery JanitzaMeters whose holders are fed at 50 Hz (faster than a real meter, to get many
samples), and HassFeeder (states every 50 ms) + HassDynamicConfig on a second, "HA" broker
reached through a loopback proxy that can forward, or accept and stay silent (black hole).

Run: `uv run python -m benchmarks.bench_hass_isolation [--samples N]`.
"""

import argparse
import asyncio
import statistics
import time

from tests.support.brokers import make_broker
from tests.support.proxy import LoopbackProxy
from tests.support.waiting import wait_until
from watti_watchman.clock import monotonic
from watti_watchman.config.meters import JanitzaConfig, VictronConfig
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.config.services import ChargeControllerConfig, HassDynamicConfigConfig, HassFeederConfig
from watti_watchman.domain.readings import PhaseSetpoints, PowerSample
from watti_watchman.meters.base import Meter
from watti_watchman.meters.janitza import JanitzaMeter
from watti_watchman.meters.victron import VictronMeter
from watti_watchman.services.charge_controller import ChargeController
from watti_watchman.services.hass import HassDynamicConfig, HassFeeder
from watti_watchman.sim.venus import VenusEmulator

PERIOD_S = 0.02
WARMUP = 20


class TimedVictron(VictronMeter):
    """A VictronMeter that records, per completed setpoint write, the latency from its grid sample."""

    controller: ChargeController | None = None
    latencies_s: list[float]

    async def write_setpoints(self, setpoints: PhaseSetpoints) -> None:
        """Write as usual, then note `now − grid sample time` of the decision being written (s)."""
        await super().write_setpoints(setpoints)
        decision = None if self.controller is None else self.controller.last_decision
        if decision is not None and decision.grid_at_s is not None:
            self.latencies_s.append(time.monotonic() - decision.grid_at_s)


async def drive(
    grid: JanitzaMeter, battery: JanitzaMeter, victron: TimedVictron, samples: int
) -> list[float]:
    """Publish `samples` grid samples (alternating load, so every one changes the setpoint)."""
    victron.latencies_s = []
    next_s = time.monotonic()
    for index in range(samples):
        next_s += PERIOD_S
        await asyncio.sleep(max(0.0, next_s - time.monotonic()))
        grid_w = 1500.0 if index % 2 else 500.0
        battery.power.publish(PowerSample(0.0, 0.0, 0.0, 0.0))
        grid.power.publish(PowerSample(grid_w / 3, grid_w / 3, grid_w / 3, grid_w))
    await asyncio.sleep(0.2)
    return victron.latencies_s[WARMUP:]


def row(label: str, latencies_s: list[float], states: int) -> str:
    """One table row: p50, p99, max in ms."""
    if not latencies_s:
        return f"| {label} | 0 | – | – | – | {states} |"
    ordered = sorted(latencies_s)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"| {label} | {len(ordered)} | {statistics.median(ordered) * 1000:.2f} | {p99 * 1000:.2f} | "
        f"{ordered[-1] * 1000:.2f} | {states} |"
    )


async def main(samples: int) -> None:
    """Run the four scenarios back to back on one plant and print a Markdown table."""
    venus_broker, ha_broker = make_broker(), make_broker()
    await venus_broker.start()
    await ha_broker.start()
    proxy = LoopbackProxy(ha_broker.host, ha_broker.port)
    await proxy.start()
    venus_conn = MqttConnectionConfig(name="venus", host=venus_broker.host, port=venus_broker.port)
    ha_conn = MqttConnectionConfig(name="ha", host="127.0.0.1", port=proxy.port, client_id="bench_ha")
    grid = JanitzaMeter(JanitzaConfig(type="Janitza", name="hak", host="127.0.0.1"))
    battery = JanitzaMeter(JanitzaConfig(type="Janitza", name="battery", host="127.0.0.1"))
    victron = TimedVictron(
        VictronConfig(type="Victron", name="multi", mqtt_connection_name="venus", id="bench"), venus_conn
    )
    controller = ChargeController(
        ChargeControllerConfig(
            type="ChargeController",
            grid_meter_name="hak",
            battery_meter_name="battery",
            battery_controller_name="multi",
        ),
        grid,
        battery,
        victron,
        clock=monotonic,
    )
    victron.controller = controller
    meters: list[Meter] = [grid, battery, victron]
    feeder = HassFeeder(
        HassFeederConfig(type="HassFeeder", mqtt_connection_name="ha", update_interval=PERIOD_S * 2.5),
        ha_conn,
        meters,
        [controller],
    )
    settings = HassDynamicConfig(
        HassDynamicConfigConfig(type="HassDynamicConfig", mqtt_connection_name="ha", persistent=True),
        ha_conn,
        [controller],
    )
    venus = VenusEmulator(venus_conn, "bench")
    plant = [asyncio.create_task(c.run()) for c in (venus, victron, controller)]
    rows: list[str] = []
    hass: list[asyncio.Task[None]] = []
    try:
        await wait_until(victron.ready_for_setpoints, 15, "Victron ready")
        rows.append(row("no HA services", await drive(grid, battery, victron, samples), 0))

        hass = [asyncio.create_task(s.run()) for s in (feeder, settings)]
        await wait_until(
            lambda: feeder.session.is_connected and feeder.states_published, 15, "HA feeder publishing"
        )
        before = sum(feeder.states_published.values())
        latencies = await drive(grid, battery, victron, samples)
        rows.append(row("HA broker up", latencies, sum(feeder.states_published.values()) - before))

        await ha_broker.stop()
        await wait_until(lambda: not feeder.session.is_connected, 15, "HA session down")
        before = sum(feeder.states_published.values())
        latencies = await drive(grid, battery, victron, samples)
        rows.append(
            row("HA broker stopped (refused)", latencies, sum(feeder.states_published.values()) - before)
        )

        await ha_broker.start()
        proxy.black_hole = True
        proxy.sever()
        before = sum(feeder.states_published.values())
        latencies = await drive(grid, battery, victron, samples)
        rows.append(
            row("HA broker black-holed (silent)", latencies, sum(feeder.states_published.values()) - before)
        )
    finally:
        for task in [*hass, *plant]:
            task.cancel()
        await asyncio.gather(*hass, *plant, return_exceptions=True)
        proxy.close()
        await venus_broker.stop()
        await ha_broker.stop()
    period_ms = PERIOD_S * 1000
    title = "Control decision latency, grid sample → setpoint write done"
    print(f"{title} ({venus_broker.kind}, {period_ms:.0f} ms period)")
    print()
    print("| scenario | writes | p50 ms | p99 ms | max ms | HA states sent |")
    print("|---|---|---|---|---|---|")
    for line in rows:
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=300, help="grid samples per scenario")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.samples))
