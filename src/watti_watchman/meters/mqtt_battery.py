"""`MqttBattery`: any inverter that takes a battery power setpoint over MQTT (via its own bridge).

Writes the ChargeController's setpoints to a topic as a number or a JSON template (total or per
phase), re-sends the last one every `resend_interval` (the inverter's watchdog), writes 0 W when
the controller stops writing and on shutdown, and keeps a retained status topic whose last will
says the controller is gone. An optional feedback (same topic/path/scale mapping as `MqttMeter`)
delivers the battery's actual power, SOC, voltage and BMS current limits.
"""

import asyncio
import logging
import math
import string
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from prometheus_client.core import Metric
from pydantic import Field, field_validator

from watti_watchman.clock import Clock, monotonic
from watti_watchman.config.meters import MeterConfig
from watti_watchman.config.mqtt import MqttConnectionConfig, Name
from watti_watchman.domain.mqtt_payload import PayloadError, extract, parse_path
from watti_watchman.domain.quantities import Quantity, QuantityValues
from watti_watchman.domain.readings import PHASES, BatteryStatus, PhaseSetpoints, PowerSample
from watti_watchman.failures import OnceLog
from watti_watchman.latest import Latest
from watti_watchman.meters.generic import counter_families, up_family
from watti_watchman.meters.mqtt_meter import MqttValueConfig
from watti_watchman.metrics import Families
from watti_watchman.mqtt import LastWill, MqttSession, NotConnectedError
from watti_watchman.supervisor import cancel_and_wait, reraise_swallowed_cancel

METRIC_PREFIX = "watti_mqtt_battery"
KNOWN_REASONS = ("not_json", "missing", "not_a_number", "non_finite", "implausible", "not_connected")
PLACEHOLDERS = frozenset({"total", "l1", "l2", "l3"})
FeedbackKey = Literal["power", "soc", "voltage", "max_charge_current", "max_discharge_current"]
FEEDBACK_QUANTITIES: tuple[Quantity, ...] = (
    Quantity("power", "Battery power", "W", "power", "measurement", f"{METRIC_PREFIX}_power_watts",
             metric_help="Battery power from the feedback (W, + = charging)", precision=1),
    Quantity("soc", "SOC", "%", "battery", "measurement", f"{METRIC_PREFIX}_soc_ratio",
             metric_help="State of charge from the feedback (0..1)", metric_scale=0.01, precision=1),
    Quantity("voltage", "Battery voltage", "V", "voltage", "measurement", f"{METRIC_PREFIX}_voltage_volts",
             metric_help="Battery voltage from the feedback (V)", precision=2),
    Quantity("max_charge_current", "BMS max charge current", "A", "current", "measurement",
             f"{METRIC_PREFIX}_max_charge_current_amperes", metric_help="BMS charge current limit (A)",
             precision=1),
    Quantity("max_discharge_current", "BMS max discharge current", "A", "current", "measurement",
             f"{METRIC_PREFIX}_max_discharge_current_amperes", metric_help="BMS discharge current limit (A)",
             precision=1),
)  # fmt: skip
"""The feedback values; a meter's table holds those it is configured to receive."""
_FEEDBACK_RANGES: dict[str, tuple[float, float]] = {
    "power": (-1e6, 1e6),
    "soc": (0.0, 100.0),
    "voltage": (0.0, 2000.0),
    "max_charge_current": (0.0, 1e5),
    "max_discharge_current": (0.0, 1e5),
}


