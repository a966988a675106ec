"""Victron Venus OS MQTT values: topic/payload parsing, the value table and typed snapshots (pure)."""

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from watti_watchman.domain.readings import BatteryStatus, PowerSample

MAX_PAYLOAD_BYTES = 4096
"""Longer notification payloads are refused as `oversized` (a real value is a few dozen bytes)."""

PayloadKind = Literal[
    "value",
    "null",
    "empty",
    "invalid_json",
    "not_object",
    "string_value",
    "not_number",
    "non_finite",
    "oversized",
]
GARBAGE_KINDS: frozenset[PayloadKind] = frozenset(
    {"invalid_json", "not_object", "string_value", "not_number", "non_finite", "oversized"}
)
"""Payload kinds that carry no usable value: counted, logged once, the stored value is dropped."""

Service = Literal["system", "battery", "vebus", "settings"]
SocSource = Literal["auto", "system", "battery", "vebus"]


@dataclass(frozen=True, slots=True)
class Payload:
    """One parsed notification payload: its `kind` and, for kind `value`, the finite number."""

    kind: PayloadKind
    value: float | None = None

    @property
    def is_garbage(self) -> bool:
        """True for payloads that carry no usable value (see GARBAGE_KINDS)."""
        return self.kind in GARBAGE_KINDS


