"""What every generic meter (register map, MQTT payloads) shares: its value families, its counters,
its status fields and the commissioning table, all driven by `METER_QUANTITIES`."""

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from watti_watchman.domain.meter_values import METER_QUANTITIES, MeterReading

_DECIMALS = {"V": 1, "A": 2, "W": 1, "Hz": 2, "Wh": 0}


def value_families(name: str, reading: MeterReading) -> Iterable[Metric]:
    """One family per table metric the reading delivers, samples in table order."""
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
    for quantity in METER_QUANTITIES:
        value = reading.value(quantity.key)
        if value is None:
            continue
        family = families.get(quantity.metric)
        if family is None:
            labels = ["name"] if quantity.phase is None else ["name", "phase"]
            kind = CounterMetricFamily if quantity.metric_type == "counter" else GaugeMetricFamily
            family = kind(quantity.metric, quantity.metric_help, labels=labels)
            families[quantity.metric] = family
        family.add_metric(
            [name] if quantity.phase is None else [name, quantity.phase], value * quantity.metric_scale
        )
    return families.values()


def counter_families(
    prefix: str,
    name: str,
    counters: Iterable[tuple[str, str, float]],
    errors: Mapping[str, int],
    known: Iterable[str],
) -> Iterable[Metric]:
    """`<prefix>_<suffix>_total{name}` per (suffix, help, value); `<prefix>_errors_total{name,reason}`."""
    for suffix, help_text, value in counters:
        family = CounterMetricFamily(f"{prefix}_{suffix}", help_text, labels=["name"])
        family.add_metric([name], float(value))
        yield family
    family = CounterMetricFamily(
        f"{prefix}_errors", "Failures and rejected data by reason", labels=["name", "reason"]
    )
    for reason in sorted(set(known) | set(errors)):
        family.add_metric([name, reason], float(errors.get(reason, 0)))
    yield family


def up_family(prefix: str, name: str, fresh: bool) -> Metric:
    """`<prefix>_up{name}`: 1 while readings are fresh."""
    up = GaugeMetricFamily(
        f"{prefix}_up", "1 while readings are fresh (at most max_age old)", labels=["name"]
    )
    up.add_metric([name], 1.0 if fresh else 0.0)
    return up


def reading_status(reading: MeterReading | None) -> Mapping[str, Any]:
    """Power fields for /api/status."""
    if reading is None:
        return {"fresh": False, "power_w": None, "power_phases_w": None}
    sample = reading.power_sample()
    return {
        "fresh": True,
        "power_w": round(sample.total_w, 1),
        "power_phases_w": [round(sample.l1_w, 1), round(sample.l2_w, 1), round(sample.l3_w, 1)],
    }


def format_meter_reading(reading: MeterReading) -> str:
    """A table of one reading: quantity, value with unit (commissioning)."""
    lines = [f"{'quantity':<22}{'value':>16}", "-" * 38]
    for quantity in METER_QUANTITIES:
        value = reading.value(quantity.key)
        if value is not None:
            lines.append(f"{quantity.label:<22}{value:>13.{_DECIMALS[quantity.unit]}f} {quantity.unit:<2}")
    if not reading.phases_known:
        lines.append("(the meter reports no per-phase power: the total is split evenly)")
    return "\n".join(lines)
