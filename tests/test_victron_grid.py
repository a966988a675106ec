"""VictronGridProvider/VictronGridFeeder against the Venus OS emulator on a real broker, fed by a real
JanitzaMeter reading a pymodbus server: registration, write paths, units, signs, rates, re-registration,
staleness, shutdown and the last will."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from tests.support.brokers import TestBroker
from tests.support.modbus_fixtures import janitza_config, load_janitza_sample
from tests.support.proxy import LoopbackProxy
from tests.support.waiting import wait_until
from tests.test_venus_emulator import Probe
from tests.test_victron_bridges import regulating, silences, victron_meter
from watti_watchman.clock import monotonic
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.config.services import VictronGridFeederConfig
from watti_watchman.domain.janitza import QUANTITIES_BY_KEY, reading_from_values
from watti_watchman.meters.janitza import JanitzaMeter
from watti_watchman.mqtt import MqttSession
from watti_watchman.services.victron_grid import (
    KEEPALIVE_PAYLOAD,
    VictronGridFeeder,
    _Throttle,
    venus_value,
)
from watti_watchman.sim.janitza_server import JanitzaServer
from watti_watchman.sim.venus import GRID_PATHS, VenusEmulator, Write
from watti_watchman.supervisor import Backoff

SAMPLE = load_janitza_sample()
VECTOR_SUM = QUANTITIES_BY_KEY["current_vector_sum"].index
"""Not written to Venus: varied to emulate the meter's 200 ms measuring windows."""


@dataclass
class Recorder:
    """A test MQTT client recording (topic, payload) of everything under its subscriptions."""

    connection: MqttConnectionConfig
    topics: tuple[str, ...]
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    async def _on_connect(self, session: MqttSession) -> None:
        await session.subscribe(*self.topics)
        self.subscribed.set()

    def session(self) -> MqttSession:
        """A session recording into `messages`."""
        return MqttSession(
            self.connection,
            "recorder",
            clock=monotonic,
            on_connect=self._on_connect,
            on_message=lambda topic, payload, _retained: self.messages.append((topic, payload)),
        )

    def on(self, topic: str) -> list[dict[str, Any]]:
        """Parsed JSON payloads received on `topic`, oldest first."""
        return [json.loads(payload) for t, payload in self.messages if t == topic]

    def under(self, prefix: str) -> list[tuple[str, bytes]]:
        """Messages whose topic starts with `prefix`."""
        return [(t, p) for t, p in self.messages if t.startswith(prefix)]


@dataclass
class Rig:
    """The peers of one test: emulated GX, Modbus server, real meter, the feeder and a recorder."""

    venus: VenusEmulator
    server: JanitzaServer
    meter: JanitzaMeter
    feeder: VictronGridFeeder
    recorder: Recorder
    tasks: dict[str, asyncio.Task[None]]

    @property
    def instance(self) -> int:
        """The grid service instance the emulator assigned to the feeder."""
        (registration,) = [
            r for r in self.venus.registrations() if r.client_id == self.feeder.config.client_id
        ]
        return registration.instance

    def registered(self) -> bool:
        """True once the emulator holds the feeder's registration."""
        return any(r.client_id == self.feeder.config.client_id for r in self.venus.registrations())

    def writes(self, path: str) -> list[Write]:
        """Accepted writes to `grid/<instance>/<path>`."""
        return [w for w in self.venus.grid_writes(self.instance) if w.path.endswith(f"/{path}")]

    def grid_value(self, path: str) -> object:
        """The emulator's current value at `grid/<instance>/<path>` (None: invalid)."""
        return self.venus.value(f"grid/{self.instance}/{path}")

    def all_written(self) -> bool:
        """True when every grid path holds a value (none invalid)."""
        return self.registered() and all(self.grid_value(p) is not None for p in GRID_PATHS)

    def start(self, name: str, run: Callable[[], Any]) -> None:
        """Run `run()` as a task named `name` until the rig closes (or `stop(name)`)."""
        self.tasks[name] = asyncio.create_task(run())

    async def stop(self, name: str) -> None:
        """Cancel one task and wait for it."""
        task = self.tasks.pop(name)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def feeder_config(unique_id: str, **overrides: Any) -> VictronGridFeederConfig:
    """A feeder of the meter `hak` with a per-test client id."""
    settings: dict[str, Any] = {
        "type": "VictronGridFeeder",
        "mqtt_connection_name": "test",
        "grid_meter_name": "hak",
        "client_id": f"{unique_id}_grid",
    }
    return VictronGridFeederConfig(**(settings | overrides))


