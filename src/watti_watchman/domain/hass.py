"""Home Assistant MQTT discovery rules (PROTOCOLS §5): allowed classes, payloads, counter guard, states."""

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from watti_watchman.domain.quantities import Quantity

Component = Literal["sensor", "number", "select"]
StateValue = float | int | str | None
"""A state value as handed to the formatter: a number, a text, or None for unknown."""

AVAILABLE = "online"
NOT_AVAILABLE = "offline"
OBJECT_ID_PATTERN = re.compile(r"^[a-zA-Z0-9_-]+$")
KEY_PATTERN = re.compile(r"^[a-z0-9_]+$")
ORIGIN_NAME = "WattiWatchman"
MANUFACTURER = "WattiWatchman"
MIN_EXPIRE_AFTER_S = 10

ALLOWED_SENSOR_CLASSES: Mapping[str, tuple[frozenset[str | None], frozenset[str]]] = {
    "voltage": (frozenset({"V"}), frozenset({"measurement"})),
    "current": (frozenset({"A"}), frozenset({"measurement"})),
    "power": (frozenset({"W", "kW"}), frozenset({"measurement"})),
    "apparent_power": (frozenset({"VA"}), frozenset({"measurement"})),
    "reactive_power": (frozenset({"var"}), frozenset({"measurement"})),
    "power_factor": (frozenset({None, "%"}), frozenset({"measurement"})),
    "frequency": (frozenset({"Hz"}), frozenset({"measurement"})),
    "energy": (frozenset({"Wh", "kWh", "MWh"}), frozenset({"total", "total_increasing"})),
    "battery": (frozenset({"%"}), frozenset({"measurement"})),
    "temperature": (frozenset({"°C", "°F", "K"}), frozenset({"measurement"})),
}
"""device_class → (allowed units, allowed state classes); units are case-sensitive."""


class DiscoveryError(ValueError):
    """A discovery payload Home Assistant would reject or misinterpret."""


def check_sensor_classes(device_class: str | None, unit: str | None, state_class: str | None) -> None:
    """Raise DiscoveryError unless the (device_class, unit, state_class) triple is allowed.

    Without a device class a sensor is either text (no unit, no state class) or a plain
    `measurement`; totals must be energy sensors.
    """
    if device_class is None:
        if state_class not in (None, "measurement"):
            raise DiscoveryError(f"state_class {state_class!r} needs device_class energy")
        if state_class is None and unit is not None:
            raise DiscoveryError(f"unit {unit!r} without device_class or state_class")
        return
    allowed = ALLOWED_SENSOR_CLASSES.get(device_class)
    if allowed is None:
        raise DiscoveryError(f"device_class {device_class!r} is not in the allowed table")
    units, state_classes = allowed
    if unit not in units:
        raise DiscoveryError(f"unit {unit!r} not allowed for device_class {device_class!r}")
    if state_class not in state_classes:
        raise DiscoveryError(f"state_class {state_class!r} not allowed for device_class {device_class!r}")


def object_id(*parts: str) -> str:
    """Join `parts` with `_` into an id of `[a-zA-Z0-9_-]` (other characters become `_`)."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", "_".join(parts))


def check_quantity(quantity: Quantity) -> None:
    """Raise DiscoveryError unless `quantity` can be a sensor: key of `[a-z0-9_]`, allowed classes."""
    if not KEY_PATTERN.match(quantity.key):
        raise DiscoveryError(f"key {quantity.key!r} must match {KEY_PATTERN.pattern}")
    check_sensor_classes(quantity.device_class, quantity.unit, quantity.state_class)


@dataclass(frozen=True, slots=True)
class HassDevice:
    """One HA device; `slug` (`[a-zA-Z0-9_-]`) builds its identifier, topics and unique ids."""

    slug: str
    name: str
    model: str
    sw_version: str
    manufacturer: str = MANUFACTURER

    def __post_init__(self) -> None:
        """Reject slugs that are not valid object ids."""
        if not OBJECT_ID_PATTERN.match(self.slug):
            raise DiscoveryError(f"device slug {self.slug!r} must match {OBJECT_ID_PATTERN.pattern}")

    @property
    def identifier(self) -> str:
        """The stable device identifier (never contains the version)."""
        return f"watti_{self.slug}"

    def unique_id(self, key: str) -> str:
        """Stable unique_id of this device's entity `key`: `watti_<slug>_<key>`."""
        return f"{self.identifier}_{key}"

    def block(self) -> dict[str, Any]:
        """The discovery `device` block."""
        return {
            "identifiers": [self.identifier],
            "name": self.name,
            "manufacturer": self.manufacturer,
            "model": self.model,
            "sw_version": self.sw_version,
        }


