"""Closed loop without Victron: ModbusMeter (SDM630 map, RTU over TCP) as grid meter, MqttMeter as battery
meter and MqttBattery driving the simulated plant through an inverter's MQTT bridge."""

import asyncio
import time

from tests.support.brokers import TestBroker
from tests.support.waiting import wait_until
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.sim.generic_site import GenericSite, generic_site, generic_stack
from watti_watchman.sim.plant import ACTUATOR_ERROR, constant
from watti_watchman.sim.virtual import default_controller_config

BASE_LOAD_W = (300.0, 200.0, 250.0)
STEP_W = 2000.0
REGULATED_W = 50.0
INSTALLATION = ACTUATOR_ERROR
"""The demo's inverter: 97 % of the command minus 25 W per phase; the trim must remove the error."""


async def wait_regulated(site: GenericSite, timeout_s: float) -> float:
    """Wait until 5 consecutive grid windows are within ±REGULATED_W; returns the time taken (s)."""
    started = time.monotonic()
    good = 0
    last_seen = -1.0
    while good < 5:
        window = site.world.last_windows.get("grid")
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not regulated within {timeout_s} s: {window}")
        if window is not None and window.end_s != last_seen:
            last_seen = window.end_s
            good = good + 1 if abs(window.sample.total_w) <= REGULATED_W else 0
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_generic_installation_regulates_a_2kw_step(broker: TestBroker) -> None:
    extra_w = [0.0]

    def load(t_s: float) -> tuple[float, float, float]:
        return (BASE_LOAD_W[0] + extra_w[0], BASE_LOAD_W[1], BASE_LOAD_W[2])

    connection = MqttConnectionConfig(name="site", host=broker.host, port=broker.port, client_id="watti")
    async with generic_site(load, constant(0.0), mqtt_port=broker.port, installation=INSTALLATION) as site:
        controller_config = default_controller_config(
            grid_meter_name="grid", battery_meter_name="battery", battery_controller_name="inverter"
        )
        async with generic_stack(site, connection, controller_config=controller_config) as controller:
            await wait_until(
                lambda: sum(site.world.plant.battery_w) < -600, 5.0, "the battery covering the load"
            )
            extra_w[0] = STEP_W
            await wait_until(
                lambda: (w := site.world.last_windows.get("grid")) is not None and w.sample.total_w > 1000,
                2.0,
                "the step to show",
            )
            settle_s = await wait_regulated(site, timeout_s=8)
            assert sum(site.world.plant.battery_w) < -2500
            assert controller.last_decision is not None
            assert controller.last_decision.output.reason == "regulating"
        await wait_until(lambda: site.bridge.total_w == 0.0, 2.0, "0 W after shutdown")
    print(f"settled within ±{REGULATED_W:g} W {settle_s:.2f} s after a {STEP_W:g} W step")
