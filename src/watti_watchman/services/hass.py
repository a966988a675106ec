"""Home Assistant over MQTT: discovery + states of every meter and controller, and runtime settings.

Both services own their own `MqttSession` (last will = `offline` on their availability topic) and
only ever read snapshots or call the synchronous `SettingsHolder`: a slow or dead Home Assistant
broker can never delay the control task.
"""

import asyncio
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client.core import Metric

from watti_watchman import __version__
from watti_watchman.clock import Clock, monotonic
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.config.services import HassDynamicConfigConfig, HassFeederConfig
from watti_watchman.domain.hass import (
    AVAILABLE,
    MANUFACTURER,
    NOT_AVAILABLE,
    CounterGuard,
    Discovery,
    HassDevice,
    SettingTopics,
    StateValue,
    build_state,
    check_quantity,
    expire_after_s,
    number_discovery,
    object_id,
    select_discovery,
    sensor_discovery,
)
from watti_watchman.domain.quantities import Quantity
from watti_watchman.domain.settings import MODES, SettingRejectedError, SettingsHolder
from watti_watchman.meters.base import Meter
from watti_watchman.metrics import Families
from watti_watchman.mqtt import LastWill, MqttSession, NotConnectedError
from watti_watchman.registry import DeviceLabel
from watti_watchman.services.charge_controller import ChargeController
from watti_watchman.supervisor import reraise_swallowed_cancel

logger = logging.getLogger("watti_watchman.hass")

DISCOVERY_JITTER_S = 0.5
"""Upper bound of the random delay before (re-)sending discovery (HA birth or our reconnect)."""
RESTORE_TIMEOUT_S = 2.0
"""How long HassDynamicConfig waits for retained settings at start before keeping the defaults."""
MAX_COMMAND_BYTES = 64


def controller_specs() -> tuple[Quantity, ...]:
    """The controller's decision: setpoints per phase and total, reason, target, mode, SOC, limits,
    BMS limits policy and use ("auto: absent")."""

    def power(key: str, name: str) -> Quantity:
        return Quantity(key, name, "W", "power", "measurement", precision=0)

    return (
        *(power(f"setpoint_{p}", f"Setpoint {p.upper()}") for p in ("l1", "l2", "l3")),
        power("setpoint_total", "Setpoint total"),
        Quantity("reason", "Reason", None),
        power("target", "Target"),
        Quantity("mode", "Mode", None),
        Quantity("soc", "SOC used", "%", "battery", "measurement", precision=0),
        power("max_charge", "Charge limit"),
        power("max_discharge", "Discharge limit"),
        Quantity("bms_limits", "BMS limits", None),
    )


@dataclass
class _DeviceFeed:
    """One HA device: its sensors and where their values come from (None = nothing fresh)."""

    device: HassDevice
    specs: tuple[Quantity, ...]
    read: Callable[[], Mapping[str, StateValue] | None]
    guard: CounterGuard = field(default_factory=CounterGuard)

    def __post_init__(self) -> None:
        """Reject sensors HA would refuse or misread (fails at start, not in HA)."""
        for quantity in self.specs:
            check_quantity(quantity)


def _meter_feed(meter: Meter, label: DeviceLabel) -> _DeviceFeed:
    def read() -> Mapping[str, StateValue] | None:
        newest = meter.values.snapshot()
        if newest is None or not meter.is_fresh():
            return None
        values = newest.value
        return {q.key: q.shown(values[q.key]) for q in meter.quantities if q.key in values}

    device = HassDevice(object_id(meter.name), label.name, label.model, __version__, label.manufacturer)
    return _DeviceFeed(device, meter.quantities, read)


def _controller_device(controller: ChargeController) -> HassDevice:
    name = f"Charge controller ({controller.name})"
    return HassDevice(object_id(controller.name), name, "ChargeController", __version__)


def _controller_feed(controller: ChargeController) -> _DeviceFeed:
    def read() -> Mapping[str, StateValue] | None:
        settings = controller.settings.current
        values: dict[str, StateValue] = {"target": settings.target_w, "mode": settings.mode}
        decision = controller.last_decision
        if decision is None:
            return values
        output = decision.output
        for phase, watts in output.setpoints.items():
            values[f"setpoint_{phase.lower()}"] = watts
        values["setpoint_total"] = output.total_w
        values["reason"] = str(output.reason)
        values["soc"] = output.limits.soc_percent
        values["max_charge"] = output.limits.max_charge_w
        values["max_discharge"] = output.limits.max_discharge_w
        values["bms_limits"] = f"{controller.config.bms_limits}: {output.limits.bms}"
        return values

    return _DeviceFeed(_controller_device(controller), controller_specs(), read)