def origin_block(sw_version: str) -> dict[str, str]:
    """The discovery `origin` block naming this application."""
    return {"name": ORIGIN_NAME, "sw_version": sw_version}


def expire_after_s(update_interval_s: float) -> int:
    """`expire_after` (whole s) for states sent every `update_interval_s`: three missed updates."""
    return max(MIN_EXPIRE_AFTER_S, math.ceil(3 * update_interval_s))


@dataclass(frozen=True, slots=True)
class Discovery:
    """One discovery message: its config topic and JSON payload (retained by the publisher)."""

    component: Component
    object_id: str
    topic: str
    payload: Mapping[str, Any]

    def encode(self) -> bytes:
        """The payload as compact JSON bytes."""
        return json.dumps(self.payload, separators=(",", ":"), allow_nan=False).encode()


def _common(
    component: Component,
    device: HassDevice,
    key: str,
    name: str,
    *,
    prefix: str,
    availability_topic: str,
    sw_version: str,
) -> tuple[str, str, dict[str, Any]]:
    oid = object_id(device.unique_id(key))
    topic = f"{prefix}/{component}/{oid}/config"
    payload: dict[str, Any] = {
        "name": name,
        "unique_id": device.unique_id(key),
        "availability_topic": availability_topic,
        "payload_available": AVAILABLE,
        "payload_not_available": NOT_AVAILABLE,
        "device": device.block(),
        "origin": origin_block(sw_version),
    }
    return oid, topic, payload


def sensor_discovery(
    device: HassDevice,
    spec: Quantity,
    *,
    prefix: str,
    state_topic: str,
    availability_topic: str,
    expire_after: int,
    sw_version: str,
) -> Discovery:
    """Sensor config reading `value_json.<key>` from the device's JSON state topic."""
    oid, topic, payload = _common(
        "sensor",
        device,
        spec.key,
        spec.label,
        prefix=prefix,
        availability_topic=availability_topic,
        sw_version=sw_version,
    )
    payload["state_topic"] = state_topic
    payload["value_template"] = f"{{{{ value_json.{spec.key} }}}}"
    payload["expire_after"] = expire_after
    for field, value in (
        ("device_class", spec.device_class),
        ("unit_of_measurement", spec.unit),
        ("state_class", spec.state_class),
        ("suggested_display_precision", spec.precision),
    ):
        if value is not None:
            payload[field] = value
    if spec.diagnostic:
        payload["entity_category"] = "diagnostic"
    return Discovery("sensor", oid, topic, payload)


@dataclass(frozen=True, slots=True)
class SettingTopics:
    """Where a config entity lives: discovery prefix, state and command topics, availability."""

    prefix: str
    state_topic: str
    command_topic: str
    availability_topic: str
    sw_version: str


def number_discovery(
    device: HassDevice,
    key: str,
    name: str,
    topics: SettingTopics,
    *,
    minimum: float,
    maximum: float,
    step: float,
    unit: str,
    device_class: str | None,
) -> Discovery:
    """Number config (box mode) with its command topic and `value_json.<key>` state."""
    if not minimum < maximum or step <= 0:
        raise DiscoveryError(f"number {key}: need min < max and step > 0")
    extra: dict[str, Any] = {
        "min": minimum,
        "max": maximum,
        "step": step,
        "mode": "box",
        "unit_of_measurement": unit,
    }
    if device_class is not None:
        extra["device_class"] = device_class
    return _setting("number", device, key, name, extra, topics)


def select_discovery(
    device: HassDevice, key: str, name: str, topics: SettingTopics, *, options: Sequence[str]
) -> Discovery:
    """Select config with its command topic, options and `value_json.<key>` state."""
    if not options:
        raise DiscoveryError(f"select {key}: needs options")
    return _setting("select", device, key, name, {"options": list(options)}, topics)


