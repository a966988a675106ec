"""The Venus OS emulator on a real broker: FlashMQ keepalive rules, the ESS watchdog, registration."""

import asyncio
import contextlib
import itertools
import json
import time
from dataclasses import dataclass
from types import TracebackType

import aiomqtt
import pytest

from tests.support.brokers import TestBroker
from tests.support.running import running
from tests.support.waiting import wait_until
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.sim.venus import (
    STATE_BULK,
    STATE_PASSTHRU,
    SYSTEM_STATE_EXTERNAL_CONTROL,
    VenusEmulator,
)

_probe_ids = itertools.count()


@dataclass(frozen=True)
class Received:
    """One message a probe saw, with its local monotonic arrival time (s)."""

    topic: str
    payload: bytes
    retain: bool
    at_s: float


class Probe:
    """A plain MQTT client for tests: records what arrives on its subscriptions, publishes raw bytes."""

    def __init__(self, connection: MqttConnectionConfig, *topics: str) -> None:
        self._client = aiomqtt.Client(
            connection.host, connection.port, identifier=f"{connection.client_id}_probe{next(_probe_ids)}"
        )
        self._topics = topics
        self.received: list[Received] = []
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "Probe":
        await self._client.__aenter__()
        for topic in self._topics:
            await self._client.subscribe(topic)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._client.__aexit__(exc_type, exc, tb)

    async def _read(self) -> None:
        async for message in self._client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            self.received.append(Received(message.topic.value, payload, message.retain, time.monotonic()))

    async def publish(self, topic: str, payload: bytes | str = b"", *, retain: bool = False) -> None:
        """Publish QoS 0 as given."""
        await self._client.publish(topic, payload, retain=retain)

    def on(self, topic: str) -> list[Received]:
        """Messages received on exactly `topic`, oldest first."""
        return [message for message in self.received if message.topic == topic]

    async def barrier(self, portal_id: str, path: str = "vebus/276/Mode") -> None:
        """R-read `path` and wait for the answer: everything published before it has arrived."""
        before = len(self.on(f"N/{portal_id}/{path}"))
        await self.publish(f"R/{portal_id}/{path}")
        await wait_until(lambda: len(self.on(f"N/{portal_id}/{path}")) > before, 2.0, f"R {path} answered")


def value_of(message: Received) -> object:
    """The `value` of a `{"value": x}` payload."""
    return json.loads(message.payload)["value"]


def make_emulator(connection: MqttConnectionConfig, portal_id: str, **kwargs: object) -> VenusEmulator:
    """An emulator with fast timers (heartbeat 50 ms, keepalive timeout 0.4 s, watchdog 0.3 s)."""
    options: dict[str, object] = {
        "heartbeat_s": 0.05,
        "keepalive_timeout_s": 0.4,
        "watchdog_s": 0.3,
        "registration_delay_s": 0.05,
    }
    options.update(kwargs)
    return VenusEmulator(connection, portal_id, **options)  # type: ignore[arg-type]


async def started(probe: Probe, portal_id: str) -> None:
    """Wait until the emulator is subscribed (it publishes the retained Serial after subscribing)."""
    await wait_until(lambda: probe.on(f"N/{portal_id}/system/0/Serial"), 3.0, "retained Serial")