def parse_payload(payload: bytes) -> Payload:
    """Classify a `{"value": x}` payload; 0 bytes = service vanished, `null` = invalid value."""
    if not payload:
        return Payload("empty")
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Payload("oversized")
    try:
        data = json.loads(payload)
    except ValueError:
        return Payload("invalid_json")
    if not isinstance(data, dict) or "value" not in data:
        return Payload("not_object")
    value = data["value"]
    if value is None:
        return Payload("null")
    if isinstance(value, str):
        return Payload("string_value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return Payload("not_number")
    try:
        number = float(value)
    except OverflowError:
        return Payload("non_finite")
    if not math.isfinite(number):
        return Payload("non_finite")
    return Payload("value", number)


@dataclass(frozen=True, slots=True)
class VictronTopic:
    """A notification topic `N/<portal_id>/<service>/<instance>/<path>`."""

    portal_id: str
    service: str
    instance: int
    path: str


def parse_topic(topic: str) -> VictronTopic | None:
    """Split a service notification topic; None for anything else (e.g. `N/<pid>/heartbeat`)."""
    parts = topic.split("/", 4)
    if len(parts) != 5 or parts[0] != "N" or not (parts[3].isascii() and parts[3].isdigit()) or not parts[4]:
        return None
    return VictronTopic(parts[1], parts[2], int(parts[3]), parts[4])


@dataclass(frozen=True, slots=True)
class ValueSpec:
    """One mapped Venus value, described once: source path, unit, HA classes, Prometheus family.

    The Prometheus sample is the Venus value times `scale` (e.g. % → ratio); `labels` are the
    family's labels besides `name`.
    """

    key: str
    service: Service
    path: str
    unit: str | None
    device_class: str | None
    state_class: str | None
    metric: str
    help: str
    labels: tuple[tuple[str, str], ...] = ()
    scale: float = 1.0


_HA_CLASSES: Mapping[str | None, tuple[str | None, str | None]] = {
    "W": ("power", "measurement"),
    "V": ("voltage", "measurement"),
    "A": ("current", "measurement"),
    "%": ("battery", "measurement"),
    None: (None, None),
}


def _spec(
    key: str,
    service: Service,
    path: str,
    unit: str | None,
    metric: str,
    help_: str,
    labels: tuple[tuple[str, str], ...] = (),
) -> ValueSpec:
    """A table row for family `watti_victron_<metric>`; HA classes follow the unit, % becomes a ratio."""
    device_class, state_class = _HA_CLASSES[unit]
    scale = 0.01 if unit == "%" else 1.0
    return ValueSpec(
        key, service, path, unit, device_class, state_class, f"watti_victron_{metric}", help_, labels, scale
    )


def _phases(prefix: str, venus: str, where: str) -> tuple[ValueSpec, ...]:
    """Per-phase real power rows (W) of the Multi's AC input or output."""
    metric = f"{prefix}_power_watts"
    return tuple(
        _spec(
            f"{prefix}_l{n}_power", "vebus", f"Ac/{venus}/L{n}/P", "W", metric, where, (("phase", f"l{n}"),)
        )
        for n in (1, 2, 3)
    )


_SOC = "Battery state of charge by source (0..1)"
_DC_V = "Battery DC voltage by source (V)"
_DC_A = "Battery DC current by source (A, + = charging)"
_DC_W = "Battery DC power by source (W, + = charging)"
_BY_BATTERY = (("source", "battery"),)
_BY_VEBUS = (("source", "vebus"),)

VALUES: tuple[ValueSpec, ...] = (
    _spec("soc_system", "system", "Dc/Battery/Soc", "%", "soc_ratio", _SOC, (("source", "system"),)),
    _spec("soc_battery", "battery", "Soc", "%", "soc_ratio", _SOC, _BY_BATTERY),
    _spec("soc_vebus", "vebus", "Soc", "%", "soc_ratio", _SOC, _BY_VEBUS),
    _spec("bms_max_charge_current", "battery", "Info/MaxChargeCurrent", "A",
          "bms_max_charge_current_amperes", "BMS charge current limit (A DC)"),
    _spec("bms_max_discharge_current", "battery", "Info/MaxDischargeCurrent", "A",
          "bms_max_discharge_current_amperes", "BMS discharge current limit (A DC)"),
    _spec("battery_dc_voltage", "battery", "Dc/0/Voltage", "V", "dc_voltage_volts", _DC_V, _BY_BATTERY),
    _spec("battery_dc_current", "battery", "Dc/0/Current", "A", "dc_current_amperes", _DC_A, _BY_BATTERY),
    _spec("battery_dc_power", "battery", "Dc/0/Power", "W", "dc_power_watts", _DC_W, _BY_BATTERY),
    _spec("vebus_dc_voltage", "vebus", "Dc/0/Voltage", "V", "dc_voltage_volts", _DC_V, _BY_VEBUS),
    _spec("vebus_dc_current", "vebus", "Dc/0/Current", "A", "dc_current_amperes", _DC_A, _BY_VEBUS),
    _spec("vebus_dc_power", "vebus", "Dc/0/Power", "W", "dc_power_watts", _DC_W, _BY_VEBUS),
    *_phases("ac_in", "ActiveIn", "Multi AC input real power per phase (W, + = from grid into the Multi)"),
    _spec("ac_in_power", "vebus", "Ac/ActiveIn/P", "W",
          "ac_in_total_power_watts", "Multi AC input real power, all phases (W)"),
    *_phases("ac_out", "Out", "Multi AC output real power per phase (W)"),
    _spec("ac_out_power", "vebus", "Ac/Out/P", "W",
          "ac_out_total_power_watts", "Multi AC output real power, all phases (W)"),
    _spec("vebus_state", "vebus", "State", None,
          "vebus_state", "Multi (vebus) state code 0-11 (3 bulk, 8 passthru, 9 inverting)"),
    _spec("hub4_mode", "settings", "Settings/CGwacs/Hub4Mode", None,
          "hub4_mode", "ESS mode (3 = external control)"),
    _spec("disable_charge", "vebus", "Hub4/DisableCharge", None,
          "hub4_disable_charge", "1 while ESS charging is disabled"),
    _spec("disable_feed_in", "vebus", "Hub4/DisableFeedIn", None,
          "hub4_disable_feed_in", "1 while ESS feed-in is disabled"),
)  # fmt: skip
"""Every value the meter maps, in one place (drives /metrics and, later, Home Assistant)."""

MAPPED_SERVICES: frozenset[str] = frozenset(spec.service for spec in VALUES)
"""Service types the table maps values from (others are only counted)."""
SPECS_BY_SOURCE: Mapping[tuple[str, str], ValueSpec] = {(spec.service, spec.path): spec for spec in VALUES}
SOC_PREFERENCE: tuple[str, ...] = ("soc_system", "soc_battery", "soc_vebus")
ESSENTIAL_KEYS: tuple[str, ...] = (
    "ac_in_l1_power",
    "ac_in_l2_power",
    "ac_in_l3_power",
    "vebus_state",
    "hub4_mode",
)
"""Keys a full republish must deliver (besides some SOC); absent ones trigger another full republish."""


def notification_topics(portal_id: str) -> tuple[str, ...]:
    """What a meter subscribes to below `N/<portal_id>/`: the control leaves and each mapped path.

    Only the table's paths (any instance): a GX notifies every service (solar chargers, the grid
    meter fed by this very process…) and each unmapped message would cost a parse for nothing.
    """
    return (f"N/{portal_id}/+", *sorted({f"N/{portal_id}/{s.service}/+/{s.path}" for s in VALUES}))


def spec_for(service: str, path: str) -> ValueSpec | None:
    """The table entry for a Venus service type and D-Bus path, or None when unmapped."""
    return SPECS_BY_SOURCE.get((service, path))


@dataclass(frozen=True, slots=True)
class VictronSnapshot:
    """Everything mapped from one GX at one moment; None = unknown or reported invalid.

    `values` holds every mapped key that is present (None = reported invalid); a key is absent
    when never received, garbled or its service vanished.
    """

    soc_percent: float | None
    soc_source: str | None
    max_charge_current_a: float | None
    max_discharge_current_a: float | None
    dc_voltage_v: float | None
    dc_current_a: float | None
    dc_power_w: float | None
    ac_in_l1_w: float | None
    ac_in_l2_w: float | None
    ac_in_l3_w: float | None
    ac_in_total_w: float | None
    ac_out_l1_w: float | None
    ac_out_l2_w: float | None
    ac_out_l3_w: float | None
    ac_out_total_w: float | None
    vebus_state: int | None
    hub4_mode: int | None
    disable_charge: bool | None
    disable_feed_in: bool | None
    vebus_instance: int | None
    battery_instance: int | None
    vebus_instances: tuple[int, ...]
    battery_instances: tuple[int, ...]
    values: Mapping[str, float | None]

    def battery_status(self) -> BatteryStatus:
        """The controller's view: SOC (%), BMS limits (A DC), battery voltage (V)."""
        return BatteryStatus(
            soc_percent=self.soc_percent,
            max_charge_current_a=self.max_charge_current_a,
            max_discharge_current_a=self.max_discharge_current_a,
            voltage_v=self.dc_voltage_v,
        )

    def ac_in_sample(self) -> PowerSample | None:
        """Multi AC-in per phase (W, + = from grid into the Multi); None unless every phase is present.

        A phase reported invalid (`null`: absent on single/split-phase units) counts 0 W;
        the total is the sum of the phases so it always matches them.
        """
        keys = ("ac_in_l1_power", "ac_in_l2_power", "ac_in_l3_power")
        if any(key not in self.values for key in keys):
            return None
        phases = [self.values[key] for key in keys]
        if all(value is None for value in phases):
            return None
        l1, l2, l3 = (0.0 if value is None else value for value in phases)
        return PowerSample(l1, l2, l3, l1 + l2 + l3)

    def missing(self) -> tuple[str, ...]:
        """Essential keys a full republish should have delivered but did not (`soc` for any SOC)."""
        absent = [key for key in ESSENTIAL_KEYS if key not in self.values]
        if not any(key in self.values for key in SOC_PREFERENCE):
            absent.append("soc")
        return tuple(absent)


def _as_int(value: float | None) -> int | None:
    return None if value is None else round(value)


def _as_bool(value: float | None) -> bool | None:
    return None if value is None else value != 0


class VictronValues:
    """The latest mapped value per (service, instance, key) plus the instances seen per service."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, int], dict[str, float | None]] = {}
        self._instances: dict[str, set[int]] = {}

    def discover(self, service: str, instance: int) -> None:
        """Note that `service/instance` exists (it sent a non-empty notification)."""
        self._instances.setdefault(service, set()).add(instance)

    def store(self, service: str, instance: int, key: str, value: float | None) -> None:
        """Store one value (None = reported invalid)."""
        self.discover(service, instance)
        self._values.setdefault((service, instance), {})[key] = value

    def drop(self, service: str, instance: int, key: str) -> None:
        """Forget one value (its last payload was garbage: the old value is no longer true)."""
        self._values.get((service, instance), {}).pop(key, None)

    def vanish(self, service: str, instance: int) -> None:
        """Forget every value and the instance itself (0-byte payload: the service disappeared)."""
        self._values.pop((service, instance), None)
        self._instances.get(service, set()).discard(instance)

    def instances(self, service: str) -> tuple[int, ...]:
        """Instances seen for a service type, ascending."""
        return tuple(sorted(self._instances.get(service, ())))

    def snapshot(
        self,
        *,
        soc_source: SocSource = "auto",
        vebus_instance: int | None = None,
        battery_instance: int | None = None,
    ) -> VictronSnapshot:
        """A frozen view; instances default to the lowest one seen, SOC follows `soc_source`."""
        vebus_instances, battery_instances = self.instances("vebus"), self.instances("battery")
        vebus = vebus_instance if vebus_instance is not None else next(iter(vebus_instances), None)
        battery = battery_instance if battery_instance is not None else next(iter(battery_instances), None)
        values: dict[str, float | None] = {}
        for spec in VALUES:
            instance = {"vebus": vebus, "battery": battery}.get(spec.service, 0)
            stored = self._values.get((spec.service, instance), {}) if instance is not None else {}
            if spec.key in stored:
                values[spec.key] = stored[spec.key]
        preference = SOC_PREFERENCE if soc_source == "auto" else (f"soc_{soc_source}",)
        soc_key = next((key for key in preference if values.get(key) is not None), None)
        dc_voltage = values.get("battery_dc_voltage")
        dc_current = values.get("battery_dc_current")
        dc_power = values.get("battery_dc_power")
        return VictronSnapshot(
            soc_percent=None if soc_key is None else values[soc_key],
            soc_source=None if soc_key is None else soc_key.removeprefix("soc_"),
            max_charge_current_a=values.get("bms_max_charge_current"),
            max_discharge_current_a=values.get("bms_max_discharge_current"),
            dc_voltage_v=dc_voltage if dc_voltage is not None else values.get("vebus_dc_voltage"),
            dc_current_a=dc_current if dc_current is not None else values.get("vebus_dc_current"),
            dc_power_w=dc_power if dc_power is not None else values.get("vebus_dc_power"),
            ac_in_l1_w=values.get("ac_in_l1_power"),
            ac_in_l2_w=values.get("ac_in_l2_power"),
            ac_in_l3_w=values.get("ac_in_l3_power"),
            ac_in_total_w=values.get("ac_in_power"),
            ac_out_l1_w=values.get("ac_out_l1_power"),
            ac_out_l2_w=values.get("ac_out_l2_power"),
            ac_out_l3_w=values.get("ac_out_l3_power"),
            ac_out_total_w=values.get("ac_out_power"),
            vebus_state=_as_int(values.get("vebus_state")),
            hub4_mode=_as_int(values.get("hub4_mode")),
            disable_charge=_as_bool(values.get("disable_charge")),
            disable_feed_in=_as_bool(values.get("disable_feed_in")),
            vebus_instance=vebus,
            battery_instance=battery,
            vebus_instances=vebus_instances,
            battery_instances=battery_instances,
            values=values,
        )
