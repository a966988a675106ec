"""VictronMeter against the Venus emulator on a real broker, plus the pure parsing it relies on."""

import itertools
import json
import logging
import math

import pytest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.support.brokers import TestBroker
from tests.support.running import running
from tests.support.waiting import wait_until
from tests.test_venus_emulator import Probe, make_emulator
from watti_watchman.config.meters import VictronConfig
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.domain.readings import PowerSample
from watti_watchman.domain.victron import (
    VALUES,
    Payload,
    VictronTopic,
    VictronValues,
    parse_payload,
    parse_topic,
)
from watti_watchman.meters.base import BatteryController, PowerMeter
from watti_watchman.meters.victron import SUPPRESS_REPUBLISH, VictronMeter, VictronNotReadyError
from watti_watchman.metrics import Exposition
from watti_watchman.mqtt import NotConnectedError
from watti_watchman.sim.venus import STATE_BULK, VenusEmulator

MAX_AGE_S = 0.3


def make_meter(connection: MqttConnectionConfig, portal_id: str | None, **config: object) -> VictronMeter:
    """A meter with short timers: max_age 0.3 s, keepalive every 0.2 s, fast discovery and alarms."""
    cfg = VictronConfig.model_validate(
        {
            "type": "Victron",
            "name": "multi",
            "mqtt_connection_name": "test",
            "id": portal_id,
            "max_age": MAX_AGE_S,
        }
        | config
    )
    meter = VictronMeter(cfg, connection)
    meter.keepalive_interval_s = 0.2
    meter.full_publish_timeout_s = 0.3
    meter.full_publish_retry_s = 0.3
    meter.discovery_settle_s = 0.05
    meter.alarm_grace_s = 0.1
    meter.commanding_window_s = 2.0
    return meter


def gx(connection: MqttConnectionConfig, portal_id: str, **kwargs: object) -> VenusEmulator:
    """An emulator that stays alive between the meter's keepalives (legacy timers 1/33 of the real ones)."""
    options: dict[str, object] = {
        "keepalive_timeout_s": 1.0,
        "watchdog_s": 0.3,
        "legacy_timer_s": 0.03,
        "expiry_check_s": 0.3,
    }
    options.update(kwargs)
    return make_emulator(connection, portal_id, **options)


def samples(meter: VictronMeter, family: str) -> dict[tuple[str, ...], float]:
    """The samples of one metric family, keyed by label values."""
    found: dict[tuple[str, ...], float] = {}
    metric: Metric
    exposition = Exposition()
    exposition.add(meter)
    for metric in text_string_to_metric_families(exposition.render().decode()):
        for sample in metric.samples:
            if sample.name in (family, f"{family}_total"):
                found[tuple(sample.labels[k] for k in sorted(sample.labels, key=lambda k: k != "name"))] = (
                    sample.value
                )
    return found


# -- pure parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"value": 12.5}', Payload("value", 12.5)),
        (b'{"value": -3}', Payload("value", -3.0)),
        (b'{"value": null}', Payload("null")),
        (b"", Payload("empty")),
        (b'{"value": ', Payload("invalid_json")),
        (b"\xff\xfe", Payload("invalid_json")),
        (b"[1, 2]", Payload("not_object")),
        (b'{"max": 1}', Payload("not_object")),
        (b'{"value": "12"}', Payload("string_value")),
        (b'{"value": true}', Payload("not_number")),
        (b'{"value": [1]}', Payload("not_number")),
        (b'{"value": NaN}', Payload("non_finite")),
        (b'{"value": -Infinity}', Payload("non_finite")),
        (b'{"value": 1e999}', Payload("non_finite")),
        (b'{"value": 1' + b"0" * 400 + b"}", Payload("non_finite")),
        (b'{"value": 1' + b" " * 5000 + b"}", Payload("oversized")),
    ],
)
def test_parse_payload(payload: bytes, expected: Payload) -> None:
    assert parse_payload(payload) == expected