class MqttBatteryConfig(MeterConfig):
    """A battery inverter commanded over MQTT: setpoint topic, payload template, feedback, watchdog."""

    type: Literal["MqttBattery"]
    mqtt_connection_name: Name
    setpoint_topic: str = Field(min_length=1, pattern=r"^[^#+]+$", description="Where setpoints are written.")
    template: str = Field(
        default="{total}",
        description="Payload: {total} (W) or {l1} {l2} {l3} per phase, e.g. '{\"power\": {total}}'.",
    )
    invert: bool = Field(default=False, description="Write + for discharging (the inverter's convention).")
    retain: bool = Field(default=False, description="Publish setpoints retained.")
    resend_interval: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Re-send the last setpoint this often (s): the inverter's watchdog.",
    )
    command_timeout: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="No new setpoint from the controller for this long: write 0 W (s).",
    )
    status_topic: str | None = Field(
        default=None,
        pattern=r"^[^#+]+$",
        description="Retained 'online'/'offline' (last will); default: <setpoint_topic>/controller.",
    )
    feedback: dict[FeedbackKey, MqttValueConfig] = Field(
        default_factory=dict,
        description="Optional actual values: power (W, + = charging), soc (%), voltage (V), BMS limits (A).",
    )
    max_age: float = Field(default=10.0, gt=0, le=600, description="Feedback older than this is stale (s).")

    @field_validator("template")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as error:
            raise ValueError(
                f"template is not a valid format string ({error}); write {{{{ }}}} for braces"
            ) from None
        if not fields or not fields <= PLACEHOLDERS:
            raise ValueError("template must use {total} or {l1} {l2} {l3} (JSON braces doubled: {{ }})")
        return value

    @property
    def delivers_power(self) -> bool:
        """True when a feedback power topic makes this a power meter too (see `config/checks.py`)."""
        return "power" in self.feedback

    @property
    def will_topic(self) -> str:
        """The status topic (retained online/offline, last will)."""
        return self.status_topic or f"{self.setpoint_topic}/controller"

    def payload(self, setpoints: PhaseSetpoints) -> str:
        """The payload for `setpoints` (W, + = charge; negated when `invert`)."""
        sign = -1 if self.invert else 1
        phases = {phase.lower(): sign * setpoints.get(phase, 0) for phase in PHASES}
        return self.template.format(total=sum(phases.values()), **phases)


