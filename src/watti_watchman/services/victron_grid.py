"""A grid meter as a virtual grid meter in Venus OS, through dbus-mqtt-devices (PROTOCOLS §4).

`VictronGridProvider` owns the MQTT session to the GX and keeps one `grid` service registered with
the dbus-mqtt-devices driver (Status with a `connected: 0` last will, reply → write prefix,
re-registration on reconnect, every `status_interval_s` and when the service vanishes).
`VictronGridFeeder` writes the fresh values of any meter whose quantity table has Venus grid
paths (capability `grid_values`) below that prefix: powers at most every
`power_interval`, the rest at most every `slow_interval`, `{"value": null}` once when the meter
goes stale. Both run as their own tasks: a slow or lost GX broker never delays the control loop.
"""

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client.core import Metric

from watti_watchman import __version__
from watti_watchman.clock import Clock, monotonic
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.config.services import VictronGridFeederConfig
from watti_watchman.domain.hass import CounterGuard
from watti_watchman.domain.quantities import Quantity, QuantityValues
from watti_watchman.failures import FailureLog, OnceLog
from watti_watchman.latest import Stamped
from watti_watchman.meters.base import GridMeter
from watti_watchman.metrics import Families
from watti_watchman.mqtt import LastWill, MqttSession, NotConnectedError
from watti_watchman.supervisor import Backoff, reraise_swallowed_cancel

RegistrationState = Literal["unregistered", "registering", "registered", "fixed"]
REGISTRATION_STATES: tuple[RegistrationState, ...] = ("unregistered", "registering", "registered", "fixed")
WriteClass = Literal["power", "slow", "invalidate"]
WRITE_CLASSES: tuple[WriteClass, ...] = ("power", "slow", "invalidate")

REPLY_TIMEOUT_S = 2.5
"""The driver flushes replies on a 1 s timer (seen after 23–850 ms): wait at least 2 s."""
STATUS_INTERVAL_S = 60.0
"""Status is re-published this often (idempotent) so a silently restarted driver re-learns us."""
KEEPALIVE_INTERVAL_S = 25.0
"""Both bridges stop notifying 60 s after the last keepalive; the vanish watch needs them (≤ 30 s)."""
DIALECT_TIMEOUT_S = 5.0
"""No FlashMQ heartbeat this long (s) after a keepalive: the old dbus-mqtt bridge (Venus < 3.20)."""
WATCHED_PATH = "Ac/Frequency"
"""The one grid path whose 0-byte notification tells that the service vanished (1 Hz echo only)."""
KEEPALIVE_PAYLOAD = json.dumps({"keepalive-options": ["suppress-republish"]})
"""FlashMQ: stay alive without a full republish (dbus-mqtt reads it as a topic list matching nothing)."""
EARLY_FRACTION = 0.25
"""A throttled write may come this fraction of an interval early, so meter jitter never halves the rate."""

_DECIMALS = {"W": 1, "V": 2, "A": 3, "Hz": 3, "Wh": 3}
"""Decimals written per table unit (energy is written in kWh: 3 decimals = Wh resolution)."""


def grid_quantities(quantities: Sequence[Quantity]) -> tuple[tuple[Quantity, ...], tuple[Quantity, ...]]:
    """(power, slow) rows of a table that have Venus grid paths.

    Power (W) per phase first (systemcalc reads them), then `Ac/Power`; slow: voltages, currents,
    frequency and the import (Forward) / export (Reverse) energies.
    """
    paths = [q for q in quantities if q.venus_path]
    power = sorted((q for q in paths if q.unit == "W"), key=lambda q: q.venus_path == "Ac/Power")
    return tuple(power), tuple(q for q in paths if q.unit != "W")


def venus_value(quantity: Quantity, value: float) -> float:
    """A table value in the Venus unit (Wh → kWh), rounded to the resolution worth sending."""
    return round(value * quantity.venus_scale, _DECIMALS.get(quantity.unit or "", 3))


def value_payload(value: float | None) -> bytes:
    """`{"value": <number or null>}`; ValueError for NaN/Inf (never valid JSON for the GX)."""
    return json.dumps({"value": value}, allow_nan=False).encode()


