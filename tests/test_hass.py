"""HassFeeder and HassDynamicConfig on a real broker: discovery, states, settings, availability."""

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.brokers import TestBroker
from tests.support.modbus_fixtures import janitza_config
from tests.support.proxy import LoopbackProxy
from tests.support.waiting import wait_until
from watti_watchman import __version__
from watti_watchman.clock import Clock, ManualClock, monotonic
from watti_watchman.config.meters import JanitzaConfig, VictronConfig
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.config.services import ChargeControllerConfig, HassDynamicConfigConfig, HassFeederConfig
from watti_watchman.devices.janitza import quantity_values
from watti_watchman.domain.hass import (
    ALLOWED_SENSOR_CLASSES,
    CounterGuard,
    DiscoveryError,
    build_state,
    check_quantity,
    check_sensor_classes,
    validate_discovery,
)
from watti_watchman.domain.janitza import JANITZA_QUANTITIES, JanitzaReading, reading_from_values
from watti_watchman.domain.quantities import Quantity
from watti_watchman.domain.settings import RuntimeSettings, SettingRejectedError, SettingsHolder, TargetRange
from watti_watchman.domain.victron import VALUES as VICTRON_VALUES
from watti_watchman.meters.base import Meter
from watti_watchman.meters.janitza import JanitzaMeter
from watti_watchman.meters.victron import VictronMeter
from watti_watchman.mqtt import MqttSession
from watti_watchman.services.charge_controller import ChargeController
from watti_watchman.services.hass import HassDynamicConfig, HassFeeder, controller_specs
from watti_watchman.sim.janitza_server import JanitzaServer
from watti_watchman.sim.venus import VenusEmulator
from watti_watchman.supervisor import cancel_and_wait

SAMPLE = json.loads((Path(__file__).parent / "fixtures" / "janitza_grid_sample.json").read_text())["values"]
IMPORT_SUM = next(q for q in JANITZA_QUANTITIES if q.key == "energy_import_sum")
VOLTAGE_L1 = next(q for q in JANITZA_QUANTITIES if q.key == "voltage_l1_n")
FAST_JITTER_S = 0.02
ServiceT = TypeVar("ServiceT", HassFeeder, HassDynamicConfig)


def reading(**overrides: float) -> JanitzaReading:
    """The sample grid reading with some values (by key) replaced."""
    values = list(SAMPLE)
    for key, value in overrides.items():
        values[next(q.index for q in JANITZA_QUANTITIES if q.key == key)] = value
    return reading_from_values(values, invert=False)


def publish_reading(meter: JanitzaMeter, value: JanitzaReading) -> None:
    """Hand `value` to the meter's consumers as its poller would (reading and table values)."""
    meter.reading.publish(value)
    meter.values.publish(quantity_values(value))


def strict_json(payload: bytes) -> Any:
    """Parse JSON, failing on NaN/Infinity (which HA cannot take as a numeric state)."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-finite {constant} published")

    return json.loads(payload, parse_constant=refuse)


@dataclass
class Recorder:
    """Everything the broker delivers under `#`: (topic, payload, retained), in arrival order."""

    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def on(self, topic: str) -> list[bytes]:
        """Payloads received on `topic`, oldest first."""
        return [payload for t, payload, _ in self.messages if t == topic]

    def configs(self, prefix: str) -> dict[str, dict[str, Any]]:
        """The newest non-empty discovery payload per config topic under `prefix`."""
        found: dict[str, dict[str, Any]] = {}
        for topic, payload, _ in self.messages:
            if topic.startswith(f"{prefix}/") and topic.endswith("/config") and payload:
                found[topic] = strict_json(payload)
        return found


@contextlib.asynccontextmanager
async def running(*components: Any) -> AsyncIterator[None]:
    """Run components' `run()` as tasks; shut down (when they can) and cancel on exit."""
    tasks = [asyncio.create_task(c.run()) for c in components]
    try:
        yield
    finally:
        for component in components:
            shutdown = getattr(component, "shutdown", None)
            if shutdown is not None and isinstance(component, (HassFeeder, HassDynamicConfig)):
                await shutdown()
        await cancel_and_wait(tasks, logging.getLogger(__name__))


