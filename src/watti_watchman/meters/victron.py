"""A Victron GX (Venus OS) over MQTT: readings, GX liveness, keepalive and ESS mode-3 setpoints."""

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from prometheus_client.core import Metric

from watti_watchman.clock import Clock, monotonic
from watti_watchman.config.meters import VictronConfig
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.devices.victron import QUANTITIES
from watti_watchman.domain.quantities import Quantity, QuantityValues
from watti_watchman.domain.readings import PHASES, BatteryStatus, PhaseSetpoints, PowerSample
from watti_watchman.domain.victron import (
    MAPPED_SERVICES,
    VictronSnapshot,
    VictronValues,
    notification_topics,
    parse_payload,
    parse_topic,
    spec_for,
)
from watti_watchman.failures import FailureLog, OnceLog
from watti_watchman.latest import Latest
from watti_watchman.metrics import Families
from watti_watchman.mqtt import MqttSession, NotConnectedError
from watti_watchman.supervisor import reraise_swallowed_cancel

SUPPRESS_REPUBLISH = json.dumps({"keepalive-options": ["suppress-republish"]}).encode()
PROBE_PATH = "settings/0/Settings/CGwacs/Hub4Mode"
"""Read to prove the old bridge alive: localsettings always has it, and the answer is a mapped value."""
FLASHMQ_ONLY_LEAVES = frozenset({"heartbeat", "full_publish_completed"})
"""`N/<pid>/<leaf>` topics only dbus-flashmq sends (dbus-mqtt also sends a retained `keepalive`)."""
READ_COALESCE_S = 0.05
"""The GX's notifications are read at most this often (s), each time all waiting: a value is
then ≤ 50 ms later than it could be (the control loop is paced by the Janitza meters, not by the
GX), for one wake-up instead of one per message."""
STATE_PASSTHRU = 8
HUB4_EXTERNAL_CONTROL = 3
Dialect = Literal["flashmq", "legacy"]


class VictronNotReadyError(NotConnectedError):
    """Setpoints cannot be sent yet: not connected, or portal id / vebus instance unknown."""