class _Throttle:
    """At most one pass per `interval_s` on average (bursts of one); a pass may come 25 % early."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._credit = 1.0
        self._at_s: float | None = None

    def _credit_at(self, now_s: float) -> float:
        if self._at_s is None:
            return self._credit
        return min(1.0, self._credit + (now_s - self._at_s) / self.interval_s)

    def wait_s(self, now_s: float) -> float:
        """Seconds until the next pass is allowed (0: now)."""
        return max(0.0, (1.0 - EARLY_FRACTION - self._credit_at(now_s)) * self.interval_s)

    def take(self, now_s: float) -> None:
        """Record a pass at `now_s`."""
        self._credit = self._credit_at(now_s) - 1.0
        self._at_s = now_s

    def reset(self) -> None:
        """Allow the next pass at once."""
        self._credit, self._at_s = 1.0, None


@dataclass(slots=True)
class _ValueClass:
    """One class of writes: its paths, its rate limit and the sequence number of the reading last written."""

    kind: WriteClass
    quantities: tuple[Quantity, ...]
    throttle: _Throttle
    seq: int = 0
    held_s: float | None = None
    """Clock time (s) the newest unwritten reading was first held back by the throttle."""


def _parse_prefix(prefix: str) -> tuple[str | None, int | None]:
    """(portal id, instance) of `W/<pid>/grid/<inst>`, None for parts that do not match."""
    parts = prefix.strip("/").split("/")
    if len(parts) != 4 or parts[0] != "W" or parts[2] != "grid":
        return None, None
    return parts[1], int(parts[3]) if parts[3].isdigit() else None


class VictronGridProvider:
    """Keeps one dbus-mqtt-devices `grid` service registered on its own MQTT session to the GX.

    `write_prefix` is `W/<pid>/grid/<instance>` while writes land (state `registered` or `fixed`),
    else None. `generation` grows whenever a registration is (re-)established: the driver's
    values then start out invalid. The keepalive speaks the GX's bridge (`dialect`): FlashMQ
    options once its heartbeat was seen, else after `dialect_timeout_s` without one the old
    dbus-mqtt's topic list (`["grid/<instance>/Ac/Frequency"]`). Tunables (`reply_timeout_s`,
    `status_interval_s`, `keepalive_interval_s`, `dialect_timeout_s`, `backoff`) are read at each use.
    """

    def __init__(
        self,
        connection: MqttConnectionConfig,
        *,
        name: str,
        client_id: str,
        label: str,
        write_prefix: str | None = None,
        clock: Clock = monotonic,
    ) -> None:
        self.name = name
        self.client_id = client_id
        self.label = label
        self.status_topic = f"device/{client_id}/Status"
        self.reply_topic = f"device/{client_id}/DBus"
        self.reply_timeout_s = REPLY_TIMEOUT_S
        self.status_interval_s = STATUS_INTERVAL_S
        self.keepalive_interval_s = KEEPALIVE_INTERVAL_S
        self.dialect_timeout_s = DIALECT_TIMEOUT_S
        self.backoff = Backoff(initial_s=1.0, cap_s=30.0)
        self.dialect: Literal["flashmq", "legacy"] | None = None
        self.keepalives_total = 0
        self._clock = clock
        self._keepalive_s: float | None = None
        self._heartbeat_topic: str | None = None
        self._logger = logging.getLogger(f"watti_watchman.victron_grid.{name}")
        self.failures = FailureLog(self._logger, clock)
        self._garbage = OnceLog(self._logger)
        self._fixed_prefix = write_prefix.rstrip("/") if write_prefix else None
        self.state: RegistrationState = "fixed" if self._fixed_prefix else "unregistered"
        self.portal_id: str | None = None
        self.device_instance: int | None = None
        self._prefix: str | None = self._fixed_prefix
        self._watch_topic: str | None = None
        if self._fixed_prefix is not None:
            self.portal_id, self.device_instance = _parse_prefix(self._fixed_prefix)
        self.generation = 1 if self._fixed_prefix else 0
        self.attempts_total = 0
        self.vanished_total = 0
        self.bad_replies_total = 0
        self.families = Families()
        self._reason: str | None = None
        self._replied = False
        self._wake = asyncio.Event()
        self._stopping = False
        registering = self._fixed_prefix is None
        self.session = MqttSession(
            connection,
            name,
            clock=clock,
            on_message=self._on_message if registering else None,
            on_connect=self._on_connect if registering else None,
            will=LastWill(self.status_topic, self.status_payload(connected=False)) if registering else None,
            logger=self._logger,
        )

    @property
    def write_prefix(self) -> str | None:
        """`W/<pid>/grid/<instance>` while registered (or fixed) and connected, else None."""
        ready = self.state in ("registered", "fixed") and self.session.is_connected and not self._stopping
        return self._prefix if ready else None

    def status_payload(self, *, connected: bool) -> bytes:
        """The dbus-mqtt-devices Status message announcing (or withdrawing) our one grid service."""
        return json.dumps(
            {
                "clientId": self.client_id,
                "connected": 1 if connected else 0,
                "version": f"WattiWatchman {__version__}",
                "services": {self.label: "grid"},
            }
        ).encode()

    async def run(self) -> None:
        """Keep the session connected and the service registered; cancel to stop."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.session.run())
            if self._fixed_prefix is None:
                group.create_task(self._registration_loop())
                group.create_task(self._keepalive_loop())

    async def shutdown(self) -> None:
        """Stop writing and re-registering; withdraw the service with `connected: 0`."""
        self._stopping = True
        self._wake.set()
        if self._fixed_prefix is None:
            await self.session.close_gracefully(self.status_topic, self.status_payload(connected=False))
            self.state = "unregistered"

    # -- messages (on the session's task: parse and store only) ----------------------------------

    async def _on_connect(self, session: MqttSession) -> None:
        await session.subscribe(self.reply_topic)
        self.state = "registering"  # the driver may have dropped us (last will, GX reboot): confirm first
        self._request("connect")

    def _request(self, reason: str) -> None:
        if not self._stopping:
            self._reason = reason
            self._wake.set()

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic == self.reply_topic:
            self._on_reply(payload)
        elif topic == self._heartbeat_topic and self.dialect != "flashmq":
            self._logger.info("GX %s speaks FlashMQ (heartbeat seen): keepalive options", self.portal_id)
            self.dialect = "flashmq"
        elif topic == self._watch_topic and not payload and self.state == "registered" and not self._stopping:
            self.vanished_total += 1
            self._logger.warning(
                "grid service %s vanished (driver restart?): registering again", self._prefix
            )
            self.state = "registering"
            self._request("vanished")

    def _on_reply(self, payload: bytes) -> None:
        try:
            reply = json.loads(payload)
            portal_id = reply["portalId"]
            instance = reply["deviceInstance"][self.label]
            paths = reply["topicPath"][self.label]
            prefix, notify = paths["W"], paths.get("N")
        except (ValueError, KeyError, TypeError) as error:
            self.bad_replies_total += 1
            self._garbage.warn(
                type(error).__name__, "unusable reply on %s: %r", self.reply_topic, payload[:200]
            )
            return
        if not (isinstance(portal_id, str) and isinstance(instance, int) and isinstance(prefix, str)):
            self.bad_replies_total += 1
            self._garbage.warn("types", "reply on %s has wrong types: %r", self.reply_topic, payload[:200])
            return
        if self._stopping:
            return
        prefix = prefix.rstrip("/")
        notify_prefix = notify.rstrip("/") if isinstance(notify, str) else f"N/{portal_id}/grid/{instance}"
        if self.state != "registered" or prefix != self._prefix:
            self.generation += 1
            self._logger.info("registered as %s (device instance %d)", prefix, instance)
        self.portal_id, self.device_instance, self._prefix = portal_id, instance, prefix
        self._watch_topic = f"{notify_prefix}/{WATCHED_PATH}"
        self.state = "registered"
        self._replied = True
        self._wake.set()

    # -- registration ----------------------------------------------------------------------------

    async def _sleep(self, timeout_s: float | None) -> bool:
        """Wait for a wake-up (request, reply, shutdown) or `timeout_s`; True when woken."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
        except TimeoutError:
            return False
        finally:
            self._wake.clear()
        return True

    async def _registration_loop(self) -> None:
        loop = asyncio.get_running_loop()
        refresh_at_s = 0.0
        while not self._stopping:
            reraise_swallowed_cancel()
            if self._reason is None:
                idle_s = max(0.0, refresh_at_s - loop.time()) if self.state == "registered" else None
                if not await self._sleep(idle_s) and self.state == "registered":
                    self._reason = "refresh"
            if self._reason is None or self._stopping:
                continue
            if not self.session.is_connected:
                self._reason = None  # `_on_connect` asks again
                continue
            refresh_at_s = loop.time() + self.status_interval_s
            await self._attempt()

    async def _attempt(self) -> None:
        """Publish Status once and wait for the reply; on no reply back off, then ask again."""
        reason, self._reason = self._reason, None
        self._replied = False
        self.attempts_total += 1
        self._logger.debug("Status connected=1 (%s)", reason)
        try:
            await self.session.publish(self.status_topic, self.status_payload(connected=True))
        except NotConnectedError as error:
            self.failures.failure("not_connected", error)
            return
        try:
            async with asyncio.timeout(self.reply_timeout_s):
                while not (self._replied or self._reason or self._stopping):
                    await self._sleep(None)
        except TimeoutError:
            self.failures.failure(
                "no_reply", f"no reply on {self.reply_topic} within {self.reply_timeout_s} s"
            )
            await self._sleep(self.backoff.next_delay_s())  # a request, a late reply or shutdown ends it
        if self._replied:
            self.backoff.reset()
            self.failures.success(f"registered as {self._prefix}")
            await self._watch()
        elif self._reason is None and not self._stopping:
            self._reason = "retry"

    async def _watch(self) -> None:
        """Subscribe to the vanish watch path (and FlashMQ's heartbeat), keep notifications alive."""
        if self._watch_topic is None or self.portal_id is None:
            return
        self._heartbeat_topic = f"N/{self.portal_id}/heartbeat"
        try:
            await self.session.subscribe(self._watch_topic, self._heartbeat_topic)
            await self._keepalive()
        except NotConnectedError:
            return  # `_on_connect` subscribes again

    async def _keepalive(self) -> None:
        if self.dialect == "legacy":  # dbus-mqtt: a list of patterns below N/<pid>/
            payload = json.dumps([f"grid/{self.device_instance}/{WATCHED_PATH}"])
        else:
            payload = KEEPALIVE_PAYLOAD
        await self.session.publish(f"R/{self.portal_id}/keepalive", payload)
        self._keepalive_s = self._clock()
        self.keepalives_total += 1

    def _legacy_detected(self, now_s: float) -> bool:
        """True once, when a keepalive went `dialect_timeout_s` without a FlashMQ heartbeat."""
        if self.dialect is not None or self._keepalive_s is None:
            return False
        if now_s - self._keepalive_s < self.dialect_timeout_s:
            return False
        self.dialect = "legacy"
        self._logger.info(
            "GX %s: no heartbeat within %.0f s: dbus-mqtt (Venus < 3.20), topic-list keepalives",
            self.portal_id,
            self.dialect_timeout_s,
        )
        return True

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.keepalive_interval_s, self.dialect_timeout_s) / 4)
            reraise_swallowed_cancel()
            now_s = self._clock()
            due = self._keepalive_s is None or now_s - self._keepalive_s >= self.keepalive_interval_s
            if not (self._legacy_detected(now_s) or due):
                continue
            if self.state == "registered" and not self._stopping:
                try:
                    await self._keepalive()
                except NotConnectedError:
                    self._logger.debug("keepalive skipped: not connected")

    # -- observability ---------------------------------------------------------------------------

    def collect_metrics(self) -> Iterable[Metric]:
        """Registration state, device instance, attempts, failures, vanishings and the session's metrics."""
        families, name = self.families, self.name
        state = families.gauge(
            "watti_victron_grid_registration_state",
            "1 for the current dbus-mqtt-devices registration state (fixed: write_prefix configured)",
            ("name", "state"),
        )
        yield state.set(([name, s], 1.0 if self.state == s else 0.0) for s in REGISTRATION_STATES)
        if self.device_instance is not None:
            instance = families.gauge(
                "watti_victron_grid_device_instance", "Device instance of the virtual grid meter on the GX"
            )
            yield instance.one(self.device_instance, name)
        attempts = families.counter(
            "watti_victron_grid_registration_attempts",
            "Status messages (connected: 1) sent awaiting a registration reply",
        )
        yield attempts.one(self.attempts_total, name)
        failures = families.counter(
            "watti_victron_grid_registration_failures",
            "Registration attempts without a reply (no_reply) or not sent (not_connected)",
            ("name", "reason"),
        )
        yield failures.set(([name, r], self.failures.by_reason[r]) for r in ("no_reply", "not_connected"))
        vanished = families.counter(
            "watti_victron_grid_vanished",
            "Times the grid service vanished from the GX (0-byte notification) and was re-registered",
        )
        yield vanished.one(self.vanished_total, name)
        yield from self.session.collect_metrics()

    def status(self) -> dict[str, Any]:
        """JSON-able registration summary."""
        return {
            "connected": self.session.is_connected,
            "broker": f"{self.session.connection.host}:{self.session.connection.port}",
            "client_id": self.client_id,
            "label": self.label,
            "registration": self.state,
            "portal_id": self.portal_id,
            "device_instance": self.device_instance,
            "write_prefix": self._prefix,
            "registration_attempts": self.attempts_total,
            "registration_failures": dict(self.failures.by_reason),
            "vanished": self.vanished_total,
            "keepalive": self.dialect or "unknown",
        }