class _HassSession:
    """What both services share: their MQTT session, availability, HA birth handling and counters."""

    def __init__(
        self,
        name: str,
        connection: MqttConnectionConfig,
        discovery_prefix: str,
        base_topic: str,
        clock: Clock,
    ) -> None:
        self.name = name
        self.discovery_prefix = discovery_prefix
        self.base_topic = base_topic
        self.availability_topic = f"{base_topic}/{object_id(name)}/availability"
        self.birth_topic = f"{discovery_prefix}/status"
        self.discovery_jitter_s = DISCOVERY_JITTER_S
        self._clock = clock
        self.session = MqttSession(
            connection,
            name,
            clock=clock,
            on_message=self._on_message,
            on_connect=self._on_connect,
            will=LastWill(self.availability_topic, NOT_AVAILABLE.encode(), retain=True),
            logger=logging.getLogger(f"watti_watchman.hass.{name}"),
        )
        self._resync = asyncio.Event()
        self._wake = asyncio.Event()
        self.discovery_rounds: Counter[str] = Counter()
        self.discovery_messages_total = 0
        self.births_total = 0
        self.publish_failures_total = 0
        self.last_discovery_s: float | None = None
        self._resync_reason = "connect"
        self.stopping = False
        self.families = Families()

    async def _on_connect(self, session: MqttSession) -> None:
        await session.subscribe(self.birth_topic, *self._subscriptions())
        self._request_resync("connect")

    def _subscriptions(self) -> tuple[str, ...]:
        return ()

    def _request_resync(self, reason: str) -> None:
        self._resync_reason = reason
        self._resync.set()
        self._wake.set()

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic == self.birth_topic:
            if payload.strip() == AVAILABLE.encode():
                self.births_total += 1
                self._request_resync("birth")
            return
        self._handle(topic, payload, retained)

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        """Service-specific messages (commands, retained settings)."""

    def _discoveries(self) -> Iterable[Discovery]:
        return ()

    async def _send_discovery(self) -> None:
        """Jittered discovery of every entity (retained), then `online` availability."""
        reason = self._resync_reason
        await asyncio.sleep(random.uniform(0.0, self.discovery_jitter_s))
        if self.stopping:
            return
        for discovery in self._discoveries():
            await self.session.publish(discovery.topic, discovery.encode(), retain=True)
            self.discovery_messages_total += 1
            await asyncio.sleep(0)  # a QoS 0 publish never suspends: let the control task in between
        await self.session.publish(self.availability_topic, AVAILABLE, retain=True)
        self.discovery_rounds[reason] += 1
        self.last_discovery_s = self._clock()

    async def _wait(self, timeout_s: float | None) -> None:
        """Sleep until woken (resync, dirty state) or `timeout_s` passes."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
        except TimeoutError:
            return
        self._wake.clear()

    async def run(self) -> None:
        """Keep the session up; (re-)discover on connect and HA birth; publish a round when woken
        or after `_round_timeout_s`."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.session.run())
            group.create_task(self._publish_loop())

    def _round_timeout_s(self) -> float | None:
        """Longest wait between rounds (None: only when woken)."""
        return None

    async def _before_round(self) -> None:
        """Runs before each round while connected."""

    def _discovered(self) -> None:
        """Runs after each discovery round."""

    async def _publish_round(self) -> None:
        """The service's own messages of one round."""

    async def _publish_loop(self) -> None:
        while True:
            await self._wait(self._round_timeout_s())
            if self.stopping or not self.session.is_connected:
                continue
            await self._before_round()
            try:
                if self._resync.is_set():
                    self._resync.clear()
                    await self._send_discovery()
                    self._discovered()
                await self._publish_round()
            except NotConnectedError:
                self.publish_failures_total += 1
            # aiomqtt waits for a publish it could not write at once with wait_for, which can
            # swallow our cancellation; 3.11's TaskGroup never cancels its children a second
            # time, so a loop that ignored it would hang shutdown ("still stopping hass_feeder").
            reraise_swallowed_cancel()

    async def shutdown(self) -> None:
        """Stop publishing and send `offline` availability (retained): HA marks the entities unavailable."""
        self.stopping = True
        await self.session.close_gracefully(self.availability_topic, NOT_AVAILABLE, retain=True)

    def _base_metrics(self) -> Iterable[Metric]:
        families = self.families
        connected = families.gauge(
            "watti_hass_connected", "1 while the Home Assistant MQTT session is connected"
        )
        yield connected.one(1.0 if self.session.is_connected else 0.0, self.name)
        rounds = families.counter(
            "watti_hass_discovery_rounds",
            "Discovery rounds sent, by trigger (connect, birth)",
            ("name", "reason"),
        )
        yield rounds.set(([self.name, r], n) for r, n in sorted(self.discovery_rounds.items()))
        for metric, doc, value in (
            (
                "watti_hass_discovery_messages",
                "Discovery config messages published",
                self.discovery_messages_total,
            ),
            ("watti_hass_births", "Home Assistant birth messages (online) received", self.births_total),
            (
                "watti_hass_publish_failures",
                "Publish rounds cut short by a lost connection",
                self.publish_failures_total,
            ),
        ):
            yield families.counter(metric, doc).one(value, self.name)
        yield from self.session.collect_metrics()

    def _base_status(self) -> dict[str, Any]:
        last = self.last_discovery_s
        return {
            "connected": self.session.is_connected,
            "broker": f"{self.session.connection.host}:{self.session.connection.port}",
            "availability_topic": self.availability_topic,
            "discovery_rounds": dict(self.discovery_rounds),
            "discovery_age_s": None if last is None else round(self._clock() - last, 3),
        }


