"""Seplos BMS protocol V2.0 (RS485, ASCII frames): framing, checksums, telemetry (0x42) and alarm
(0x44) decoding and encoding, and what the alarms mean for charging (pure: no I/O).

Frame: `~` VER ADR CID1 CID2 LENGTH INFO CHKSUM `\\r`, every field hex ASCII. LENGTH is a
4-bit LCHKSUM over the 12-bit LENID (number of INFO characters); CHKSUM is the two's complement
of the sum of every character between `~` and CHKSUM, modulo 65536 (SEPLOS BMS Communication
Protocol V2.0, sections 3.2 and 3.3).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

SOI = ord("~")
EOI = ord("\r")
VERSION = 0x20
CID1_BATTERY = 0x46
CID2_TELEMETRY = 0x42
CID2_ALARMS = 0x44
RTN_NORMAL = 0x00
KELVIN_OFFSET_DECI = 2731
"""Temperatures are sent in 0.1 K; the protocol takes 0 °C as 2731."""

FrameErrorReason = Literal["bad_frame", "bad_checksum", "wrong_length", "error_response", "wrong_reply"]

RETURN_CODES = {
    0x01: "VER error",
    0x02: "CHKSUM error",
    0x03: "LCHKSUM error",
    0x04: "CID2 invalid",
    0x05: "command format error",
    0x06: "data invalid",
    0xE1: "CID1 invalid",
    0xE2: "command execution failure",
    0xE3: "device fault",
}


class SeplosFrameError(ValueError):
    """A frame that must not be used; `reason` is the metric label."""

    def __init__(self, reason: FrameErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason: FrameErrorReason = reason


def length_checksum(lenid: int) -> int:
    """LCHKSUM (4 bits) for a 12-bit LENID."""
    return (-((lenid & 0xF) + ((lenid >> 4) & 0xF) + ((lenid >> 8) & 0xF))) & 0xF


def frame_checksum(body: bytes) -> int:
    """CHKSUM (16 bits) over the characters between SOI and CHKSUM."""
    return (-sum(body)) & 0xFFFF


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: address, CID2 (command or return code) and INFO as bytes."""

    address: int
    cid2: int
    info: bytes
    version: int = VERSION
    cid1: int = CID1_BATTERY


def encode_frame(frame: Frame) -> bytes:
    """The ASCII frame, `~` … `\\r`."""
    info = frame.info.hex().upper().encode()
    lenid = len(info)
    length = (length_checksum(lenid) << 12) | lenid
    body = (
        f"{frame.version:02X}{frame.address:02X}{frame.cid1:02X}{frame.cid2:02X}{length:04X}".encode() + info
    )
    return b"~" + body + f"{frame_checksum(body):04X}".encode() + b"\r"


def request(address: int, cid2: int) -> bytes:
    """A read command (0x42, 0x44) for the pack at `address`; INFO is the command group = address."""
    return encode_frame(Frame(address, cid2, bytes([address])))


def decode_frame(raw: bytes) -> Frame:
    """Parse and check one frame (with or without the trailing `\\r`); SeplosFrameError when unusable."""
    raw = raw.rstrip(b"\r")
    if len(raw) < 17 or raw[0] != SOI:
        raise SeplosFrameError("bad_frame", f"not a frame ({len(raw)} bytes)")
    body, checksum_text = raw[1:-4], raw[-4:]
    try:
        text = body.decode("ascii")
        checksum = int(checksum_text, 16)
        version, address, cid1, cid2, length = (int(text[i:j], 16) for i, j in _HEADER)
        info = bytes.fromhex(text[12:])
    except ValueError:
        raise SeplosFrameError("bad_frame", "frame contains characters that are not hex digits") from None
    if frame_checksum(body) != checksum:
        raise SeplosFrameError("bad_checksum", f"CHKSUM {checksum:04X}, computed {frame_checksum(body):04X}")
    lenid = length & 0x0FFF
    if length >> 12 != length_checksum(lenid):
        raise SeplosFrameError("wrong_length", f"LCHKSUM does not match LENID {lenid}")
    if lenid != len(text) - 12:
        raise SeplosFrameError(
            "wrong_length", f"LENID says {lenid} INFO characters, frame has {len(text) - 12}"
        )
    return Frame(address, cid2, info, version, cid1)


_HEADER = ((0, 2), (2, 4), (4, 6), (6, 8), (8, 12))


def check_reply(frame: Frame, address: int) -> None:
    """SeplosFrameError unless `frame` is a normal reply from the pack at `address`."""
    if frame.cid2 != RTN_NORMAL:
        meaning = RETURN_CODES.get(frame.cid2, "unknown return code")
        raise SeplosFrameError("error_response", f"return code 0x{frame.cid2:02X}: {meaning}")
    if frame.address != address or frame.version != VERSION or frame.cid1 != CID1_BATTERY:
        raise SeplosFrameError(
            "wrong_reply", f"reply from address {frame.address} (VER {frame.version:02X}), expected {address}"
        )


