"""Meter values from MQTT payloads: a topic + JSON path + scale per quantity, and the assembly of
values arriving on several topics into consistent readings (pure: no I/O, time passed in)."""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from watti_watchman.domain.meter_values import (
    PHASE_POWER_KEYS,
    MeterReading,
    check_value,
    reading_from_values,
)

PayloadErrorReason = Literal["not_json", "missing", "not_a_number", "non_finite", "implausible"]
PathElem = str | int


class PayloadError(ValueError):
    """A payload that must not be used; `reason` is the metric label."""

    def __init__(self, reason: PayloadErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason: PayloadErrorReason = reason


def parse_path(text: str) -> tuple[PathElem, ...]:
    """`"SML.Power_curr"` → ("SML", "Power_curr"); `"em.0.power"` → ("em", 0, "power"); `""` → ()."""
    return tuple(int(part) if part.isdigit() else part for part in text.split(".")) if text else ()


@dataclass(frozen=True, slots=True)
class ValueMapping:
    """Where one quantity comes from: topic, path into the JSON payload (empty: the payload is the
    number itself) and the factor to table units (W, V, A, Hz, Wh)."""

    key: str
    topic: str
    path: tuple[PathElem, ...] = ()
    scale: float = 1.0


def extract(payload: bytes, path: Sequence[PathElem]) -> float:
    """The number at `path` in a JSON (or bare number) payload; PayloadError when absent or not a number."""
    try:
        node: object = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise PayloadError("not_json", "payload is not JSON nor a number") from None
    for elem in path:
        if isinstance(elem, int) and isinstance(node, list) and -len(node) <= elem < len(node):
            node = node[elem]
        elif isinstance(node, dict) and str(elem) in node:
            node = node[str(elem)]
        else:
            raise PayloadError("missing", f"no {'.'.join(str(p) for p in path)} in the payload")
    if isinstance(node, str):
        try:
            node = float(node)
        except ValueError:
            raise PayloadError("not_a_number", "value is text, not a number") from None
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise PayloadError("not_a_number", f"value is {type(node).__name__}, not a number")
    value = float(node)
    if not math.isfinite(value):
        raise PayloadError("non_finite", "value is not finite")
    return value


class PayloadAssembler:
    """Keeps the newest value of every mapped quantity and builds readings from them.

    A message updates the quantities mapped to its topic (all or none: a payload with one bad
    value is rejected whole). A reading is built when a message brings power and every power
    quantity is at most `max_age_s` old; other quantities join while they are that fresh.
    """

    def __init__(self, mappings: Sequence[ValueMapping], *, invert: bool, max_age_s: float) -> None:
        self._by_topic: dict[str, list[ValueMapping]] = {}
        for mapping in mappings:
            self._by_topic.setdefault(mapping.topic, []).append(mapping)
        self._power_keys = tuple(m.key for m in mappings if m.key in (*PHASE_POWER_KEYS, "power_total"))
        if not self._power_keys:
            raise ValueError("an MQTT meter needs power_total or power_l1..l3")
        self._invert = invert
        self._max_age_s = max_age_s
        self._values: dict[str, tuple[float, float]] = {}
        """key → (value in table units, arrival time s)."""

    @property
    def topics(self) -> tuple[str, ...]:
        """The topics to subscribe to."""
        return tuple(self._by_topic)

    def accept(self, topic: str, payload: bytes, now_s: float) -> MeterReading | None:
        """Take one message; the new reading when it completes one, else None; PayloadError for garbage."""
        mappings = self._by_topic.get(topic)
        if mappings is None:
            return None
        fresh = {m.key: extract(payload, m.path) * m.scale for m in mappings}
        for key, value in fresh.items():
            try:
                check_value(key, value)
            except ValueError:
                raise PayloadError("implausible", f"{key} = {value:g} is physically impossible") from None
        for key, value in fresh.items():
            self._values[key] = (value, now_s)
        if not any(key in fresh for key in self._power_keys):
            return None
        current = {k: v for k, (v, at_s) in self._values.items() if now_s - at_s <= self._max_age_s}
        if not all(key in current for key in self._power_keys):
            return None
        return reading_from_values(current, invert=self._invert)