class VictronMeter:
    """One GX device: PowerMeter (Multi AC-in per phase) and BatteryController (ESS setpoints).

    The reader only parses and stores; a maintenance task subscribes, sends keepalives, judges
    GX liveness and alarms. Values arrive only on change (on the old dbus-mqtt bridge often only
    as retained messages): every stored value counts, retained or not. The GX is alive while a
    non-retained notification arrived within `max_age` — FlashMQ's 3 s heartbeat, or on the old
    bridge (which has none) the answer to an `R/` probe read sent every `max_age / 4`. While
    alive, the current values are re-published on every heartbeat or probe answer; once it falls
    silent they go stale.
    """

    def __init__(
        self, config: VictronConfig, connection: MqttConnectionConfig, *, clock: Clock = monotonic
    ) -> None:
        self.name = config.name
        self.config = config
        self._clock = clock
        self.logger = logging.getLogger(f"watti_watchman.meters.victron.{config.name}")
        self.battery: Latest[BatteryStatus] = Latest(clock)
        self.power: Latest[PowerSample] = Latest(clock)
        self.snapshot: Latest[VictronSnapshot] = Latest(clock)
        self.quantities: tuple[Quantity, ...] = QUANTITIES
        self.values: Latest[QuantityValues] = Latest(clock)
        self.portal_id: str | None = config.id
        self.keepalive_interval_s = 25.0
        """Keepalive period (s): `suppress-republish` on FlashMQ, empty on the old bridge (≤ 30)."""
        self.full_publish_timeout_s = 5.0
        """A requested full republish not completed after this long (s) is requested again (backing off)."""
        self.full_publish_retry_s = 60.0
        """Minimum spacing (s) of full republishes asked for because essential values are missing."""
        self.discovery_settle_s = 1.0
        """Portal id discovery picks the only answering GX after this long (s) without news."""
        self.dialect_timeout_s = 5.0
        """Auto dialect: no FlashMQ-only topic this long (s) after a full keepalive means dbus-mqtt."""
        self.alarm_grace_s = 5.0
        """Commanding this long (s) before Hub4Mode/passthru alarms may fire."""
        self.commanding_window_s = 5.0
        """Setpoints written within this window (s) count as commanding (and are exported)."""
        self.session = MqttSession(
            connection,
            f"victron_{config.name}",
            clock=clock,
            on_message=self._on_message,
            on_connect=self._on_connect,
            read_coalesce_s=READ_COALESCE_S,
        )
        self._values = VictronValues()
        self._garbage = OnceLog(self.logger)
        self._gx = FailureLog(self.logger, clock)
        self.messages_by_reason: Counter[str] = Counter()
        self.keepalives_by_kind: Counter[str] = Counter()
        self.full_publishes_total = 0
        self._serials: set[str] = set()
        self._serials_changed_s = clock()
        self._dialect: Dialect | None = None if config.keepalive == "auto" else config.keepalive
        self._last_seen_s: float | None = None
        self._was_alive = False
        self._subscribed_in = 0
        self._need_full = False
        self._full_done = False
        self._full_requested_s: float | None = None
        self._full_retry_delay_s = self.full_publish_timeout_s
        self._keepalive_s: float | None = None
        self._probe_s: float | None = None
        self.probes_total = 0
        self._last_status: BatteryStatus | None = None
        self._last_sample: PowerSample | None = None
        self._setpoints: PhaseSetpoints = {}
        self._setpoint_s: float | None = None
        self._commanding_since_s: float | None = None
        self.setpoint_writes: Counter[str] = Counter()
        self.alarms: dict[str, bool] = {"hub4_mode": False, "passthru": False}
        self._wake = asyncio.Event()
        self.families = Families()
        self._derived_at_s = 0.0
        self._derived_force = False
        self._derived_pending: asyncio.Handle | None = None

    # -- capabilities ----------------------------------------------------------------------------

    def _alive(self, now: float) -> bool:
        return self._last_seen_s is not None and now - self._last_seen_s <= self.config.max_age

    def is_fresh(self) -> bool:
        """True while the GX was heard from (heartbeat or any notification) within `max_age` s."""
        return self._alive(self._clock())

    def vebus_instance(self) -> int | None:
        """The configured vebus instance, else the lowest one seen; None while unknown."""
        if self.config.vebus_instance is not None:
            return self.config.vebus_instance
        return next(iter(self._values.instances("vebus")), None)

    def ready_for_setpoints(self) -> bool:
        """True when connected, the portal id and vebus instance are known and the GX is alive."""
        return (
            self.session.is_connected
            and self.portal_id is not None
            and self.vebus_instance() is not None
            and self.is_fresh()
        )

    async def write_setpoints(self, setpoints: PhaseSetpoints) -> None:
        """Publish `{"value": <int W>}` to each phase's Hub4 AcPowerSetpoint (+ = charge, never retained).

        Raises VictronNotReadyError (a ConnectionError) before the portal id and vebus instance are
        known, NotConnectedError when the broker connection is down.
        """
        instance = self.vebus_instance()
        if self.portal_id is None or instance is None or not self.session.is_connected:
            raise VictronNotReadyError(f"{self.name}: portal id or vebus instance unknown, or not connected")
        now = self._clock()
        if self._setpoint_s is None or now - self._setpoint_s > self.commanding_window_s:
            self._commanding_since_s = now
        values = {phase: int(watts) for phase, watts in sorted(setpoints.items())}
        # One TCP segment for all phases: no gap between L1 and L2/L3 (a decision is one command).
        self.session.publish_together(
            [
                (
                    f"W/{self.portal_id}/vebus/{instance}/Hub4/{phase}/AcPowerSetpoint",
                    json.dumps({"value": value}),
                )
                for phase, value in values.items()
            ]
        )
        for phase, value in values.items():
            self._setpoints[phase] = value
            self.setpoint_writes[phase] += 1
        self._setpoint_s = now
        self._check_alarms(now)

    # -- running ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the MQTT session and the keepalive/liveness task running forever (cancel to stop)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.session.run())
            group.create_task(self._maintain())

    async def _on_connect(self, session: MqttSession) -> None:
        if self.config.id is None:
            await session.subscribe("N/+/system/0/Serial")
        self._wake.set()

    async def _maintain(self) -> None:
        while True:
            reraise_swallowed_cancel()
            tick_s = min(0.25, self.keepalive_interval_s / 4, self.config.max_age / 4)
            if self._dialect != "flashmq" and self._probe_s is not None and self.session.is_connected:
                due_s = self._probe_s + self.config.max_age / 4 - self._clock()  # probe on time
                tick_s = min(tick_s, max(due_s, 0.001))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick_s):
                    await self._wake.wait()
            self._wake.clear()
            now = self._clock()
            self._pick_portal(now)
            self._check_liveness(now)
            self._check_alarms(now)
            if self.session.is_connected and self.portal_id is not None:
                try:
                    await self._keep_alive(now)
                except NotConnectedError:
                    self.logger.debug("keepalive skipped: connection lost")
                reraise_swallowed_cancel()  # aiomqtt's wait_for may have swallowed our cancellation

    def _pick_portal(self, now: float) -> None:
        if (
            self.portal_id is None
            and len(self._serials) == 1
            and now - self._serials_changed_s >= self.discovery_settle_s
        ):
            self.portal_id = next(iter(self._serials))
            self.logger.info("discovered GX portal id %s", self.portal_id)

    def _check_liveness(self, now: float) -> None:
        alive = self._alive(now)
        if self._was_alive and not alive:
            self._gx.failure(
                "gx_silent", f"no notification from GX {self.portal_id} for {self.config.max_age} s"
            )
        self._was_alive = alive

    async def _keep_alive(self, now: float) -> None:
        assert self.portal_id is not None  # the caller checked
        if self._subscribed_in != self.session.connects_total:
            if not self._alive(now):
                self._values = VictronValues()  # older than max_age: the (re)subscription brings them anew
            await self.session.subscribe(*notification_topics(self.portal_id))
            self._subscribed_in = self.session.connects_total
            self._need_full = True
            self._probe_s = None  # retained values may be all we get: prove the bridge alive at once
        requested_s = self._full_requested_s
        if self._dialect is None and requested_s is not None and now - requested_s >= self.dialect_timeout_s:
            self._dialect = "legacy"
            self.logger.info(
                "GX %s: no heartbeat or full_publish_completed within %.0f s: dbus-mqtt (Venus < 3.20)",
                self.portal_id,
                self.dialect_timeout_s,
            )
        if self._dialect != "flashmq" and (
            self._probe_s is None or now - self._probe_s >= self.config.max_age / 4
        ):
            await self.session.publish(f"R/{self.portal_id}/{PROBE_PATH}", b"")
            self._probe_s = now
            self.probes_total += 1
        if self._need_full:
            self._full_retry_delay_s = self.full_publish_timeout_s
            await self._send_keepalive(now, full=True)
        elif not self._full_done and self._dialect == "flashmq" and requested_s is not None:
            if now - requested_s >= self._full_retry_delay_s:
                self._full_retry_delay_s = min(self._full_retry_delay_s * 2, self.full_publish_retry_s)
                await self._send_keepalive(now, full=True)
        elif requested_s is not None and now - requested_s >= self.full_publish_retry_s and self._missing():
            self.logger.info(
                "values missing after full republish: %s; asking again", ", ".join(self._missing())
            )
            await self._send_keepalive(now, full=True)
        elif self._keepalive_s is None or now - self._keepalive_s >= self.keepalive_interval_s:
            await self._send_keepalive(now, full=self._dialect != "flashmq")

    def _missing(self) -> tuple[str, ...]:
        return self._build_snapshot().missing()

    async def _send_keepalive(self, now: float, *, full: bool) -> None:
        await self.session.publish(f"R/{self.portal_id}/keepalive", b"" if full else SUPPRESS_REPUBLISH)
        self._keepalive_s = now
        self.keepalives_by_kind["full" if full else "suppress"] += 1
        if full:
            self._need_full = False
            self._full_requested_s = now
            self._full_done = self._dialect == "legacy"

    # -- reader: parse and store only ------------------------------------------------------------

    def _count(self, reason: str) -> None:
        self.messages_by_reason[reason] += 1

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        now = self._clock()
        parts = topic.split("/")
        if (
            len(parts) == 5
            and parts[0] == "N"
            and parts[2:] == ["system", "0", "Serial"]
            and self.config.id is None
        ):
            self._on_serial(parts[1], payload, now)
            if parts[1] != self.portal_id:
                self._count("discovery")
                return
        if len(parts) < 3 or parts[0] != "N" or parts[1] != self.portal_id:
            self._count("foreign")
            return
        revived = not retained and self._touch_alive(now)  # stored (retained) values count from now on
        if len(parts) == 3:
            self._on_control(parts[2], retained, now, revived=revived)
            return
        parsed = parse_topic(topic)
        if parsed is None:
            self._count("bad_topic")
            if revived:
                self._publish_derived(now, force=True)
            return
        result = parse_payload(payload)
        if result.kind == "empty":
            self._count("empty")
            if parsed.instance in self._values.instances(parsed.service):
                level = logging.INFO if parsed.service in MAPPED_SERVICES else logging.DEBUG
                self.logger.log(
                    level,
                    "%s/%d vanished (0-byte payload): its values dropped",
                    parsed.service,
                    parsed.instance,
                )
            self._values.vanish(parsed.service, parsed.instance)
            self._publish_derived(now, force=revived)
            return
        self._values.discover(parsed.service, parsed.instance)
        spec = spec_for(parsed.service, parsed.path)
        if spec is None:
            self._count("unmapped")
            if revived:
                self._publish_derived(now, force=True)
            return
        self._count(result.kind)
        probe_answer = not retained and topic.endswith(f"/{PROBE_PATH}")
        if result.is_garbage:
            self._garbage.warn(
                result.kind, "%s: %s payload on %s: value dropped", self.name, result.kind, topic
            )
            self._values.drop(parsed.service, parsed.instance, spec.key)
        else:
            self._values.store(parsed.service, parsed.instance, spec.key, result.value)
        force = revived or probe_answer
        # A new number may wait for the rest of its burst; a value that went away may not.
        self._publish_derived(now, force=force, settle=result.kind == "value" and not force)

    def _on_serial(self, portal_id: str, payload: bytes, now: float) -> None:
        before = set(self._serials)
        if payload:
            self._serials.add(portal_id)
        else:
            self._serials.discard(portal_id)
        if self._serials != before:
            self._serials_changed_s = now
        if len(self._serials) > 1:
            self._garbage.warn(
                "several_gx",
                "%s: several GX answer (%s): set `id` to pick one",
                self.name,
                ", ".join(sorted(self._serials)),
            )

    def _on_control(self, leaf: str, retained: bool, now: float, *, revived: bool) -> None:
        auto = self.config.keepalive == "auto" and self._dialect != "flashmq"
        if auto and leaf in FLASHMQ_ONLY_LEAVES and not retained:
            self.logger.info("GX %s speaks FlashMQ (%s seen): keepalive options", self.portal_id, leaf)
            self._dialect = "flashmq"
        if leaf == "heartbeat":
            self._count("heartbeat")
            self._publish_derived(now, force=True)
            return
        self._count("control")
        if leaf == "full_publish_completed":
            self._full_done = True
            self.full_publishes_total += 1
        if revived or leaf == "full_publish_completed":
            self._publish_derived(now, force=True)

    def _touch_alive(self, now: float) -> bool:
        """Note a live (non-retained) message; True when it revives a GX that was not alive."""
        silent = self._last_seen_s is not None and not self._alive(now)
        if silent and (
            self._full_requested_s is None or self._full_requested_s <= (self._last_seen_s or 0.0)
        ):
            self._need_full = True
            self._wake.set()
        if silent:
            self._gx.success(f"GX {self.portal_id} heard again")
        revived = not self._alive(now)
        self._last_seen_s = now
        return revived

    def _build_snapshot(self) -> VictronSnapshot:
        return self._values.snapshot(
            soc_source=self.config.soc_source,
            vebus_instance=self.config.vebus_instance,
            battery_instance=self.config.battery_instance,
        )

    def _publish_derived(self, now: float, *, force: bool, settle: bool = False) -> None:
        """Hand the values to consumers, with `settle` once the batch of notifications being read
        is handled (once for the burst: READ_COALESCE_S), else at once (with whatever is pending).

        The first snapshot always goes out at once. Stamped with the time of the newest
        notification; `force` re-publishes an unchanged battery status and sample (heartbeat,
        probe answer, revival).
        """
        self._derived_at_s = now
        self._derived_force = self._derived_force or force
        if not settle or self.snapshot.seq == 0:  # nothing handed over yet: readiness follows it
            if self._derived_pending is not None:
                self._derived_pending.cancel()
            self._flush_derived()
        elif self._derived_pending is None:
            self._derived_pending = asyncio.get_running_loop().call_soon(self._flush_derived)

    def _flush_derived(self) -> None:
        """Hand the values to consumers while the GX is alive; the first once Multi and SOC are known."""
        self._derived_pending = None
        now, force, self._derived_force = self._derived_at_s, self._derived_force, False
        if not self._alive(now):
            return
        snapshot = self._build_snapshot()
        if self.snapshot.snapshot() is None and (
            snapshot.vebus_instance is None or "soc" in snapshot.missing()
        ):
            return  # the first snapshot waits for the stored values to name the Multi and some SOC
        self.snapshot.publish(snapshot, now)
        self.values.publish({k: v for k, v in snapshot.values.items() if v is not None}, now)
        status = snapshot.battery_status()
        if force or status != self._last_status:
            self.battery.publish(status, now)
            self._last_status = status
        sample = snapshot.ac_in_sample()
        if sample is None and self._last_sample is not None:
            self.power.clear()  # a phase went missing: the last sample is no longer true
        elif sample is not None and (force or sample != self._last_sample):
            self.power.publish(sample, now)
        self._last_sample = sample

    # -- alarms, metrics, status -----------------------------------------------------------------

    def _commanding(self, now: float) -> bool:
        return self._setpoint_s is not None and now - self._setpoint_s <= self.commanding_window_s

    def _check_alarms(self, now: float) -> None:
        snapshot = self.snapshot.get(self.config.max_age)
        judged = (
            snapshot is not None
            and self._commanding(now)
            and self._commanding_since_s is not None
            and now - self._commanding_since_s >= self.alarm_grace_s
        )
        active = {
            "hub4_mode": judged and snapshot is not None and snapshot.hub4_mode != HUB4_EXTERNAL_CONTROL,
            "passthru": judged and snapshot is not None and snapshot.vebus_state == STATE_PASSTHRU,
        }
        for reason, on in active.items():
            if on and not self.alarms[reason]:
                self.logger.warning(
                    "%s: setpoints written but %s (Hub4Mode %s, State %s)",
                    self.name,
                    "Hub4Mode is not 3" if reason == "hub4_mode" else "the Multi is in passthru",
                    snapshot.hub4_mode if snapshot else None,
                    snapshot.vebus_state if snapshot else None,
                )
            elif not on and self.alarms[reason]:
                self.logger.info("%s: alarm %s cleared", self.name, reason)
            self.alarms[reason] = on

    def collect_metrics(self) -> Iterable[Metric]:
        """`watti_victron_*` families from memory (the mapped values are exported from the table)."""
        now = self._clock()
        families, name = self.families, self.name
        up = families.gauge("watti_victron_up", "1 while the GX is heard from within max_age")
        yield up.one(1.0 if self._alive(now) else 0.0, name)
        setpoint = families.gauge(
            "watti_victron_setpoint_watts",
            "AC-in setpoint last written per phase (W, + = charge)",
            ("name", "phase"),
        )
        applied = sorted(self._setpoints.items()) if self._commanding(now) else []
        yield setpoint.set(([name, phase.lower()], watts) for phase, watts in applied)
        yield self._counter(
            "watti_victron_setpoint_writes",
            "setpoint writes per phase",
            "phase",
            {p.lower(): self.setpoint_writes[p] for p in PHASES},
        )
        yield self._counter(
            "watti_victron_messages", "notifications by outcome", "reason", self.messages_by_reason
        )
        yield self._counter(
            "watti_victron_keepalives",
            "keepalives sent by kind (full, suppress)",
            "kind",
            self.keepalives_by_kind,
        )
        yield self._counter(
            "watti_victron_probes",
            "R/ reads of Hub4Mode sent to prove the old dbus-mqtt bridge alive",
            None,
            {"": self.probes_total},
        )
        yield self._counter(
            "watti_victron_full_publishes",
            "full republishes completed",
            None,
            {"": self.full_publishes_total},
        )
        yield self._counter(
            "watti_victron_reconnects", "MQTT reconnects", None, {"": max(0, self.session.connects_total - 1)}
        )
        yield self._counter(
            "watti_victron_gx_silences",
            "times the GX fell silent",
            None,
            {"": self._gx.by_reason["gx_silent"]},
        )
        alarm = families.gauge(
            "watti_victron_alarm",
            "1 while commanding and Hub4Mode != 3 or the Multi is in passthru",
            ("name", "reason"),
        )
        yield alarm.set(([name, reason], 1.0 if on else 0.0) for reason, on in sorted(self.alarms.items()))
        if self.config.id is None:
            portals = families.gauge(
                "watti_victron_discovered_portals", "GX devices answering on N/+/system/0/Serial"
            )
            yield portals.one(len(self._serials), name)
        yield from self.session.collect_metrics()

    def _counter(self, metric: str, doc: str, label: str | None, counts: Mapping[str, int]) -> Metric:
        family = self.families.counter(metric, doc, ("name",) if label is None else ("name", label))
        return family.set(
            ([self.name] if label is None else [self.name, key], count)
            for key, count in sorted(counts.items())
        )

    def status(self) -> Mapping[str, Any]:
        """JSON-able state: connection, portal, dialect, liveness, instances, values, alarms, setpoints."""
        now = self._clock()
        snapshot = self.snapshot.get(self.config.max_age)
        return {
            "name": self.name,
            "type": "Victron",
            "connected": self.session.is_connected,
            "portal_id": self.portal_id,
            "discovered_portals": sorted(self._serials),
            "keepalive": self._dialect or "unknown",
            "fresh": self._alive(now),
            "last_message_age_s": None if self._last_seen_s is None else round(now - self._last_seen_s, 3),
            "vebus_instance": self.vebus_instance(),
            "battery_instance": snapshot.battery_instance if snapshot else None,
            "values": dict(snapshot.values) if snapshot else {},
            "soc_source": snapshot.soc_source if snapshot else None,
            "alarms": [reason for reason, on in self.alarms.items() if on],
            "setpoints_w": dict(self._setpoints) if self._commanding(now) else {},
            "messages": dict(self.messages_by_reason),
        }
