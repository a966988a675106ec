"""The values a generic meter (register map or MQTT payloads) can deliver: one table describing
each quantity, validation, the invert option and the typed reading (pure: no I/O, no clock)."""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from watti_watchman.domain.quantities import Quantity
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

MAX_ABS_POWER_W = 1_000_000.0
MAX_ABS_VOLTAGE_V = 1000.0
MAX_ABS_CURRENT_A = 10_000.0
FREQUENCY_RANGE_HZ = (40.0, 70.0)
MAX_ENERGY_WH = 1e15


_POWER_HELP = "Real power in W (+ = import at the grid entry, + = charging on the battery branch)"
_POWER = (-MAX_ABS_POWER_W, MAX_ABS_POWER_W)
_PHASE_KINDS = {
    "power": ("Real power", "W", "power", "watti_meter_real_power_watts", _POWER_HELP, 1),
    "voltage": ("Voltage", "V", "voltage", "watti_meter_voltage_volts", "RMS voltage line-neutral in V", 1),
    "current": ("Current", "A", "current", "watti_meter_current_amperes", "RMS current in A", 2),
}


def _phase(kind: str, n: int) -> Quantity:
    """A per-phase row of `kind` power | voltage | current."""
    label, unit, device_class, metric, help_text, precision = _PHASE_KINDS[kind]
    return Quantity(
        key=f"{kind}_l{n}",
        label=f"{label} L{n}",
        unit=unit,
        device_class=device_class,
        state_class="measurement",
        metric=metric,
        metric_help=help_text,
        metric_labels=(("phase", f"l{n}"),),
        venus_path=f"Ac/L{n}/{kind.capitalize()}",
        precision=precision,
    )


def _energy(direction: str, venus: str) -> Quantity:
    return Quantity(
        key=f"energy_{direction}",
        label=f"Energy {direction}",
        unit="Wh",
        device_class="energy",
        state_class="total_increasing",
        metric=f"watti_meter_energy_{direction}_joules",
        metric_type="counter",
        metric_help=f"Real energy {direction}ed in J",
        metric_scale=3600.0,
        venus_path=f"Ac/Energy/{venus}",
        venus_scale=0.001,
        precision=0,
    )


METER_QUANTITIES: tuple[Quantity, ...] = (
    *(_phase("power", n) for n in (1, 2, 3)),
    Quantity(
        key="power_total",
        label="Real power total",
        unit="W",
        device_class="power",
        state_class="measurement",
        metric="watti_meter_real_power_sum_watts",
        metric_help="Real power summed over the phases in W",
        venus_path="Ac/Power",
        precision=1,
    ),
    *(_phase("voltage", n) for n in (1, 2, 3)),
    *(_phase("current", n) for n in (1, 2, 3)),
    Quantity(
        key="frequency",
        label="Frequency",
        unit="Hz",
        device_class="frequency",
        state_class="measurement",
        metric="watti_meter_frequency_hertz",
        metric_help="Grid frequency in Hz",
        venus_path="Ac/Frequency",
        precision=2,
    ),
    _energy("import", "Forward"),
    _energy("export", "Reverse"),
)
"""Every quantity a generic meter can deliver, in presentation order."""

QUANTITY_KEYS: tuple[str, ...] = tuple(q.key for q in METER_QUANTITIES)
VALID_RANGES: dict[str, tuple[float, float]] = {
    **{f"power_l{n}": _POWER for n in (1, 2, 3)},
    "power_total": _POWER,
    **{f"voltage_l{n}": (-MAX_ABS_VOLTAGE_V, MAX_ABS_VOLTAGE_V) for n in (1, 2, 3)},
    **{f"current_l{n}": (-MAX_ABS_CURRENT_A, MAX_ABS_CURRENT_A) for n in (1, 2, 3)},
    "frequency": FREQUENCY_RANGE_HZ,
    "energy_import": (0.0, MAX_ENERGY_WH),
    "energy_export": (0.0, MAX_ENERGY_WH),
}
"""Physically possible values (inclusive); outside → the reading is implausible."""


def meter_table(delivered: Iterable[str]) -> tuple[Quantity, ...]:
    """The table of a meter delivering `delivered` keys: those plus power per phase and total."""
    keys = {*delivered, *PHASE_POWER_KEYS, "power_total"}
    return tuple(q for q in METER_QUANTITIES if q.key in keys)


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
    low, high = VALID_RANGES[key]
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