def test_parse_topic() -> None:
    assert parse_topic("N/abc/vebus/276/Ac/ActiveIn/L1/P") == VictronTopic(
        "abc", "vebus", 276, "Ac/ActiveIn/L1/P"
    )
    for topic in (
        "N/abc/heartbeat",
        "N/abc/vebus/x/State",
        "W/abc/vebus/276/State",
        "N/abc/vebus/276/",
        "N/a/b/²/c",
    ):
        assert parse_topic(topic) is None


def test_snapshot_soc_preference_and_null_phases() -> None:
    values = VictronValues()
    values.store("vebus", 276, "soc_vebus", 30.0)
    assert values.snapshot().soc_percent == 30.0
    values.store("battery", 512, "soc_battery", 40.0)
    values.store("system", 0, "soc_system", None)
    snapshot = values.snapshot()
    assert (snapshot.soc_percent, snapshot.soc_source) == (40.0, "battery")
    assert values.snapshot(soc_source="vebus").soc_percent == 30.0
    assert values.snapshot(soc_source="system").soc_percent is None
    values.store("vebus", 276, "ac_in_l1_power", 500.0)
    values.store("vebus", 276, "ac_in_l2_power", None)
    assert values.snapshot().ac_in_sample() is None, "a phase never received is not 0 W"
    values.store("vebus", 276, "ac_in_l3_power", None)
    assert values.snapshot().ac_in_sample() == PowerSample(500.0, 0.0, 0.0, 500.0), "null = phase absent"
    values.vanish("vebus", 276)
    assert values.snapshot().vebus_instance is None
    assert values.snapshot().ac_in_sample() is None


# -- against the emulator -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["flashmq", "legacy"])
async def test_discovers_portal_id_and_instances(
    mqtt_connection: MqttConnectionConfig, unique_id: str, mode: str
) -> None:
    venus = gx(mqtt_connection, unique_id, vebus_instance=228, battery_instance=288, mode=mode)
    meter = make_meter(mqtt_connection, None)
    power_meter: PowerMeter = meter  # both capabilities, checked by mypy
    controller: BatteryController = meter
    assert power_meter.name == controller.name == "multi"
    async with running(venus, meter):
        await wait_until(meter.ready_for_setpoints, 3.0, "ready")
        assert meter.portal_id == unique_id
        snapshot = meter.snapshot.get(MAX_AGE_S)
        assert snapshot is not None
        assert (snapshot.vebus_instance, snapshot.battery_instance) == (228, 288)
        assert (snapshot.vebus_instances, snapshot.battery_instances) == ((228,), (288,))
        assert samples(meter, "watti_victron_discovered_portals") == {("multi",): 1.0}
        assert meter.status()["vebus_instance"] == 228