class HassFeeder(_HassSession):
    """Discovery and periodic JSON states (one topic per device) for every meter and controller."""

    def __init__(
        self,
        config: HassFeederConfig,
        connection: MqttConnectionConfig,
        meters: list[Meter],
        controllers: list[ChargeController],
        *,
        labels: Mapping[str, DeviceLabel] | None = None,
        clock: Clock = monotonic,
    ) -> None:
        super().__init__(config.name, connection, config.discovery_prefix, config.base_topic, clock)
        self.config = config
        self.expire_after_s = expire_after_s(config.update_interval)
        known = labels or {}
        self.feeds: list[_DeviceFeed] = [
            _meter_feed(meter, known.get(meter.name) or DeviceLabel(meter.name, "meter", MANUFACTURER))
            for meter in meters
        ]
        self.feeds.extend(_controller_feed(controller) for controller in controllers)
        self.states_published: Counter[str] = Counter()
        self.non_finite_total = 0
        self.last_state_s: float | None = None

    def state_topic(self, device: HassDevice) -> str:
        """The JSON state topic of one device."""
        return f"{self.base_topic}/{device.slug}/state"

    def _discoveries(self) -> Iterable[Discovery]:
        for feed in self.feeds:
            for spec in feed.specs:
                yield sensor_discovery(
                    feed.device,
                    spec,
                    prefix=self.discovery_prefix,
                    state_topic=self.state_topic(feed.device),
                    availability_topic=self.availability_topic,
                    expire_after=self.expire_after_s,
                    sw_version=__version__,
                )

    @property
    def held_back_total(self) -> int:
        """Energy counter regressions held back, over all devices."""
        return sum(feed.guard.held_back_total for feed in self.feeds)

    async def _send_states(self) -> None:
        """Publish every device with a fresh value; stale devices stay silent and expire in HA."""
        for feed in self.feeds:
            values = feed.read()
            if values is None:
                continue
            state = build_state(feed.specs, values, feed.guard)
            self.non_finite_total += state.non_finite
            await self.session.publish(self.state_topic(feed.device), state.payload)
            self.states_published[feed.device.slug] += 1
            await asyncio.sleep(0)
        self.last_state_s = self._clock()

    def _round_timeout_s(self) -> float | None:
        return self.config.update_interval  # states every update_interval

    async def _publish_round(self) -> None:
        await self._send_states()

    def collect_metrics(self) -> Iterable[Metric]:
        """watti_hass_* families of this service plus its MQTT session's."""
        yield from self._base_metrics()
        families = self.families
        states = families.counter(
            "watti_hass_states_published", "Device state messages published", ("name", "device")
        )
        yield states.set(([self.name, d], n) for d, n in sorted(self.states_published.items()))
        for metric, doc, value in (
            (
                "watti_hass_energy_regressions_held_back",
                "Energy counter values lower than already published, replaced by the highest",
                self.held_back_total,
            ),
            (
                "watti_hass_non_finite_suppressed",
                "Non-finite values published as unknown",
                self.non_finite_total,
            ),
        ):
            yield families.counter(metric, doc).one(value, self.name)

    def status(self) -> Mapping[str, Any]:
        """Connection, devices and counters for /api/status."""
        last = self.last_state_s
        return {
            **self._base_status(),
            "devices": [feed.device.slug for feed in self.feeds],
            "entities": sum(len(feed.specs) for feed in self.feeds),
            "states_published": dict(self.states_published),
            "state_age_s": None if last is None else round(self._clock() - last, 3),
            "regressions_held_back": self.held_back_total,
        }