@contextlib.asynccontextmanager
async def recording(connection: MqttConnectionConfig) -> AsyncIterator[Recorder]:
    """A listener subscribed to `#`, connected before the block starts."""
    recorder = Recorder()

    async def subscribe(session: MqttSession) -> None:
        await session.subscribe("#")

    session = MqttSession(
        connection,
        "recorder",
        clock=monotonic,
        on_connect=subscribe,
        on_message=lambda topic, payload, retained: recorder.messages.append((topic, payload, retained)),
    )
    task = asyncio.create_task(session.run())
    try:
        await wait_until(lambda: session.is_connected, what="recorder connected")
        yield recorder
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@dataclass
class Plant:
    """Meters (not polling: their holders are fed by the test) and a controller, on a manual clock."""

    grid: JanitzaMeter
    battery_meter: JanitzaMeter
    victron: VictronMeter
    controller: ChargeController


def make_plant(
    connection: MqttConnectionConfig,
    clock: Clock,
    portal_id: str,
    grid_config: JanitzaConfig | None = None,
) -> Plant:
    """A grid and a battery Janitza, a Victron GX meter and a ChargeController over them."""
    grid = JanitzaMeter(
        grid_config or JanitzaConfig(type="Janitza", name="hak", host="127.0.0.1"), clock=clock
    )
    battery_meter = JanitzaMeter(JanitzaConfig(type="Janitza", name="battery", host="127.0.0.1"), clock=clock)
    victron = VictronMeter(
        VictronConfig(type="Victron", name="multi", mqtt_connection_name="test", id=portal_id),
        connection,
        clock=clock,
    )
    controller = ChargeController(
        ChargeControllerConfig(
            type="ChargeController",
            grid_meter_name="hak",
            battery_meter_name="battery",
            battery_controller_name="multi",
        ),
        grid,
        battery_meter,
        victron,
        clock=clock,
    )
    return Plant(grid, battery_meter, victron, controller)


def feeder_config(unique_id: str, **overrides: Any) -> HassFeederConfig:
    """A HassFeeder in the test's own topic namespace, publishing states every 0.1 s."""
    return HassFeederConfig.model_validate(
        {
            "type": "HassFeeder",
            "mqtt_connection_name": "test",
            "update_interval": 0.1,
            "discovery_prefix": f"{unique_id}_ha",
            "base_topic": unique_id,
            **overrides,
        }
    )


def dynamic_config(unique_id: str, *, persistent: bool) -> HassDynamicConfigConfig:
    """A HassDynamicConfig in the test's own topic namespace."""
    return HassDynamicConfigConfig(
        type="HassDynamicConfig",
        mqtt_connection_name="test",
        persistent=persistent,
        discovery_prefix=f"{unique_id}_ha",
        base_topic=unique_id,
    )


def fast(service: ServiceT) -> ServiceT:
    """Shorten the random discovery delay for tests (still random, still awaited)."""
    service.discovery_jitter_s = FAST_JITTER_S
    return service


def metric(service: HassFeeder | HassDynamicConfig, name: str, **labels: str) -> float:
    """Sum of the samples of family `name` whose labels include `labels`."""
    total = 0.0
    for family in service.collect_metrics():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_target_snaps_to_the_advertised_step() -> None:
    holder = SettingsHolder(RuntimeSettings(0.0, "both"), TargetRange(min_w=-100.0, max_w=100.0, step_w=10.0))
    assert holder.set_target("14").target_w == 10.0
    assert holder.set_target(-95.1).target_w == -100.0
    with pytest.raises(SettingRejectedError):
        holder.set_target(100.1)


def test_allowed_table_and_state_rules() -> None:
    """The validator enforces PROTOCOLS §5; states carry no non-finite value and no counter regression."""
    check_sensor_classes("energy", "kWh", "total_increasing")
    check_sensor_classes("power_factor", None, "measurement")
    check_sensor_classes("temperature", "°C", "measurement")
    for bad in (
        ("reactive_power", "VAr", "measurement"),
        ("energy", "Wh", "measurement"),
        ("power", "W", "total_increasing"),
        (None, None, "total_increasing"),
        ("temperature", "C", "measurement"),
        ("pressure", "hPa", "measurement"),
    ):
        with pytest.raises(DiscoveryError):
            check_sensor_classes(*bad)
    assert set(ALLOWED_SENSOR_CLASSES) >= {"voltage", "energy", "power", "battery"}
    specs = (
        Quantity("e", "E", "Wh", "energy", "total_increasing"),
        Quantity("v", "V", "V", "voltage", "measurement"),
    )
    for spec in specs:
        check_quantity(spec)
    for wrong in (
        Quantity("E", "E", "Wh", "energy", "total_increasing"),
        Quantity("e", "E", "W", "energy", "total"),
    ):
        with pytest.raises(DiscoveryError):
            check_quantity(wrong)
    guard = CounterGuard()
    assert strict_json(build_state(specs, {"e": 100.0, "v": math.inf}, guard).payload) == {
        "e": 100.0,
        "v": None,
    }
    held = build_state(specs, {"e": 90.0, "v": 230.0}, guard)
    assert strict_json(held.payload) == {"e": 100.0, "v": 230.0}
    assert held.held_back == 1
    assert strict_json(build_state(specs, {"e": 101.0}, guard).payload) == {"e": 101.0, "v": None}


