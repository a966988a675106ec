"""MqttBattery on a real broker: payloads, watchdog, 0 W on silence and shutdown, last will, feedback."""

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest

from tests.support.proxy import LoopbackProxy
from tests.support.waiting import wait_until
from watti_watchman.config.errors import ConfigError
from watti_watchman.config.loader import parse_config
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.domain.readings import PhaseSetpoints
from watti_watchman.meters.base import BatteryController, PowerMeter
from watti_watchman.meters.mqtt_battery import MqttBattery, MqttBatteryConfig


def battery_config(topic: str, **overrides: Any) -> MqttBatteryConfig:
    settings: dict[str, Any] = {
        "type": "MqttBattery",
        "name": "inverter",
        "mqtt_connection_name": "test",
        "setpoint_topic": topic,
        "resend_interval": 0.1,
    }
    return MqttBatteryConfig.model_validate(settings | overrides)


class Listener:
    """A plain MQTT client recording payloads per topic with their arrival time."""

    def __init__(self, connection: MqttConnectionConfig, unique_id: str) -> None:
        self.client = aiomqtt.Client(connection.host, connection.port, identifier=f"{unique_id}_listener")
        self.received: list[tuple[str, bytes, float]] = []

    def on(self, topic: str) -> list[bytes]:
        return [payload for t, payload, _ in self.received if t == topic]

    async def read(self) -> None:
        async for message in self.client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            self.received.append((message.topic.value, payload, time.monotonic()))


@contextlib.asynccontextmanager
async def listening(
    connection: MqttConnectionConfig, unique_id: str, *topics: str
) -> AsyncIterator[Listener]:
    listener = Listener(connection, unique_id)
    async with listener.client:
        for topic in topics:
            await listener.client.subscribe(topic)
        reader = asyncio.create_task(listener.read())
        try:
            yield listener
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


@contextlib.asynccontextmanager
async def running(battery: MqttBattery) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(battery.run())
    try:
        await wait_until(battery.ready_for_setpoints, 5.0, "connected")
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_templates_number_json_per_phase_and_invert() -> None:
    setpoints: PhaseSetpoints = {"L1": 100, "L2": -50, "L3": 0}
    assert battery_config("t").payload(setpoints) == "50"
    per_phase = battery_config("t", template='{{"l1": {l1}, "l2": {l2}, "l3": {l3}}}', invert=True)
    assert json.loads(per_phase.payload(setpoints)) == {"l1": -100, "l2": 50, "l3": 0}
    assert battery_config("t", template='{{"power": {total}}}').payload({"L1": 7}) == '{"power": 7}'
    for bad in ("{power}", "no placeholder", '{"power": {total}}'):
        with pytest.raises(ValueError, match="template"):
            battery_config("t", template=bad)


