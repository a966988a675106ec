"""Register maps and ModbusMeter against real pymodbus servers serving each shipped map."""

import asyncio
import contextlib
import math
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.modbus_fixtures import load_janitza_sample
from tests.support.waiting import wait_until
from tests.test_cli import watti
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.config.register_map import SHIPPED_MAPS, load_register_map
from watti_watchman.config.services import VictronGridFeederConfig
from watti_watchman.domain.janitza import QUANTITIES_BY_KEY, encode_values
from watti_watchman.domain.meter_values import meter_table, reading_from_values
from watti_watchman.domain.quantities import format_values
from watti_watchman.domain.register_map import (
    ReadBlock,
    RegisterMap,
    RegisterSpec,
    decode_blocks,
    decode_value,
    encode_value,
)
from watti_watchman.meters.base import PowerMeter
from watti_watchman.meters.modbus_link import Framing, ModbusReadError
from watti_watchman.meters.modbus_meter import ModbusMeter, ModbusMeterConfig, read_once
from watti_watchman.metrics import Exposition
from watti_watchman.services.victron_grid import VictronGridFeeder
from watti_watchman.sim.map_server import MapServer
from watti_watchman.sim.venus import VenusEmulator

SDM630 = load_register_map("eastron_sdm630")
EM24 = load_register_map("carlo_gavazzi_em24")
UMG604 = load_register_map("janitza_umg604")


def config_for(server: MapServer, map_name: str, **overrides: Any) -> ModbusMeterConfig:
    """Meter settings pointing at `server` with a fast timeout."""
    settings: dict[str, Any] = {
        "type": "ModbusMeter",
        "name": "meter",
        "host": server.host,
        "port": server.port,
        "unit": server.unit,
        "framing": server.framing,
        "map": map_name,
        "timeout": 0.3,
        "interval": 0.05,
    }
    return ModbusMeterConfig(**(settings | overrides))


@contextlib.asynccontextmanager
async def running(meter: ModbusMeter) -> AsyncIterator[ModbusMeter]:
    """Run the meter's poll loop for the duration of the block; surfaces its crashes."""
    task = asyncio.create_task(meter.run())
    try:
        yield meter
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def float32(hex_words: str) -> float:
    value: float = struct.unpack(">f", bytes.fromhex(hex_words))[0]
    return value


# --- pure: encodings and read planning --------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "words", "expected"),
    [
        (RegisterSpec(0, "float32"), [0x4366, 0x3334], float32("43663334")),
        (RegisterSpec(0, "float32", "low_first"), [0x3334, 0x4366], float32("43663334")),
        (RegisterSpec(0, "int32", "low_first", 0.1), [0xCFC7, 0xFFFF], -1234.5),
        (RegisterSpec(0, "int32", "high_first"), [0xFFFF, 0xFFFE], -2.0),
        (RegisterSpec(0, "uint32", "high_first", 0.01), [0x0001, 0x0000], 655.36),
        (RegisterSpec(0, "int16", scale=0.1), [0xFFF6], -1.0),
        (RegisterSpec(0, "uint16"), [0xFFF6], 65526.0),
    ],
)
def test_decode_value_per_type_and_word_order(spec: RegisterSpec, words: list[int], expected: float) -> None:
    assert decode_value(spec, words) == pytest.approx(expected, rel=1e-12)
    assert encode_value(spec, decode_value(spec, words)) == words


def test_read_blocks_merge_small_gaps_and_respect_the_request_limit() -> None:
    specs = {
        "power_l1": RegisterSpec(0, "float32"),
        "power_l2": RegisterSpec(10, "float32"),
        "power_l3": RegisterSpec(100, "float32"),
    }
    assert RegisterMap("m", 3, 1.0, specs).read_blocks() == (ReadBlock(0, 12), ReadBlock(100, 2))
    assert RegisterMap("m", 3, 1.0, specs, max_registers_per_read=8).read_blocks() == (
        ReadBlock(0, 2),
        ReadBlock(10, 2),
        ReadBlock(100, 2),
    )
    with pytest.raises(ValueError, match="missing or of wrong length"):
        decode_blocks(RegisterMap("m", 3, 1.0, specs), {0: [0] * 11, 100: [0, 0]})


