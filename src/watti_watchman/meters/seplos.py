"""`Seplos`: a Seplos V2 BMS on RS485 behind a transparent TCP bridge, as SOC and BMS-limit source.

Every `interval` asks the pack for telemetry (0x42) and alarms (0x44). The battery status it
publishes carries SOC, pack voltage and charge/discharge current limits: the configured limits
while the BMS allows the direction, 0 A while its switch is off or a protection is active.
Garbage frames are counted, logged once per outage and ignored; silence ends the connection
(a late reply must never be taken for the next answer).
"""

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from prometheus_client.core import Metric
from pydantic import Field

from watti_watchman.clock import Clock, monotonic
from watti_watchman.config.meters import MeterConfig
from watti_watchman.config.mqtt import Port
from watti_watchman.domain.quantities import Quantity, QuantityValues
from watti_watchman.domain.readings import BatteryStatus
from watti_watchman.domain.seplos import (
    CID2_ALARMS,
    CID2_TELEMETRY,
    Alarms,
    SeplosFrameError,
    Telemetry,
    check_reply,
    decode_alarms,
    decode_frame,
    decode_telemetry,
    request,
)
from watti_watchman.failures import FailureLog
from watti_watchman.latest import Latest
from watti_watchman.meters.generic import counter_families, up_family
from watti_watchman.metrics import Families
from watti_watchman.supervisor import Backoff, SupervisedLink

METRIC_PREFIX = "watti_seplos"
KNOWN_REASONS = (
    "connection_refused",
    "read_timeout",
    "connection_lost",
    "bad_frame",
    "bad_checksum",
    "wrong_length",
    "error_response",
    "wrong_reply",
)
CELLS = 16
TEMPERATURES = ("cell 1", "cell 2", "cell 3", "cell 4", "environment", "power stage")
"""What protocol V2.0 reports (16 cells, 6 sensors); a pack reporting fewer leaves the rest empty."""


def _quantity(key: str, label: str, unit: str | None, metric: str, help_text: str, **extra: Any) -> Quantity:
    return Quantity(key, label, unit, metric=f"{METRIC_PREFIX}_{metric}", metric_help=help_text, **extra)


SEPLOS_QUANTITIES: tuple[Quantity, ...] = (
    _quantity("soc", "SOC", "%", "soc_ratio", "State of charge (0..1)", device_class="battery",
              state_class="measurement", metric_scale=0.01, precision=1),
    _quantity("soh", "SOH", "%", "soh_ratio", "State of health (0..1)", state_class="measurement",
              metric_scale=0.01, precision=1),
    _quantity("voltage", "Pack voltage", "V", "voltage_volts", "Pack voltage (V)", device_class="voltage",
              state_class="measurement", precision=2),
    _quantity("current", "Pack current", "A", "current_amperes", "Pack current (A, + = charging)",
              device_class="current", state_class="measurement", precision=2),
    _quantity("power", "Pack power", "W", "power_watts", "Pack power (W, + = charging)", device_class="power",
              state_class="measurement", precision=0),
    _quantity("residual_capacity", "Residual capacity", "Ah", "residual_capacity_amperehours",
              "Residual capacity (Ah)", state_class="measurement", precision=2),
    _quantity("cycles", "Cycles", None, "cycles", "Charge cycles reported by the BMS",
              state_class="measurement", diagnostic=True, integer=True),
    _quantity("max_charge_current", "Max charge current", "A", "max_charge_current_amperes",
              "Charge current limit in force (A)", device_class="current", state_class="measurement",
              precision=0),
    _quantity("max_discharge_current", "Max discharge current", "A", "max_discharge_current_amperes",
              "Discharge current limit in force (A)", device_class="current", state_class="measurement",
              precision=0),
    *(_quantity(f"cell_{n}", f"Cell {n} voltage", "V", "cell_voltage_volts", "Cell voltage (V)",
                device_class="voltage", state_class="measurement", metric_labels=(("cell", str(n)),),
                precision=3) for n in range(1, CELLS + 1)),
    *(_quantity(f"temperature_{n}", f"Temperature {label}", "°C", "temperature_celsius",
                "Temperatures (°C): sensors 1-4 cells, 5 environment, 6 power stage",
                device_class="temperature", state_class="measurement", metric_labels=(("sensor", str(n)),),
                precision=1)
      for n, label in enumerate(TEMPERATURES, start=1)),
)  # fmt: skip
"""Every value the meter exposes (HA, /metrics, /api/status)."""
MAX_FRAME_BYTES = 4200
"""LENID has 12 bits: no valid frame is longer; a bridge spewing garbage is cut off here."""