async def test_announces_and_answers_reads_without_keepalive(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    pid = unique_id
    venus = make_emulator(mqtt_connection, pid)
    async with Probe(mqtt_connection, f"N/{pid}/#") as probe, running(venus):
        await started(probe, pid)
        serial = probe.on(f"N/{pid}/system/0/Serial")[0]
        assert value_of(serial) == pid
        async with Probe(mqtt_connection, "N/+/system/0/Serial") as late:
            await wait_until(lambda: late.on(f"N/{pid}/system/0/Serial"), 2.0)
            assert late.on(f"N/{pid}/system/0/Serial")[0].retain
        venus.set_soc(66.0)
        await probe.publish(f"R/{pid}/battery/512/Info")
        await wait_until(lambda: probe.on(f"N/{pid}/battery/512/Info/MaxDischargeCurrent"), 2.0)
        assert probe.on(f"N/{pid}/battery/512/Info/MaxChargeCurrent")
        await probe.barrier(pid, "battery/512/Soc")
        assert value_of(probe.on(f"N/{pid}/battery/512/Soc")[-1]) == 66.0
        assert not probe.on(f"N/{pid}/heartbeat"), "not kept alive: no heartbeat"
        assert len(probe.on(f"N/{pid}/battery/512/Soc")) == 1, "changes are not notified while not kept alive"


async def test_full_republish_echo_and_suppress(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    pid = unique_id
    venus = make_emulator(mqtt_connection, pid, keepalive_timeout_s=5.0)
    async with Probe(mqtt_connection, f"N/{pid}/#") as probe, running(venus):
        await wait_until(lambda: probe.on(f"N/{pid}/keepalive"), 2.0, "FlashMQ announcement")
        assert probe.on(f"N/{pid}/keepalive")[0].payload == b"1", "dbus-flashmq sends a bare 1"
        await probe.publish(f"R/{pid}/keepalive")
        await wait_until(lambda: probe.on(f"N/{pid}/full_publish_completed"), 2.0)
        completed_index = probe.received.index(probe.on(f"N/{pid}/full_publish_completed")[0])
        full = {message.topic for message in probe.received[:completed_index]}
        assert f"N/{pid}/vebus/276/Ac/ActiveIn/L2/P" in full
        assert f"N/{pid}/settings/0/Settings/CGwacs/Hub4Mode" in full
        await wait_until(lambda: len(probe.on(f"N/{pid}/heartbeat")) >= 2, 2.0, "heartbeats")

        echo = {"keepalive-options": [{"full-publish-completed-echo": "tok1"}]}
        await probe.publish(f"R/{pid}/keepalive", json.dumps(echo))
        await wait_until(lambda: len(probe.on(f"N/{pid}/full_publish_completed")) == 2, 2.0)
        assert (
            json.loads(probe.on(f"N/{pid}/full_publish_completed")[1].payload)["full-publish-completed-echo"]
            == "tok1"
        )

        await probe.publish(f"R/{pid}/keepalive", json.dumps({"keepalive-options": ["suppress-republish"]}))
        await probe.barrier(pid)
        assert venus.full_publishes == 2
        assert venus.keepalives_received == 3
        venus.set_ac_in(100.0, 200.0, 300.0)
        venus.set_ac_in(100.0, 200.0, 300.0)
        await probe.barrier(pid)
        assert [value_of(m) for m in probe.on(f"N/{pid}/vebus/276/Ac/ActiveIn/P")] == [0.0, 0.0, 600.0]


async def test_keepalive_timeout_stops_notifications(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    pid = unique_id
    venus = make_emulator(mqtt_connection, pid, keepalive_timeout_s=0.3)
    async with Probe(mqtt_connection, f"N/{pid}/#") as probe, running(venus):
        await started(probe, pid)
        await probe.publish(f"R/{pid}/keepalive", json.dumps({"keepalive-options": ["suppress-republish"]}))
        await wait_until(lambda: probe.on(f"N/{pid}/heartbeat"), 2.0, "heartbeat")
        assert venus.full_publishes == 0
        await wait_until(lambda: not venus.notifications_active, 2.0, "keepalive timeout")
        await probe.barrier(pid)
        heartbeats = len(probe.on(f"N/{pid}/heartbeat"))
        venus.set_soc(12.0)
        await probe.barrier(pid, "system/0/Dc/Battery/Soc")
        assert len(probe.on(f"N/{pid}/heartbeat")) == heartbeats
        assert [value_of(m) for m in probe.on(f"N/{pid}/system/0/Dc/Battery/Soc")] == [12.0], "R read only"
        assert not any(m.payload == b"" for m in probe.received), "FlashMQ does not blank at the timeout"
        venus.remove_service("battery", 512)
        await wait_until(
            lambda: [m.payload for m in probe.on(f"N/{pid}/battery/512/Soc")] == [b""],
            2.0,
            "vanish, not kept alive",
        )


def make_legacy(connection: MqttConnectionConfig, portal_id: str, **kwargs: object) -> VenusEmulator:
    """A dbus-mqtt emulator with time compressed 20×: 50 ms timers, expiry after 0.4 s checked every 0.1 s."""
    options: dict[str, object] = {
        "mode": "legacy",
        "legacy_timer_s": 0.05,
        "keepalive_timeout_s": 0.4,
        "expiry_check_s": 0.1,
    }
    options.update(kwargs)
    return make_emulator(connection, portal_id, **options)


async def test_legacy_bridge_retains_values_and_expires_subscriptions(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    pid = unique_id
    state = f"N/{pid}/vebus/276/State"
    venus = make_legacy(mqtt_connection, pid)
    async with Probe(mqtt_connection, f"N/{pid}/#") as probe, running(venus):
        await started(probe, pid)
        await wait_until(lambda: probe.on(f"N/{pid}/keepalive"), 2.0, "keepalive announced")
        assert value_of(probe.on(f"N/{pid}/keepalive")[0]) == 1
        await probe.publish(f"R/{pid}/keepalive", json.dumps({"keepalive-options": ["suppress-republish"]}))
        await probe.barrier(pid, "vebus/276/Mode")
        assert not probe.on(state), "an options object is a topic list that matches nothing"
        await probe.publish(f"R/{pid}/keepalive")
        await wait_until(lambda: probe.on(state), 2.0, "republish on a new subscription")
        async with Probe(mqtt_connection, f"N/{pid}/#") as late:
            await wait_until(lambda: late.on(state) and late.on(f"N/{pid}/keepalive"), 2.0, "retained")
            assert all(m.retain for m in late.received), "everything arrives as stored (retained) values"
        assert {m.topic for m in probe.received if m.topic.endswith("/ProductName")}, "strings too"
        republished = len(probe.on(state))
        for _ in range(3):  # refreshed before it expires: no republish
            await probe.publish(f"R/{pid}/keepalive")
            await asyncio.sleep(0.2)
        await probe.barrier(pid, "vebus/276/Mode")
        assert len(probe.on(state)) == republished
        assert venus.full_publishes == 1
        await wait_until(lambda: probe.on(state)[-1].payload == b"", 2.0, "blanked at expiry")
        assert probe.on(f"N/{pid}/system/0/Serial")[-1].payload != b"", "the serial is never blanked"
        await probe.publish(f"R/{pid}/keepalive")
        await wait_until(lambda: probe.on(state)[-1].payload != b"", 2.0, "republished after expiry")
        assert venus.full_publishes == 2
        assert not probe.on(f"N/{pid}/full_publish_completed")
        assert not probe.on(f"N/{pid}/heartbeat")


async def test_legacy_bridge_topic_list_reads_and_queue(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    pid = unique_id
    soc = f"N/{pid}/system/0/Dc/Battery/Soc"
    venus = make_legacy(mqtt_connection, pid, keepalive_timeout_s=30.0, legacy_timer_s=0.2)
    async with Probe(mqtt_connection, f"N/{pid}/#") as probe, running(venus):
        await started(probe, pid)
        await probe.publish(f"R/{pid}/keepalive", json.dumps(["system/0/Dc/#"]))
        await wait_until(lambda: probe.on(soc), 2.0, "the listed pattern published")
        await probe.publish(f"R/{pid}/vebus/276/Mode")
        await wait_until(lambda: probe.on(f"N/{pid}/vebus/276/Mode"), 2.0, "R read answered")
        assert not probe.on(f"N/{pid}/vebus/276/Mode")[0].retain, "a read reply is not retained"
        assert not probe.on(f"N/{pid}/vebus/276/State"), "not subscribed"
        venus.set_soc(60.0)
        await wait_until(lambda: value_of(probe.on(soc)[-1]) == 60.0, 2.0)
        queue_ran_s = probe.on(soc)[-1].at_s
        venus.set_soc(61.0)
        await wait_until(lambda: value_of(probe.on(soc)[-1]) == 61.0, 2.0)
        delay_s = probe.on(soc)[-1].at_s - queue_ran_s
        assert delay_s >= 0.25, f"the queue runs at most every 1.5 timer periods, not {delay_s:.3f} s"
        venus.set_soc(62.0)
        await probe.publish(f"W/{pid}/vebus/276/Hub4/DisableCharge", json.dumps({"value": 0}))
        await wait_until(lambda: value_of(probe.on(soc)[-1]) == 62.0, 2.0)
        assert probe.on(soc)[-1].at_s - queue_ran_s < delay_s + 0.15, "a write runs the queue at once"


async def test_watchdog_falls_back_to_passthru(mqtt_connection: MqttConnectionConfig, unique_id: str) -> None:
    pid = unique_id
    venus = make_emulator(mqtt_connection, pid, keepalive_timeout_s=5.0, watchdog_s=0.25)
    state_topic = f"N/{pid}/vebus/276/State"
    async with Probe(mqtt_connection, f"N/{pid}/#") as probe, running(venus):
        await started(probe, pid)
        await probe.publish(f"R/{pid}/keepalive", json.dumps({"keepalive-options": ["suppress-republish"]}))
        await wait_until(lambda: probe.on(f"N/{pid}/heartbeat"), 2.0)
        assert venus.state == STATE_PASSTHRU
        deadline = time.monotonic() + 0.6  # keep rewriting for longer than the watchdog
        while time.monotonic() < deadline:
            for phase, watts in (("L1", 500), ("L2", -250), ("L3", 0)):
                await probe.publish(
                    f"W/{pid}/vebus/276/Hub4/{phase}/AcPowerSetpoint", json.dumps({"value": watts})
                )
            await probe.barrier(pid)
            assert venus.external_control
            assert venus.state == STATE_BULK, "charging in total: a real vebus State (0–11)"
            assert venus.value("system/0/SystemState/State") == SYSTEM_STATE_EXTERNAL_CONTROL
            assert venus.setpoints() == {"L1": 500, "L2": -250, "L3": 0}
            await asyncio.sleep(0.05)  # the controller's write period
        assert [value_of(m) for m in probe.on(state_topic)] == [STATE_BULK]
        assert not probe.on(f"N/{pid}/vebus/276/Hub4/L1/AcPowerSetpoint"), "setpoints emit no notification"
        await wait_until(lambda: len(probe.on(state_topic)) == 2, 2.0, "fallback")
        assert value_of(probe.on(state_topic)[-1]) == STATE_PASSTHRU
        assert not venus.external_control
        assert venus.setpoints() == {"L1": 0, "L2": 0, "L3": 0}

        venus.set_value("vebus/276/Hub4/DisableFeedIn", 1)
        await probe.publish(f"W/{pid}/vebus/276/Hub4/L2/AcPowerSetpoint", json.dumps({"value": -300}))
        await probe.publish(f"W/{pid}/vebus/276/Hub4/L1/AcPowerSetpoint", json.dumps({"value": "300"}))
        await probe.barrier(pid)
        assert venus.setpoints() == {"L1": 0, "L2": 0, "L3": 0}, "no string setpoint"
        assert (venus.rejected_writes, venus.string_writes) == (0, 1)
        assert [w.value for w in venus.writes[-2:]] == [-300, "300"]


async def test_registration_protocol(mqtt_connection: MqttConnectionConfig, unique_id: str) -> None:
    pid = unique_id
    venus = make_emulator(mqtt_connection, pid, keepalive_timeout_s=5.0, grid_instance_base=40)
    client = "watti_grid"

    def status(connected: int, services: dict[str, str] | None = None) -> str:
        body: dict[str, object] = {"clientId": client, "connected": connected, "version": "test"}
        if services is not None:
            body["services"] = services
        return json.dumps(body)

    async with (
        Probe(mqtt_connection, f"N/{pid}/#", f"device/{client}/DBus") as probe,
        running(venus),
    ):
        await started(probe, pid)
        await probe.publish(f"R/{pid}/keepalive", json.dumps({"keepalive-options": ["suppress-republish"]}))
        await probe.publish(f"device/{client}/Status", status(1, {"g": "grid"}))
        await wait_until(lambda: probe.on(f"device/{client}/DBus"), 2.0, "DBus reply")
        reply = json.loads(probe.on(f"device/{client}/DBus")[0].payload)
        assert reply == {
            "portalId": pid,
            "deviceInstance": {"g": 40},
            "topicPath": {"g": {"N": f"N/{pid}/grid/40", "R": f"R/{pid}/grid/40", "W": f"W/{pid}/grid/40"}},
        }
        await probe.publish(f"W/{pid}/grid/40/Ac/L1/Power", json.dumps({"value": 1234.5}))
        await wait_until(lambda: venus.grid_writes(40), 2.0)
        assert venus.grid_writes(40)[0].path == "grid/40/Ac/L1/Power"
        await wait_until(
            lambda: [value_of(m) for m in probe.on(f"N/{pid}/grid/40/Ac/L1/Power")][-1:] == [1234.5], 2.0
        )

        await probe.publish(f"device/{client}/Status", status(1, {"g": "grid", "h": "grid"}))
        await wait_until(lambda: len(probe.on(f"device/{client}/DBus")) == 2, 2.0)
        assert json.loads(probe.on(f"device/{client}/DBus")[1].payload)["deviceInstance"] == {
            "g": 40,
            "h": 41,
        }

        venus.restart_driver()
        await wait_until(lambda: any(m.payload == b"" for m in probe.on(f"N/{pid}/grid/40/Ac/L1/Power")), 2.0)
        assert venus.registrations() == ()
        await probe.publish(f"W/{pid}/grid/40/Ac/L1/Power", json.dumps({"value": 99}))
        await probe.barrier(pid)
        assert len(venus.grid_writes(40)) == 1, "writes vanish silently after a driver restart"

        await probe.publish(f"device/{client}/Status", status(1, {"g": "grid"}))
        await wait_until(lambda: len(probe.on(f"device/{client}/DBus")) == 3, 2.0)
        assert json.loads(probe.on(f"device/{client}/DBus")[2].payload)["deviceInstance"] == {"g": 40}
        assert venus.value("grid/40/Ac/L1/Power") is None, "values start out invalid after re-registration"

        await probe.publish(f"device/{client}/Status", status(0))
        await wait_until(lambda: venus.registrations() == (), 2.0, "unregistered")


async def test_status_during_driver_deaf_window_is_lost(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    pid = unique_id
    venus = make_emulator(mqtt_connection, pid)
    async with Probe(mqtt_connection, f"N/{pid}/#", "device/+/DBus") as probe, running(venus):
        await started(probe, pid)
        venus.restart_driver(deaf_s=30.0)
        status = {"clientId": "c1", "connected": 1, "version": "1", "services": {"g": "grid"}}
        await probe.publish("device/c1/Status", json.dumps(status))
        await probe.barrier(pid)
        venus.restart_driver(deaf_s=0.0)
        await probe.publish("device/c1/Status", json.dumps(status))
        await wait_until(lambda: probe.on("device/c1/DBus"), 2.0)
        assert len(probe.on("device/c1/DBus")) == 1


@pytest.mark.parametrize("payload", [b"not json", b'{"value": true}', b'["value", 1]', b"{}"], ids=str)
async def test_rejects_bad_writes(
    mqtt_connection: MqttConnectionConfig, unique_id: str, payload: bytes
) -> None:
    pid = unique_id
    venus = make_emulator(mqtt_connection, pid)
    async with Probe(mqtt_connection, f"N/{pid}/#") as probe, running(venus):
        await started(probe, pid)
        await probe.publish(f"W/{pid}/vebus/276/Hub4/DisableCharge", payload)
        await probe.barrier(pid)
        assert venus.rejected_writes == 1
        assert venus.value("vebus/276/Hub4/DisableCharge") == 0


@pytest.mark.parametrize("mode", ["flashmq", "legacy"])
async def test_string_values_are_taken_and_counted(
    mqtt_connection: MqttConnectionConfig, unique_id: str, mode: str
) -> None:
    pid = unique_id
    venus = make_emulator(mqtt_connection, pid, mode=mode, legacy_timer_s=0.05)
    async with Probe(mqtt_connection, f"N/{pid}/#") as probe, running(venus):
        await started(probe, pid)
        await probe.publish(f"W/{pid}/vebus/276/Hub4/DisableCharge", json.dumps({"value": "1"}))
        await probe.barrier(pid)
        assert (venus.rejected_writes, venus.string_writes) == (0, 1)
        assert venus.value("vebus/276/Hub4/DisableCharge") == "1", "D-Bus stores a string as given"


@pytest.mark.parametrize("mode", ["flashmq", "legacy"])
async def test_grid_instances_start_at_one_and_last_will_on_broker_stop(
    broker: TestBroker, mqtt_connection: MqttConnectionConfig, unique_id: str, mode: str
) -> None:
    if broker.kind == "embedded":
        pytest.skip("amqtt's shutdown hangs while clients publish (Python 3.11 wait_for swallows its cancel)")
    pid = unique_id
    venus = make_emulator(mqtt_connection, pid, mode=mode)
    status = {"clientId": "c1", "connected": 1, "version": "1", "services": {"g": "grid", "t": "temperature"}}
    will = aiomqtt.Will("device/c1/Status", json.dumps(status | {"connected": 0}))
    device = aiomqtt.Client(mqtt_connection.host, mqtt_connection.port, identifier=f"{pid}_dev", will=will)
    async with running(venus):
        async with Probe(mqtt_connection, "device/c1/DBus", f"N/{pid}/system/0/Serial") as probe:
            await started(probe, pid)
            await device.__aenter__()
            await device.publish("device/c1/Status", json.dumps(status))
            await wait_until(lambda: probe.on("device/c1/DBus"), 2.0, "registered")
            assert json.loads(probe.on("device/c1/DBus")[0].payload)["deviceInstance"] == {"g": 1, "t": 1}
        await broker.stop()
        with contextlib.suppress(aiomqtt.MqttError):
            await device.__aexit__(None, None, None)
        await wait_until(lambda: venus.registrations() == (), 2.0, "the will, delivered at broker shutdown")
        await broker.start()
