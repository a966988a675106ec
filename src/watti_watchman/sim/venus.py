"""A Venus OS (GX device) emulator on a real MQTT broker: both D-Bus bridges, an ESS Multi, dbus-mqtt-devices.

It connects as an ordinary MQTT client and behaves like the bridge of the chosen `mode`
(PROTOCOLS.md §2–4, checked against the bridges' source):

- `flashmq` (dbus-flashmq, Venus ≥ 3.20): retained `N/<pid>/system/0/Serial` only; a non-retained
  `N/<pid>/keepalive` `1` at start; keepalive (empty → full republish ending with
  `full_publish_completed`; options `suppress-republish` and `full-publish-completed-echo`);
  notifications only while kept alive, a heartbeat every `heartbeat_s`; R reads answered at once.
- `legacy` (Python dbus-mqtt 1.36, Venus < 3.20): every N/ value **retained**; on connect a retained
  `N/<pid>/keepalive` `{"value": 1}` and a republish of what was published before; keepalive payload
  empty (everything) or a JSON list of topic patterns, each a subscription that expires
  `keepalive_timeout_s` after its last refresh (checked every `expiry_check_s`); a republish only for
  a subscription that is new (had expired); expired topics are blanked (0-byte, retained); no
  heartbeat, no `full_publish_completed`; changes go through a queue run on a `legacy_timer_s`
  timer at most every 1.5 timer periods (≈1–2 s late) or right after a write; R replies leave on the
  same timer (non-retained).

Both: W writes (strings accepted, as D-Bus does, and counted), publish on change, the Multi in ESS
mode 3 with a setpoint watchdog, vebus `/State` in the real 0–11 range (252 "external control" is
systemcalc's `/SystemState/State`), dbus-mqtt-devices registrations with instances from
`grid_instance_base` per service class; a device's last will (delivered by the broker, also when it
shuts down) removes its services. A plant model drives it through `set_*` and reads `setpoints()`.
"""

import asyncio
import itertools
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from watti_watchman.clock import Clock, monotonic
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.domain.readings import PHASES, Phase
from watti_watchman.mqtt import MqttSession, NotConnectedError
from watti_watchman.supervisor import reraise_swallowed_cancel

Scalar = float | int | str | None

STATE_BULK = 3
STATE_PASSTHRU = 8
STATE_INVERTING = 9
SYSTEM_STATE_EXTERNAL_CONTROL = 252
"""systemcalc's `system/0/SystemState/State` while ESS is externally controlled (never a vebus State)."""
SERIAL_PATH = "system/0/Serial"
GRID_PATHS: tuple[str, ...] = (
    "Ac/Power",
    "Ac/Frequency",
    "Ac/Energy/Forward",
    "Ac/Energy/Reverse",
    *(
        f"Ac/L{n}/{q}"
        for n in (1, 2, 3)
        for q in ("Power", "Voltage", "Current", "Energy/Forward", "Energy/Reverse")
    ),
)
"""Writable paths of a dbus-mqtt-devices grid meter (start out invalid after registration)."""


@dataclass(frozen=True, slots=True)
class Write:
    """One accepted W write: the path below the portal id, the value, emulator time (s)."""

    path: str
    value: Scalar
    at_s: float


@dataclass(frozen=True, slots=True)
class Registration:
    """One dbus-mqtt-devices service: the device's client id, its label, service type, instance."""

    client_id: str
    label: str
    service: str
    instance: int


def _value_payload(value: Scalar) -> bytes:
    return json.dumps({"value": value}).encode()


