"""Seplos V2 protocol codec (published frames) and SeplosMeter against the simulated BMS on loopback."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.waiting import wait_until
from watti_watchman.domain.seplos import (
    CID2_ALARMS,
    CID2_TELEMETRY,
    Frame,
    SeplosFrameError,
    check_reply,
    decode_alarms,
    decode_frame,
    decode_telemetry,
    encode_alarms,
    encode_frame,
    encode_telemetry,
    length_checksum,
    request,
)
from watti_watchman.meters.seplos import SeplosConfig, SeplosMeter
from watti_watchman.sim.seplos_server import SeplosServer

# Published in syssi/esphome-seplos-bms (README, captured from a 16-cell pack at address 0).
TELEMETRY_REPLY = (
    b"~2000460010960001100CD70CE90CF40CD60CEF0CE50CE10CDC0CE90CF00CE80CEF0CEA0CDA0CDE0CD8060BA60BA00B97"
    b"0BA60BA50BA2FD5C14A0344E0A426803134650004603E8149F0000000000000000DC6C\r"
)
# A 0x44 reply used as test data by an open-source Seplos implementation (checksum EB0E).
ALARM_REPLY = (
    b"~20004600806200011000000000010101010101010101010101060000010100000001141248800000100000001000000"
    b"000000000000010EB0E\r"
)


def test_requests_match_the_protocol_documents_tables() -> None:
    """Tables 7 and 10 of SEPLOS BMS Communication Protocol V2.0 (addresses 00, 01 and 15)."""
    assert request(0, CID2_TELEMETRY) == b"~20004642E00200FD37\r"
    assert request(1, CID2_TELEMETRY) == b"~20014642E00201FD35\r"
    assert request(15, CID2_TELEMETRY) == b"~200F4642E0020FFD0B\r"
    assert request(0, CID2_ALARMS) == b"~20004644E00200FD35\r"
    assert request(15, CID2_ALARMS) == b"~200F4644E0020FFD09\r"


def test_length_checksum_matches_the_documents_example() -> None:
    """Section 3.2: LENID 18 → LCHKSUM 1101b, LENGTH D012."""
    assert length_checksum(18) == 0b1101


def test_published_telemetry_frame_decodes() -> None:
    frame = decode_frame(TELEMETRY_REPLY)
    check_reply(frame, 0)
    telemetry = decode_telemetry(frame.info)
    assert telemetry.cell_voltages_v[:4] == (3.287, 3.305, 3.316, 3.286)
    assert len(telemetry.cell_voltages_v) == 16
    assert telemetry.temperatures_c == (25.1, 24.5, 23.6, 25.1, 25.0, 24.7)
    assert (telemetry.current_a, telemetry.voltage_v) == (-6.76, 52.8)
    assert (telemetry.soc_percent, telemetry.soh_percent, telemetry.cycles) == (78.7, 100.0, 70)
    assert (telemetry.capacity_ah, telemetry.rated_capacity_ah, telemetry.port_voltage_v) == (
        170.0,
        180.0,
        52.79,
    )
    assert encode_frame(Frame(0, 0, encode_telemetry(telemetry, 1))) == TELEMETRY_REPLY


def test_published_alarm_frame_decodes() -> None:
    alarms = decode_alarms(decode_frame(ALARM_REPLY).info)
    assert alarms.cell_alarms[:5] == (0, 0, 0, 0, 1)
    assert "cell_undervoltage_protection" in alarms.events
    assert "cell_low_voltage_charging_prohibition" in alarms.events
    assert not alarms.charge_allowed
    assert not alarms.discharge_allowed


def test_alarm_encoding_round_trips() -> None:
    alarms = decode_alarms(encode_alarms(0, events=("pack_overvoltage_protection", "rtc_error")))
    assert alarms.events == ("pack_overvoltage_protection", "rtc_error")
    assert not alarms.charge_allowed
    assert alarms.discharge_allowed
    with pytest.raises(ValueError, match="unknown alarm"):
        encode_alarms(0, events=("no_such_alarm",))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (TELEMETRY_REPLY.replace(b"DC6C", b"DC6D"), "bad_checksum"),
        (TELEMETRY_REPLY[:20] + TELEMETRY_REPLY[24:], "bad_checksum"),
        (b"~20004600C004000102FC7A\r", "wrong_length"),  # LENID 4, six INFO characters
        (b"~20004600D0040001FCDB\r", "wrong_length"),  # LCHKSUM D does not match LENID 4
        (b"~2000460010960001100CD70CE9ZZ\r", "bad_frame"),
        (b"garbage\r", "bad_frame"),
    ],
)
def test_bad_frames_are_rejected(raw: bytes, reason: str) -> None:
    with pytest.raises(SeplosFrameError) as caught:
        decode_frame(raw)
    assert caught.value.reason == reason


def test_error_replies_and_foreign_addresses_are_rejected() -> None:
    with pytest.raises(SeplosFrameError, match="CHKSUM error") as error:
        check_reply(decode_frame(encode_frame(Frame(0, 0x02, b""))), 0)
    assert error.value.reason == "error_response"
    with pytest.raises(SeplosFrameError) as foreign:
        check_reply(decode_frame(TELEMETRY_REPLY), 3)
    assert foreign.value.reason == "wrong_reply"
    with pytest.raises(SeplosFrameError) as short:
        decode_telemetry(bytes.fromhex("0001100CD7"))
    assert short.value.reason == "wrong_length"


# --- the meter against the simulated BMS --------------------------------------------------------


def config_for(server: SeplosServer, **overrides: Any) -> SeplosConfig:
    settings: dict[str, Any] = {
        "type": "Seplos",
        "name": "bms",
        "host": server.host,
        "port": server.port,
        "address": server.address,
        "interval": 0.2,
        "timeout": 0.3,
        "max_age": 1.0,
        "max_charge_current": 60,
        "max_discharge_current": 90,
    }
    return SeplosConfig(**(settings | overrides))


@contextlib.asynccontextmanager
async def running(meter: SeplosMeter) -> AsyncIterator[SeplosMeter]:
    task = asyncio.create_task(meter.run())
    try:
        yield meter
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_meter_publishes_soc_and_limits_and_follows_protections() -> None:
    async with SeplosServer(address=2, reply_delay_s=0.005) as server:
        server.set(soc_percent=81.5, voltage_v=53.1, current_a=-12.5)
        meter = SeplosMeter(config_for(server))
        async with running(meter):
            await wait_until(meter.is_fresh, 2.0, "a battery status")
            status = meter.battery.snapshot()
            assert status is not None
            assert (status.value.soc_percent, status.value.voltage_v) == (81.5, 53.1)
            assert (status.value.max_charge_current_a, status.value.max_discharge_current_a) == (60, 90)
            server.alarm_events = ("cell_overvoltage_protection",)
            await wait_until(lambda: _limits(meter) == (0.0, 90), 2.0, "charging forbidden")
            server.alarm_events = ()
            server.discharge_switch_on = False
            await wait_until(lambda: _limits(meter) == (60, 0.0), 2.0, "discharge switch off")
        assert sum(meter.errors_by_reason.values()) == 0


def _limits(meter: SeplosMeter) -> tuple[float | None, float | None] | None:
    newest = meter.battery.snapshot()
    return (
        None if newest is None else (newest.value.max_charge_current_a, newest.value.max_discharge_current_a)
    )


@pytest.mark.parametrize("fault", ["bad_checksum", "wrong_length"])
async def test_garbage_replies_are_counted_and_never_used(fault: str) -> None:
    async with SeplosServer(reply_delay_s=0.005) as server:
        meter = SeplosMeter(config_for(server))
        async with running(meter):
            await wait_until(meter.is_fresh, 2.0, "a battery status")
            published = meter.battery.seq
            server.fault = fault  # type: ignore[assignment]
            server.set(soc_percent=5.0)
            await wait_until(lambda: meter.errors_by_reason[fault] >= 3, 3.0, f"{fault} counted")
            assert meter.battery.seq == published
            newest = meter.telemetry.snapshot()
            assert newest is not None
            assert newest.value.soc_percent == 50.0
            server.fault = "none"
            await wait_until(lambda: meter.battery.seq > published, 2.0, "valid frames again")
        assert meter.reconnects == 0  # the stream stays aligned: no reconnect needed


async def test_silence_makes_the_status_stale_and_the_meter_reconnects() -> None:
    async with SeplosServer(reply_delay_s=0.005) as server:
        meter = SeplosMeter(config_for(server, max_age=0.6))
        async with running(meter):
            await wait_until(meter.is_fresh, 2.0, "a battery status")
            server.fault = "silence"
            await wait_until(lambda: not meter.is_fresh(), 2.0, "stale")
            assert meter.errors_by_reason["read_timeout"] >= 1
            server.fault = "none"
            await wait_until(meter.is_fresh, 6.0, "fresh again")
        assert meter.reconnects >= 1
        assert server.connections >= 2
