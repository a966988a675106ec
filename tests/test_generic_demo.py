"""The `demo --site generic` configuration through the real Application: registry-built ModbusMeter,
MqttMeter, MqttBattery and Seplos, exported in /metrics and Home Assistant, 0 W at the end."""

import asyncio
import contextlib
import json
import urllib.request

import aiomqtt

from tests.support.brokers import TestBroker
from tests.support.waiting import wait_until
from watti_watchman.app import Application
from watti_watchman.sim.generic_site import generic_site
from watti_watchman.sim.plant import constant

LOAD_W = (900.0, 300.0, 300.0)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return str(response.read().decode())


async def test_generic_demo_configuration_runs_regulates_and_exports(broker: TestBroker) -> None:
    discovery: dict[str, bytes] = {}
    async with (
        generic_site(constant(*LOAD_W), constant(0.0), mqtt_port=broker.port) as site,
        aiomqtt.Client(broker.host, broker.port, identifier="ha_probe") as probe,
    ):
        await probe.subscribe("homeassistant/#")

        async def record() -> None:
            async for message in probe.messages:
                if isinstance(message.payload, bytes) and message.topic.value.endswith("/config"):
                    discovery[message.topic.value] = message.payload

        recorder = asyncio.create_task(record())
        stop = asyncio.Event()
        app = Application(site.config(0))
        app_task = asyncio.create_task(app.run(stop))
        await app.started.wait()
        base = f"http://127.0.0.1:{app.http_port}"

        def regulated() -> bool:
            window = site.world.last_windows.get("grid")
            return (
                window is not None
                and abs(window.sample.total_w) < 50
                and sum(site.world.plant.battery_w) < -1400
            )

        await wait_until(regulated, 15.0, "grid regulated by the battery")
        await wait_until(lambda: all(m.is_fresh() for m in app.meters.values()), 5.0, "every meter fresh")
        metrics = await asyncio.to_thread(fetch, f"{base}/metrics")
        for line in (
            'watti_modbus_meter_up{name="grid"} 1.0',
            'watti_mqtt_meter_up{name="battery"} 1.0',
            'watti_seplos_up{name="bms"} 1.0',
            'watti_seplos_max_discharge_current_amperes{name="bms"} 200.0',
            'watti_meter_voltage_volts{name="grid",phase="l1"} 230.0',
        ):
            assert line in metrics, line
        assert 'watti_meter_real_power_sum_watts{name="grid"}' in metrics
        assert 'watti_mqtt_battery_setpoint_watts{name="inverter",phase="l1"}' in metrics
        status = json.loads(await asyncio.to_thread(fetch, f"{base}/api/status"))
        assert status["meters"]["bms"]["soc_percent"] == 50.0
        controller = next(iter(app.controllers.values()))
        decision = controller.last_decision
        assert decision is not None
        assert decision.output.limits.soc_percent == 50.0  # from the Seplos, not the inverter
        expected = {
            f"homeassistant/sensor/watti_{key}/config"
            for key in (
                "grid_power_total",
                "grid_energy_import",
                "battery_power_total",
                "bms_soc",
                "bms_cell_16",
            )
        }
        await wait_until(lambda: expected <= discovery.keys(), 10.0, "HA discovery of every new device")
        soc = json.loads(discovery["homeassistant/sensor/watti_bms_soc/config"])
        assert (soc["device_class"], soc["unit_of_measurement"]) == ("battery", "%")
        stop.set()
        await app_task
        await wait_until(lambda: site.bridge.total_w == 0.0, 2.0, "0 W handed back")
        recorder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recorder