class _Reader:
    """Reads big-endian fields from INFO; SeplosFrameError(wrong_length) when it runs out."""

    def __init__(self, info: bytes) -> None:
        self._info = info
        self._at = 0

    def u8(self) -> int:
        return self._take(1)

    def u16(self) -> int:
        return self._take(2)

    def s16(self) -> int:
        value = self._take(2)
        return value - 0x10000 if value >= 0x8000 else value

    def _take(self, size: int) -> int:
        end = self._at + size
        if end > len(self._info):
            raise SeplosFrameError("wrong_length", f"INFO ends after {len(self._info)} bytes")
        value = int.from_bytes(self._info[self._at : end], "big")
        self._at = end
        return value


@dataclass(frozen=True, slots=True)
class Telemetry:
    """Telemetry of one pack (0x42 reply), in V, A, °C, Ah and %."""

    cell_voltages_v: tuple[float, ...]
    temperatures_c: tuple[float, ...]
    """Cells 1..4, environment, power stage (for the usual six sensors)."""
    current_a: float
    """+ = charging, − = discharging."""
    voltage_v: float
    residual_capacity_ah: float
    capacity_ah: float
    soc_percent: float
    rated_capacity_ah: float
    cycles: int
    soh_percent: float
    port_voltage_v: float

    @property
    def power_w(self) -> float:
        """Pack power (W), + = charging."""
        return self.voltage_v * self.current_a


def decode_telemetry(info: bytes) -> Telemetry:
    """Telemetry from a 0x42 reply's INFO; SeplosFrameError(wrong_length) when truncated."""
    reader = _Reader(info)
    reader.u8()  # DATA FLAG
    reader.u8()  # COMMAND GROUP
    cells = tuple(reader.u16() / 1000 for _ in range(reader.u8()))
    temperatures = tuple((reader.u16() - KELVIN_OFFSET_DECI) / 10 for _ in range(reader.u8()))
    current_a = reader.s16() / 100
    voltage_v = reader.u16() / 100
    residual_ah = reader.u16() / 100
    reader.u8()  # custom number P
    return Telemetry(
        cell_voltages_v=cells,
        temperatures_c=temperatures,
        current_a=current_a,
        voltage_v=voltage_v,
        residual_capacity_ah=residual_ah,
        capacity_ah=reader.u16() / 100,
        soc_percent=reader.u16() / 10,
        rated_capacity_ah=reader.u16() / 100,
        cycles=reader.u16(),
        soh_percent=reader.u16() / 10,
        port_voltage_v=reader.u16() / 100,
    )


def encode_telemetry(telemetry: Telemetry, group: int) -> bytes:
    """INFO of a 0x42 reply (inverse of `decode_telemetry`; four reserved words of 0)."""
    t = telemetry
    out = bytearray([0x00, group, len(t.cell_voltages_v)])
    for volts in t.cell_voltages_v:
        out += round(volts * 1000).to_bytes(2, "big")
    out.append(len(t.temperatures_c))
    for celsius in t.temperatures_c:
        out += (round(celsius * 10) + KELVIN_OFFSET_DECI).to_bytes(2, "big")
    out += round(t.current_a * 100).to_bytes(2, "big", signed=True)
    out += round(t.voltage_v * 100).to_bytes(2, "big")
    out += round(t.residual_capacity_ah * 100).to_bytes(2, "big")
    out.append(10)
    for value in (
        round(t.capacity_ah * 100),
        round(t.soc_percent * 10),
        round(t.rated_capacity_ah * 100),
        t.cycles,
        round(t.soh_percent * 10),
        round(t.port_voltage_v * 100),
        0,
        0,
        0,
        0,
    ):
        out += value.to_bytes(2, "big")
    return bytes(out)


# --- alarms (0x44) ----------------------------------------------------------------------------

ALARM_EVENT_BITS: tuple[tuple[str, ...], ...] = (
    ("voltage_sensor_fault", "temperature_sensor_fault", "current_sensor_fault", "key_switch_fault",
     "cell_voltage_dropout_fault", "charge_switch_fault", "discharge_switch_fault",
     "current_limit_switch_fault"),
    ("cell_high_voltage_alarm", "cell_overvoltage_protection", "cell_low_voltage_alarm",
     "cell_undervoltage_protection", "pack_high_voltage_alarm", "pack_overvoltage_protection",
     "pack_low_voltage_alarm", "pack_undervoltage_protection"),
    ("charge_high_temperature_alarm", "charge_over_temperature_protection", "charge_low_temperature_alarm",
     "charge_under_temperature_protection", "discharge_high_temperature_alarm",
     "discharge_over_temperature_protection", "discharge_low_temperature_alarm",
     "discharge_under_temperature_protection"),
    ("environment_high_temperature_alarm", "environment_over_temperature_protection",
     "environment_low_temperature_alarm", "environment_under_temperature_protection",
     "power_over_temperature_protection", "power_high_temperature_alarm",
     "cell_low_temperature_heating", ""),
    ("charge_over_current_alarm", "charge_over_current_protection", "discharge_over_current_alarm",
     "discharge_over_current_protection", "transient_over_current_protection",
     "output_short_circuit_protection", "transient_over_current_lockout", "output_short_circuit_lockout"),
    ("charge_high_voltage_protection", "intermittent_recharge_waiting", "residual_capacity_alarm",
     "residual_capacity_protection", "cell_low_voltage_charging_prohibition",
     "output_reverse_polarity_protection", "output_connection_fault", ""),
)  # fmt: skip
"""Alarm events 1..6 (Table 13), bit 0 first; "" = reserved/inside bit."""
ALARM_EVENT_8_BITS = ("eep_storage_fault", "rtc_error", "", "", "", "", "", "")

