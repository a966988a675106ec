"""Quantity tables: the one description of every value a device exposes (pure).

Each meter publishes its current values keyed by `Quantity.key`; Home Assistant, /metrics,
/api/status, `read-meter` and the Venus grid feeder all read this table, never the device type.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

MetricType = Literal["gauge", "counter"]
QuantityValues = Mapping[str, float]
"""Current values by quantity key; a key that is absent has no valid value now."""


@dataclass(frozen=True, slots=True)
class Quantity:
    """One exposed value: key, unit, HA classes, Prometheus family and, if any, its Venus grid path."""

    key: str
    """Stable identifier within the device (`[a-z0-9_]`): HA unique ids and state keys use it."""
    label: str
    """Human name, e.g. `Voltage L1-N`."""
    unit: str | None
    device_class: str | None = None
    """Home Assistant device_class (None: none applies)."""
    state_class: str | None = None
    metric: str | None = None
    """Prometheus family as given to its constructor (counters without `_total`); None: not exported."""
    metric_type: MetricType = "gauge"
    metric_help: str = ""
    metric_labels: tuple[tuple[str, str], ...] = ()
    """Labels of the sample besides `name`, e.g. `(("phase", "l1"),)`."""
    metric_scale: float = 1.0
    """Factor from the table unit to the Prometheus base unit (Wh → J: 3600, % → ratio: 0.01)."""
    venus_path: str | None = None
    """Path below a Venus OS `grid` service that takes this value, when one exists."""
    venus_scale: float = 1.0
    """Factor from the table unit to the Venus unit (Wh → kWh: 0.001)."""
    precision: int | None = None
    """Decimals worth showing (HA suggested precision, `read-meter`); None: as is."""
    diagnostic: bool = False
    """A status code rather than a measurement (HA entity category `diagnostic`)."""
    integer: bool = False
    """Shown as an integer (codes, counts)."""

    @property
    def is_counter(self) -> bool:
        """True for counters that must never go down for their consumers."""
        return self.state_class == "total_increasing"

    def shown(self, value: float) -> float | int:
        """`value` as consumers show it: an int for integer quantities, else unchanged."""
        return round(value) if self.integer else value


def format_values(quantities: Sequence[Quantity], values: QuantityValues) -> str:
    """A text table of one reading: a line per quantity with its value and unit (`-` when absent)."""
    width = max((len(q.label) for q in quantities), default=8) + 2
    lines = []
    for quantity in quantities:
        value = values.get(quantity.key)
        if value is None:
            text = "-"
        elif quantity.integer:
            text = str(round(value))
        else:
            text = f"{value:.{quantity.precision}f}" if quantity.precision is not None else f"{value:g}"
        unit = f" {quantity.unit}" if quantity.unit and value is not None else ""
        lines.append(f"{quantity.label:<{width}}{text:>14}{unit}")
    return "\n".join(lines)
