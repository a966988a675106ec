"""MqttMeter: payload mapping (Tasmota SML, Shelly Pro 3EM, OpenDTU) and the meter on a real broker."""

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.support.waiting import wait_until
from tests.test_cli import watti
from watti_watchman.broker import free_port
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.domain.mqtt_payload import (
    PayloadAssembler,
    PayloadError,
    ValueMapping,
    extract,
    parse_path,
)
from watti_watchman.meters.base import PowerMeter
from watti_watchman.meters.mqtt_meter import MqttMeter, MqttMeterConfig, MqttReadError, read_once

TASMOTA_SML = (
    b'{"Time":"2024-05-01T12:00:00","SML":{"Total_in":12345.678,"Total_out":234.5,"Power_curr":-432}}'
)
SHELLY_EM = json.dumps(
    {
        "id": 0,
        "a_current": 4.029,
        "a_voltage": 236.1,
        "a_act_power": 951.2,
        "b_current": 0.5,
        "b_voltage": 235.0,
        "b_act_power": -80.5,
        "c_current": 0.2,
        "c_voltage": 234.2,
        "c_act_power": 20.3,
        "total_current": 4.729,
        "total_act_power": 891.0,
    }
).encode()
SHELLY_EMDATA = b'{"id":0,"total_act":523456.78,"total_act_ret":12345.6}'


def test_paths_into_json_and_bare_numbers() -> None:
    assert parse_path("SML.Power_curr") == ("SML", "Power_curr")
    assert extract(TASMOTA_SML, parse_path("SML.Power_curr")) == -432.0
    assert extract(b'{"em":[{"p":5},{"p":"7.5"}]}', parse_path("em.1.p")) == 7.5
    assert extract(b"1234.5", ()) == 1234.5
    for payload, path, reason in (
        (b"{not json", (), "not_json"),
        (TASMOTA_SML, ("SML", "Power"), "missing"),
        (b'{"p": "on"}', ("p",), "not_a_number"),
        (b'{"p": true}', ("p",), "not_a_number"),
        (b'{"p": null}', ("p",), "not_a_number"),
        (b"NaN", (), "non_finite"),
    ):
        with pytest.raises(PayloadError) as error:
            extract(payload, path)
        assert error.value.reason == reason


def test_tasmota_sml_total_power_and_energy() -> None:
    topic = "tele/sml/SENSOR"
    assembler = PayloadAssembler(
        [
            ValueMapping("power_total", topic, ("SML", "Power_curr")),
            ValueMapping("energy_import", topic, ("SML", "Total_in"), 1000),
            ValueMapping("energy_export", topic, ("SML", "Total_out"), 1000),
        ],
        invert=False,
        max_age_s=5,
    )
    reading = assembler.accept(topic, TASMOTA_SML, 0.0)
    assert reading is not None
    assert reading.power_sample().total_w == -432.0
    assert reading.value("energy_import") == 12_345_678.0
    assert assembler.accept("other/topic", b"1", 0.1) is None


def test_shelly_pro_3em_two_topics() -> None:
    em, emdata = "shellypro3em/status/em:0", "shellypro3em/status/emdata:0"
    mappings = [
        ValueMapping(f"power_l{n}", em, (f"{p}_act_power",)) for n, p in ((1, "a"), (2, "b"), (3, "c"))
    ] + [
        ValueMapping("power_total", em, ("total_act_power",)),
        ValueMapping("voltage_l1", em, ("a_voltage",)),
        ValueMapping("energy_import", emdata, ("total_act",)),
        ValueMapping("energy_export", emdata, ("total_act_ret",)),
    ]
    assembler = PayloadAssembler(mappings, invert=True, max_age_s=5)
    assert assembler.accept(emdata, SHELLY_EMDATA, 0.0) is None  # no power yet
    reading = assembler.accept(em, SHELLY_EM, 1.0)
    assert reading is not None
    sample = reading.power_sample()
    assert (sample.l1_w, sample.l2_w, sample.l3_w, sample.total_w) == (-951.2, 80.5, -20.3, -891.0)
    assert reading.value("energy_export") == 523456.78  # inverted: import and export swapped
    late = assembler.accept(em, SHELLY_EM, 7.0)
    assert late is not None
    assert late.value("energy_export") is None  # energy older than max_age is left out


def test_power_on_separate_topics_waits_for_every_phase_and_rejects_garbage_whole() -> None:
    mappings = [ValueMapping(f"power_l{n}", f"dtu/{n}/power") for n in (1, 2, 3)]
    assembler = PayloadAssembler(mappings, invert=False, max_age_s=1.0)
    assert assembler.accept("dtu/1/power", b"100", 0.0) is None
    assert assembler.accept("dtu/2/power", b"200", 0.1) is None
    reading = assembler.accept("dtu/3/power", b"300", 0.2)
    assert reading is not None
    assert reading.power_sample().total_w == 600.0
    with pytest.raises(PayloadError, match="impossible"):
        assembler.accept("dtu/3/power", b"5e9", 0.3)
    assert assembler.accept("dtu/3/power", b"310", 1.05) is None  # l1 is older than max_age now
    with pytest.raises(ValueError, match="needs power"):
        PayloadAssembler([ValueMapping("frequency", "f")], invert=False, max_age_s=1)