async def test_writes_resends_and_falls_back_to_zero_when_the_controller_goes_silent(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    topic = f"{unique_id}/inverter/setpoint"
    battery = MqttBattery(battery_config(topic, command_timeout=0.5), mqtt_connection)
    controller: BatteryController = battery
    async with (
        listening(mqtt_connection, unique_id, topic, f"{topic}/controller") as listener,
        running(battery),
    ):
        await wait_until(lambda: listener.on(f"{topic}/controller") == [b"online"], 2.0, "online status")
        await controller.write_setpoints({"L1": 400, "L2": 400, "L3": 400})
        await wait_until(lambda: len(listener.on(topic)) >= 4, 2.0, "watchdog re-sends")
        assert set(listener.on(topic)) == {b"1200"}
        arrivals = [at for t, _, at in listener.received if t == topic]
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert all(0.05 < gap < 0.3 for gap in gaps), gaps
        await wait_until(lambda: listener.on(topic)[-1:] == [b"0"], 2.0, "0 W after the command timeout")
        assert battery.timeouts == 1
    assert battery.writes == 1


async def test_shutdown_writes_zero_then_offline_and_the_will_covers_a_crash(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    topic = f"{unique_id}/inv/set"
    status_topic = f"{unique_id}/inv/alive"
    async with listening(mqtt_connection, unique_id, topic, status_topic) as listener:
        battery = MqttBattery(battery_config(topic, status_topic=status_topic), mqtt_connection)
        async with running(battery):
            await battery.write_setpoints({"L1": -700})
            await wait_until(lambda: b"-700" in listener.on(topic), 2.0, "setpoint")
        await wait_until(lambda: listener.on(status_topic)[-1:] == [b"offline"], 2.0, "offline at shutdown")
        assert listener.on(topic)[-1] == b"0"

        proxy = LoopbackProxy(mqtt_connection.host, mqtt_connection.port)
        await proxy.start()
        through_proxy = mqtt_connection.model_copy(update={"port": proxy.port})
        crashing = MqttBattery(battery_config(topic, status_topic=status_topic), through_proxy)
        async with running(crashing):
            await wait_until(lambda: listener.on(status_topic)[-1:] == [b"online"], 2.0, "online again")
            proxy.sever()  # the connection dies without DISCONNECT: the broker sends the will
            await wait_until(lambda: listener.on(status_topic)[-1:] == [b"offline"], 5.0, "last will")
        proxy.close()


async def test_feedback_power_and_soc_with_garbage_ignored(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    power_topic, soc_topic = f"{unique_id}/bat/power", f"{unique_id}/bat/state"
    config = battery_config(
        f"{unique_id}/bat/set",
        feedback={
            "power": {"topic": power_topic},
            "soc": {"topic": soc_topic, "path": "soc"},
            "voltage": {"topic": soc_topic, "path": "v"},
        },
        max_age=0.5,
    )
    battery = MqttBattery(config, mqtt_connection)
    meter: PowerMeter = battery
    async with (
        running(battery),
        aiomqtt.Client(mqtt_connection.host, mqtt_connection.port, identifier=f"{unique_id}_pub") as client,
    ):
        await client.publish(power_topic, b"-1500", retain=True)
        await client.publish(soc_topic, b'{"soc": 64.5, "v": 51.2}', retain=True)
        await wait_until(lambda: battery.battery.seq and meter.power.seq, 2.0, "status and power")
        power = meter.power.snapshot()
        status = battery.battery.snapshot()
        assert power is not None
        assert status is not None
        assert power.value.total_w == -1500.0
        assert (status.value.soc_percent, status.value.voltage_v) == (64.5, 51.2)
        assert status.value.max_charge_current_a is None
        await client.publish(soc_topic, b'{"soc": 150, "v": 51.2}')
        await client.publish(power_topic, b"on")
        await wait_until(lambda: sum(battery.errors.values()) == 2, 2.0, "garbage counted")
        assert dict(battery.errors) == {"implausible": 1, "not_json": 1}
        latest = battery.battery.snapshot()
        assert latest is not None
        assert latest.value.soc_percent == 64.5
        await wait_until(lambda: not battery.is_fresh(), 2.0, "feedback stale")
        await client.publish(power_topic, b"", retain=True)
        await client.publish(soc_topic, b"", retain=True)


def test_as_battery_meter_it_needs_feedback_power() -> None:
    """`check` refuses an MqttBattery without feedback.power as the controller's battery meter."""
    text = """
mqtt_connections: [{name: local, host: 127.0.0.1}]
meters:
  - {type: MqttMeter, name: grid, mqtt_connection_name: local, values: {power_total: {topic: g}}}
  - {type: MqttBattery, name: inverter, mqtt_connection_name: local, setpoint_topic: s}
services:
  - type: ChargeController
    grid_meter_name: grid
    battery_meter_name: inverter
    battery_controller_name: inverter
"""
    with pytest.raises(ConfigError, match=r"services\[0\]\.battery_meter_name: this meter delivers no power"):
        parse_config(text, {})
    fed = text.replace("setpoint_topic: s}", "setpoint_topic: s, feedback: {power: {topic: p}}}")
    assert parse_config(fed, {}).config.services[0].name == "charge_controller"