async def test_discovery_valid_complete_and_stable_across_restart(
    broker: TestBroker, mqtt_connection: MqttConnectionConfig, unique_id: str, janitza_server: JanitzaServer
) -> None:
    """Real Janitza (pymodbus server) and Victron (Venus emulator) meters feed the states."""
    prefix = f"{unique_id}_ha"
    clock = monotonic
    plant = make_plant(mqtt_connection, clock, unique_id, janitza_config(janitza_server, interval=0.05))
    meters: list[Meter] = [plant.grid, plant.battery_meter, plant.victron]
    venus = VenusEmulator(mqtt_connection, unique_id, clock=clock)
    async with recording(mqtt_connection) as recorder:

        def services() -> tuple[HassFeeder, HassDynamicConfig]:
            feeder = HassFeeder(feeder_config(unique_id), mqtt_connection, meters, [plant.controller])
            settings = HassDynamicConfig(
                dynamic_config(unique_id, persistent=False), mqtt_connection, [plant.controller]
            )
            fast(feeder)
            fast(settings)
            return feeder, settings

        expected = 2 * len(JANITZA_QUANTITIES) + len(VICTRON_VALUES) + len(controller_specs()) + 2
        feeder, settings = services()
        async with running(venus):
            await venus.session.connected.wait()  # the GX is up before WattiWatchman, as on site
            async with running(plant.grid, plant.victron, feeder, settings):
                await wait_until(
                    lambda: len(recorder.configs(prefix)) == expected, what="all discovery configs"
                )
                await wait_until(
                    lambda: recorder.on(f"{unique_id}/multi/state") and recorder.on(f"{unique_id}/hak/state"),
                    what="Victron and Janitza states",
                )
        first = recorder.configs(prefix)
        for topic, payload in first.items():
            validate_discovery(topic, payload, sw_version=__version__)
        await wait_until(lambda: recorder.on(feeder.availability_topic)[-1] == b"offline", what="offline")
        assert not recorder.on(f"{unique_id}/battery/state")  # never fed: stays silent, expires in HA
        by_uid = {payload["unique_id"]: payload for payload in first.values()}
        assert len(by_uid) == expected
        for direction in ("import", "export"):
            energy = by_uid[f"watti_hak_energy_{direction}_sum"]
            assert (energy["device_class"], energy["state_class"], energy["unit_of_measurement"]) == (
                "energy",
                "total_increasing",
                "Wh",
            )
        assert by_uid["watti_hak_voltage_l1_n"]["expire_after"] >= 10
        assert by_uid["watti_charge_controller_target_setting"]["max"] == 5000.0
        grid_state = strict_json(recorder.on(f"{unique_id}/hak/state")[-1])
        assert grid_state["real_power_sum"] == pytest.approx(SAMPLE[13])
        victron_state = strict_json(recorder.on(f"{unique_id}/multi/state")[-1])
        assert victron_state["hub4_mode"] == 3
        assert isinstance(victron_state["hub4_mode"], int), "codes are shown as integers"
        assert not any("has_entity_name" in payload for payload in first.values())
        devices = {json.dumps(p["device"], sort_keys=True) for p in first.values()}
        assert {json.loads(d)["name"] for d in devices} == {
            "hak",
            "battery",
            "multi",
            "Charge controller (charge_controller)",
        }

        recorder.messages.clear()
        feeder, settings = services()
        async with running(feeder, settings):
            await wait_until(
                lambda: len(recorder.configs(prefix)) == expected, what="discovery after restart"
            )
        second = recorder.configs(prefix)
        assert {t: p["unique_id"] for t, p in second.items()} == {t: p["unique_id"] for t, p in first.items()}