def test_config_needs_power_and_rejects_wildcards() -> None:
    base: dict[str, Any] = {"type": "MqttMeter", "name": "m", "mqtt_connection_name": "c"}
    with pytest.raises(ValueError, match="power_total or power_l1"):
        MqttMeterConfig.model_validate(base | {"values": {"frequency": {"topic": "t"}}})
    with pytest.raises(ValueError, match="topic"):
        MqttMeterConfig.model_validate(base | {"values": {"power_total": {"topic": "t/#"}}})


# --- on a real broker ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(meter: MqttMeter) -> AsyncIterator[MqttMeter]:
    task = asyncio.create_task(meter.run())
    try:
        async with asyncio.timeout(5.0):
            await meter.session.connected.wait()
        yield meter
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_meter_on_broker_uses_good_payloads_counts_garbage_and_goes_stale(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    topic = f"{unique_id}/tele/sml/SENSOR"
    config = MqttMeterConfig.model_validate(
        {
            "type": "MqttMeter",
            "name": "grid",
            "mqtt_connection_name": "test",
            "values": {
                "power_total": {"topic": topic, "path": "SML.Power_curr"},
                "energy_import": {"topic": topic, "path": "SML.Total_in", "scale": 1000},
            },
            "max_age": 0.5,
        }
    )
    meter = MqttMeter(config, mqtt_connection)
    power_meter: PowerMeter = meter
    async with (
        running(meter),
        aiomqtt.Client(mqtt_connection.host, mqtt_connection.port, identifier=f"{unique_id}_pub") as client,
    ):
        await client.publish(topic, TASMOTA_SML, retain=True)  # arrives whenever the meter subscribes
        await wait_until(power_meter.is_fresh, 2.0, "a reading")
        newest = meter.power.snapshot()
        assert newest is not None
        assert newest.value.total_w == -432.0
        assert newest.value.l1_w == -144.0
        seq = meter.power.seq
        for garbage in (b"{", b'{"SML":{"Power_curr":"x","Total_in":1}}', b'{"SML":{"Total_in":1}}'):
            await client.publish(topic, garbage)
        await wait_until(lambda: sum(meter.errors.values()) == 3, 2.0, "garbage counted")
        assert dict(meter.errors) == {"not_json": 1, "not_a_number": 1, "missing": 1}
        await client.publish(topic, b"", retain=True)  # (clears the retained reading; itself garbage)
        assert meter.power.seq == seq
        await wait_until(lambda: not meter.is_fresh(), 2.0, "stale without new messages")
        assert meter.status()["power_w"] is None
        await client.publish(topic, TASMOTA_SML.replace(b"-432", b"1e400"))
        await wait_until(lambda: meter.errors["non_finite"] == 1, 2.0, "an infinite value counted")
        assert not meter.is_fresh()


async def test_read_once_takes_a_retained_reading_or_says_what_is_missing(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    topic = f"{unique_id}/em"
    config = MqttMeterConfig.model_validate(
        {
            "type": "MqttMeter",
            "name": "em",
            "mqtt_connection_name": "test",
            "values": {
                "power_l1": {"topic": topic, "path": "a_act_power"},
                "voltage_l1": {"topic": topic, "path": "a_voltage"},
            },
            "max_age": 0.3,
        }
    )
    with pytest.raises(MqttReadError, match=f"no complete reading on {topic}"):
        await read_once(config, mqtt_connection, timeout_s=0.5)
    async with aiomqtt.Client(
        mqtt_connection.host, mqtt_connection.port, identifier=f"{unique_id}_pub"
    ) as client:
        await client.publish(topic, b'{"a_act_power": 12}', retain=True)
        with pytest.raises(MqttReadError, match=re.escape("rejected: {'missing': 1}")):
            await read_once(config, mqtt_connection, timeout_s=0.5)
        await client.publish(topic, SHELLY_EM, retain=True)
        reading = await read_once(config, mqtt_connection)
        await client.publish(topic, b"", retain=True)
    assert (reading.value("power_l1"), reading.value("voltage_l1")) == (951.2, 236.1)
    unreachable = mqtt_connection.model_copy(update={"port": free_port()})
    with pytest.raises(MqttReadError, match="cannot connect"):
        await read_once(config, unreachable, timeout_s=0.5)


async def test_read_meter_command_reads_an_mqtt_meter(
    mqtt_connection: MqttConnectionConfig, unique_id: str, tmp_path: Path
) -> None:
    topic = f"{unique_id}/tele/sml/SENSOR"
    config = tmp_path / "watti_watchman.yml"
    config.write_text(
        "mqtt_connections:\n"
        f"  - {{name: local, host: {mqtt_connection.host}, port: {mqtt_connection.port}}}\n"
        "meters:\n  - type: MqttMeter\n    name: sml\n    mqtt_connection_name: local\n    max_age: 1\n"
        f"    values:\n      power_total: {{topic: {topic}, path: SML.Power_curr}}\n"
    )
    async with aiomqtt.Client(
        mqtt_connection.host, mqtt_connection.port, identifier=f"{unique_id}_pub"
    ) as client:
        await client.publish(topic, TASMOTA_SML, retain=True)
        code, out, err = await watti("read-meter", "sml", "-c", str(config))
        await client.publish(topic, b"", retain=True)
    assert code == 0, err
    assert "-432.0 W" in out