def test_shipped_maps_each_need_one_request() -> None:
    assert SHIPPED_MAPS == ("carlo_gavazzi_em24", "eastron_sdm630", "janitza_umg604")
    for register_map in (SDM630, EM24, UMG604):
        assert len(register_map.read_blocks()) == 1
    assert SDM630.read_blocks()[0].count <= 80  # Eastron: at most 40 parameters per request


def test_user_map_files_are_validated(tmp_path: Path) -> None:
    good = tmp_path / "mine.yml"
    good.write_text(
        "name: mine\nfunction_code: 3\npoll_interval: 1\nregisters:\n  power_total: {address: 7}\n"
    )
    assert load_register_map(str(good)).registers["power_total"] == RegisterSpec(7, "float32")
    bad = tmp_path / "bad.yml"
    bad.write_text("name: bad\nfunction_code: 5\npoll_interval: 1\nregisters:\n  powr: {address: 1}\n")
    with pytest.raises(ValueError, match=r"function_code.*registers\.powr"):
        load_register_map(str(bad))
    no_power = tmp_path / "nopower.yml"
    no_power.write_text(
        "name: x\nfunction_code: 4\npoll_interval: 1\nregisters:\n  frequency: {address: 1}\n"
    )
    with pytest.raises(ValueError, match="needs power_total"):
        load_register_map(str(no_power))
    with pytest.raises(ValueError, match="cannot read"):
        load_register_map(str(tmp_path / "missing.yml"))


def test_reading_completes_and_inverts() -> None:
    total_only = reading_from_values({"power_total": 300.0}, invert=False)
    assert total_only.power_sample().l2_w == 100.0
    assert not total_only.phases_known
    single = reading_from_values({"power_l1": 120.0, "energy_import": 5.0}, invert=True)
    assert (single.power_sample().l1_w, single.power_sample().total_w) == (-120.0, -120.0)
    assert single.value("energy_export") == 5.0
    assert single.value("energy_import") is None
    for garbage, reason in (
        ({"power_total": math.nan}, "non_finite"),
        ({"power_total": 2e6}, "implausible"),
        ({"frequency": 50.0}, "no_power"),
    ):
        with pytest.raises(ValueError, match=reason):
            reading_from_values(garbage, invert=False)


# --- each shipped map against a real server ---------------------------------------------------


@pytest.mark.parametrize("framing", ["tcp", "rtu_over_tcp"])
async def test_sdm630_decodes_the_manuals_example_through_a_bridge(framing: Framing) -> None:
    """Eastron's manual: reading 30001 returns 43 66 33 34 = 230.2 V."""
    async with MapServer(SDM630, framing=framing, unit=3) as server:
        server.set_values(
            {"power_l1": 1000.5, "power_l2": -250.25, "power_total": 750.25, "frequency": 49.98}
        )
        server.set_registers(0x0000, [0x4366, 0x3334])
        reading = await read_once(config_for(server, "eastron_sdm630"))
    assert reading.value("voltage_l1") == float32("43663334")
    assert round(reading.value("voltage_l1") or 0, 4) == 230.2
    assert reading.power_sample().total_w == 750.25
    assert reading.value("frequency") == float32(struct.pack(">f", 49.98).hex())


