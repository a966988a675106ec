"""`MqttMeter`: power (per phase and/or total) and optional voltage, current, frequency and energy
from JSON (or bare number) payloads on MQTT topics — a Tasmota SML reader, OpenDTU, a Shelly Pro 3EM.

Each quantity names its topic, a dotted path into the JSON and a scale. Garbage (not JSON,
missing path, not a number, impossible value) is counted by reason, logged once per kind and
never used; readings older than `max_age` are stale.
"""

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from prometheus_client.core import Metric
from pydantic import Field, model_validator

from watti_watchman.clock import Clock, monotonic
from watti_watchman.config.base import ConfigModel
from watti_watchman.config.meters import MeterConfig
from watti_watchman.config.mqtt import MqttConnectionConfig, Name
from watti_watchman.domain.meter_values import PHASE_POWER_KEYS, MeterReading, QuantityKey, meter_table
from watti_watchman.domain.mqtt_payload import PayloadAssembler, PayloadError, ValueMapping, parse_path
from watti_watchman.domain.quantities import Quantity, QuantityValues
from watti_watchman.domain.readings import PowerSample
from watti_watchman.failures import OnceLog
from watti_watchman.latest import Latest
from watti_watchman.meters.generic import counter_families, reading_status, up_family
from watti_watchman.metrics import Families
from watti_watchman.mqtt import MqttSession
from watti_watchman.supervisor import cancel_and_wait

METRIC_PREFIX = "watti_mqtt_meter"
KNOWN_REASONS = ("not_json", "missing", "not_a_number", "non_finite", "implausible")


class MqttValueConfig(ConfigModel):
    """Where one quantity comes from."""

    topic: str = Field(min_length=1, pattern=r"^[^#+]+$", description="Topic (no wildcards).")
    path: str = Field(
        default="",
        pattern=r"^([^.]+(\.[^.]+)*)?$",
        description="Dotted path into the JSON payload (list indices as numbers); empty: a bare number.",
    )
    scale: float = Field(
        default=1.0, description="Factor to W, V, A, Hz or Wh (e.g. 1000 for kWh, -1 to flip)."
    )

    @model_validator(mode="after")
    def _scale_not_zero(self) -> "MqttValueConfig":
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self


class MqttMeterConfig(MeterConfig):
    """A meter whose values arrive as MQTT payloads (Tasmota SML, OpenDTU, Shelly Pro 3EM, …)."""

    type: Literal["MqttMeter"]
    mqtt_connection_name: Name
    values: dict[QuantityKey, MqttValueConfig] = Field(
        min_length=1, description="Quantity → topic, path, scale; needs power_total or power_l1..l3."
    )
    invert: bool = Field(default=False, description="Negate powers and swap import/export.")
    max_age: float = Field(default=5.0, gt=0, le=600, description="Values older than this are stale (s).")

    @model_validator(mode="after")
    def _has_power(self) -> "MqttMeterConfig":
        if not any(key in self.values for key in (*PHASE_POWER_KEYS, "power_total")):
            raise ValueError("values needs power_total or power_l1..power_l3")
        return self

    def mappings(self) -> list[ValueMapping]:
        """The domain mappings."""
        return [ValueMapping(key, v.topic, parse_path(v.path), v.scale) for key, v in self.values.items()]


class MqttMeter:
    """Subscribes to the mapped topics and publishes `reading` and `power` on each complete set."""

    def __init__(
        self, config: MqttMeterConfig, connection: MqttConnectionConfig, *, clock: Clock = monotonic
    ) -> None:
        self.name = config.name
        self._families = Families()
        self.config = config
        self._clock = clock
        self.reading: Latest[MeterReading] = Latest(clock)
        self.power: Latest[PowerSample] = Latest(clock)
        self.quantities: tuple[Quantity, ...] = meter_table(config.values)
        self.values: Latest[QuantityValues] = Latest(clock)
        self._assembler = PayloadAssembler(config.mappings(), invert=config.invert, max_age_s=config.max_age)
        self._logger = logging.getLogger(f"watti_watchman.mqtt_meter.{config.name}")
        self._garbage = OnceLog(self._logger)
        self.errors: Counter[str] = Counter()
        self.messages = 0
        self.session = MqttSession(
            connection,
            f"mqtt_meter_{config.name}",
            clock=clock,
            on_message=self._on_message,
            on_connect=self._on_connect,
            logger=self._logger,
        )

    @property
    def topics(self) -> tuple[str, ...]:
        """The subscribed topics."""
        return self._assembler.topics

    def is_fresh(self) -> bool:
        """True when a reading at most `max_age` s old is present."""
        return self.reading.is_fresh(self.config.max_age)

    async def run(self) -> None:
        """Keep the session subscribed forever (cancel to stop)."""
        await self.session.run()

    async def _on_connect(self, session: MqttSession) -> None:
        await session.subscribe(*self.topics)

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        self.messages += 1
        now_s = self._clock()
        try:
            reading = self._assembler.accept(topic, payload, now_s)
        except PayloadError as error:
            self.errors[error.reason] += 1
            self._garbage.warn(
                f"{error.reason}:{topic}", "%s: %s on %s (ignored)", error.reason, error, topic
            )
            return
        if reading is not None:
            self.reading.publish(reading, now_s)
            self.values.publish(reading.values, now_s)
            self.power.publish(reading.power_sample(), now_s)

    def collect_metrics(self) -> Iterable[Metric]:
        """Freshness, session and counters (the values are exported from the table)."""
        yield up_family(self._families, METRIC_PREFIX, self.name, self.is_fresh())
        yield from counter_families(
            self._families,
            METRIC_PREFIX,
            self.name,
            (
                ("messages", "Messages received on the mapped topics", self.messages),
                ("readings", "Readings published", self.reading.seq),
            ),
            self.errors,
            KNOWN_REASONS,
        )
        yield from self.session.collect_metrics()

    def status(self) -> Mapping[str, Any]:
        """JSON-able summary for /api/status."""
        age_s = self.reading.age_s()
        return {
            "type": "MqttMeter",
            "connection": self.config.mqtt_connection_name,
            "connected": self.session.is_connected,
            "age_s": None if age_s is None else round(age_s, 3),
            **reading_status(self.reading.get(self.config.max_age)),
            "messages": self.messages,
            "errors": dict(self.errors),
        }


class MqttReadError(Exception):
    """No complete reading arrived in time (for humans)."""


async def read_once(
    config: MqttMeterConfig, connection: MqttConnectionConfig, *, timeout_s: float | None = None
) -> MeterReading:
    """Subscribe until one complete reading arrives (retained values count); MqttReadError after
    `timeout_s` (default: `max_age` + 2 s) saying what was missing."""
    meter = MqttMeter(config, connection)
    task = asyncio.create_task(meter.run(), name=f"read {config.name}")
    try:
        newest = await meter.reading.wait_newer(0, config.max_age + 2.0 if timeout_s is None else timeout_s)
    finally:
        await cancel_and_wait([task], logging.getLogger("watti_watchman.mqtt_meter"))
    if newest is None:
        if not meter.session.connects_total:
            raise MqttReadError(f"cannot connect to {connection.host}:{connection.port}")
        garbage = f" (rejected: {dict(meter.errors)})" if meter.errors else ""
        raise MqttReadError(f"no complete reading on {', '.join(meter.topics)}{garbage}")
    return newest.value
