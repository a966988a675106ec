"""`ModbusMeter`: any Modbus TCP (or RTU-over-TCP) meter described by a register map.

Polls the map's blocks every `interval` (start to start), decodes and validates them into a
`MeterReading` and publishes it with the reply's arrival time. Garbage replies are counted,
logged once per outage and never published; the connection is rebuilt after any link failure.
"""

import asyncio
import logging
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import Any, Literal

from prometheus_client.core import Metric
from pydantic import Field, field_validator

from watti_watchman.clock import Clock, monotonic
from watti_watchman.config.meters import MeterConfig
from watti_watchman.config.mqtt import Port
from watti_watchman.config.register_map import SHIPPED_MAPS, load_register_map
from watti_watchman.domain.meter_values import MeterReading, meter_table, reading_from_values
from watti_watchman.domain.quantities import Quantity, QuantityValues
from watti_watchman.domain.readings import PowerSample
from watti_watchman.domain.register_map import RegisterMap, decode_blocks
from watti_watchman.failures import FailureLog
from watti_watchman.latest import Latest
from watti_watchman.meters.generic import counter_families, reading_status, up_family
from watti_watchman.meters.modbus_link import METER_REASONS, ModbusLink, ModbusReadError, classify
from watti_watchman.metrics import Families
from watti_watchman.supervisor import Backoff, SupervisedLink, reraise_swallowed_cancel

METRIC_PREFIX = "watti_modbus_meter"


class ModbusMeterConfig(MeterConfig):
    """A meter read over Modbus TCP or RTU frames over TCP, described by a register map."""

    type: Literal["ModbusMeter"]
    host: str = Field(min_length=1)
    port: Port = 502
    unit: int = Field(default=1, ge=0, le=247, description="Modbus unit id (slave address).")
    framing: Literal["tcp", "rtu_over_tcp"] = Field(
        default="tcp", description="tcp: Modbus TCP / gateway mode; rtu_over_tcp: transparent RS485 bridge."
    )
    map: str = Field(
        min_length=1,
        description=f"A shipped register map ({', '.join(SHIPPED_MAPS)}) or the path of a map file "
        "(.yml, relative to the working directory).",
    )
    interval: float | None = Field(
        default=None, gt=0, le=60, description="Polling period (s); default: the map's poll_interval."
    )
    timeout: float = Field(default=1.0, gt=0, le=10, description="Connect and read timeout (s).")
    invert: bool = Field(default=False, description="Negate powers and swap import/export (reversed CTs).")
    max_age: float | None = Field(
        default=None,
        gt=0,
        le=120,
        description="A reading older than this is stale (s); default 3 polls, ≥ 1 s.",
    )

    @field_validator("map")
    @classmethod
    def _map_loads(cls, value: str) -> str:
        load_register_map(value)
        return value

    @cached_property
    def register_map(self) -> RegisterMap:
        """The loaded map."""
        return load_register_map(self.map)

    @property
    def poll_interval_s(self) -> float:
        """The polling period (s)."""
        return self.interval if self.interval is not None else self.register_map.poll_interval_s

    @property
    def max_age_s(self) -> float:
        """Age (s) beyond which a reading is stale."""
        return self.max_age if self.max_age is not None else max(1.0, 3 * self.poll_interval_s)


async def _read_values(link: ModbusLink, register_map: RegisterMap) -> dict[str, float]:
    """Every block of the map, decoded, unvalidated; ModbusReadError(wrong_length) on a short reply."""
    replies = {
        block.address: await link.read(register_map.function_code, block.address, block.count)
        for block in register_map.read_blocks()
    }
    try:
        return decode_blocks(register_map, replies)
    except ValueError as error:
        raise ModbusReadError("wrong_length", str(error)) from None


def validated(config: ModbusMeterConfig, raw: Mapping[str, float]) -> MeterReading:
    """The reading for decoded `raw` values; ModbusReadError(non_finite | implausible) for garbage."""
    try:
        return reading_from_values(raw, invert=config.invert)
    except ValueError as error:
        raise ModbusReadError(str(error), f"reply rejected: {error}") from None


