"""What the meters of this family share: counters by reason, the `up` gauge, status power fields."""

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import Metric

from watti_watchman.domain.meter_values import MeterReading
from watti_watchman.metrics import Families


def counter_families(
    families: Families,
    prefix: str,
    name: str,
    counters: Iterable[tuple[str, str, float]],
    errors: Mapping[str, int],
    known: Iterable[str],
) -> Iterable[Metric]:
    """`<prefix>_<suffix>_total{name}` per (suffix, help, value); `<prefix>_errors_total{name,reason}`."""
    for suffix, help_text, value in counters:
        yield families.counter(f"{prefix}_{suffix}", help_text).one(value, name)
    family = families.counter(f"{prefix}_errors", "Failures and rejected data by reason", ("name", "reason"))
    yield family.set(([name, reason], errors.get(reason, 0)) for reason in sorted(set(known) | set(errors)))


def up_family(families: Families, prefix: str, name: str, fresh: bool) -> Metric:
    """`<prefix>_up{name}`: 1 while readings are fresh."""
    up = families.gauge(f"{prefix}_up", "1 while readings are fresh (at most max_age old)")
    return up.one(1.0 if fresh else 0.0, name)


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