async def test_em24_decodes_int32_low_word_first_with_weights() -> None:
    """Values encoded as the EM24 protocol documents them: INT32 LSW first, V*10, A*1000, W*10, Hz*10."""
    async with MapServer(EM24) as server:
        server.set_registers(0x0000, [2301, 0])  # V L1-N 230.1 V
        server.set_registers(0x000C, [0x3039, 0])  # A L1 12345 → 12.345 A
        server.set_registers(0x0012, [0xCFC7, 0xFFFF])  # W L1 -12345 → -1234.5 W (export)
        server.set_registers(0x0014, [0x86A0, 0x0001])  # W L2 100000 → 10000.0 W
        server.set_registers(0x0028, [0x3A9C, 0x0001])  # W sys 80540 → 8054.0 W
        server.set_registers(0x0033, [501])  # Hz 50.1
        server.set_registers(0x0034, [0xE240, 0x0001])  # kWh(+) 123456 → 12345.6 kWh
        server.set_registers(0x004E, [7, 0])  # kWh(-) 0.7 kWh
        reading = await read_once(config_for(server, "carlo_gavazzi_em24"))
    assert reading.value("voltage_l1") == pytest.approx(230.1, abs=1e-9)
    assert reading.value("current_l1") == pytest.approx(12.345, abs=1e-9)
    sample = reading.power_sample()
    assert (sample.l1_w, sample.l2_w, sample.total_w) == (-1234.5, 10000.0, 8054.0)
    assert reading.value("frequency") == pytest.approx(50.1, abs=1e-9)
    assert reading.value("energy_import") == pytest.approx(12_345_600.0, abs=1e-6)
    assert reading.value("energy_export") == pytest.approx(700.0, abs=1e-9)


async def test_janitza_map_decodes_a_captured_read_exactly() -> None:
    """The real grid-meter dump (tests/fixtures/janitza_grid_sample.json) served as its 78 registers."""
    sample = load_janitza_sample()
    async with MapServer(UMG604) as server:
        server.set_registers(19000, encode_values(sample))
        reading = await read_once(config_for(server, "janitza_umg604"))
    janitza_keys = {
        "voltage_l1": "voltage_l1_n",
        "voltage_l2": "voltage_l2_n",
        "voltage_l3": "voltage_l3_n",
        "current_l1": "current_l1",
        "current_l2": "current_l2",
        "current_l3": "current_l3",
        "power_l1": "real_power_l1",
        "power_l2": "real_power_l2",
        "power_l3": "real_power_l3",
        "power_total": "real_power_sum",
        "frequency": "frequency",
        "energy_import": "energy_import_sum",
        "energy_export": "energy_export_sum",
    }
    assert set(janitza_keys) == set(UMG604.registers)
    for key, janitza_key in janitza_keys.items():
        assert reading.value(key) == sample[QUANTITIES_BY_KEY[janitza_key].index], key
    assert reading.power_sample().total_w == 1934.24169921875
    table = format_values(meter_table(UMG604.registers), reading.values)
    assert "Real power total" in table


# --- the running meter ------------------------------------------------------------------------


def samples(meter: ModbusMeter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    exposition = Exposition()
    exposition.add(meter)
    parsed = text_string_to_metric_families(exposition.render().decode())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in parsed for s in family.samples}


async def test_meter_publishes_counts_garbage_and_goes_stale_on_silence() -> None:
    async with MapServer(SDM630, framing="rtu_over_tcp") as server:
        server.set_values({"power_l1": 100.0, "power_l2": 200.0, "power_l3": 300.0, "power_total": 600.0})
        server.set_values({"frequency": 50.0})
        meter = ModbusMeter(config_for(server, "eastron_sdm630", max_age=0.4))
        power_meter: PowerMeter = meter
        async with running(meter):
            await wait_until(meter.is_fresh, 2.0, "a reading")
            assert samples(meter)[("watti_meter_real_power_sum_watts", (("name", "meter"),))] == 600.0
            published = meter.power.seq
            server.set_values({"power_l2": math.nan})
            await wait_until(lambda: meter.errors_by_reason["non_finite"] >= 2, 2.0, "garbage counted")
            assert meter.power.seq == published
            server.set_values({"power_l2": 5e6})
            await wait_until(lambda: meter.errors_by_reason["implausible"] >= 1, 2.0, "implausible counted")
            server.set_values({"power_l2": 200.0})
            await wait_until(lambda: meter.power.seq > published, 2.0, "readings again")
            server.fail_requests(0x02)
            await wait_until(lambda: meter.errors_by_reason["exception_02"] >= 1, 2.0, "exception counted")
            server.fail_requests(None)
            server.delay_responses(1.0)
            # Staleness (0.4 s after the last reading) may come before the 0.3 s read timeout ends.
            await wait_until(lambda: not power_meter.is_fresh(), 2.0, "stale on silence")
            await wait_until(lambda: meter.errors_by_reason["read_timeout"] >= 1, 2.0, "read timeout counted")
            assert not power_meter.is_fresh()
            exposed = samples(meter)
            assert exposed[("watti_modbus_meter_up", (("name", "meter"),))] == 0.0
            assert ("watti_meter_real_power_sum_watts", (("name", "meter"),)) not in exposed
            server.delay_responses(0.0)
            await wait_until(meter.is_fresh, 3.0, "recovered after silence")
    assert meter.reconnects >= 1