STOPS_CHARGING = frozenset({
    "cell_overvoltage_protection", "pack_overvoltage_protection", "charge_over_temperature_protection",
    "charge_under_temperature_protection", "charge_over_current_protection", "charge_high_voltage_protection",
    "cell_low_voltage_charging_prohibition", "environment_over_temperature_protection",
    "environment_under_temperature_protection", "power_over_temperature_protection",
    "output_short_circuit_protection", "output_short_circuit_lockout", "transient_over_current_lockout",
})  # fmt: skip
"""Protections after which the BMS accepts no charge current."""
STOPS_DISCHARGING = frozenset({
    "cell_undervoltage_protection", "pack_undervoltage_protection", "discharge_over_temperature_protection",
    "discharge_under_temperature_protection", "discharge_over_current_protection",
    "residual_capacity_protection", "environment_over_temperature_protection",
    "environment_under_temperature_protection", "power_over_temperature_protection",
    "output_short_circuit_protection", "output_short_circuit_lockout", "transient_over_current_lockout",
})  # fmt: skip
"""Protections after which the BMS delivers no discharge current."""


@dataclass(frozen=True, slots=True)
class Alarms:
    """Alarm state of one pack (0x44 reply)."""

    cell_alarms: tuple[int, ...]
    """Per cell: 0 normal, 1 below lower limit, 2 above upper limit, 0xF0 other."""
    temperature_alarms: tuple[int, ...]
    current_alarm: int
    voltage_alarm: int
    events: tuple[str, ...]
    """Names of the active alarm/protection bits, in table order."""
    discharge_switch_on: bool
    charge_switch_on: bool

    @property
    def charge_allowed(self) -> bool:
        """False when the charge switch is off or a protection forbids charging."""
        return self.charge_switch_on and not STOPS_CHARGING.intersection(self.events)

    @property
    def discharge_allowed(self) -> bool:
        """False when the discharge switch is off or a protection forbids discharging."""
        return self.discharge_switch_on and not STOPS_DISCHARGING.intersection(self.events)


def decode_alarms(info: bytes) -> Alarms:
    """Alarms from a 0x44 reply's INFO; SeplosFrameError(wrong_length) when truncated."""
    reader = _Reader(info)
    reader.u8()  # DATA FLAG
    reader.u8()  # COMMAND GROUP
    cells = tuple(reader.u8() for _ in range(reader.u8()))
    temperatures = tuple(reader.u8() for _ in range(reader.u8()))
    current_alarm = reader.u8()
    voltage_alarm = reader.u8()
    count = reader.u8()
    if count < 14:
        raise SeplosFrameError("wrong_length", f"{count} bit-alarm bytes, expected at least 14")
    flags = bytes(reader.u8() for _ in range(count))
    named: list[tuple[str, ...]] = [*ALARM_EVENT_BITS, ALARM_EVENT_8_BITS]
    bytes_of_events = [flags[i] for i in range(6)] + [flags[13]]
    events = tuple(
        name
        for names, byte in zip(named, bytes_of_events, strict=True)
        for bit, name in enumerate(names)
        if name and byte >> bit & 1
    )
    on_off = flags[6]
    return Alarms(
        cells, temperatures, current_alarm, voltage_alarm, events, bool(on_off & 1), bool(on_off & 2)
    )


def encode_alarms(
    group: int,
    *,
    cells: int = 16,
    temperatures: int = 6,
    events: Sequence[str] = (),
    charge_switch_on: bool = True,
    discharge_switch_on: bool = True,
) -> bytes:
    """INFO of a 0x44 reply with the named `events` set (inverse of `decode_alarms`)."""
    known = {name for names in (*ALARM_EVENT_BITS, ALARM_EVENT_8_BITS) for name in names if name}
    if unknown := set(events) - known:
        raise ValueError(f"unknown alarm events: {sorted(unknown)}")
    flags = bytearray(20)
    for index, names in enumerate(ALARM_EVENT_BITS):
        for bit, name in enumerate(names):
            if name and name in events:
                flags[index] |= 1 << bit
    for bit, name in enumerate(ALARM_EVENT_8_BITS):
        if name and name in events:
            flags[13] |= 1 << bit
    flags[6] = (1 if discharge_switch_on else 0) | (2 if charge_switch_on else 0)
    return bytes([0x00, group, cells, *([0] * cells), temperatures, *([0] * temperatures), 0, 0, 20, *flags])