class SeplosConfig(MeterConfig):
    """A Seplos V2 BMS (protocol 2.0, RS485) reached through a transparent RS485-TCP bridge."""

    type: Literal["Seplos"]
    host: str = Field(min_length=1)
    port: Port = Field(default=8899, description="The bridge's TCP port.")
    address: int = Field(default=0, ge=0, le=15, description="The pack's DIP address on the RS485 bus.")
    interval: float = Field(default=1.0, ge=0.2, le=60, description="Polling period (s).")
    timeout: float = Field(
        default=1.0, gt=0, le=10, description="Reply timeout (s); the protocol allows 0.5 s."
    )
    max_age: float = Field(default=10.0, gt=0, le=120, description="Older data is stale (s).")
    max_charge_current: float = Field(
        default=50.0, ge=0, description="Charge current limit (A) while the BMS allows charging."
    )
    max_discharge_current: float = Field(
        default=100.0, ge=0, description="Discharge current limit (A) while the BMS allows discharging."
    )


class SeplosReadError(Exception):
    """A request failed; `reason` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def quantity_values(telemetry: Telemetry, status: BatteryStatus) -> QuantityValues:
    """The table's values for one poll."""
    values: dict[str, float] = {
        "soc": telemetry.soc_percent,
        "soh": telemetry.soh_percent,
        "voltage": telemetry.voltage_v,
        "current": telemetry.current_a,
        "power": telemetry.power_w,
        "residual_capacity": telemetry.residual_capacity_ah,
        "cycles": float(telemetry.cycles),
        "max_charge_current": status.max_charge_current_a or 0.0,
        "max_discharge_current": status.max_discharge_current_a or 0.0,
    }
    values.update({f"cell_{n}": v for n, v in enumerate(telemetry.cell_voltages_v[:CELLS], start=1)})
    values.update(
        {f"temperature_{n}": c for n, c in enumerate(telemetry.temperatures_c[: len(TEMPERATURES)], start=1)}
    )
    return values


def battery_status(config: SeplosConfig, telemetry: Telemetry, alarms: Alarms) -> BatteryStatus:
    """What the controller needs: SOC, pack voltage and current limits (0 A where the BMS forbids)."""
    return BatteryStatus(
        soc_percent=telemetry.soc_percent,
        max_charge_current_a=config.max_charge_current if alarms.charge_allowed else 0.0,
        max_discharge_current_a=config.max_discharge_current if alarms.discharge_allowed else 0.0,
        voltage_v=telemetry.voltage_v,
    )


class _Link:
    """One TCP connection to the bridge; closed after silence or a lost link, never reused."""

    def __init__(self, config: SeplosConfig) -> None:
        self._config = config
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """Open the connection; SeplosReadError(connection_refused | read_timeout)."""
        config = self._config
        try:
            async with asyncio.timeout(config.timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    config.host, config.port, limit=MAX_FRAME_BYTES
                )
        except TimeoutError:
            raise SeplosReadError("read_timeout", f"no TCP connection within {config.timeout} s") from None
        except OSError as error:
            raise SeplosReadError("connection_refused", f"cannot connect to the bridge: {error}") from None

    async def ask(self, cid2: int) -> bytes:
        """Send one command, return the INFO of a normal reply; SeplosFrameError for garbage."""
        assert self._reader is not None
        assert self._writer is not None
        config = self._config
        self._writer.write(request(config.address, cid2))
        try:
            async with asyncio.timeout(config.timeout):
                await self._writer.drain()
                raw = await self._reader.readuntil(b"\r")
        except TimeoutError:
            raise SeplosReadError(
                "read_timeout",
                f"no reply within {config.timeout} s (check the address and the bridge's baud rate)",
            ) from None
        except asyncio.LimitOverrunError:
            raise SeplosReadError("bad_frame", "no frame end within 4200 bytes") from None
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            raise SeplosReadError("connection_lost", f"connection lost: {error}") from None
        start = raw.rfind(b"~")  # line noise before the frame start is not part of it
        frame = decode_frame(raw[max(start, 0) :])
        check_reply(frame, config.address)
        return frame.info

    def close(self) -> None:
        """Drop the connection."""
        if self._writer is not None:
            self._writer.close()