async def read_once(config: ModbusMeterConfig) -> MeterReading:
    """Connect, read the map once and disconnect; ModbusReadError with a clear message on failure."""
    link = ModbusLink.for_config(config)
    try:
        await link.connect()
        raw = await _read_values(link, config.register_map)
    finally:
        link.close()
    return validated(config, raw)


class ModbusMeter(SupervisedLink):
    """Polls one register-map meter, publishing `reading` and `power` with the reply's arrival time."""

    _classify = staticmethod(classify)

    def __init__(self, config: ModbusMeterConfig, *, clock: Clock = monotonic) -> None:
        self.name = config.name
        self._families = Families()
        self.config = config
        self._clock = clock
        self.reading: Latest[MeterReading] = Latest(clock)
        self.power: Latest[PowerSample] = Latest(clock)
        self.quantities: tuple[Quantity, ...] = meter_table(config.register_map.registers)
        self.values: Latest[QuantityValues] = Latest(clock)
        self._logger = logging.getLogger(f"watti_watchman.modbus_meter.{config.name}")
        self._failures = FailureLog(self._logger, clock)
        self._backoff = Backoff(initial_s=min(0.2, config.poll_interval_s), cap_s=10.0)
        self.connected = False
        self.reads = 0
        self.reconnects = 0
        self.overruns = 0
        self.read_seconds = 0.0

    def is_fresh(self) -> bool:
        """True when a reading at most `max_age` s old is present."""
        return self.reading.is_fresh(self.config.max_age_s)

    async def _session(self) -> None:
        link = ModbusLink.for_config(self.config)
        period_s = self.config.poll_interval_s
        try:
            await link.connect()
            self.connected = True
            next_s = self._clock()
            while True:
                await self._poll(link)
                reraise_swallowed_cancel()  # pymodbus awaits replies with wait_for
                next_s += period_s
                now_s = self._clock()
                if next_s < now_s:
                    self.overruns += 1
                    next_s = now_s
                await asyncio.sleep(next_s - now_s)
        finally:
            self.connected = False
            link.close()

    async def _poll(self, link: ModbusLink) -> None:
        sent_s = self._clock()
        raw = await _read_values(link, self.config.register_map)
        arrived_s = self._clock()
        self.reads += 1
        self.read_seconds += arrived_s - sent_s
        try:
            reading = validated(self.config, raw)
        except ModbusReadError as error:
            self._failures.failure(error.reason, error)
            return
        self._failures.success(f"{self.name}: reading again")
        self._backoff.reset()
        self.reading.publish(reading, arrived_s)
        self.values.publish(reading.values, arrived_s)
        self.power.publish(reading.power_sample(), arrived_s)

    def collect_metrics(self) -> Iterable[Metric]:
        """Freshness, connection and counters (the values are exported from the table)."""
        families = self._families
        yield up_family(families, METRIC_PREFIX, self.name, self.is_fresh())
        connected = families.gauge(f"{METRIC_PREFIX}_connected", "1 while the TCP connection is open")
        yield connected.one(1.0 if self.connected else 0.0, self.name)
        yield from counter_families(
            families,
            METRIC_PREFIX,
            self.name,
            (
                ("reads", "Complete polls that got replies (valid or not)", self.reads),
                ("reconnects", "Reconnections after a failure", self.reconnects),
                ("cycle_overruns", "Polls that took longer than the polling period", self.overruns),
                ("read_seconds", "Time spent waiting for replies (s)", self.read_seconds),
            ),
            self._failures.by_reason,
            METER_REASONS,
        )

    def status(self) -> Mapping[str, Any]:
        """JSON-able summary for /api/status."""
        config = self.config
        age_s = self.reading.age_s()
        return {
            "type": "ModbusMeter",
            "map": config.register_map.name,
            "address": f"{config.host}:{config.port}",
            "unit": config.unit,
            "framing": config.framing,
            "connected": self.connected,
            "age_s": None if age_s is None else round(age_s, 3),
            **reading_status(self.reading.get(config.max_age_s)),
            "reads": self.reads,
            "reconnects": self.reconnects,
            "errors": dict(self._failures.by_reason),
        }
