"""What the meters of this family share: counters by reason, the `up` gauge, status power fields."""

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from watti_watchman.domain.meter_values import MeterReading


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