async def test_a_cancellation_swallowed_inside_a_publish_still_stops_the_feeder(
    mqtt_connection: MqttConnectionConfig, unique_id: str, clock: ManualClock
) -> None:
    """aiomqtt's wait_for may swallow our cancel (3.11); the loop must end anyway (CI teardown hang)."""
    plant = make_plant(mqtt_connection, clock, unique_id)
    publish_reading(plant.grid, reading())
    feeder = fast(HassFeeder(feeder_config(unique_id), mqtt_connection, [plant.grid], []))
    publish = feeder.session.publish
    inside = asyncio.Event()

    async def swallowing_publish(topic: str, payload: bytes | str, *, retain: bool = False) -> None:
        await publish(topic, payload, retain=retain)
        if topic.endswith("/state"):
            inside.set()
            with contextlib.suppress(asyncio.CancelledError):  # as wait_for when the cancel races
                await asyncio.sleep(30)

    feeder.session.publish = swallowing_publish  # type: ignore[method-assign]
    task = asyncio.create_task(feeder.run())
    await asyncio.wait_for(inside.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=3)
    assert task in done, "one cancel stops the feeder even when a publish swallowed it"


async def test_birth_message_triggers_rediscovery_then_states(
    broker: TestBroker, mqtt_connection: MqttConnectionConfig, unique_id: str, clock: ManualClock
) -> None:
    prefix = f"{unique_id}_ha"
    plant = make_plant(mqtt_connection, clock, unique_id)
    publish_reading(plant.grid, reading())
    feeder = fast(HassFeeder(feeder_config(unique_id, update_interval=30), mqtt_connection, [plant.grid], []))
    async with recording(mqtt_connection) as recorder, running(feeder):
        state_topic = f"{unique_id}/hak/state"
        await wait_until(lambda: recorder.on(state_topic), what="first state")
        recorder.messages.clear()
        talker = MqttSession(mqtt_connection, "ha", clock=monotonic)
        task = asyncio.create_task(talker.run())
        try:
            await wait_until(lambda: talker.is_connected)
            await talker.publish(f"{prefix}/status", b"online")
            await wait_until(lambda: recorder.on(state_topic), what="state after birth")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        topics = [topic for topic, _, _ in recorder.messages]
        configs = [i for i, t in enumerate(topics) if t.startswith(f"{prefix}/sensor/")]
        assert len(configs) == len(JANITZA_QUANTITIES)
        assert max(configs) < topics.index(feeder.availability_topic) < topics.index(state_topic)
        assert feeder.discovery_rounds == {"connect": 1, "birth": 1}
        assert metric(feeder, "watti_hass_births_total") == 1


async def test_states_hold_back_energy_regression_and_never_publish_non_finite(
    broker: TestBroker, mqtt_connection: MqttConnectionConfig, unique_id: str, clock: ManualClock
) -> None:
    plant = make_plant(mqtt_connection, clock, unique_id)
    feeder = fast(HassFeeder(feeder_config(unique_id), mqtt_connection, [plant.grid], [plant.controller]))
    state_topic = f"{unique_id}/hak/state"
    highest = SAMPLE[IMPORT_SUM.index]

    def states() -> list[dict[str, Any]]:
        return [strict_json(p) for p in recorder.on(state_topic)]

    async with recording(mqtt_connection) as recorder, running(feeder):
        publish_reading(plant.grid, reading())
        await wait_until(lambda: any(s["energy_import_sum"] == highest for s in states()), what="first state")
        publish_reading(plant.grid, reading(energy_import_sum=highest - 500.0, voltage_l1_n=math.nan))
        await wait_until(lambda: states()[-1]["voltage_l1_n"] is None, what="NaN published as unknown")
        assert states()[-1]["energy_import_sum"] == highest
        assert metric(feeder, "watti_hass_energy_regressions_held_back_total") >= 1
        assert metric(feeder, "watti_hass_non_finite_suppressed_total") >= 1
        publish_reading(plant.grid, reading(energy_import_sum=highest + 10.0))
        await wait_until(lambda: states()[-1]["energy_import_sum"] == highest + 10.0, what="rise passes")
        controller_state = strict_json(recorder.on(f"{unique_id}/charge_controller/state")[-1])
        assert controller_state["target"] == 0.0
        assert controller_state["mode"] == "both"
        assert controller_state["setpoint_l1"] is None  # no decision yet: unknown, not 0
    assert all(b"NaN" not in p and b"Infinity" not in p for _, p, _ in recorder.messages)