async def emulate_windows(server: JanitzaServer, period_s: float) -> None:
    """Change a value Venus never sees every `period_s`, as the meter's measuring windows do."""
    tick = 0
    while True:
        tick += 1
        values = list(server.values)
        values[VECTOR_SUM] = SAMPLE[VECTOR_SUM] + (tick % 7) * 0.001
        server.set_values(values)
        await asyncio.sleep(period_s)


@contextlib.asynccontextmanager
async def rig(
    connection: MqttConnectionConfig,
    unique_id: str,
    *,
    feeder_connection: MqttConnectionConfig | None = None,
    invert: bool = False,
    meter_interval_s: float = 0.2,
    meter_max_age_s: float = 1.0,
    with_venus: bool = True,
    mode: Literal["flashmq", "legacy"] = "flashmq",
    **config: Any,
) -> AsyncIterator[Rig]:
    """Everything running; the feeder with short registration timers (reply 0.4 s, backoff ≤ 0.2 s)."""
    async with JanitzaServer(SAMPLE) as server:
        meter = JanitzaMeter(
            janitza_config(server, invert=invert, interval=meter_interval_s, max_age=meter_max_age_s)
        )
        feeder = VictronGridFeeder(feeder_config(unique_id, **config), feeder_connection or connection, meter)
        feeder.provider.reply_timeout_s = 0.4
        feeder.provider.backoff = Backoff(initial_s=0.05, cap_s=0.2)
        venus = VenusEmulator(
            connection,
            unique_id,
            mode=mode,
            registration_delay_s=0.05,
            legacy_timer_s=0.1,
            expiry_check_s=1.0,
        )
        recorder = Recorder(connection, (f"device/{feeder.config.client_id}/#", f"W/{unique_id}/#"))
        setup = Rig(venus, server, meter, feeder, recorder, {})
        setup.start("recorder", recorder.session().run)
        await asyncio.wait_for(recorder.subscribed.wait(), 5)
        setup.start("windows", lambda: emulate_windows(server, meter_interval_s))
        setup.start("meter", meter.run)
        if with_venus:
            setup.start("venus", venus.run)
        setup.start("feeder", feeder.run)
        try:
            yield setup
        finally:
            tasks = list(setup.tasks.values())
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise AssertionError("a component crashed") from task.exception()
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def metric(feeder: VictronGridFeeder, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`, None when absent."""
    for family in feeder.collect_metrics():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def strict_number(payload: bytes) -> float | None:
    """The value of a `{"value": <number|null>}` payload; fails on strings, booleans, NaN, extra keys."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-finite {constant} written")

    data = json.loads(payload, parse_constant=refuse)
    assert isinstance(data, dict)
    assert set(data) == {"value"}
    value = data["value"]
    assert value is None or (isinstance(value, int | float) and not isinstance(value, bool)), payload
    return value


@pytest.mark.parametrize(
    ("arrival_s", "jitter_s", "expected_passes"),
    [(0.2, 0.02, 50), (0.201, 0.0, 50), (0.199, 0.0, 50), (0.05, 0.0, 50), (0.3, 0.0, 34)],
)
def test_throttle_follows_a_jittery_meter_without_exceeding_the_rate(
    arrival_s: float, jitter_s: float, expected_passes: int
) -> None:
    """Readings at ~5 Hz pass a 0.2 s throttle despite jitter (no aliasing to 2.5 Hz); faster ones are cut."""
    throttle = _Throttle(0.2)
    passes: list[float] = []
    for n in range(round(10.0 / arrival_s)):
        now_s = n * arrival_s + (jitter_s if n % 2 else -jitter_s)
        if throttle.wait_s(now_s) == 0.0:
            throttle.take(now_s)
            passes.append(now_s)
    assert abs(len(passes) - expected_passes) <= 1
    for start in passes:
        assert sum(1 for t in passes if start <= t < start + 1.0) <= 1.0 / 0.2 + 1


async def test_each_reading_is_written_as_it_arrives_not_when_the_throttle_would_allow(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    """Power values go to the GX with each new window at once (the throttle skips, never delays):
    a late write used to pace every later one, each written ≈150 ms after its window."""
    async with rig(mqtt_connection, unique_id) as r:
        published_s: dict[int, float] = {}
        written: list[tuple[float, int]] = []
        meter_publish, write_values = r.meter.values.publish, r.feeder._write_values

        def record_publish(value: Any, at_s: float | None = None) -> Any:
            stamped = meter_publish(value, at_s)
            published_s[stamped.seq] = monotonic()
            return stamped

        async def record_write(prefix: str, stamped: Any, value_class: Any) -> None:
            if value_class.kind == "power":
                written.append((monotonic(), stamped.seq))
            await write_values(prefix, stamped, value_class)

        r.meter.values.publish = record_publish  # type: ignore[method-assign]
        r.feeder._write_values = record_write  # type: ignore[method-assign]
        await wait_until(lambda: len([seq for _, seq in written if seq in published_s]) >= 15, 10)
        delays_s = sorted(at_s - published_s[seq] for at_s, seq in written if seq in published_s)
        assert delays_s[len(delays_s) // 2] < 0.03, delays_s


@pytest.mark.parametrize("invert", [False, True])
async def test_registers_then_writes_every_path_with_venus_units_and_signs(
    mqtt_connection: MqttConnectionConfig, unique_id: str, invert: bool
) -> None:
    async with rig(mqtt_connection, unique_id, invert=invert) as r:
        await wait_until(r.all_written, 5, "all grid paths written")
        feeder, cid = r.feeder, r.feeder.config.client_id
        (status, *_) = r.recorder.on(f"device/{cid}/Status")
        assert status["clientId"] == cid
        assert status["connected"] == 1
        assert status["services"] == {"grid": "grid"}
        assert isinstance(status["version"], str) and status["version"]
        prefix = f"W/{unique_id}/grid/{r.instance}"
        assert feeder.provider.write_prefix == prefix
        assert r.venus.rejected_writes == 0, "nothing written before the registration reply"

        expected = reading_from_values(SAMPLE, invert)
        assert len(feeder.all_quantities) == len(GRID_PATHS)
        for quantity in feeder.all_quantities:
            value = r.grid_value(str(quantity.venus_path))
            row = QUANTITIES_BY_KEY[quantity.key]
            assert value == pytest.approx(expected.value(row) * quantity.venus_scale, abs=0.051)
        sign = -1 if invert else 1
        assert r.grid_value("Ac/Power") == pytest.approx(sign * 1934.24, abs=0.05)
        assert r.grid_value("Ac/L3/Power") == pytest.approx(sign * 1000.94, abs=0.05)
        imported_kwh, exported_kwh = 34739.176, 193.045
        forward, reverse = (exported_kwh, imported_kwh) if invert else (imported_kwh, exported_kwh)
        assert r.grid_value("Ac/Energy/Forward") == pytest.approx(forward, abs=1e-3)
        assert r.grid_value("Ac/Energy/Reverse") == pytest.approx(reverse, abs=1e-3)
        assert r.grid_value("Ac/L1/Energy/Forward") == pytest.approx(
            61.594 if invert else 12987.790, abs=1e-3
        )
        assert r.grid_value("Ac/L2/Voltage") == pytest.approx(236.64, abs=0.01)
        assert r.grid_value("Ac/L1/Current") == pytest.approx(3.572, abs=1e-3)
        assert r.grid_value("Ac/Frequency") == pytest.approx(50.013, abs=1e-3)

        written = r.recorder.under(f"W/{unique_id}/")
        assert {t for t, _ in written} == {f"{prefix}/{p}" for p in GRID_PATHS}
        assert all(strict_number(p) is not None for _, p in written)
        assert metric(feeder, "watti_victron_grid_up") == 1.0
        assert metric(feeder, "watti_victron_grid_registration_state", state="registered") == 1.0
        assert metric(feeder, "watti_victron_grid_device_instance") == r.instance
        assert metric(feeder, "watti_victron_grid_writes_total", **{"class": "slow"}) == feeder.writes["slow"]
        assert metric(feeder, "watti_victron_grid_last_write_age_seconds") is not None
        assert feeder.status()["write_prefix"] == prefix

        late = Recorder(mqtt_connection, (f"W/{unique_id}/#", f"device/{cid}/#", f"{unique_id}/marker"))
        r.start("late", late.session().run)
        await asyncio.wait_for(late.subscribed.wait(), 5)
        await r.venus.session.publish(f"{unique_id}/marker", b"{}")
        await wait_until(lambda: late.on(f"{unique_id}/marker"), 5, "marker")
        assert late.messages[0][0] == f"{unique_id}/marker", "nothing retained: no writes, no Status"


async def test_rates_stay_within_the_configured_intervals(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    async with rig(mqtt_connection, unique_id, meter_interval_s=0.05) as r:
        await wait_until(r.all_written, 5, "all grid paths written")
        start_s, first_seq = monotonic(), r.meter.reading.seq
        await wait_until(lambda: monotonic() - start_s >= 2.0, 5, "a 2 s measuring interval")
        end_s = monotonic()
        readings = r.meter.reading.seq - first_seq
        assert readings >= 20, "the meter delivered far more than 5 readings/s"

        def count(path: str) -> int:
            return sum(1 for w in r.writes(path) if start_s <= w.at_s <= end_s)

        span_s = end_s - start_s
        for quantity in r.feeder.power_quantities:
            assert span_s / 0.2 * 0.6 <= count(str(quantity.venus_path)) <= span_s / 0.2 + 2
        for quantity in r.feeder.slow_quantities:
            assert 1 <= count(str(quantity.venus_path)) <= span_s / 1.0 + 2


async def test_retries_until_the_driver_answers_and_writes_nothing_before(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    async with rig(mqtt_connection, unique_id, with_venus=False) as r:
        provider = r.feeder.provider
        await wait_until(lambda: provider.failures.by_reason["no_reply"] >= 2, 5, "two unanswered attempts")
        assert provider.attempts_total >= 2
        assert provider.write_prefix is None
        assert metric(r.feeder, "watti_victron_grid_registration_state", state="registering") == 1.0
        failures = metric(r.feeder, "watti_victron_grid_registration_failures_total", reason="no_reply")
        assert failures is not None and failures >= 2
        assert r.meter.is_fresh()
        assert not r.recorder.under(f"W/{unique_id}/"), "no write before registration"
        assert r.feeder.writes.total() == 0
        r.start("venus", r.venus.run)
        await wait_until(r.all_written, 5, "registered and written once the driver answers")
        assert r.venus.rejected_writes == 0


async def test_republishes_status_periodically(mqtt_connection: MqttConnectionConfig, unique_id: str) -> None:
    async with rig(mqtt_connection, unique_id) as r:
        r.feeder.provider.status_interval_s = 0.2
        topic = f"device/{r.feeder.config.client_id}/Status"
        await wait_until(lambda: len(r.recorder.on(topic)) >= 4, 5, "Status re-published")
        assert all(status["connected"] == 1 for status in r.recorder.on(topic))
        assert len(r.venus.registrations()) == 1
        assert r.feeder.provider.generation == 1, "a confirmed registration is not a new one"
        assert r.feeder.provider.state == "registered"


@pytest.mark.parametrize("mode", ["flashmq", "legacy"])
async def test_reregisters_after_a_broker_restart(
    broker: TestBroker,
    mqtt_connection: MqttConnectionConfig,
    unique_id: str,
    mode: Literal["flashmq", "legacy"],
) -> None:
    if broker.kind == "embedded":
        pytest.skip("amqtt's shutdown hangs while clients publish (Python 3.11 wait_for swallows its cancel)")
    async with rig(mqtt_connection, unique_id, mode=mode) as r:
        await wait_until(r.all_written, 5, "all grid paths written")
        instance, provider = r.instance, r.feeder.provider
        await broker.stop()
        await wait_until(lambda: not provider.session.is_connected, 5, "feeder disconnected")
        await wait_until(lambda: not r.registered(), 2, "our last will, delivered as the broker shut down")
        before = len(r.venus.grid_writes(instance))
        await broker.start()
        await wait_until(lambda: provider.session.connects_total == 2, 15, "feeder reconnected")
        await wait_until(lambda: len(r.venus.grid_writes(instance)) > before + 10, 10, "writes resumed")
        assert provider.state == "registered"
        assert r.instance == instance
        assert provider.attempts_total >= 2
        assert r.venus.rejected_writes == 0


@pytest.mark.parametrize("mode", ["flashmq", "legacy"])
async def test_reregisters_at_once_after_a_driver_restart(
    mqtt_connection: MqttConnectionConfig, unique_id: str, mode: Literal["flashmq", "legacy"]
) -> None:
    async with (
        rig(mqtt_connection, unique_id, mode=mode) as r,
        Probe(mqtt_connection, f"R/{unique_id}/keepalive") as keepalives,
    ):
        provider = r.feeder.provider
        provider.keepalive_interval_s, provider.dialect_timeout_s = 0.5, 0.3
        unregistered_writes: list[str] = []
        publish = provider.session.publish

        async def watched(topic: str, payload: bytes | str, *, retain: bool = False) -> None:
            if topic.startswith("W/") and provider.state != "registered":
                unregistered_writes.append(topic)
            await publish(topic, payload, retain=retain)

        provider.session.publish = watched  # type: ignore[method-assign]
        multi = victron_meter(mqtt_connection, unique_id, k=1.0)  # field timers: max_age 10 s
        multi.dialect_timeout_s = 0.3
        r.start("multi", multi.run)
        await wait_until(lambda: regulating(multi), 3, "the Multi regulating")
        await wait_until(r.all_written, 5, "all grid paths written")
        await wait_until(lambda: provider.dialect == mode, 3, "the bridge recognised")
        instance, sent = r.instance, len(keepalives.received)
        await wait_until(lambda: len(keepalives.received) > sent, 3, "a keepalive in the bridge's dialect")
        expected = (
            KEEPALIVE_PAYLOAD.encode() if mode == "flashmq" else f'["grid/{instance}/Ac/Frequency"]'.encode()
        )
        assert keepalives.received[-1].payload == expected
        r.venus.restart_driver(deaf_s=0.2)
        assert not r.registered()
        await wait_until(lambda: provider.vanished_total == 1, 5, "vanish noticed")
        await wait_until(r.all_written, 5, "registered and written again")
        assert unregistered_writes == [], "nothing written between the vanish notice and the new reply"
        assert regulating(multi) and silences(multi) == 0, "the driver restart does not touch the Multi"
        assert r.instance == instance
        assert provider.failures.by_reason["no_reply"] >= 1, (
            "the Status sent while the driver was deaf is lost"
        )
        assert provider.generation == 2
        assert metric(r.feeder, "watti_victron_grid_vanished_total") == 1.0


async def test_stale_meter_invalidates_once_and_resumes_with_fresh_data(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    async with rig(mqtt_connection, unique_id, meter_max_age_s=0.5) as r:
        await wait_until(r.all_written, 5, "all grid paths written")
        feeder = r.feeder
        await r.server.stop()
        await wait_until(lambda: feeder.writes["invalidate"] > 0, 5, "invalidated")
        last = r.meter.reading.snapshot()
        assert last is not None
        stale_since_s = last.at_s + r.meter.config.max_age
        await wait_until(lambda: all(r.grid_value(p) is None for p in GRID_PATHS), 5, "every path null")
        assert feeder.writes["invalidate"] == len(GRID_PATHS)
        errors = sum(r.meter.errors_by_reason.values())
        await wait_until(lambda: sum(r.meter.errors_by_reason.values()) > errors, 10, "meter still down")
        assert feeder.writes["invalidate"] == len(GRID_PATHS), "invalidated once"
        assert not [
            w for w in r.venus.grid_writes(r.instance) if w.at_s > stale_since_s and w.value is not None
        ]
        assert metric(feeder, "watti_victron_grid_up") == 0.0
        invalidations = [(t, p) for t, p in r.recorder.under(f"W/{unique_id}/") if strict_number(p) is None]
        assert len(invalidations) == len(GRID_PATHS)

        await r.server.start()
        await wait_until(r.all_written, 10, "fresh values written again")
        assert feeder.writes["invalidate"] == len(GRID_PATHS)
        assert metric(feeder, "watti_victron_grid_up") == 1.0


async def test_energy_counters_never_go_down(mqtt_connection: MqttConnectionConfig, unique_id: str) -> None:
    async with rig(mqtt_connection, unique_id) as r:
        await wait_until(r.all_written, 5, "all grid paths written")
        import_sum = QUANTITIES_BY_KEY["energy_import_sum"]
        import_row = next(q for q in r.feeder.all_quantities if q.key == import_sum.key)
        values = list(r.server.values)
        values[import_sum.index] -= 5000.0  # a meter power loss: counters restart from the last save
        first = r.meter.reading.seq
        r.server.set_values(values)
        held = "watti_victron_grid_energy_regressions_held_back_total"
        await wait_until(lambda: r.meter.reading.seq > first and metric(r.feeder, held), 5, "held back")
        assert r.grid_value("Ac/Energy/Forward") == venus_value(import_row, SAMPLE[import_sum.index])


async def test_shutdown_withdraws_the_service(mqtt_connection: MqttConnectionConfig, unique_id: str) -> None:
    async with rig(mqtt_connection, unique_id) as r:
        await wait_until(r.all_written, 5, "all grid paths written")
        topic = f"device/{r.feeder.config.client_id}/Status"
        await r.feeder.shutdown()
        await wait_until(lambda: r.recorder.on(topic)[-1]["connected"] == 0, 5, "connected: 0")
        await wait_until(lambda: not r.registered(), 5, "service removed")
        writes, seq = len(r.venus.writes), r.meter.reading.seq
        await wait_until(lambda: r.meter.reading.seq >= seq + 3, 5, "three more readings")
        assert len(r.venus.writes) == writes, "nothing written after shutdown"
        assert r.venus.rejected_writes == 0
        assert metric(r.feeder, "watti_victron_grid_registration_state", state="unregistered") == 1.0


async def test_last_will_withdraws_the_service_and_reconnect_restores_it(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    proxy = LoopbackProxy(mqtt_connection.host, mqtt_connection.port)
    await proxy.start()
    via_proxy = mqtt_connection.model_copy(update={"port": proxy.port})
    try:
        async with rig(mqtt_connection, unique_id, feeder_connection=via_proxy) as r:
            await wait_until(r.all_written, 5, "all grid paths written")
            topic = f"device/{r.feeder.config.client_id}/Status"
            instance = r.instance
            proxy.sever()
            await wait_until(lambda: r.recorder.on(topic)[-1]["connected"] == 0, 5, "last will")
            assert r.recorder.on(topic)[-1] == json.loads(r.feeder.provider.status_payload(connected=False))
            await wait_until(lambda: r.recorder.on(topic)[-1]["connected"] == 1, 10, "Status after reconnect")
            await wait_until(r.all_written, 5, "registered and written again")
            assert r.instance == instance
    finally:
        proxy.close()


async def test_write_prefix_skips_registration(mqtt_connection: MqttConnectionConfig, unique_id: str) -> None:
    venus = VenusEmulator(mqtt_connection, unique_id, registration_delay_s=0.05)
    other = f"{unique_id}_other"
    probe = Recorder(mqtt_connection, (f"device/{other}/DBus", f"N/{unique_id}/system/0/Serial"))
    probe_session = probe.session()
    probe_task = asyncio.create_task(probe_session.run())
    await asyncio.wait_for(probe.subscribed.wait(), 5)
    venus_task = asyncio.create_task(venus.run())
    try:
        await wait_until(lambda: probe.on(f"N/{unique_id}/system/0/Serial"), 5, "emulator subscribed")
        status = {"clientId": other, "connected": 1, "version": "1", "services": {"grid": "grid"}}
        await probe_session.publish(f"device/{other}/Status", json.dumps(status))
        await wait_until(lambda: probe.on(f"device/{other}/DBus"), 5, "a grid service exists")
        instance = probe.on(f"device/{other}/DBus")[0]["deviceInstance"]["grid"]
        prefix = f"W/{unique_id}/grid/{instance}"
        async with rig(mqtt_connection, unique_id, with_venus=False, write_prefix=prefix) as r:
            r.venus = venus
            await wait_until(lambda: all(venus.value(f"grid/{instance}/{p}") is not None for p in GRID_PATHS))
            assert not r.recorder.on(f"device/{r.feeder.config.client_id}/Status"), "no registration"
            assert r.feeder.provider.device_instance == instance
            assert metric(r.feeder, "watti_victron_grid_registration_state", state="fixed") == 1.0
            await r.feeder.shutdown()
            await wait_until(
                lambda: all(venus.value(f"grid/{instance}/{p}") is None for p in GRID_PATHS), 5, "invalidated"
            )
            assert venus.rejected_writes == 0
    finally:
        for task in (venus_task, probe_task):
            task.cancel()
        await asyncio.gather(venus_task, probe_task, return_exceptions=True)