@dataclass(frozen=True)
class _Controls:
    """The runtime settings of one controller as HA entities: topics and its holder."""

    device: HassDevice
    holder: SettingsHolder
    state_topic: str
    target_command_topic: str
    mode_command_topic: str


TARGET_KEY = "target_setting"
MODE_KEY = "mode_setting"


class HassDynamicConfig(_HassSession):
    """`number` (target W) and `select` (mode) per controller, validated through its SettingsHolder.

    Accepted values are written to the holder (read by the control task on its next cycle) and
    echoed on the state topic, retained when `persistent`; with `persistent` the retained state
    is read back at start and applied before anything is published.
    """

    def __init__(
        self,
        config: HassDynamicConfigConfig,
        connection: MqttConnectionConfig,
        controllers: list[ChargeController],
        *,
        clock: Clock = monotonic,
    ) -> None:
        super().__init__(config.name, connection, config.discovery_prefix, config.base_topic, clock)
        self.config = config
        self.controls: list[_Controls] = []
        for controller in controllers:
            device = _controller_device(controller)
            base = f"{config.base_topic}/{device.slug}/settings"
            self.controls.append(
                _Controls(device, controller.settings, base, f"{base}/target/set", f"{base}/mode/set")
            )
        self._sync_topic = f"{config.base_topic}/{object_id(self.name)}/sync"
        self._sync_token = f"{random.getrandbits(64):016x}"
        self.restored = asyncio.Event()
        if not config.persistent:
            self.restored.set()
        self.restored_settings: list[str] = []
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[tuple[str, str]] = Counter()
        self._dirty = False

    def _subscriptions(self) -> tuple[str, ...]:
        topics = [t for c in self.controls for t in (c.target_command_topic, c.mode_command_topic)]
        if not self.restored.is_set():
            topics.extend(c.state_topic for c in self.controls)
            topics.append(self._sync_topic)
        return tuple(topics)

    async def _on_connect(self, session: MqttSession) -> None:
        await super()._on_connect(session)
        if not self.restored.is_set():
            # Retained settings arrive on subscription, before this marker comes back to us.
            await session.publish(self._sync_topic, self._sync_token)

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        for controls in self.controls:
            if topic == controls.state_topic:
                self._restore(controls, payload, retained)
            elif topic == controls.target_command_topic:
                self._command(controls, "target", payload, retained)
            elif topic == controls.mode_command_topic:
                self._command(controls, "mode", payload, retained)
        if topic == self._sync_topic and payload.decode(errors="replace") == self._sync_token:
            self.restored.set()

    def _restore(self, controls: _Controls, payload: bytes, retained: bool) -> None:
        """Apply a retained settings state once, at start; anything invalid keeps the default."""
        if self.restored.is_set() or not retained or controls.device.slug in self.restored_settings:
            return
        try:
            state = json.loads(payload)
            if not isinstance(state, dict):
                raise SettingRejectedError(f"settings state is not an object: {payload!r}")
            controls.holder.set_target(state.get(TARGET_KEY))
            controls.holder.set_mode(state.get(MODE_KEY))
        except (ValueError, SettingRejectedError) as error:
            logger.warning("%s: ignoring retained settings of %s: %s", self.name, controls.device.name, error)
            return
        self.restored_settings.append(controls.device.slug)
        logger.info("%s: restored %s settings %s", self.name, controls.device.name, controls.holder.current)

    def _command(self, controls: _Controls, setting: str, payload: bytes, retained: bool) -> None:
        """Validate and apply one command; the state is re-published either way."""
        reason = self._apply(controls, setting, payload, retained)
        if reason is None:
            self.accepted[setting] += 1
            logger.info("%s: %s of %s set to %s", self.name, setting, controls.device.name, payload)
        else:
            self.rejected[(setting, reason)] += 1
            logger.warning(
                "%s: rejected %s %r for %s (%s)", self.name, setting, payload, controls.device.name, reason
            )
        self._dirty = True
        self._wake.set()

    @staticmethod
    def _apply(controls: _Controls, setting: str, payload: bytes, retained: bool) -> str | None:
        """Apply a command to the holder; the rejection reason, or None when accepted."""
        if retained:
            return "retained"
        if len(payload) > MAX_COMMAND_BYTES:
            return "malformed"
        try:
            text = payload.decode().strip()
        except UnicodeDecodeError:
            return "malformed"
        if setting == "target":
            try:
                value = float(text)
            except ValueError:
                return "not_a_number"
            if not math.isfinite(value):
                return "not_a_number"
            apply: Callable[[object], object] = controls.holder.set_target
            command: object = value
            reason = "out_of_range"
        else:
            apply, command, reason = controls.holder.set_mode, text, "unknown_option"
        try:
            apply(command)
        except SettingRejectedError:
            return reason
        return None

    def _discoveries(self) -> Iterable[Discovery]:
        for controls in self.controls:
            bounds = controls.holder.target_range
            topics = SettingTopics(
                self.discovery_prefix,
                controls.state_topic,
                controls.target_command_topic,
                self.availability_topic,
                __version__,
            )
            yield number_discovery(
                controls.device,
                TARGET_KEY,
                "Grid target",
                topics,
                minimum=bounds.min_w,
                maximum=bounds.max_w,
                step=bounds.step_w,
                unit="W",
                device_class="power",
            )
            yield select_discovery(
                controls.device,
                MODE_KEY,
                "Battery mode",
                replace(topics, command_topic=controls.mode_command_topic),
                options=MODES,
            )

    async def shutdown(self) -> None:
        """Echo (and so persist) a setting changed just before, then go `offline`."""
        if self._dirty and self.restored.is_set() and self.session.is_connected:
            try:
                await self._send_states()
            except NotConnectedError:
                self.publish_failures_total += 1
        await super().shutdown()

    async def _send_states(self) -> None:
        """Echo the settings in force on each state topic (retained when persistent)."""
        self._dirty = False
        for controls in self.controls:
            current = controls.holder.current
            payload = json.dumps({TARGET_KEY: current.target_w, MODE_KEY: current.mode})
            await self.session.publish(controls.state_topic, payload, retain=self.config.persistent)

    async def _before_round(self) -> None:
        """Restore (persistent) before the first round: wait for the retained settings."""
        if not self.restored.is_set():
            try:
                async with asyncio.timeout(RESTORE_TIMEOUT_S):
                    await self.restored.wait()
            except TimeoutError:
                logger.warning("%s: no retained settings confirmed; keeping the defaults", self.name)
                self.restored.set()

    def _discovered(self) -> None:
        self._dirty = True  # echo the settings after every discovery

    async def _publish_round(self) -> None:
        if self._dirty:  # echo every change
            await self._send_states()

    def collect_metrics(self) -> Iterable[Metric]:
        """watti_hass_* families of this service plus its MQTT session's."""
        yield from self._base_metrics()
        accepted = self.families.counter(
            "watti_hass_commands_accepted", "Setting commands applied", ("name", "setting")
        )
        yield accepted.set(([self.name, k], n) for k, n in sorted(self.accepted.items()))
        rejected = self.families.counter(
            "watti_hass_commands_rejected",
            "Setting commands rejected, by reason",
            ("name", "setting", "reason"),
        )
        yield rejected.set(([self.name, k, r], n) for (k, r), n in sorted(self.rejected.items()))

    def status(self) -> Mapping[str, Any]:
        """Connection, settings in force and command counters for /api/status."""
        return {
            **self._base_status(),
            "persistent": self.config.persistent,
            "restored": self.restored_settings,
            "settings": {
                c.device.slug: {"target_w": c.holder.current.target_w, "mode": c.holder.current.mode}
                for c in self.controls
            },
            "commands_accepted": dict(self.accepted),
            "commands_rejected": {f"{s}:{r}": n for (s, r), n in self.rejected.items()},
        }
