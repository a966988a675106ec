"""The Janitza UMG block at register 19000: one table describing each of its 39 values, decoding,
validation, the invert option and the typed reading (pure: no I/O, no clock)."""

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from watti_watchman.domain.readings import PowerSample

JANITZA_START_ADDRESS = 19000
JANITZA_VALUE_COUNT = 39
JANITZA_REGISTER_COUNT = 2 * JANITZA_VALUE_COUNT

QuantityKind = Literal[
    "voltage",
    "current",
    "current_vector_sum",
    "real_power",
    "apparent_power",
    "reactive_power",
    "power_factor",
    "frequency",
    "rotation_field",
    "energy_net",
    "energy_import",
    "energy_export",
]
Unit = Literal["V", "A", "W", "VA", "var", "", "Hz", "Wh"]
StateClass = Literal["measurement", "total", "total_increasing"]
MetricType = Literal["gauge", "counter"]
InvertRule = Literal["keep", "negate", "swap"]
RejectReason = Literal["wrong_length", "non_finite", "implausible"]

MAX_ABS_VOLTAGE_V = 1000.0
MAX_ABS_CURRENT_A = 10_000.0
MAX_ABS_POWER_W = 1_000_000.0
FREQUENCY_RANGE_HZ = (40.0, 70.0)
VOLTAGE_PRESENT_V = 50.0
POWER_FACTOR_TOLERANCE = 1e-3
PHASE_LABELS = ("l1", "l2", "l3")


@dataclass(frozen=True, slots=True)
class JanitzaQuantity:
    """One value of the block: where it sits, what it means, and how every consumer presents it."""

    index: int
    """Position in the block (0..38); the register address is start + 2·index."""
    key: str
    """Stable identifier, e.g. `voltage_l1_n`, `real_power_sum` (used for HA object ids)."""
    quantity: QuantityKind
    phase: str | None
    """Prometheus `phase` label (`l1`, `l1_l2`, …); None for sums and whole-system values."""
    unit: Unit
    label: str
    """Human name, e.g. `Voltage L1-N`."""
    device_class: str | None
    """Home Assistant device_class (None: none applies)."""
    state_class: StateClass
    metric: str
    """Prometheus family name as passed to the family constructor (counters without `_total`)."""
    metric_type: MetricType
    metric_help: str
    invert: InvertRule
    """What the `invert` option (reversed CTs) does to this value."""
    swap_with: int | None = None
    """For `invert == "swap"`: the index of the partner value (import ↔ export)."""
    venus_path: str | None = None
    """Path below the Venus `grid` service that takes this value, when one exists."""
    venus_scale: float = 1.0
    """Factor from the table unit to the Venus unit (Wh → kWh: 0.001)."""
    metric_scale: float = 1.0
    """Factor from the table unit to the Prometheus base unit (Wh → J: 3600)."""
    valid_range: tuple[float, float] | None = None
    """Physically possible values (inclusive); outside → the whole read is implausible."""

    @property
    def exposed_metric_name(self) -> str:
        """The name as it appears in /metrics (counters gain `_total`)."""
        return self.metric + "_total" if self.metric_type == "counter" else self.metric

    @property
    def address(self) -> int:
        """Register address in the standard block starting at 19000."""
        return JANITZA_START_ADDRESS + 2 * self.index


@dataclass(frozen=True, slots=True)
class _Kind:
    """What all values of one kind share."""

    unit: Unit
    device_class: str | None
    state_class: StateClass
    metric: str
    sum_metric: str
    metric_type: MetricType
    metric_help: str
    invert: InvertRule
    valid_range: tuple[float, float] | None


_POWER_RANGE = (-MAX_ABS_POWER_W, MAX_ABS_POWER_W)
_CURRENT_RANGE = (-MAX_ABS_CURRENT_A, MAX_ABS_CURRENT_A)
_PLUS_IMPORT = " (+ = import at the grid entry, + = charging on the battery branch)"