def _setting(
    component: Literal["number", "select"],
    device: HassDevice,
    key: str,
    name: str,
    extra: dict[str, Any],
    topics: SettingTopics,
) -> Discovery:
    """A config-category entity commanded on its command topic, its state `value_json.<key>`."""
    oid, topic, payload = _common(
        component,
        device,
        key,
        name,
        prefix=topics.prefix,
        availability_topic=topics.availability_topic,
        sw_version=topics.sw_version,
    )
    payload.update(
        {
            "command_topic": topics.command_topic,
            "state_topic": topics.state_topic,
            "value_template": f"{{{{ value_json.{key} }}}}",
            **extra,
            "entity_category": "config",
        }
    )
    return Discovery(component, oid, topic, payload)


def validate_discovery(topic: str, payload: Mapping[str, Any], *, sw_version: str) -> None:
    """Raise DiscoveryError unless `payload` on `topic` follows PROTOCOLS §5."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[3] != "config" or parts[1] not in ("sensor", "number", "select"):
        raise DiscoveryError(f"{topic}: not <prefix>/<component>/<object_id>/config")
    if not OBJECT_ID_PATTERN.match(parts[2]):
        raise DiscoveryError(f"{topic}: object id outside [a-zA-Z0-9_-]")
    unique = payload.get("unique_id")
    if not isinstance(unique, str) or not unique or sw_version in unique:
        raise DiscoveryError(f"{topic}: unique_id {unique!r} missing or contains the version")
    for key in ("availability_topic", "device", "origin", "state_topic", "name"):
        if key not in payload:
            raise DiscoveryError(f"{topic}: missing {key}")
    device = payload["device"]
    for key in ("identifiers", "name", "manufacturer", "model", "sw_version"):
        if not device.get(key):
            raise DiscoveryError(f"{topic}: device block lacks {key}")
    component = parts[1]
    if component == "sensor":
        check_sensor_classes(
            payload.get("device_class"), payload.get("unit_of_measurement"), payload.get("state_class")
        )
        expire = payload.get("expire_after")
        if not isinstance(expire, int) or expire <= 0:
            raise DiscoveryError(f"{topic}: expire_after must be a positive integer")
    elif component == "number":
        low, high, step = payload.get("min"), payload.get("max"), payload.get("step")
        numbers = all(isinstance(v, (int, float)) for v in (low, high, step))
        if not (payload.get("command_topic") and numbers and low < high and step > 0):  # type: ignore[operator]
            raise DiscoveryError(f"{topic}: number needs command_topic, min < max, step > 0")
    elif not (payload.get("command_topic") and payload.get("options")):
        raise DiscoveryError(f"{topic}: select needs command_topic and options")


class CounterGuard:
    """Keeps total_increasing counters from going down: a lower value is held at the highest seen."""

    def __init__(self) -> None:
        self._highest: dict[str, float] = {}
        self.held_back_total = 0

    def admit(self, key: str, value: float) -> float:
        """The value to publish for counter `key`: `value`, or the previous highest on a regression."""
        highest = self._highest.get(key)
        if highest is not None and value < highest:
            self.held_back_total += 1
            return highest
        self._highest[key] = value
        return value


def format_value(value: StateValue) -> StateValue:
    """A JSON-safe state value: None for non-finite numbers, anything else unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True, slots=True)
class DeviceState:
    """One device's JSON state payload and what building it suppressed."""

    payload: bytes
    non_finite: int
    held_back: int


def build_state(
    specs: Iterable[Quantity], values: Mapping[str, StateValue], guard: CounterGuard
) -> DeviceState:
    """The JSON state of one device: every spec's key, null when missing or non-finite.

    Counters pass through `guard`, so a regression is published as the previous highest value.
    A null renders as "None", which HA shows as unknown (never a frozen or non-numeric state).
    """
    state: dict[str, StateValue] = {}
    non_finite = 0
    held_before = guard.held_back_total
    for spec in specs:
        raw = values.get(spec.key)
        value = format_value(raw)
        if value is None and raw is not None:
            non_finite += 1
        if spec.is_counter and isinstance(value, (int, float)):
            value = guard.admit(spec.key, float(value))
        state[spec.key] = value
    payload = json.dumps(state, separators=(",", ":"), allow_nan=False).encode()
    return DeviceState(payload, non_finite, guard.held_back_total - held_before)