async def test_read_once_names_a_wrong_function_code() -> None:
    async with MapServer(SDM630) as server:
        with pytest.raises(ModbusReadError, match="function_code"):
            await read_once(config_for(server, "janitza_umg604"))


async def test_read_meter_and_check_from_the_command_line(tmp_path: Path) -> None:
    """`read-meter` reads any mapped meter once through a bridge; `check` summarises it; a bad map exits 2."""
    async with MapServer(SDM630, framing="rtu_over_tcp", unit=4) as server:
        server.set_values(
            {"power_l1": 1234.5, "power_total": 1234.5, "frequency": 50.0, "energy_import": 42000.0}
        )
        config = tmp_path / "watti_watchman.yml"
        config.write_text(
            "meters:\n  - type: ModbusMeter\n    name: sdm\n    host: 127.0.0.1\n"
            f"    port: {server.port}\n    unit: 4\n    framing: rtu_over_tcp\n    map: eastron_sdm630\n"
        )
        code, out, err = await watti("read-meter", "sdm", "-c", str(config))
        assert code == 0, err
        assert "1234.5 W" in out
        assert "42000 Wh" in out
        code, out, _ = await watti("check", "-c", str(config))
        assert code == 0
        assert "eastron_sdm630 map at 127.0.0.1" in out
    config.write_text(config.read_text().replace("map: eastron_sdm630", "map: nonexistent.yml"))
    code, _, err = await watti("check", "-c", str(config))
    assert code == 2
    assert "meters[0].map" in err


async def test_sdm630_feeds_the_venus_grid_meter(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    """The generic grid feeder writes a register-map meter's table to Venus OS (kWh, W, V, A, Hz)."""
    async with MapServer(SDM630) as server:
        server.set_values(
            {
                "power_l1": 800.0,
                "power_l2": -300.0,
                "power_l3": 100.0,
                "power_total": 600.0,
                "voltage_l1": 231.5,
                "frequency": 50.02,
                "energy_import": 1_234_567.0,
                "energy_export": 89_000.0,
            }
        )
        meter = ModbusMeter(config_for(server, "eastron_sdm630"))
        feeder_config = VictronGridFeederConfig(
            type="VictronGridFeeder",
            mqtt_connection_name="test",
            grid_meter_name="meter",
            client_id=f"{unique_id}_grid",
        )
        feeder = VictronGridFeeder(feeder_config, mqtt_connection, meter)
        feeder.provider.reply_timeout_s = 0.4
        venus = VenusEmulator(mqtt_connection, unique_id, registration_delay_s=0.05)
        tasks = [asyncio.create_task(component.run()) for component in (meter, venus, feeder)]
        try:

            def written() -> dict[str, float]:
                """The newest numeric value written to each grid path."""
                registered = venus.registrations()
                if not registered:
                    return {}
                prefix = f"grid/{registered[0].instance}/"
                return {
                    w.path.removeprefix(prefix): float(w.value)
                    for w in venus.grid_writes(registered[0].instance)
                    if isinstance(w.value, int | float)
                }

            wanted = {"Ac/Power", "Ac/L2/Power", "Ac/L1/Voltage", "Ac/Frequency", "Ac/Energy/Forward"}
            await wait_until(lambda: wanted <= written().keys(), 5.0, "grid")
            values = written()
            assert values["Ac/Power"] == pytest.approx(600.0, abs=0.05)
            assert values["Ac/L2/Power"] == pytest.approx(-300.0, abs=0.05)
            assert values["Ac/L1/Voltage"] == pytest.approx(231.5, abs=0.05)
            assert values["Ac/Frequency"] == pytest.approx(50.02, abs=0.005)
            assert values["Ac/Energy/Forward"] == pytest.approx(1234.567, abs=0.001)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