_KINDS: dict[QuantityKind, _Kind] = {
    "voltage": _Kind(
        "V", "voltage", "measurement", "watti_janitza_voltage_volts", "", "gauge",
        "RMS voltage in V, line-neutral (phase=l1..l3) and line-line (phase=l1_l2, l2_l3, l3_l1)",
        "keep", (-MAX_ABS_VOLTAGE_V, MAX_ABS_VOLTAGE_V),
    ),
    "current": _Kind(
        "A", "current", "measurement", "watti_janitza_current_amperes", "", "gauge",
        "RMS current per phase in A", "keep", _CURRENT_RANGE,
    ),
    "current_vector_sum": _Kind(
        "A", "current", "measurement", "", "watti_janitza_current_vector_sum_amperes", "gauge",
        "Vector sum of the phase currents (neutral-like, not I1+I2+I3) in A", "keep", _CURRENT_RANGE,
    ),
    "real_power": _Kind(
        "W", "power", "measurement", "watti_janitza_real_power_watts",
        "watti_janitza_real_power_sum_watts", "gauge", "Real power in W" + _PLUS_IMPORT, "negate",
        _POWER_RANGE,
    ),
    "apparent_power": _Kind(
        "VA", "apparent_power", "measurement", "watti_janitza_apparent_power_volt_amperes",
        "watti_janitza_apparent_power_sum_volt_amperes", "gauge", "Apparent power in VA", "keep",
        _POWER_RANGE,
    ),
    "reactive_power": _Kind(
        "var", "reactive_power", "measurement", "watti_janitza_reactive_power_volt_amperes_reactive",
        "watti_janitza_reactive_power_sum_volt_amperes_reactive", "gauge",
        "Reactive power (fundamental) in var", "negate", _POWER_RANGE,
    ),
    "power_factor": _Kind(
        "", "power_factor", "measurement", "watti_janitza_power_factor_ratio", "", "gauge",
        "cos phi per phase (-1..1, sign follows real power)", "negate",
        (-1.0 - POWER_FACTOR_TOLERANCE, 1.0 + POWER_FACTOR_TOLERANCE),
    ),
    "frequency": _Kind(
        "Hz", "frequency", "measurement", "", "watti_janitza_frequency_hertz", "gauge",
        "Grid frequency in Hz", "keep", (0.0, FREQUENCY_RANGE_HZ[1]),
    ),
    "rotation_field": _Kind(
        "", None, "measurement", "", "watti_janitza_rotation_field", "gauge",
        "Phase rotation: 1 right (clockwise), 0 none, -1 left", "keep", (-1.0, 1.0),
    ),
    "energy_net": _Kind(
        "Wh", "energy", "total", "watti_janitza_energy_net_joules",
        "watti_janitza_energy_net_sum_joules", "gauge",
        "Real energy net (import minus export, can go down) in J", "negate", None,
    ),
    "energy_import": _Kind(
        "Wh", "energy", "total_increasing", "watti_janitza_energy_import_joules",
        "watti_janitza_energy_import_sum_joules", "counter",
        "Real energy imported (consumed) in J; steps back after a meter power loss", "swap",
        (0.0, math.inf),
    ),
    "energy_export": _Kind(
        "Wh", "energy", "total_increasing", "watti_janitza_energy_export_joules",
        "watti_janitza_energy_export_sum_joules", "counter",
        "Real energy exported (delivered) in J; steps back after a meter power loss", "swap",
        (0.0, math.inf),
    ),
}  # fmt: skip


def _sum_help(phase_help: str) -> str:
    """`Real power in W` → `Real power summed over L1..L3 in W`."""
    return phase_help.replace(" in ", " summed over L1..L3 in ", 1)


def _row(
    index: int,
    key: str,
    quantity: QuantityKind,
    phase: str | None,
    label: str,
    venus_path: str | None = None,
    swap_with: int | None = None,
) -> JanitzaQuantity:
    kind = _KINDS[quantity]
    return JanitzaQuantity(
        index=index,
        key=key,
        quantity=quantity,
        phase=phase,
        unit=kind.unit,
        label=label,
        device_class=kind.device_class,
        state_class=kind.state_class,
        metric=kind.metric if phase else kind.sum_metric,
        metric_type=kind.metric_type,
        metric_help=kind.metric_help if phase or not kind.metric else _sum_help(kind.metric_help),
        invert=kind.invert,
        swap_with=swap_with,
        venus_path=venus_path,
        venus_scale=0.001 if venus_path and kind.unit == "Wh" else 1.0,
        metric_scale=3600.0 if kind.unit == "Wh" else 1.0,
        valid_range=kind.valid_range,
    )