async def test_refuses_to_pick_among_several_gx(
    mqtt_connection: MqttConnectionConfig, unique_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    other = unique_id + "b"
    first, second = gx(mqtt_connection, unique_id), gx(mqtt_connection, other)
    meter = make_meter(mqtt_connection, None)
    async with Probe(mqtt_connection, "N/+/system/0/Serial") as probe, running(first, second):
        await wait_until(
            lambda: probe.on(f"N/{unique_id}/system/0/Serial") and probe.on(f"N/{other}/system/0/Serial")
        )
        async with running(meter):
            await wait_until(lambda: "several GX answer" in caplog.text, 2.0, "conflict warning")
            assert meter.portal_id is None
            assert not meter.ready_for_setpoints()
            assert samples(meter, "watti_victron_discovered_portals") == {("multi",): 2.0}
            await probe.publish(f"N/{other}/system/0/Serial", b"", retain=True)  # the second GX is gone
            await wait_until(lambda: meter.portal_id == unique_id, 2.0, "pick the remaining GX")


@pytest.mark.parametrize("dialect", ["auto", "flashmq"])
async def test_keepalive_cadence_flashmq(
    mqtt_connection: MqttConnectionConfig, unique_id: str, dialect: str
) -> None:
    pid = unique_id
    venus = gx(mqtt_connection, pid)
    meter = make_meter(mqtt_connection, pid, keepalive=dialect)
    keepalive = f"R/{pid}/keepalive"
    async with Probe(mqtt_connection, keepalive, f"N/{pid}/system/0/Serial") as probe, running(venus):
        await wait_until(lambda: probe.on(f"N/{pid}/system/0/Serial"), 2.0, "GX up")
        async with running(meter):
            await wait_until(lambda: len(probe.on(keepalive)) >= 5, 3.0, "five keepalives")
        payloads = [message.payload for message in probe.on(keepalive)]
        assert payloads[0] == b"", "one full republish at start"
        assert payloads[1:] == [SUPPRESS_REPUBLISH] * (len(payloads) - 1)
        sent = probe.on(keepalive)
        gaps = [b.at_s - a.at_s for a, b in itertools.pairwise(sent[1:])]
        assert all(0.15 <= gap <= 0.5 for gap in gaps), gaps
        assert meter.status()["keepalive"] == "flashmq"
        assert venus.full_publishes == 1
        assert meter.full_publishes_total == 1


@pytest.mark.parametrize("dialect", ["auto", "legacy"])
async def test_keepalive_legacy_bridge(
    mqtt_connection: MqttConnectionConfig, unique_id: str, dialect: str
) -> None:
    pid = unique_id
    venus = gx(mqtt_connection, pid, mode="legacy", keepalive_timeout_s=0.5)
    meter = make_meter(mqtt_connection, pid, keepalive=dialect)
    async with Probe(mqtt_connection, f"R/{pid}/keepalive") as probe, running(venus, meter):
        await wait_until(lambda: len(probe.received) >= 4, 3.0, "four keepalives")
        assert all(message.payload == b"" for message in probe.received), "plain keepalives only"
        gaps = [b.at_s - a.at_s for a, b in itertools.pairwise(probe.received)]
        assert all(gap <= 0.5 for gap in gaps), gaps
        assert meter.ready_for_setpoints()
        assert meter.messages_by_reason["empty"] == 0, "never blanked: kept alive"


async def test_maps_every_value(mqtt_connection: MqttConnectionConfig, unique_id: str) -> None:
    pid = unique_id
    venus = gx(mqtt_connection, pid)
    meter = make_meter(mqtt_connection, pid)
    async with running(venus, meter):
        await wait_until(meter.ready_for_setpoints, 3.0, "ready")
        venus.set_value("system/0/Dc/Battery/Soc", 61.0)
        venus.set_value("battery/512/Soc", 62.0)
        venus.set_value("vebus/276/Soc", 63.0)
        venus.set_bms_limits(80.0, 120.0)
        for service, base in (("battery/512", 0.0), ("vebus/276", 1.0)):
            venus.set_value(f"{service}/Dc/0/Voltage", 51.0 + base)
            venus.set_value(f"{service}/Dc/0/Current", -10.0 - base)
            venus.set_value(f"{service}/Dc/0/Power", -510.0 - base)
        venus.set_ac_in(1100.0, -200.0, 300.0)
        venus.set_ac_out(400.0, 500.0, 600.0)
        venus.set_value("vebus/276/State", 9)
        venus.set_hub4_mode(3)
        venus.set_value("vebus/276/Hub4/DisableCharge", 1)
        venus.set_value("vebus/276/Hub4/DisableFeedIn", 0)
        expected = {
            "soc_system": 61.0, "soc_battery": 62.0, "soc_vebus": 63.0,
            "bms_max_charge_current": 80.0, "bms_max_discharge_current": 120.0,
            "battery_dc_voltage": 51.0, "battery_dc_current": -10.0, "battery_dc_power": -510.0,
            "vebus_dc_voltage": 52.0, "vebus_dc_current": -11.0, "vebus_dc_power": -511.0,
            "ac_in_l1_power": 1100.0, "ac_in_l2_power": -200.0, "ac_in_l3_power": 300.0,
            "ac_in_power": 1200.0,
            "ac_out_l1_power": 400.0, "ac_out_l2_power": 500.0, "ac_out_l3_power": 600.0,
            "ac_out_power": 1500.0,
            "vebus_state": 9.0, "hub4_mode": 3.0, "disable_charge": 1.0, "disable_feed_in": 0.0,
        }  # fmt: skip
        assert set(expected) == {spec.key for spec in VALUES}

        def current() -> dict[str, float | None]:
            snapshot = meter.snapshot.get(MAX_AGE_S)
            return dict(snapshot.values) if snapshot else {}

        await wait_until(lambda: current() == expected, 2.0, "every value mapped")
        snapshot = meter.snapshot.get(MAX_AGE_S)
        assert snapshot is not None
        assert (snapshot.soc_percent, snapshot.soc_source) == (61.0, "system")
        assert (snapshot.vebus_state, snapshot.hub4_mode, snapshot.disable_charge) == (9, 3, True)
        assert snapshot.dc_voltage_v == 51.0
        battery = meter.battery.get(MAX_AGE_S)
        assert battery is not None
        assert (battery.soc_percent, battery.max_charge_current_a, battery.max_discharge_current_a) == (
            61,
            80,
            120,
        )
        assert battery.voltage_v == 51.0
        assert meter.power.get(MAX_AGE_S) == PowerSample(1100.0, -200.0, 300.0, 1200.0)
        for spec in VALUES:
            labels = ("multi", *(value for _, value in spec.labels))
            assert math.isclose(samples(meter, spec.metric)[labels], expected[spec.key] * spec.scale), (
                spec.key
            )
        assert samples(meter, "watti_victron_up") == {("multi",): 1.0}

        venus.set_value("system/0/Dc/Battery/Soc", None)  # invalid: fall back to the BMS
        await wait_until(
            lambda: meter.battery.get(MAX_AGE_S) == battery.__class__(62.0, 80.0, 120.0, 51.0), 2.0
        )


async def test_writes_integer_setpoints(mqtt_connection: MqttConnectionConfig, unique_id: str) -> None:
    pid = unique_id
    venus = gx(mqtt_connection, pid)
    meter = make_meter(mqtt_connection, pid)
    with pytest.raises(VictronNotReadyError) as raised:
        await meter.write_setpoints({"L1": 100})
    assert isinstance(raised.value, NotConnectedError)
    assert isinstance(raised.value, ConnectionError)
    async with Probe(mqtt_connection, f"W/{pid}/#") as probe, running(venus, meter):
        await wait_until(meter.ready_for_setpoints, 3.0, "ready")
        await meter.write_setpoints({"L1": 1500, "L2": -700, "L3": 0})
        await wait_until(lambda: len(probe.received) == 3, 2.0, "three writes")
        await wait_until(lambda: venus.setpoints() == {"L1": 1500, "L2": -700, "L3": 0}, 2.0, "Multi obeys")
        assert [(m.topic, m.payload, m.retain) for m in probe.received] == [
            (f"W/{pid}/vebus/276/Hub4/L1/AcPowerSetpoint", b'{"value": 1500}', False),
            (f"W/{pid}/vebus/276/Hub4/L2/AcPowerSetpoint", b'{"value": -700}', False),
            (f"W/{pid}/vebus/276/Hub4/L3/AcPowerSetpoint", b'{"value": 0}', False),
        ]
        assert all(isinstance(json.loads(m.payload)["value"], int) for m in probe.received)
        assert samples(meter, "watti_victron_setpoint_watts") == {
            ("multi", "l1"): 1500.0,
            ("multi", "l2"): -700.0,
            ("multi", "l3"): 0.0,
        }
        assert samples(meter, "watti_victron_setpoint_writes")[("multi", "l1")] == 1.0
        charging = STATE_BULK  # net +800 W; 252 is systemcalc's SystemState, never a vebus State
        await wait_until(lambda: getattr(meter.snapshot.get(MAX_AGE_S), "vebus_state", None) == charging, 2.0)
        assert samples(meter, "watti_victron_alarm") == {
            ("multi", "hub4_mode"): 0.0,
            ("multi", "passthru"): 0.0,
        }


async def test_alarms_when_not_obeyed(
    mqtt_connection: MqttConnectionConfig, unique_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    pid = unique_id
    venus = gx(mqtt_connection, pid, watchdog_s=0.2)
    meter = make_meter(mqtt_connection, pid)
    caplog.set_level(logging.INFO, logger="watti_watchman.meters.victron")
    async with running(venus, meter):
        await wait_until(meter.ready_for_setpoints, 3.0, "ready")
        await meter.write_setpoints({"L1": 300, "L2": 300, "L3": 300})
        await wait_until(lambda: meter.alarms["passthru"], 2.0, "watchdog fallback seen while commanding")
        assert "the Multi is in passthru" in caplog.text
        assert samples(meter, "watti_victron_alarm")[("multi", "passthru")] == 1.0
        venus.set_hub4_mode(1)
        await meter.write_setpoints({"L1": 300, "L2": 300, "L3": 300})
        await wait_until(lambda: meter.alarms["hub4_mode"], 2.0, "Hub4Mode alarm")
        assert "Hub4Mode is not 3" in caplog.text
        venus.set_hub4_mode(3)
        await meter.write_setpoints({"L1": 0, "L2": 0, "L3": 0})
        await wait_until(lambda: not any(meter.alarms.values()), 2.0, "alarms clear once obeyed")


async def test_counts_each_bad_payload_class(
    mqtt_connection: MqttConnectionConfig, unique_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    pid = unique_id
    venus = gx(mqtt_connection, pid)
    meter = make_meter(mqtt_connection, pid)
    topic = f"N/{pid}/vebus/276/Ac/ActiveIn/L1/P"
    garbage = {
        "invalid_json": b'{"value": ',
        "not_object": b"[1]",
        "string_value": b'{"value": "1500"}',
        "not_number": b'{"value": {"a": 1}}',
        "non_finite": b'{"value": NaN}',
        "oversized": b'{"value": 1' + b" " * 5000 + b"}",
    }
    async with Probe(mqtt_connection) as probe, running(venus, meter):
        await wait_until(lambda: meter.power.get(MAX_AGE_S) is not None, 3.0, "power")
        for reason, payload in garbage.items():
            venus.set_ac_in(100.0, 0.0, 0.0)
            await wait_until(lambda: meter.power.get(MAX_AGE_S) == PowerSample(100.0, 0.0, 0.0, 100.0), 2.0)
            before = meter.power.seq
            await probe.publish(topic, payload)
            await wait_until(lambda reason=reason: meter.messages_by_reason[reason] == 1, 2.0, reason)  # type: ignore[misc]
            newest = meter.power.snapshot()  # (a value after the garbage, in the same read, may be new)
            assert newest is None or newest.seq > before, f"{reason}: no stale value presented as fresh"
            assert f"{reason} payload on {topic}" in caplog.text
            venus.set_ac_in(0.0, 0.0, 0.0)  # the next round's change is notified again
        assert samples(meter, "watti_victron_messages")[("multi", "oversized")] == 1.0
        # the GX's last notifications must land before ours (two publishers: no order between them)
        await wait_until(lambda: meter.power.get(MAX_AGE_S) == PowerSample(0.0, 0.0, 0.0, 0.0), 2.0)

        await probe.publish(topic, b'{"value": null}')
        await wait_until(lambda: meter.messages_by_reason["null"] == 1, 2.0)
        assert meter.power.get(MAX_AGE_S) == PowerSample(0.0, 0.0, 0.0, 0.0), "null = phase absent"

        meter.full_publish_retry_s = 60.0  # hold the re-request back: the gap is observable under load
        await probe.publish(topic, b"")  # the vebus service vanished
        await wait_until(lambda: not meter.ready_for_setpoints(), 2.0, "vebus gone")
        with pytest.raises(VictronNotReadyError):
            await meter.write_setpoints({"L1": 0})
        assert meter.power.get(MAX_AGE_S) is None
        meter.full_publish_retry_s = 0.3
        await wait_until(meter.ready_for_setpoints, 3.0, "missing values re-requested with a full republish")
        assert meter.keepalives_by_kind["full"] >= 2


async def test_resumes_after_broker_restart(
    broker: TestBroker, mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    if broker.kind == "embedded":
        pytest.skip("amqtt's shutdown hangs while clients publish (Python 3.11 wait_for swallows its cancel)")
    pid = unique_id
    venus = gx(mqtt_connection, pid, keepalive_timeout_s=5.0)
    meter = make_meter(mqtt_connection, pid)
    meter.config = meter.config.model_copy(update={"max_age": 5.0})  # outlive the outage: no regain path
    async with running(venus, meter):
        await wait_until(meter.ready_for_setpoints, 3.0, "ready")
        await broker.stop()
        await wait_until(lambda: not meter.session.is_connected, 2.0)
        venus.set_ac_in(700.0, 800.0, 900.0)  # changed while nobody could hear it
        await broker.start()
        await wait_until(
            lambda: meter.power.get(5.0) == PowerSample(700.0, 800.0, 900.0, 2400.0), 5.0, "resumed"
        )
        assert meter.session.connects_total == 2
        assert samples(meter, "watti_victron_reconnects") == {("multi",): 1.0}
        await meter.write_setpoints({"L1": -100, "L2": -100, "L3": -100})
        await wait_until(lambda: venus.setpoints() == {"L1": -100, "L2": -100, "L3": -100}, 2.0)


async def test_values_go_stale_when_gx_falls_silent(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    pid = unique_id
    venus = gx(mqtt_connection, pid)
    meter = make_meter(mqtt_connection, pid)
    async with running(meter):
        async with running(venus):
            await wait_until(
                lambda: meter.battery.get(MAX_AGE_S) and meter.power.get(MAX_AGE_S), 3.0, "values"
            )
            seq = meter.battery.seq
            await wait_until(lambda: meter.battery.seq >= seq + 3, 2.0, "re-published on heartbeats")
        await wait_until(lambda: not meter.is_fresh(), 2.0, "silence detected")
        assert meter.battery.get(MAX_AGE_S) is None
        assert meter.power.get(MAX_AGE_S) is None
        assert not meter.ready_for_setpoints()
        assert samples(meter, "watti_victron_up") == {("multi",): 0.0}
        assert samples(meter, "watti_victron_ac_in_power_watts") == {}, "no frozen values exported"
        await wait_until(lambda: samples(meter, "watti_victron_gx_silences") == {("multi",): 1.0}, 1.0)
        fulls = meter.keepalives_by_kind["full"]
        async with running(venus):
            await wait_until(meter.is_fresh, 3.0, "heard again")
            await wait_until(
                lambda: meter.keepalives_by_kind["full"] > fulls, 2.0, "full republish after silence"
            )
            await wait_until(lambda: meter.power.get(MAX_AGE_S) is not None, 2.0)


async def test_a_burst_of_values_is_handed_over_once(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    """A GX notifies a dozen values at once: the snapshot is built for the burst, not per message."""
    venus = gx(mqtt_connection, unique_id)
    meter = make_meter(mqtt_connection, unique_id)

    def landed(step: int) -> bool:
        stamped = meter.snapshot.snapshot()
        return stamped is not None and (stamped.value.ac_in_l1_w, stamped.value.dc_power_w) == (
            100.0 + step,
            150.0 + step,
        )

    async with running(venus, meter):
        await wait_until(lambda: meter.power.get(MAX_AGE_S) is not None, 3.0, "power")
        for step in range(1, 4):
            before = meter.snapshot.seq
            venus.set_ac_in(100.0 + step, 200.0, 300.0)  # 14 notifications: AC in and out, battery DC
            venus.set_ac_out(10.0 + step, 20.0, 30.0)
            venus.set_battery(52.0 + step, 3.0, 150.0 + step)  # the burst's last
            await wait_until(lambda s=step: landed(s), 2.0, "burst")  # type: ignore[misc]
            assert meter.power.get(MAX_AGE_S) == PowerSample(100.0 + step, 200.0, 300.0, 600.0 + step)
            assert meter.snapshot.seq - before <= 7, f"{meter.snapshot.seq - before} hand-overs for 14 values"
