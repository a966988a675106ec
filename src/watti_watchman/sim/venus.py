"""A Venus OS (GX device) emulator on a real MQTT broker: FlashMQ topics, an ESS Multi, dbus-mqtt-devices.

It connects as an ordinary MQTT client and behaves like dbus-flashmq on a GX (PROTOCOLS.md §2–4):
retained `N/<pid>/system/0/Serial`, keepalive (empty → full republish ending with
`full_publish_completed`; options `suppress-republish` and `full-publish-completed-echo`),
notifications only while kept alive, a heartbeat, R reads, W writes, publish on change. The Multi
runs in ESS mode 3 with a setpoint watchdog. A plant model drives it through `set_*` and reads
`setpoints()`.
"""

import asyncio
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

STATE_PASSTHRU = 8
STATE_EXTERNAL_CONTROL = 252
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
    value: float | None
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
        grid_instance_base: int = 40,
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
        self._instances: dict[tuple[str, str], int] = {}
        self._pending: list[tuple[float, str, Mapping[str, str]]] = []
        self._deaf_until_s = float("-inf")
        self.writes: list[Write] = []
        self.keepalives_received = 0
        self.full_publishes = 0
        self.heartbeats_sent = 0
        self.rejected_writes = 0
        self._load_defaults()

    # -- plant model API -------------------------------------------------------------------------

    def _vebus(self, path: str) -> str:
        return f"vebus/{self.vebus_instance}/{path}"

    def _battery(self, path: str) -> str:
        return f"battery/{self.battery_instance}/{path}"

    def _load_defaults(self) -> None:
        defaults: dict[str, Scalar] = {
            "system/0/Serial": self.portal_id,
            "system/0/Dc/Battery/Soc": 50.0,
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
        if mode != 3 and self.state == STATE_EXTERNAL_CONTROL:
            self.set_value(self._vebus("State"), STATE_PASSTHRU)

    def remove_service(self, service: str, instance: int) -> None:
        """The service leaves D-Bus: its values vanish with 0-byte notifications."""
        prefix = f"{service}/{instance}/"
        for path in [path for path in self._values if path.startswith(prefix)]:
            del self._values[path]
            self._notify(path, b"")

    @property
    def state(self) -> int | None:
        """vebus `State` (8 passthru, 252 external control)."""
        value = self._values.get(self._vebus("State"))
        return value if isinstance(value, int) else None

    def setpoints(self) -> dict[Phase, int]:
        """The per-phase AC-in setpoints the Multi obeys now (W, + = charge); all 0 in passthru.

        DisableCharge forces positive setpoints to 0, DisableFeedIn negative ones.
        """
        if self.state != STATE_EXTERNAL_CONTROL:
            return dict.fromkeys(PHASES, 0)
        no_charge = bool(self._values.get(self._vebus("Hub4/DisableCharge")))
        no_feed_in = bool(self._values.get(self._vebus("Hub4/DisableFeedIn")))
        return {
            phase: 0 if (watts > 0 and no_charge) or (watts < 0 and no_feed_in) else watts
            for phase, watts in self._setpoints.items()
        }

    @property
    def notifications_active(self) -> bool:
        """True while a keepalive younger than `keepalive_timeout_s` keeps notifications flowing."""
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
        await session.publish(f"N/{pid}/system/0/Serial", _value_payload(pid), retain=True)
        if self.mode == "flashmq":
            await session.publish(f"N/{pid}/keepalive", _value_payload(1))

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
        if now >= self._next_heartbeat_s:
            self._next_heartbeat_s = now + self.heartbeat_s
            if self.notifications_active:
                self.heartbeats_sent += 1
                self._send(f"N/{self.portal_id}/heartbeat", _value_payload(round(now)))
        if self._alive_until_s is not None and now >= self._alive_until_s:
            self._alive_until_s = None
            self.logger.debug("keepalive timed out")
            if self.mode == "legacy":
                for path in self._values:
                    self._send(f"N/{self.portal_id}/{path}", b"")
        if (
            self.state == STATE_EXTERNAL_CONTROL
            and self._setpoint_at_s is not None
            and now - self._setpoint_at_s > self.watchdog_s
        ):
            self.logger.debug("setpoint watchdog expired: passthru")
            self._setpoints = dict.fromkeys(PHASES, 0)
            self.set_value(self._vebus("State"), STATE_PASSTHRU)
        due = [item for item in self._pending if item[0] <= now]
        self._pending = [item for item in self._pending if item[0] > now]
        for _, client_id, services in due:
            self._register(client_id, services)

    # -- message handling ------------------------------------------------------------------------

    def _send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._outbox.append((topic, payload, retain))
        self._outbox_ready.set()

    def _notify(self, path: str, payload: bytes | None = None) -> None:
        if self.notifications_active:
            self._send(
                f"N/{self.portal_id}/{path}",
                _value_payload(self._values[path]) if payload is None else payload,
            )

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
        if kind == "R" and path in ("keepalive", "system/0/Serial"):
            self._on_keepalive(payload)
        elif kind == "R":
            self._on_read(path)
        elif kind == "W":
            self._on_write(path, payload)

    def _on_keepalive(self, payload: bytes) -> None:
        self.keepalives_received += 1
        now = self._clock()
        if self.mode == "legacy":
            if payload.strip():
                return  # the old bridge reads a non-empty payload as a topic list: matches nothing
            self._alive_until_s = now + self.keepalive_timeout_s
            self._full_publish(None)
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
        self._alive_until_s = now + self.keepalive_timeout_s
        if "suppress-republish" not in options:
            self._full_publish(echo)

    def _full_publish(self, echo: object) -> None:
        self.full_publishes += 1
        for path, value in self._values.items():
            self._send(f"N/{self.portal_id}/{path}", _value_payload(value), retain=path == "system/0/Serial")
        if self.mode == "flashmq":
            completed: dict[str, object] = {"value": round(self._clock())}
            if echo is not None:
                completed["full-publish-completed-echo"] = echo
            self._send(f"N/{self.portal_id}/full_publish_completed", json.dumps(completed).encode())

    def _on_read(self, path: str) -> None:
        prefix = path.rstrip("/") + "/"
        for key, value in self._values.items():
            if key == path or key.startswith(prefix):
                self._send(f"N/{self.portal_id}/{key}", _value_payload(value))

    def _on_write(self, path: str, payload: bytes) -> None:
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        value = data.get("value", "") if isinstance(data, dict) else ""
        if isinstance(value, bool) or not (value is None or isinstance(value, int | float)):
            self.rejected_writes += 1
            self.logger.warning('rejected W/%s: payload %r is not {"value": <number>}', path, payload[:80])
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
        self.writes.append(Write(path, value, now))
        setpoint_phase = next((p for p in PHASES if path == self._vebus(f"Hub4/{p}/AcPowerSetpoint")), None)
        if setpoint_phase is None:
            self.set_value(path, value)
            return
        watts = round(value or 0)
        self._values[path] = watts  # the setpoint path emits no change notification
        self._setpoints[setpoint_phase] = watts
        self._setpoint_at_s = now
        if self._values.get("settings/0/Settings/CGwacs/Hub4Mode") == 3:
            self.set_value(self._vebus("State"), STATE_EXTERNAL_CONTROL)

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
            key = (client_id, label)
            if key not in self._instances:
                used = set(self._instances.values())
                self._instances[key] = next(
                    i for i in range(self.grid_instance_base, 1 << 16) if i not in used
                )
            instance = self._instances[key]
            if key not in self._registrations:
                self._registrations[key] = Registration(client_id, label, service, instance)
                paths: Iterable[str] = GRID_PATHS if service == "grid" else ()
                for path in paths:
                    self.set_value(f"{service}/{instance}/{path}", None)
            reply["deviceInstance"][label] = instance
            reply["topicPath"][label] = {
                kind: f"{kind}/{pid}/{service}/{instance}" for kind in ("N", "R", "W")
            }
        self._send(f"device/{client_id}/DBus", json.dumps(reply).encode())