JANITZA_QUANTITIES: tuple[JanitzaQuantity, ...] = (
    _row(0, "voltage_l1_n", "voltage", "l1", "Voltage L1-N", "Ac/L1/Voltage"),
    _row(1, "voltage_l2_n", "voltage", "l2", "Voltage L2-N", "Ac/L2/Voltage"),
    _row(2, "voltage_l3_n", "voltage", "l3", "Voltage L3-N", "Ac/L3/Voltage"),
    _row(3, "voltage_l1_l2", "voltage", "l1_l2", "Voltage L1-L2"),
    _row(4, "voltage_l2_l3", "voltage", "l2_l3", "Voltage L2-L3"),
    _row(5, "voltage_l3_l1", "voltage", "l3_l1", "Voltage L3-L1"),
    _row(6, "current_l1", "current", "l1", "Current L1", "Ac/L1/Current"),
    _row(7, "current_l2", "current", "l2", "Current L2", "Ac/L2/Current"),
    _row(8, "current_l3", "current", "l3", "Current L3", "Ac/L3/Current"),
    _row(9, "current_vector_sum", "current_vector_sum", None, "Current vector sum"),
    _row(10, "real_power_l1", "real_power", "l1", "Real power L1", "Ac/L1/Power"),
    _row(11, "real_power_l2", "real_power", "l2", "Real power L2", "Ac/L2/Power"),
    _row(12, "real_power_l3", "real_power", "l3", "Real power L3", "Ac/L3/Power"),
    _row(13, "real_power_sum", "real_power", None, "Real power sum", "Ac/Power"),
    _row(14, "apparent_power_l1", "apparent_power", "l1", "Apparent power L1"),
    _row(15, "apparent_power_l2", "apparent_power", "l2", "Apparent power L2"),
    _row(16, "apparent_power_l3", "apparent_power", "l3", "Apparent power L3"),
    _row(17, "apparent_power_sum", "apparent_power", None, "Apparent power sum"),
    _row(18, "reactive_power_l1", "reactive_power", "l1", "Reactive power L1"),
    _row(19, "reactive_power_l2", "reactive_power", "l2", "Reactive power L2"),
    _row(20, "reactive_power_l3", "reactive_power", "l3", "Reactive power L3"),
    _row(21, "reactive_power_sum", "reactive_power", None, "Reactive power sum"),
    _row(22, "power_factor_l1", "power_factor", "l1", "Power factor L1"),
    _row(23, "power_factor_l2", "power_factor", "l2", "Power factor L2"),
    _row(24, "power_factor_l3", "power_factor", "l3", "Power factor L3"),
    _row(25, "frequency", "frequency", None, "Frequency", "Ac/Frequency"),
    _row(26, "rotation_field", "rotation_field", None, "Rotation field"),
    _row(27, "energy_net_l1", "energy_net", "l1", "Energy net L1"),
    _row(28, "energy_net_l2", "energy_net", "l2", "Energy net L2"),
    _row(29, "energy_net_l3", "energy_net", "l3", "Energy net L3"),
    _row(30, "energy_net_sum", "energy_net", None, "Energy net sum"),
    _row(31, "energy_import_l1", "energy_import", "l1", "Energy import L1", "Ac/L1/Energy/Forward", 35),
    _row(32, "energy_import_l2", "energy_import", "l2", "Energy import L2", "Ac/L2/Energy/Forward", 36),
    _row(33, "energy_import_l3", "energy_import", "l3", "Energy import L3", "Ac/L3/Energy/Forward", 37),
    _row(34, "energy_import_sum", "energy_import", None, "Energy import sum", "Ac/Energy/Forward", 38),
    _row(35, "energy_export_l1", "energy_export", "l1", "Energy export L1", "Ac/L1/Energy/Reverse", 31),
    _row(36, "energy_export_l2", "energy_export", "l2", "Energy export L2", "Ac/L2/Energy/Reverse", 32),
    _row(37, "energy_export_l3", "energy_export", "l3", "Energy export L3", "Ac/L3/Energy/Reverse", 33),
    _row(38, "energy_export_sum", "energy_export", None, "Energy export sum", "Ac/Energy/Reverse", 34),
)
"""The 39 values of the block in register order."""

QUANTITIES_BY_KEY: dict[str, JanitzaQuantity] = {q.key: q for q in JANITZA_QUANTITIES}

_FREQUENCY = QUANTITIES_BY_KEY["frequency"]
_VOLTAGES_LN = tuple(
    q.index for q in JANITZA_QUANTITIES if q.quantity == "voltage" and q.phase in PHASE_LABELS
)


def decode_registers(registers: Sequence[int]) -> tuple[float, ...]:
    """Decode 16-bit registers as big-endian float32 pairs, high word first; ValueError on an odd count."""
    if len(registers) % 2:
        raise ValueError(f"odd register count {len(registers)}: cannot decode float32 pairs")
    return struct.unpack(f">{len(registers) // 2}f", struct.pack(f">{len(registers)}H", *registers))


def encode_values(values: Sequence[float]) -> tuple[int, ...]:
    """Encode floats as big-endian float32 register pairs, high word first (inverse of decode)."""
    return struct.unpack(f">{2 * len(values)}H", struct.pack(f">{len(values)}f", *values))


def rejection_reason(values: Sequence[float]) -> RejectReason | None:
    """Why a decoded block must be rejected as a whole, or None when it is usable."""
    if len(values) != JANITZA_VALUE_COUNT:
        return "wrong_length"
    if not all(math.isfinite(v) for v in values):
        return "non_finite"
    for quantity in JANITZA_QUANTITIES:
        if quantity.valid_range is not None:
            low, high = quantity.valid_range
            if not low <= values[quantity.index] <= high:
                return "implausible"
    voltage_present = any(abs(values[i]) >= VOLTAGE_PRESENT_V for i in _VOLTAGES_LN)
    low_hz, high_hz = FREQUENCY_RANGE_HZ
    if voltage_present and not low_hz <= values[_FREQUENCY.index] <= high_hz:
        return "implausible"
    return None