async def test_number_and_select_round_trip_and_invalid_commands(
    broker: TestBroker, mqtt_connection: MqttConnectionConfig, unique_id: str, clock: ManualClock
) -> None:
    plant = make_plant(mqtt_connection, clock, unique_id)
    settings = fast(
        HassDynamicConfig(dynamic_config(unique_id, persistent=False), mqtt_connection, [plant.controller])
    )
    holder = plant.controller.settings
    base = f"{unique_id}/charge_controller/settings"
    talker = MqttSession(mqtt_connection, "ha", clock=monotonic)
    async with recording(mqtt_connection) as recorder, running(settings, talker):
        await wait_until(lambda: recorder.on(base) and talker.is_connected, what="initial settings state")

        async def command(setting: str, payload: bytes) -> dict[str, Any]:
            count = len(recorder.on(base))
            await talker.publish(f"{base}/{setting}/set", payload)
            await wait_until(lambda: len(recorder.on(base)) > count, what=f"echo of {setting}={payload!r}")
            state: dict[str, Any] = strict_json(recorder.on(base)[-1])
            return state

        assert await command("target", b"250") == {"target_setting": 250.0, "mode_setting": "both"}
        assert await command("mode", b"charge") == {"target_setting": 250.0, "mode_setting": "charge"}
        assert (holder.current.target_w, holder.current.mode) == (250.0, "charge")
        for setting, payload, reason in (
            ("target", b"abc", "not_a_number"),
            ("target", b"99999", "out_of_range"),
            ("target", b"nan", "out_of_range"),
            ("mode", b"turbo", "unknown_option"),
            ("mode", b"\xff\xfe", "malformed"),
        ):
            assert await command(setting, payload) == {"target_setting": 250.0, "mode_setting": "charge"}
            assert metric(settings, "watti_hass_commands_rejected_total", setting=setting, reason=reason) == 1
        assert (holder.current.target_w, holder.current.mode) == (250.0, "charge")
        assert metric(settings, "watti_hass_commands_rejected_total") == 5
        assert metric(settings, "watti_hass_commands_accepted_total") == 2
        assert not any(retained for topic, _, retained in recorder.messages if topic == base)


async def test_persistent_settings_restored_after_restart(
    broker: TestBroker, mqtt_connection: MqttConnectionConfig, unique_id: str, clock: ManualClock
) -> None:
    base = f"{unique_id}/charge_controller/settings"
    talker = MqttSession(mqtt_connection, "ha", clock=monotonic)
    first = make_plant(mqtt_connection, clock, unique_id)
    settings = fast(
        HassDynamicConfig(dynamic_config(unique_id, persistent=True), mqtt_connection, [first.controller])
    )
    async with recording(mqtt_connection) as recorder, running(settings, talker):
        await wait_until(lambda: recorder.on(base) and talker.is_connected, what="initial settings state")
        await talker.publish(f"{base}/target/set", b"-300")
        await talker.publish(f"{base}/mode/set", b"discharge")
        await wait_until(
            lambda: first.controller.settings.current.mode == "discharge", what="commands applied"
        )
    # Stopped right after the command: the shutdown still persists the setting.
    second = make_plant(mqtt_connection, clock, unique_id)
    assert second.controller.settings.current.target_w == 0.0  # the configured default
    restarted = fast(
        HassDynamicConfig(dynamic_config(unique_id, persistent=True), mqtt_connection, [second.controller])
    )
    async with recording(mqtt_connection) as recorder, running(restarted):
        await wait_until(lambda: restarted.restored_settings == ["charge_controller"], what="restored")
        assert (second.controller.settings.current.target_w, second.controller.settings.current.mode) == (
            -300.0,
            "discharge",
        )
        await wait_until(lambda: recorder.on(base)[1:], what="restored state echoed")
        assert strict_json(recorder.on(base)[-1]) == {"target_setting": -300.0, "mode_setting": "discharge"}


async def test_last_will_marks_offline_when_the_connection_dies(
    broker: TestBroker, mqtt_connection: MqttConnectionConfig, unique_id: str, clock: ManualClock
) -> None:
    proxy = LoopbackProxy(mqtt_connection.host, mqtt_connection.port)
    await proxy.start()
    via_proxy = mqtt_connection.model_copy(update={"port": proxy.port})
    plant = make_plant(mqtt_connection, clock, unique_id)
    publish_reading(plant.grid, reading())
    feeder = fast(HassFeeder(feeder_config(unique_id), via_proxy, [plant.grid], []))
    try:
        async with recording(mqtt_connection) as recorder, running(feeder):
            availability = feeder.availability_topic
            await wait_until(lambda: recorder.on(availability) == [b"online"], what="online")
            proxy.sever()
            await wait_until(
                lambda: recorder.on(availability)[-1:] == [b"offline"], what="last will", timeout_s=5
            )
            await wait_until(
                lambda: recorder.on(availability)[-1:] == [b"online"], what="back online", timeout_s=10
            )
            assert feeder.discovery_rounds["connect"] == 2
            assert metric(feeder, "watti_hass_connected") == 1.0
    finally:
        proxy.close()