class VenusEmulator:
    """An emulated GX: `run()` it, drive it with `set_*`, inspect `setpoints()` and `writes`."""

    def __init__(
        self,
        connection: MqttConnectionConfig,
        portal_id: str,
        *,
        mode: Literal["flashmq", "legacy"] = "flashmq",
        vebus_instance: int = 276,
        battery_instance: int = 512,
        bms_limits: bool = True,
        heartbeat_s: float = 3.0,
        keepalive_timeout_s: float = 60.0,
        watchdog_s: float = 15.0,
        registration_delay_s: float = 0.5,
        grid_instance_base: int = 1,
        legacy_timer_s: float = 1.0,
        expiry_check_s: float = 10.0,
        tick_s: float = 0.02,
        clock: Clock = monotonic,
    ) -> None:
        self.portal_id = portal_id
        self.mode = mode
        self.vebus_instance = vebus_instance
        self.battery_instance = battery_instance
        self.bms_limits = bms_limits
        """False: a battery without a managed BMS (SmartShunt/BMV): no Info/Max*Current paths."""
        self.heartbeat_s = heartbeat_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.watchdog_s = watchdog_s
        self.registration_delay_s = registration_delay_s
        self.grid_instance_base = grid_instance_base
        self.legacy_timer_s = legacy_timer_s
        self.expiry_check_s = expiry_check_s
        self.tick_s = tick_s
        self._clock = clock
        self.logger = logging.getLogger(f"watti_watchman.sim.venus.{portal_id}")
        self.session = MqttSession(
            connection,
            f"venus_{portal_id}",
            clock=clock,
            on_message=self._on_message,
            on_connect=self._on_connect,
        )
        self._outbox: list[tuple[str, bytes, bool]] = []
        self._outbox_ready = asyncio.Event()
        self._values: dict[str, Scalar] = {}
        self._alive_until_s: float | None = None
        self._next_heartbeat_s = clock()
        self._setpoints: dict[Phase, int] = dict.fromkeys(PHASES, 0)
        self._setpoint_at_s: float | None = None
        self._registrations: dict[tuple[str, str], Registration] = {}
        self._instances: dict[tuple[str, str, str], int] = {}
        self._pending: list[tuple[float, str, Mapping[str, str]]] = []
        self._deaf_until_s = float("-inf")
        self._external_control = False
        self._subscriptions: dict[str | None, float] = {}
        """Legacy: topic pattern (None = everything) → time (s) of its last keepalive."""
        self._published: set[str] = set()
        """Legacy: paths published (retained) since; republished on reconnect, blanked at expiry."""
        self._queue: dict[str, bytes] = {}
        """Legacy: pending retained notifications by path, oldest first (a path keeps its place)."""
        self._replies: list[tuple[str, bytes, bool]] = []
        """Legacy: R replies waiting for the next socket timer."""
        self._queue_run_s = float("-inf")
        self._next_timer_s = clock()
        self._next_expiry_s = clock() + expiry_check_s
        self.writes: list[Write] = []
        self.keepalives_received = 0
        self.full_publishes = 0
        """Republishes of everything: every empty keepalive on FlashMQ, a new subscription on dbus-mqtt."""
        self.heartbeats_sent = 0
        self.rejected_writes = 0
        self.string_writes = 0
        """Writes with a string value: D-Bus takes them, but they cost a real GX dearly (PROTOCOLS §2)."""
        self._load_defaults()

    # -- plant model API -------------------------------------------------------------------------

    def _vebus(self, path: str) -> str:
        return f"vebus/{self.vebus_instance}/{path}"

    def _battery(self, path: str) -> str:
        return f"battery/{self.battery_instance}/{path}"

    def _load_defaults(self) -> None:
        defaults: dict[str, Scalar] = {
            SERIAL_PATH: self.portal_id,
            "system/0/Dc/Battery/Soc": 50.0,
            "system/0/SystemState/State": STATE_PASSTHRU,
            "settings/0/Settings/CGwacs/Hub4Mode": 3,
            self._battery("Soc"): 50.0,
            self._battery("Dc/0/Voltage"): 52.0,
            self._battery("Dc/0/Current"): 0.0,
            self._battery("Dc/0/Power"): 0.0,
            self._vebus("Soc"): 50.0,
            self._vebus("Dc/0/Voltage"): 52.0,
            self._vebus("Dc/0/Current"): 0.0,
            self._vebus("Dc/0/Power"): 0.0,
            self._vebus("State"): STATE_PASSTHRU,
            self._vebus("Mode"): 3,
            self._vebus("ProductName"): "MultiPlus-II 48/5000/70-50",
            self._vebus("Hub4/DisableCharge"): 0,
            self._vebus("Hub4/DisableFeedIn"): 0,
            self._vebus("Ac/ActiveIn/P"): 0.0,
            self._vebus("Ac/Out/P"): 0.0,
        }
        if self.bms_limits:
            defaults[self._battery("Info/MaxChargeCurrent")] = 100.0
            defaults[self._battery("Info/MaxDischargeCurrent")] = 100.0
        for n in (1, 2, 3):
            defaults[self._vebus(f"Ac/ActiveIn/L{n}/P")] = 0.0
            defaults[self._vebus(f"Ac/Out/L{n}/P")] = 0.0
            defaults[self._vebus(f"Hub4/L{n}/AcPowerSetpoint")] = 0
        self._values.update(defaults)

    def value(self, path: str) -> Scalar:
        """The current value at `<service>/<instance>/<path>` (KeyError when absent)."""
        return self._values[path]

    def set_value(self, path: str, value: Scalar) -> None:
        """Set `<service>/<instance>/<path>`; publishes `N/<pid>/<path>` when changed and kept alive."""
        if path in self._values and self._values[path] == value:
            return
        self._values[path] = value
        self._notify(path)

    def set_ac_in(self, l1_w: float, l2_w: float, l3_w: float) -> None:
        """Multi AC-in real power per phase (W, + = from grid into the Multi); total follows."""
        for n, watts in enumerate((l1_w, l2_w, l3_w), start=1):
            self.set_value(self._vebus(f"Ac/ActiveIn/L{n}/P"), watts)
        self.set_value(self._vebus("Ac/ActiveIn/P"), l1_w + l2_w + l3_w)

    def set_ac_out(self, l1_w: float, l2_w: float, l3_w: float) -> None:
        """Multi AC-out real power per phase (W); total follows."""
        for n, watts in enumerate((l1_w, l2_w, l3_w), start=1):
            self.set_value(self._vebus(f"Ac/Out/L{n}/P"), watts)
        self.set_value(self._vebus("Ac/Out/P"), l1_w + l2_w + l3_w)

    def set_soc(self, percent: float) -> None:
        """State of charge (%) as seen by systemcalc, the BMS and the vebus copy."""
        for path in ("system/0/Dc/Battery/Soc", self._battery("Soc"), self._vebus("Soc")):
            self.set_value(path, percent)

    def set_bms_limits(self, max_charge_a: float | None, max_discharge_a: float | None) -> None:
        """BMS charge/discharge current limits (A DC; None = invalid)."""
        self.set_value(self._battery("Info/MaxChargeCurrent"), max_charge_a)
        self.set_value(self._battery("Info/MaxDischargeCurrent"), max_discharge_a)

    def set_battery(self, voltage_v: float, current_a: float, power_w: float) -> None:
        """Battery DC values (V, A, W; + = charging) on the battery and the vebus service."""
        for service in (self._battery, self._vebus):
            self.set_value(service("Dc/0/Voltage"), voltage_v)
            self.set_value(service("Dc/0/Current"), current_a)
            self.set_value(service("Dc/0/Power"), power_w)

    def set_hub4_mode(self, mode: int) -> None:
        """ESS mode setting (3 = external control; other modes ignore setpoints)."""
        self.set_value("settings/0/Settings/CGwacs/Hub4Mode", mode)
        if mode != 3 and self._external_control:
            self._set_external_control(False)

    def remove_service(self, service: str, instance: int) -> None:
        """The service leaves D-Bus: its values vanish with 0-byte notifications."""
        prefix = f"{service}/{instance}/"
        for path in [path for path in self._values if path.startswith(prefix)]:
            del self._values[path]
            if self.mode == "legacy":
                self._unpublish(path)  # both bridges blank a vanished service, kept alive or not
            else:
                self._send(f"N/{self.portal_id}/{path}", b"")

    @property
    def state(self) -> int | None:
        """vebus `State` (0–11: 3 bulk, 8 passthru, 9 inverting …)."""
        value = self._values.get(self._vebus("State"))
        return value if isinstance(value, int) else None

    @property
    def external_control(self) -> bool:
        """True while the Multi obeys written setpoints (systemcalc's SystemState 252)."""
        return self._external_control

    def _set_external_control(self, on: bool) -> None:
        self._external_control = on
        if not on:
            self._setpoints = dict.fromkeys(PHASES, 0)
        self._update_state()

    def _update_state(self) -> None:
        """vebus State follows the power flow; SystemState shows 252 while externally controlled."""
        if not self._external_control:
            state = STATE_PASSTHRU
        else:
            state = STATE_BULK if sum(self.setpoints().values()) > 0 else STATE_INVERTING
        self.set_value(self._vebus("State"), state)
        system_state = SYSTEM_STATE_EXTERNAL_CONTROL if self._external_control else state
        self.set_value("system/0/SystemState/State", system_state)

    def setpoints(self) -> dict[Phase, int]:
        """The per-phase AC-in setpoints the Multi obeys now (W, + = charge); all 0 in passthru.

        DisableCharge forces positive setpoints to 0, DisableFeedIn negative ones.
        """
        if not self._external_control:
            return dict.fromkeys(PHASES, 0)
        no_charge = bool(self._values.get(self._vebus("Hub4/DisableCharge")))
        no_feed_in = bool(self._values.get(self._vebus("Hub4/DisableFeedIn")))
        return {
            phase: 0 if (watts > 0 and no_charge) or (watts < 0 and no_feed_in) else watts
            for phase, watts in self._setpoints.items()
        }

    @property
    def notifications_active(self) -> bool:
        """True while a keepalive keeps notifications flowing (legacy: any unexpired subscription)."""
        if self.mode == "legacy":
            return bool(self._subscriptions)
        return self._alive_until_s is not None and self._clock() < self._alive_until_s

    # -- dbus-mqtt-devices API -------------------------------------------------------------------

    def registrations(self) -> tuple[Registration, ...]:
        """The services currently registered by devices."""
        return tuple(self._registrations.values())

    def grid_writes(self, instance: int) -> list[Write]:
        """Accepted W writes to `grid/<instance>/…`, oldest first."""
        prefix = f"grid/{instance}/"
        return [write for write in self.writes if write.path.startswith(prefix)]

    def restart_driver(self, deaf_s: float = 0.0) -> None:
        """Emulate a dbus-mqtt-devices restart: registrations wiped (0-byte N payloads), deaf for `deaf_s`.

        Instances stay assigned to (clientId, label), as the driver persists them in settings.
        """
        for registration in self._registrations.values():
            self.remove_service(registration.service, registration.instance)
        self._registrations.clear()
        self._pending.clear()
        self._deaf_until_s = self._clock() + deaf_s

    # -- running ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect (reconnecting forever), answer requests and keep the timers; cancel to stop."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.session.run())
            group.create_task(self._publisher())
            group.create_task(self._ticker())

    async def _on_connect(self, session: MqttSession) -> None:
        pid = self.portal_id
        await session.subscribe(f"R/{pid}/#", f"W/{pid}/#", "device/+/Status")
        if self.mode == "flashmq":
            await session.publish(f"N/{pid}/{SERIAL_PATH}", _value_payload(pid), retain=True)
            await session.publish(f"N/{pid}/keepalive", b"1")
            return
        # dbus-mqtt: announce the keepalive mechanism and the serial (both retained, queued), then
        # republish what was published before: the broker may have lost its retained store.
        self._queue["keepalive"] = _value_payload(1)
        self._queue[SERIAL_PATH] = _value_payload(pid)
        self._publish_all()

    async def _publisher(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            for topic, payload, retain in batch:
                try:
                    await self.session.publish(topic, payload, retain=retain)
                except NotConnectedError:
                    self.logger.debug("dropped %s while disconnected", topic)
            reraise_swallowed_cancel()

    async def _ticker(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(self.tick_s)

    def tick(self) -> None:
        """Advance the timers to `clock()`: heartbeat, keepalive timeout, watchdog, registration replies."""
        now = self._clock()
        if self.mode == "flashmq" and self.notifications_active and now >= self._next_heartbeat_s:
            self._next_heartbeat_s = now + self.heartbeat_s
            self.heartbeats_sent += 1
            self._send(f"N/{self.portal_id}/heartbeat", _value_payload(round(now)))
        if self._alive_until_s is not None and now >= self._alive_until_s:
            self._alive_until_s = None
            self.logger.debug("keepalive timed out")
        if self.mode == "legacy":
            self._legacy_timers(now)
        if (
            self._external_control
            and self._setpoint_at_s is not None
            and now - self._setpoint_at_s > self.watchdog_s
        ):
            self.logger.debug("setpoint watchdog expired: passthru")
            self._set_external_control(False)
        due = [item for item in self._pending if item[0] <= now]
        self._pending = [item for item in self._pending if item[0] > now]
        for _, client_id, services in due:
            self._register(client_id, services)

    # -- message handling ------------------------------------------------------------------------

    def _send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._outbox.append((topic, payload, retain))
        self._outbox_ready.set()

    def _notify(self, path: str, payload: bytes | None = None) -> None:
        if self.mode == "legacy":
            self._publish(path)
        elif self.notifications_active:
            self._send(
                f"N/{self.portal_id}/{path}",
                _value_payload(self._values[path]) if payload is None else payload,
            )

    # -- the legacy bridge (dbus-mqtt): subscriptions, retained queue, timers --------------------

    def _matches(self, path: str) -> bool:
        return any(pattern is None or _topic_matches(pattern, path) for pattern in self._subscriptions)

    def _publish(self, path: str) -> None:
        """Queue `path` (retained) when it was published before or a subscription matches it."""
        if path in self._published or self._matches(path):
            self._published.add(path)
            self._queue[path] = _value_payload(self._values[path])

    def _unpublish(self, path: str) -> None:
        self._published.discard(path)
        self._queue[path] = b""

    def _publish_all(self) -> None:
        for path in sorted(self._values):
            self._publish(path)

    def _subscribe_all(self) -> None:
        """Everything (empty keepalive, Serial read): a republish only when it had expired."""
        if self._subscribe(None):
            self.full_publishes += 1
            self._publish_all()

    def _subscribe(self, pattern: str | None) -> bool:
        """Add or refresh a subscription; True when it is new (then matching values are republished)."""
        new = pattern not in self._subscriptions
        self._subscriptions.pop(pattern, None)
        self._subscriptions[pattern] = self._clock()
        return new

    def _legacy_keepalive(self, payload: bytes) -> None:
        if not payload:
            self._subscribe_all()
            return
        try:
            topics = json.loads(payload)
            for topic in topics:  # a JSON object yields its keys: `keepalive-options` matches nothing
                if not isinstance(topic, str):
                    raise TypeError(f"topic {topic!r} is not a string")
                if self._subscribe(topic):
                    for path in sorted(self._values):
                        if path not in self._published and _topic_matches(topic, path):
                            self._published.add(path)
                            self._queue[path] = _value_payload(self._values[path])
        except (ValueError, TypeError) as error:
            self.logger.debug("keepalive payload %r refused: %s", payload[:80], error)

    def _legacy_timers(self, now: float) -> None:
        if now >= self._next_expiry_s:
            self._next_expiry_s = now + self.expiry_check_s
            expired = [p for p, at_s in self._subscriptions.items() if now - at_s > self.keepalive_timeout_s]
            for pattern in expired:
                del self._subscriptions[pattern]
            if expired and None not in self._subscriptions:
                for path in sorted(self._published - {SERIAL_PATH}):
                    if not self._matches(path):
                        self._unpublish(path)
        if now >= self._next_timer_s:
            self._next_timer_s = now + self.legacy_timer_s
            for reply in self._replies:
                self._send(*reply)
            self._replies.clear()
            if now - self._queue_run_s > 1.5 * self.legacy_timer_s:
                self._service_queue(now)

    def _service_queue(self, now: float) -> None:
        """Publish the queued notifications (retained; 0 bytes delete), only while connected."""
        if not self._queue or not self.session.is_connected:
            return
        self._queue_run_s = now
        queued, self._queue = self._queue, {}
        for path, payload in queued.items():
            self._send(f"N/{self.portal_id}/{path}", payload, retain=True)

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        kind, _, rest = topic.partition("/")
        if kind == "device":
            client_id, _, leaf = rest.partition("/")
            if leaf == "Status":
                self._on_status(client_id, payload)
            return
        pid, _, path = rest.partition("/")
        if pid != self.portal_id:
            return
        if self.mode == "legacy" and kind == "R" and path == SERIAL_PATH:
            self.keepalives_received += 1
            self._queue[SERIAL_PATH] = _value_payload(self.portal_id)
            self._subscribe_all()
        elif kind == "R" and path in ("keepalive", SERIAL_PATH):
            self._on_keepalive(payload)
        elif kind == "R":
            self._on_read(path)
        elif kind == "W":
            self._on_write(path, payload)

    def _on_keepalive(self, payload: bytes) -> None:
        self.keepalives_received += 1
        now = self._clock()
        if self.mode == "legacy":
            self._legacy_keepalive(payload)
            return
        options: list[Any] = []
        try:
            data = json.loads(payload) if payload.strip() else {}
            if isinstance(data, dict) and isinstance(data.get("keepalive-options"), list):
                options = data["keepalive-options"]
        except ValueError:
            self.logger.debug("keepalive payload is not JSON: plain keepalive")
        echo = next(
            (
                o["full-publish-completed-echo"]
                for o in options
                if isinstance(o, dict) and "full-publish-completed-echo" in o
            ),
            None,
        )
        if not self.notifications_active:
            self._next_heartbeat_s = now  # the heartbeat starts with the keepalive that wakes the GX
        self._alive_until_s = now + self.keepalive_timeout_s
        if "suppress-republish" not in options:
            self._full_publish(echo)

    def _full_publish(self, echo: object) -> None:
        self.full_publishes += 1
        for path, value in self._values.items():
            self._send(f"N/{self.portal_id}/{path}", _value_payload(value), retain=path == SERIAL_PATH)
        completed: dict[str, object] = {"value": round(self._clock())}
        if echo is not None:
            completed["full-publish-completed-echo"] = echo
        self._send(f"N/{self.portal_id}/full_publish_completed", json.dumps(completed).encode())

    def _on_read(self, path: str) -> None:
        if self.mode == "legacy":  # one exact path, sent (not retained) with the next socket timer
            if path in self._values:
                reply = (f"N/{self.portal_id}/{path}", _value_payload(self._values[path]), False)
                self._replies.append(reply)
            return
        prefix = path.rstrip("/") + "/"
        for key, value in self._values.items():
            if key == path or key.startswith(prefix):
                self._send(f"N/{self.portal_id}/{key}", _value_payload(value))

    def _on_write(self, path: str, payload: bytes) -> None:
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        if not isinstance(data, dict) or "value" not in data:
            self.rejected_writes += 1
            self.logger.warning('rejected W/%s: payload %r is not {"value": …}', path, payload[:80])
            return
        value = data["value"]
        if isinstance(value, bool) or not (value is None or isinstance(value, int | float | str)):
            self.rejected_writes += 1
            self.logger.warning("rejected W/%s: value %r has no D-Bus type here", path, payload[:80])
            return
        service, _, _ = path.partition("/")
        if service == "grid" and not any(
            path.startswith(f"grid/{r.instance}/") for r in self._registrations.values()
        ):
            self.rejected_writes += 1
            return
        if path not in self._values:
            self.rejected_writes += 1
            return
        now = self._clock()
        setpoint_phase = next((p for p in PHASES if path == self._vebus(f"Hub4/{p}/AcPowerSetpoint")), None)
        self.writes.append(Write(path, value, now))
        if isinstance(value, str):
            self.string_writes += 1
            self.logger.warning("W/%s: string value %r taken as a string", path, value[:40])
        if setpoint_phase is None:
            self.set_value(path, value)
        elif not isinstance(value, str):  # the Multi cannot use a string setpoint
            watts = round(value or 0)
            self._values[path] = watts  # the setpoint path emits no change notification
            self._setpoints[setpoint_phase] = watts
            self._setpoint_at_s = now
            if self._values.get("settings/0/Settings/CGwacs/Hub4Mode") == 3:
                self._external_control = True
            self._update_state()
        if self.mode == "legacy":
            self._service_queue(now)  # dbus-mqtt runs its queue right after a write

    def _on_status(self, client_id: str, payload: bytes) -> None:
        if self._clock() < self._deaf_until_s:
            return
        try:
            status = json.loads(payload)
        except ValueError:
            return
        if not isinstance(status, dict) or status.get("clientId") != client_id:
            return
        if status.get("connected") == 1 and isinstance(status.get("services"), dict):
            services = {str(k): str(v) for k, v in status["services"].items()}
            self._pending.append((self._clock() + self.registration_delay_s, client_id, services))
        elif status.get("connected") == 0:
            self._pending = [item for item in self._pending if item[1] != client_id]
            for key in [key for key in self._registrations if key[0] == client_id]:
                registration = self._registrations.pop(key)
                self.remove_service(registration.service, registration.instance)

    def _register(self, client_id: str, services: Mapping[str, str]) -> None:
        pid = self.portal_id
        reply: dict[str, Any] = {"portalId": pid, "deviceInstance": {}, "topicPath": {}}
        for label, service in services.items():
            key = (client_id, label, service)
            if key not in self._instances:  # localsettings: the lowest free instance of the class
                used = {i for (_, _, s), i in self._instances.items() if s == service}
                self._instances[key] = next(
                    i for i in range(self.grid_instance_base, 1 << 16) if i not in used
                )
            instance = self._instances[key]
            if (client_id, label) not in self._registrations:
                self._registrations[(client_id, label)] = Registration(client_id, label, service, instance)
                paths: Iterable[str] = GRID_PATHS if service == "grid" else ()
                for path in paths:
                    self.set_value(f"{service}/{instance}/{path}", None)
            reply["deviceInstance"][label] = instance
            reply["topicPath"][label] = {
                kind: f"{kind}/{pid}/{service}/{instance}" for kind in ("N", "R", "W")
            }
        self._send(f"device/{client_id}/DBus", json.dumps(reply).encode())


def _topic_matches(pattern: str, path: str) -> bool:
    """dbus-mqtt's keepalive pattern match (`+` one level, `#` the rest, either side), below N/<pid>/."""
    for want, have in itertools.zip_longest(pattern.split("/"), path.split("/")):
        if want is None or have is None:
            return False
        if "+" in (want, have):
            continue
        if "#" in (want, have):
            return True
        if want != have:
            return False
    return True