def orient_values(values: Sequence[float], invert: bool) -> tuple[float, ...]:
    """Apply the invert option: negate real/reactive power, cos phi and net energy; swap import/export."""
    if not invert:
        return tuple(values)
    oriented: list[float] = []
    for quantity in JANITZA_QUANTITIES:
        if quantity.invert == "negate":
            oriented.append(-values[quantity.index])
        elif quantity.invert == "swap" and quantity.swap_with is not None:
            oriented.append(values[quantity.swap_with])
        else:
            oriented.append(values[quantity.index])
    return tuple(oriented)


Triple = tuple[float, float, float]


def _triple(values: Sequence[float], start: int) -> Triple:
    return (values[start], values[start + 1], values[start + 2])


MONOTONIC_ENERGY_KEYS: frozenset[str] = frozenset(
    q.key for q in JANITZA_QUANTITIES if q.state_class == "total_increasing"
)
"""Keys of the import/export counters, which must never go down for consumers such as HA."""


@dataclass(frozen=True, slots=True)
class JanitzaReading:
    """One validated read of the block, oriented by the `invert` option (units in the names).

    Real power sign: + = import at the grid entry, + = into the battery system on its branch.
    """

    voltage_ln_v: Triple
    voltage_ll_v: Triple
    """L1-L2, L2-L3, L3-L1."""
    current_a: Triple
    current_vector_sum_a: float
    power_w: Triple
    power_total_w: float
    apparent_power_va: Triple
    apparent_power_total_va: float
    reactive_power_var: Triple
    reactive_power_total_var: float
    power_factor: Triple
    """cos phi per phase (-1..1)."""
    frequency_hz: float
    rotation_field: int
    """1 right, 0 none, -1 left."""
    energy_net_wh: Triple
    energy_net_total_wh: float
    energy_import_wh: Triple
    energy_import_total_wh: float
    energy_export_wh: Triple
    energy_export_total_wh: float
    values: tuple[float, ...]
    """The 39 values as read, register order, before the invert option."""
    oriented_values: tuple[float, ...]
    """The 39 values after the invert option, register order (what the typed fields show)."""
    inverted: bool
    energy_regressed: frozenset[str] = field(default_factory=frozenset)
    """Keys of import/export counters lower than in the meter's previous reading (power loss)."""

    def value(self, quantity: JanitzaQuantity) -> float:
        """The oriented value of one table row."""
        return self.oriented_values[quantity.index]

    def power_sample(self) -> PowerSample:
        """Real power per phase and summed (W) for the controller."""
        l1_w, l2_w, l3_w = self.power_w
        return PowerSample(l1_w=l1_w, l2_w=l2_w, l3_w=l3_w, total_w=self.power_total_w)


def regressed_energy_keys(previous: JanitzaReading | None, current: JanitzaReading) -> frozenset[str]:
    """Keys of import/export counters that are lower in `current` than in `previous`.

    Consumers that need monotonic counters compare against the last reading *they* published.
    """
    if previous is None:
        return frozenset()
    return frozenset(
        key
        for key in MONOTONIC_ENERGY_KEYS
        if current.value(QUANTITIES_BY_KEY[key]) < previous.value(QUANTITIES_BY_KEY[key])
    )


def reading_from_values(
    values: Sequence[float], invert: bool, previous: JanitzaReading | None = None
) -> JanitzaReading:
    """Build a reading from 39 validated values; flags counters lower than in `previous`."""
    if len(values) != JANITZA_VALUE_COUNT:
        raise ValueError(f"expected {JANITZA_VALUE_COUNT} values, got {len(values)}")
    v = orient_values(values, invert)
    reading = JanitzaReading(
        voltage_ln_v=_triple(v, 0),
        voltage_ll_v=_triple(v, 3),
        current_a=_triple(v, 6),
        current_vector_sum_a=v[9],
        power_w=_triple(v, 10),
        power_total_w=v[13],
        apparent_power_va=_triple(v, 14),
        apparent_power_total_va=v[17],
        reactive_power_var=_triple(v, 18),
        reactive_power_total_var=v[21],
        power_factor=_triple(v, 22),
        frequency_hz=v[25],
        rotation_field=round(v[26]),
        energy_net_wh=_triple(v, 27),
        energy_net_total_wh=v[30],
        energy_import_wh=_triple(v, 31),
        energy_import_total_wh=v[34],
        energy_export_wh=_triple(v, 35),
        energy_export_total_wh=v[38],
        values=tuple(values),
        oriented_values=v,
        inverted=invert,
    )
    regressed = regressed_energy_keys(previous, reading)
    return replace(reading, energy_regressed=regressed) if regressed else reading