class MqttBattery:
    """BatteryController over MQTT; with feedback also a PowerMeter and a battery status source."""

    def __init__(
        self, config: MqttBatteryConfig, connection: MqttConnectionConfig, *, clock: Clock = monotonic
    ) -> None:
        self.name = config.name
        self._families = Families()
        self.config = config
        self._clock = clock
        self.battery: Latest[BatteryStatus] = Latest(clock)
        self.power: Latest[PowerSample] = Latest(clock)
        self.quantities: tuple[Quantity, ...] = tuple(
            q for q in FEEDBACK_QUANTITIES if q.key in config.feedback
        )
        self.values: Latest[QuantityValues] = Latest(clock)
        self._logger = logging.getLogger(f"watti_watchman.mqtt_battery.{config.name}")
        self._garbage = OnceLog(self._logger)
        self.errors: Counter[str] = Counter()
        self._feedback: dict[str, tuple[float, float]] = {}
        self._by_topic: dict[str, list[tuple[str, MqttValueConfig]]] = {}
        for key, value in config.feedback.items():
            self._by_topic.setdefault(value.topic, []).append((key, value))
        self._setpoints: PhaseSetpoints | None = None
        self._commanded_s: float | None = None
        self._sent_s = -math.inf
        self.writes = 0
        self.resends = 0
        self.timeouts = 0
        self._wake = asyncio.Event()
        self._status_topic = config.will_topic
        self.session = MqttSession(
            connection,
            f"mqtt_battery_{config.name}",
            clock=clock,
            on_message=self._on_message,
            on_connect=self._on_connect,
            will=LastWill(config.will_topic, b"offline", retain=True),
            logger=self._logger,
        )

    # -- capabilities --------------------------------------------------------------------------

    def is_fresh(self) -> bool:
        """With feedback: the feedback is at most `max_age` old; without: connected."""
        if not self.config.feedback:
            return self.session.is_connected
        return self.battery.is_fresh(self.config.max_age) or self.power.is_fresh(self.config.max_age)

    def ready_for_setpoints(self) -> bool:
        """True while connected to the broker."""
        return self.session.is_connected

    async def write_setpoints(self, setpoints: PhaseSetpoints) -> None:
        """Publish `setpoints` now (W per phase); ConnectionError when the broker is not reachable."""
        self._setpoints = dict(setpoints)
        self._commanded_s = self._clock()
        await self._send(setpoints)
        self.writes += 1

    async def _send(self, setpoints: PhaseSetpoints) -> None:
        try:
            await self.session.publish(
                self.config.setpoint_topic, self.config.payload(setpoints), retain=self.config.retain
            )
        except NotConnectedError:
            self.errors["not_connected"] += 1
            raise
        self._sent_s = self._clock()

    # -- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the session and the watchdog running; on cancellation write 0 W and sign off first."""
        session = asyncio.create_task(self.session.run(), name=f"{self.name} session")
        watchdog = asyncio.create_task(self._watchdog(), name=f"{self.name} watchdog")
        try:
            done, _ = await asyncio.wait([session, watchdog], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a programming error: surface it
        finally:
            watchdog.cancel()
            try:
                await self._sign_off()  # while the session is still connected
            finally:
                await cancel_and_wait([session, watchdog], self._logger)

    async def _on_connect(self, session: MqttSession) -> None:
        await session.publish(self._status_topic, b"online", retain=True)
        if self._by_topic:
            await session.subscribe(*self._by_topic)
        self._wake.set()

    async def _watchdog(self) -> None:
        """Re-send the last setpoint every `resend_interval`; 0 W once the controller falls silent."""
        config = self.config
        while True:
            now_s = self._clock()
            connected = self.session.is_connected
            if self._setpoints is not None and connected and now_s >= self._sent_s + config.resend_interval:
                if self._commanded_s is not None and now_s - self._commanded_s > config.command_timeout:
                    if any(self._setpoints.values()):
                        self.timeouts += 1
                        self._logger.warning(
                            "no setpoint from the controller for %.1f s: writing 0 W", config.command_timeout
                        )
                    self._setpoints = dict.fromkeys(self._setpoints, 0)
                try:
                    await self._send(self._setpoints)
                    self.resends += 1
                except NotConnectedError:
                    self._sent_s = now_s  # counted; retry after one interval, the session reconnects
                reraise_swallowed_cancel()  # aiomqtt's wait_for may have swallowed our cancellation
            wait_s = config.resend_interval
            if self._setpoints is not None and connected:
                wait_s = max(0.001, self._sent_s + config.resend_interval - self._clock())
            self._wake.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _sign_off(self) -> None:
        """Best effort: 0 W, then 'offline' (the will covers a crash)."""
        if self._setpoints is not None:
            zero = dict.fromkeys(self._setpoints, 0)
            await self.session.close_gracefully(self.config.setpoint_topic, self.config.payload(zero))
        await self.session.close_gracefully(self._status_topic, b"offline", retain=True)

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        entries = self._by_topic.get(topic)
        if entries is None:
            return
        now_s = self._clock()
        try:
            values = {key: extract(payload, parse_path(value.path)) * value.scale for key, value in entries}
            for key, number in values.items():
                low, high = _FEEDBACK_RANGES[key]
                if not (math.isfinite(number) and low <= number <= high):
                    raise PayloadError("implausible", f"{key} = {number:g} is impossible")
        except PayloadError as error:
            self.errors[error.reason] += 1
            self._garbage.warn(
                f"{error.reason}:{topic}", "%s: %s on %s (ignored)", error.reason, error, topic
            )
            return
        for key, number in values.items():
            self._feedback[key] = (number, now_s)
        self.values.publish(
            {k: v for k, (v, at_s) in self._feedback.items() if now_s - at_s <= self.config.max_age}, now_s
        )
        if "power" in values:
            watts = values["power"]
            self.power.publish(PowerSample(watts / 3, watts / 3, watts / 3, watts), now_s)
        if values.keys() - {"power"}:
            self.battery.publish(self._status(now_s), now_s)

    def _status(self, now_s: float) -> BatteryStatus:
        def fresh(key: str) -> float | None:
            entry = self._feedback.get(key)
            return entry[0] if entry is not None and now_s - entry[1] <= self.config.max_age else None

        return BatteryStatus(
            fresh("soc"), fresh("max_charge_current"), fresh("max_discharge_current"), fresh("voltage")
        )

    # -- observability -------------------------------------------------------------------------

    def collect_metrics(self) -> Iterable[Metric]:
        """Freshness, last setpoint, counters and the session (feedback values come from the table)."""
        families = self._families
        yield up_family(families, METRIC_PREFIX, self.name, self.is_fresh())
        if self._setpoints is not None:
            family = families.gauge(
                f"{METRIC_PREFIX}_setpoint_watts", "Last setpoint written (W, + = charge)", ("name", "phase")
            )
            yield family.set(([self.name, phase.lower()], watts) for phase, watts in self._setpoints.items())
        yield from counter_families(
            families,
            METRIC_PREFIX,
            self.name,
            (
                ("writes", "Setpoints written for the controller", self.writes),
                ("resends", "Watchdog re-sends of the last setpoint", self.resends),
                ("command_timeouts", "Times the controller fell silent and 0 W was written", self.timeouts),
            ),
            self.errors,
            KNOWN_REASONS,
        )
        yield from self.session.collect_metrics()

    def status(self) -> Mapping[str, Any]:
        """JSON-able summary for /api/status."""
        battery = self.battery.get(self.config.max_age)
        power = self.power.get(self.config.max_age)
        return {
            "type": "MqttBattery",
            "setpoint_topic": self.config.setpoint_topic,
            "connected": self.session.is_connected,
            "fresh": self.is_fresh(),
            "setpoints_w": self._setpoints,
            "power_w": None if power is None else power.total_w,
            "soc_percent": None if battery is None else battery.soc_percent,
            "writes": self.writes,
            "resends": self.resends,
            "errors": dict(self.errors),
        }