def _classify(error: BaseException) -> str | None:
    """Reason label for transient failures; None for programming errors (they propagate)."""
    if isinstance(error, SeplosReadError):
        return error.reason
    if isinstance(error, (OSError, TimeoutError)):
        return "connection_lost"
    return None


class SeplosMeter(SupervisedLink):
    """Polls one Seplos pack; publishes `telemetry`, `alarms` and the controller's `battery` status."""

    _classify = staticmethod(_classify)

    def __init__(self, config: SeplosConfig, *, clock: Clock = monotonic) -> None:
        self.name = config.name
        self._families = Families()
        self.config = config
        self._clock = clock
        self.telemetry: Latest[Telemetry] = Latest(clock)
        self.alarms: Latest[Alarms] = Latest(clock)
        self.battery: Latest[BatteryStatus] = Latest(clock)
        self.quantities: tuple[Quantity, ...] = SEPLOS_QUANTITIES
        self.values: Latest[QuantityValues] = Latest(clock)
        self._logger = logging.getLogger(f"watti_watchman.seplos.{config.name}")
        self._failures = FailureLog(self._logger, clock)
        self._backoff = Backoff(initial_s=0.2, cap_s=5.0)
        self.connected = False
        self.polls = 0
        self.reconnects = 0

    def is_fresh(self) -> bool:
        """True when a battery status at most `max_age` s old is present."""
        return self.battery.is_fresh(self.config.max_age)

    async def _session(self) -> None:
        link = _Link(self.config)
        try:
            await link.connect()
            self.connected = True
            next_s = self._clock()
            while True:
                await self._poll(link)
                next_s = max(next_s + self.config.interval, self._clock())
                await asyncio.sleep(next_s - self._clock())
        finally:
            self.connected = False
            link.close()

    async def _poll(self, link: _Link) -> None:
        self.polls += 1
        try:
            telemetry = decode_telemetry(await link.ask(CID2_TELEMETRY))
            now_s = self._clock()
            self.telemetry.publish(telemetry, now_s)
            alarms = decode_alarms(await link.ask(CID2_ALARMS))
        except SeplosFrameError as error:
            self._failures.failure(error.reason, error)
            return
        now_s = self._clock()
        self.alarms.publish(alarms, now_s)
        self._failures.success(f"{self.name}: BMS answering again")
        self._backoff.reset()
        status = battery_status(self.config, telemetry, alarms)
        self.battery.publish(status, now_s)
        self.values.publish(quantity_values(telemetry, status), now_s)

    def collect_metrics(self) -> Iterable[Metric]:
        """Freshness, active alarms and counters (the values are exported from the table)."""
        name = self.name
        fresh = self.is_fresh()
        families = self._families
        yield up_family(families, METRIC_PREFIX, name, fresh)
        alarms = self.alarms.get(self.config.max_age)
        if alarms is not None:
            active = families.gauge(
                f"{METRIC_PREFIX}_alarm", "1 for each active alarm or protection", ("name", "event")
            )
            yield active.set(([name, event], 1.0) for event in alarms.events)
        yield from counter_families(
            families,
            METRIC_PREFIX,
            name,
            (
                ("polls", "Telemetry and alarm request pairs sent", self.polls),
                ("reconnects", "Reconnections after a failure", self.reconnects),
            ),
            self._failures.by_reason,
            KNOWN_REASONS,
        )

    def status(self) -> Mapping[str, Any]:
        """JSON-able summary for /api/status."""
        config = self.config
        telemetry = self.telemetry.get(config.max_age)
        status = self.battery.get(config.max_age)
        alarms = self.alarms.get(config.max_age)
        return {
            "type": "Seplos",
            "address": f"{config.host}:{config.port}",
            "bms_address": config.address,
            "connected": self.connected,
            "fresh": status is not None,
            "soc_percent": None if telemetry is None else telemetry.soc_percent,
            "voltage_v": None if telemetry is None else telemetry.voltage_v,
            "current_a": None if telemetry is None else telemetry.current_a,
            "max_charge_current_a": None if status is None else status.max_charge_current_a,
            "max_discharge_current_a": None if status is None else status.max_discharge_current_a,
            "alarms": [] if alarms is None else list(alarms.events),
            "polls": self.polls,
            "errors": dict(self._failures.by_reason),
        }