class VictronGridFeeder:
    """Writes the fresh values of a grid meter to a dbus-mqtt-devices grid service.

    Power (W, + = import) per phase and total at most every `power_interval` s; voltage (V),
    current (A), frequency (Hz) and energy (kWh; Forward = import, Reverse = export, after the
    meter's `invert`) at most every `slow_interval` s. Nothing before registration; a stale
    meter invalidates every path once (`{"value": null}`) and nothing more until it is fresh.
    """

    def __init__(
        self,
        config: VictronGridFeederConfig,
        connection: MqttConnectionConfig,
        grid_meter: GridMeter,
        *,
        clock: Clock = monotonic,
    ) -> None:
        self.name = config.name
        self.config = config
        self.grid_meter = grid_meter
        self._clock = clock
        self.provider = VictronGridProvider(
            connection,
            name=config.name,
            client_id=config.client_id,
            label=config.label,
            write_prefix=config.write_prefix,
            clock=clock,
        )
        self.power_quantities, self.slow_quantities = grid_quantities(grid_meter.quantities)
        self.all_quantities = (*self.power_quantities, *self.slow_quantities)
        """Every value the grid service takes, power first."""
        self._classes = (
            _ValueClass("power", self.power_quantities, _Throttle(config.power_interval)),
            _ValueClass("slow", self.slow_quantities, _Throttle(config.slow_interval)),
        )
        self._generation = 0
        self._stepped_seq = 0
        """Sequence number of the reading the previous step saw (a newer one has arrived since)."""
        self._invalidated = True
        """True while the GX holds no value of ours worth invalidating."""
        self._guard = CounterGuard()
        self._lock = asyncio.Lock()
        self._stopping = False
        self.writes: Counter[WriteClass] = Counter()
        """W messages published, by class."""
        self.errors: Counter[str] = Counter()
        """Write rounds cut short, by reason."""
        self.last_write_s: float | None = None
        """Clock time (s) of the newest value write (invalidations excluded)."""
        self.families = Families()

    async def run(self) -> None:
        """Run the provider (session, registration) and the feed; cancel to stop."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.provider.run())
            group.create_task(self._feed_loop())

    async def shutdown(self) -> None:
        """Stop feeding; withdraw the service (`connected: 0`), or invalidate a fixed `write_prefix`."""
        async with self._lock:
            self._stopping = True
            prefix = self.provider.write_prefix
            if self.provider.state == "fixed" and prefix is not None and not self._invalidated:
                await self._publish_round(prefix, [(q, None) for q in self.all_quantities], "invalidate")
        await self.provider.shutdown()

    async def _feed_loop(self) -> None:
        latest = self.grid_meter.values
        while True:
            seen = latest.seq
            wait_s = await self._step()
            await latest.wait_newer(seen, wait_s)
            reraise_swallowed_cancel()

    async def _step(self) -> float:
        """Write what is due now; the longest time (s) to sleep unless a new reading arrives."""
        idle_s = self.config.power_interval
        async with self._lock:
            prefix = self.provider.write_prefix
            if self._stopping or prefix is None:
                return idle_s
            if self.provider.generation != self._generation:
                self._generation = self.provider.generation
                for value_class in self._classes:
                    value_class.throttle.reset()
                    value_class.seq = 0
                    value_class.held_s = None
                self._stepped_seq = 0  # the newest reading goes out at once
                self._invalidated = False  # the GX may still hold our last values (broker restart)
            stamped = self.grid_meter.values.snapshot()
            if stamped is None or not self.grid_meter.is_fresh():
                if not self._invalidated:
                    nulls = [(q, None) for q in self.all_quantities]
                    self._invalidated = await self._publish_round(prefix, nulls, "invalidate")
                return idle_s
            now_s = self._clock()
            arrived = stamped.seq != self._stepped_seq  # since the last step
            self._stepped_seq = stamped.seq
            for value_class in self._classes:
                if stamped.seq <= value_class.seq:
                    value_class.held_s = None
                    continue
                # A reading the throttle holds back waits for a newer one, to be written as that
                # arrives: written once the throttle allows, it would pace every later reading by
                # the throttle instead of by the meter, each most of a window late. Only a meter
                # gone quiet gets it written, one interval after it was held back.
                held_s = value_class.held_s
                overdue = held_s is not None and now_s - held_s >= value_class.throttle.interval_s
                if value_class.throttle.wait_s(now_s) == 0.0 and (arrived or overdue):
                    value_class.held_s = None
                    await self._write_values(prefix, stamped, value_class)
                elif held_s is None:
                    value_class.held_s = now_s
            # Readings wake the loop; the timer only for a held-back reading that is due, or to see
            # the meter go stale: two intervals, so it never fires just before the next reading.
            due = [
                value_class.held_s + value_class.throttle.interval_s - now_s
                for value_class in self._classes
                if value_class.held_s is not None
            ]
            return max(0.001, min([2 * idle_s, *due]))

    async def _write_values(
        self, prefix: str, stamped: Stamped[QuantityValues], value_class: _ValueClass
    ) -> None:
        """Write one class of values of `stamped` (energy counters never go down); throttle on success."""
        values: list[tuple[Quantity, float | None]] = []
        for quantity in value_class.quantities:
            value = stamped.value.get(quantity.key)
            if value is not None and quantity.is_counter:
                value = self._guard.admit(quantity.key, value)
            values.append((quantity, None if value is None else venus_value(quantity, value)))
        if not await self._publish_round(prefix, values, value_class.kind):
            return
        now_s = self._clock()
        value_class.throttle.take(now_s)
        value_class.seq = stamped.seq
        self._invalidated = False
        self.last_write_s = now_s

    async def _publish_round(
        self, prefix: str, values: Sequence[tuple[Quantity, float | None]], kind: WriteClass
    ) -> bool:
        """Publish `{"value": …}` to `<prefix>/<venus path>` for each; False when the connection is gone."""
        if self.provider.write_prefix != prefix:
            return False  # the service vanished (or the session dropped) since the round began
        messages = [(f"{prefix}/{quantity.venus_path}", value_payload(value)) for quantity, value in values]
        try:
            await self.provider.session.publish_many(messages)
        except NotConnectedError:
            self.errors["not_connected"] += 1
            return False
        self.writes[kind] += len(messages)
        return True

    @property
    def up(self) -> bool:
        """True while registered (or fixed), connected and the grid meter is fresh (values flow)."""
        return self.provider.write_prefix is not None and self.grid_meter.is_fresh()

    def collect_metrics(self) -> Iterable[Metric]:
        """watti_victron_grid_* families of this feeder, its registration and its MQTT session."""
        families, name = self.families, self.name
        up = families.gauge(
            "watti_victron_grid_up", "1 while registered on the GX and feeding fresh grid meter values"
        )
        yield up.one(1.0 if self.up else 0.0, name)
        writes = families.counter(
            "watti_victron_grid_writes",
            "W messages published to the grid service, by class (power, slow, invalidate)",
            ("name", "class"),
        )
        yield writes.set(([name, kind], self.writes[kind]) for kind in WRITE_CLASSES)
        errors = families.counter(
            "watti_victron_grid_errors",
            "Write rounds cut short (not_connected) and unusable registration replies (bad_reply)",
            ("name", "reason"),
        )
        yield errors.set(
            (
                ([name, "not_connected"], self.errors["not_connected"]),
                ([name, "bad_reply"], self.provider.bad_replies_total),
            )
        )
        held = families.counter(
            "watti_victron_grid_energy_regressions_held_back",
            "Energy counter values lower than already written, replaced by the highest written",
        )
        yield held.one(self._guard.held_back_total, name)
        if self.last_write_s is not None:
            age = families.gauge(
                "watti_victron_grid_last_write_age_seconds",
                "Seconds since the last value write to the GX (invalidations excluded)",
            )
            yield age.one(self._clock() - self.last_write_s, name)
        yield from self.provider.collect_metrics()

    def status(self) -> Mapping[str, Any]:
        """JSON-able summary for /api/status."""
        last = self.last_write_s
        return {
            "type": "VictronGridFeeder",
            "grid_meter": self.grid_meter.name,
            "up": self.up,
            **self.provider.status(),
            "writes": {kind: self.writes[kind] for kind in WRITE_CLASSES},
            "errors": dict(self.errors),
            "last_write_age_s": None if last is None else round(self._clock() - last, 3),
        }
