"""The values a generic meter (register map or MQTT payloads) can deliver: one table describing
each quantity, validation, the invert option and the typed reading (pure: no I/O, no clock)."""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from watti_watchman.domain.readings import PowerSample

QuantityKey = Literal[
    "power_l1",
    "power_l2",
    "power_l3",
    "power_total",
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "current_l1",
    "current_l2",
    "current_l3",
    "frequency",
    "energy_import",
    "energy_export",
]
PHASE_POWER_KEYS: tuple[QuantityKey, QuantityKey, QuantityKey] = ("power_l1", "power_l2", "power_l3")
RejectReason = Literal["non_finite", "implausible", "no_power"]

MAX_ABS_POWER_W = 1_000_000.0
MAX_ABS_VOLTAGE_V = 1000.0
MAX_ABS_CURRENT_A = 10_000.0
FREQUENCY_RANGE_HZ = (40.0, 70.0)
MAX_ENERGY_WH = 1e15


@dataclass(frozen=True, slots=True)
class MeterQuantity:
    """One quantity a generic meter can deliver and how every consumer presents it."""

    key: QuantityKey
    unit: Literal["W", "V", "A", "Hz", "Wh"]
    label: str
    phase: str | None
    """Prometheus `phase` label (`l1`..`l3`); None for totals and whole-system values."""
    device_class: str
    state_class: Literal["measurement", "total_increasing"]
    metric: str
    """Prometheus family name as passed to the family constructor (counters without `_total`)."""
    metric_type: Literal["gauge", "counter"]
    metric_help: str
    valid_range: tuple[float, float]
    venus_path: str | None
    """Path below the Venus `grid` service that takes this value."""
    venus_scale: float = 1.0
    """Factor from the table unit to the Venus unit (Wh → kWh: 0.001)."""
    metric_scale: float = 1.0
    """Factor from the table unit to the Prometheus base unit (Wh → J: 3600)."""


_POWER_HELP = "Real power in W (+ = import at the grid entry, + = charging on the battery branch)"
_POWER = (-MAX_ABS_POWER_W, MAX_ABS_POWER_W)


def _phase(key: QuantityKey, n: int, kind: str) -> MeterQuantity:
    """A per-phase row of `kind` power | voltage | current."""
    unit, device_class, metric, help_text, valid = {
        "power": ("W", "power", "watti_meter_real_power_watts", _POWER_HELP, _POWER),
        "voltage": (
            "V", "voltage", "watti_meter_voltage_volts", "RMS voltage line-neutral in V",
            (-MAX_ABS_VOLTAGE_V, MAX_ABS_VOLTAGE_V),
        ),
        "current": (
            "A", "current", "watti_meter_current_amperes", "RMS current in A",
            (-MAX_ABS_CURRENT_A, MAX_ABS_CURRENT_A),
        ),
    }[kind]  # fmt: skip
    label = {"power": "Real power", "voltage": "Voltage", "current": "Current"}[kind]
    return MeterQuantity(
        key=key,
        unit=unit,  # type: ignore[arg-type]
        label=f"{label} L{n}",
        phase=f"l{n}",
        device_class=device_class,
        state_class="measurement",
        metric=metric,
        metric_type="gauge",
        metric_help=help_text,
        valid_range=valid,
        venus_path=f"Ac/L{n}/{kind.capitalize()}",
    )


METER_QUANTITIES: tuple[MeterQuantity, ...] = (
    _phase("power_l1", 1, "power"),
    _phase("power_l2", 2, "power"),
    _phase("power_l3", 3, "power"),
    MeterQuantity(
        "power_total", "W", "Real power total", None, "power", "measurement",
        "watti_meter_real_power_sum_watts", "gauge", "Real power summed over the phases in W",
        _POWER, "Ac/Power",
    ),
    _phase("voltage_l1", 1, "voltage"),
    _phase("voltage_l2", 2, "voltage"),
    _phase("voltage_l3", 3, "voltage"),
    _phase("current_l1", 1, "current"),
    _phase("current_l2", 2, "current"),
    _phase("current_l3", 3, "current"),
    MeterQuantity(
        "frequency", "Hz", "Frequency", None, "frequency", "measurement", "watti_meter_frequency_hertz",
        "gauge", "Grid frequency in Hz", FREQUENCY_RANGE_HZ, "Ac/Frequency",
    ),
    MeterQuantity(
        "energy_import", "Wh", "Energy import", None, "energy", "total_increasing",
        "watti_meter_energy_import_joules", "counter", "Real energy imported in J",
        (0.0, MAX_ENERGY_WH), "Ac/Energy/Forward", 0.001, 3600.0,
    ),
    MeterQuantity(
        "energy_export", "Wh", "Energy export", None, "energy", "total_increasing",
        "watti_meter_energy_export_joules", "counter", "Real energy exported in J",
        (0.0, MAX_ENERGY_WH), "Ac/Energy/Reverse", 0.001, 3600.0,
    ),
)  # fmt: skip
"""Every quantity in presentation order."""

QUANTITY_BY_KEY: dict[str, MeterQuantity] = {q.key: q for q in METER_QUANTITIES}
QUANTITY_KEYS: tuple[QuantityKey, ...] = tuple(q.key for q in METER_QUANTITIES)


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One consistent set of values of a generic meter, in table units (W, V, A, Hz, Wh).

    Holds only the quantities the meter delivers plus power per phase and total, always present
    (a meter that reports only its total has it split evenly over the phases, `phases_known` False).
    """

    values: Mapping[str, float]
    phases_known: bool

    def value(self, key: str) -> float | None:
        """The value of `key` in table units, None when the meter does not deliver it."""
        return self.values.get(key)

    def power_sample(self) -> PowerSample:
        """Real power per phase and total (W)."""
        v = self.values
        return PowerSample(v["power_l1"], v["power_l2"], v["power_l3"], v["power_total"])


def check_value(key: str, value: float) -> None:
    """ValueError("non_finite" | "implausible") when `value` cannot be a reading of `key`."""
    if not math.isfinite(value):
        raise ValueError("non_finite")
    low, high = QUANTITY_BY_KEY[key].valid_range
    if not low <= value <= high:
        raise ValueError("implausible")


def reading_from_values(raw: Mapping[str, float], *, invert: bool) -> MeterReading:
    """Complete, check and orient raw values; ValueError(reason) when they must not be used.

    Missing total: the phase sum. Some phases missing: 0 W (a single-phase meter). No phase at
    all: the total split evenly. No power at all: `no_power`.
    `invert` (reversed CTs) negates powers and swaps import and export energy.
    """
    values = dict(raw)
    for key, value in values.items():
        check_value(key, value)
    phases_known = any(key in values for key in PHASE_POWER_KEYS)
    if phases_known:
        for key in PHASE_POWER_KEYS:
            values.setdefault(key, 0.0)
        values.setdefault("power_total", sum(values[key] for key in PHASE_POWER_KEYS))
    elif "power_total" in values:
        for key in PHASE_POWER_KEYS:
            values[key] = values["power_total"] / 3
    else:
        raise ValueError("no_power")
    if invert:
        for key in (*PHASE_POWER_KEYS, "power_total"):
            values[key] = -values[key]
        imported, exported = values.pop("energy_import", None), values.pop("energy_export", None)
        if exported is not None:
            values["energy_import"] = exported
        if imported is not None:
            values["energy_export"] = imported
    return MeterReading({k: values[k] for k in QUANTITY_KEYS if k in values}, phases_known)
