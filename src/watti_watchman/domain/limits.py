"""Battery power limits: SOC step tables, BMS current × voltage, inverter maxima and mode.

Safe defaults (documented in docs/CONFIGURATION.md through the config model):

- a table left out of the configuration is `DEFAULT_CHARGE_LIMITS_W` / `DEFAULT_DISCHARGE_LIMITS_W`
  (1 kW charge at any SOC; 1 kW discharge down to 10 % SOC, none below) — never "unlimited";
- a SOC that no table entry covers gives 0 W for that direction;
- SOC unknown (None, non-finite, outside 0..100): no discharge, and charging only within the
  smallest configured charge limit;
- BMS limits (charge/discharge current × voltage) under the policy `BmsPolicy`: `required` treats
  missing or invalid limits like an unknown SOC; `ignore` never uses them; `auto` enforces them
  while reported, lets the SOC tables and inverter maxima govern when the installation has not
  reported them for `Tuning.bms_wait_s` of fresh battery status since start, and treats limits
  that were reported and then vanish or turn invalid like an unknown SOC (`BmsUse`).
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from watti_watchman.domain.readings import BatteryStatus
from watti_watchman.domain.settings import Mode

DEFAULT_CHARGE_LIMITS_W: Mapping[float, float] = {0.0: 1000.0}
DEFAULT_DISCHARGE_LIMITS_W: Mapping[float, float] = {100.0: 1000.0, 10.0: 0.0}
BmsPolicy = Literal["auto", "required", "ignore"]


class LimitSource(StrEnum):
    """Which constraint sets a direction's limit."""

    INVERTER = "inverter"
    SOC_TABLE = "soc_table"
    BMS = "bms"
    MODE = "mode"
    SOC_UNKNOWN = "soc_unknown"
    BMS_UNKNOWN = "bms_unknown"


class BmsUse(StrEnum):
    """How BMS limits take part in the limits now, and why."""

    ENFORCED = "enforced"
    """Reported and valid: enforced (policies auto and required)."""
    WAITING = "waiting"
    """auto: not reported (yet) since start: safe default until `bms_wait_s` has passed."""
    ABSENT = "absent"
    """auto: never reported: SOC tables and inverter maxima govern."""
    MISSING = "missing"
    """required: not reported or invalid; auto: reported before, now vanished or invalid. Safe default."""
    IGNORED = "ignored"
    """ignore: never used."""


@dataclass(frozen=True, slots=True)
class SocTable:
    """Step table SOC (%) → power limit (W, >= 0), sorted by SOC."""

    points: tuple[tuple[float, float], ...]

    @classmethod
    def from_mapping(cls, table: Mapping[str, float] | Mapping[float, float]) -> "SocTable":
        """Build from a config mapping (keys are SOC % as strings or numbers, values W)."""
        points = sorted((float(soc), float(power_w)) for soc, power_w in table.items())
        for soc, power_w in points:
            if not (0.0 <= soc <= 100.0 and math.isfinite(power_w) and power_w >= 0.0):
                raise ValueError(f"invalid SOC table entry {soc:g} % → {power_w:g} W")
        return cls(tuple(points))

    def charge_limit_w(self, soc_percent: float) -> float:
        """Entry with the largest SOC key <= `soc_percent` (W); 0 when none applies."""
        limit_w = 0.0
        for soc, power_w in self.points:
            if soc <= soc_percent:
                limit_w = power_w
        return limit_w

    def discharge_limit_w(self, soc_percent: float) -> float:
        """Entry with the smallest SOC key >= `soc_percent` (W); 0 when none applies."""
        for soc, power_w in self.points:
            if soc >= soc_percent:
                return power_w
        return 0.0

    def smallest_w(self) -> float:
        """The smallest limit in the table (W); 0 for an empty table."""
        return min((power_w for _, power_w in self.points), default=0.0)


@dataclass(frozen=True, slots=True)
class LimitConfig:
    """Configured limits: SOC tables and inverter maxima (W, >= 0)."""

    charge_table: SocTable
    discharge_table: SocTable
    inverter_max_charge_w: float
    inverter_max_discharge_w: float
    bms_policy: BmsPolicy = "auto"

    def __post_init__(self) -> None:
        for value in (self.inverter_max_charge_w, self.inverter_max_discharge_w):
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"inverter maximum {value!r} W must be finite and >= 0")


@dataclass(frozen=True, slots=True)
class PowerLimits:
    """Allowed battery power now: charge up to `max_charge_w`, discharge up to `max_discharge_w` (W)."""

    max_charge_w: float
    max_discharge_w: float
    charge_source: LimitSource
    discharge_source: LimitSource
    soc_percent: float | None
    """The SOC the limits were derived from; None when unknown."""
    degraded: LimitSource | None
    """SOC_UNKNOWN or BMS_UNKNOWN while the safe default is in force, else None."""
    bms: BmsUse
    """How BMS limits took part."""


def valid_soc(soc_percent: float | None) -> float | None:
    """The SOC (%) if it is a finite number within 0..100, else None (unknown)."""
    if soc_percent is None or not math.isfinite(soc_percent) or not 0.0 <= soc_percent <= 100.0:
        return None
    return soc_percent


def bms_limits_w(status: BatteryStatus | None) -> tuple[float, float] | None:
    """(charge W, discharge W) from BMS currents × voltage, or None when any is unknown/invalid."""
    if status is None:
        return None
    voltage, charge_a, discharge_a = (
        status.voltage_v,
        status.max_charge_current_a,
        status.max_discharge_current_a,
    )
    if voltage is None or charge_a is None or discharge_a is None:
        return None
    if not (math.isfinite(voltage) and voltage > 0.0):
        return None
    if not (
        math.isfinite(charge_a) and charge_a >= 0.0 and math.isfinite(discharge_a) and discharge_a >= 0.0
    ):
        return None
    return charge_a * voltage, discharge_a * voltage


@dataclass(frozen=True, slots=True)
class BmsTracking:
    """What the policy remembers: limits seen valid since start, fresh status without them (s)."""

    seen: bool = False
    unreported_s: float = 0.0


NO_BMS_SEEN = BmsTracking()
"""Tracking at start."""


def track_bms(
    policy: BmsPolicy, status: BatteryStatus | None, tracking: BmsTracking, dt_s: float, wait_s: float
) -> tuple[BmsUse, BmsTracking]:
    """The BMS limits' use under `policy` now and the updated tracking (`dt_s` since the last call).

    A current limit present but unusable (negative, non-finite, no valid voltage) counts as
    reported: it never lets the tables govern under `auto`.
    """
    if policy == "ignore":
        return BmsUse.IGNORED, tracking
    if bms_limits_w(status) is not None:
        return BmsUse.ENFORCED, BmsTracking(True, 0.0)
    if status is not None and (
        status.max_charge_current_a is not None or status.max_discharge_current_a is not None
    ):
        tracking = BmsTracking(True, 0.0)
    if policy == "required" or tracking.seen:
        return BmsUse.MISSING, tracking
    if status is not None and valid_soc(status.soc_percent) is not None:
        tracking = BmsTracking(False, tracking.unreported_s + dt_s)
    return (BmsUse.ABSENT if tracking.unreported_s >= wait_s else BmsUse.WAITING), tracking


def _tightest(candidates: list[tuple[float, LimitSource]]) -> tuple[float, LimitSource]:
    """The smallest limit; on ties the first listed source wins."""
    return min(candidates, key=lambda candidate: candidate[0])


def power_limits(
    config: LimitConfig, status: BatteryStatus | None, mode: Mode, bms_use: BmsUse
) -> PowerLimits:
    """Combine SOC tables, BMS limits (as `bms_use` says), inverter maxima and mode into limits (W)."""
    soc = valid_soc(None if status is None else status.soc_percent)
    bms = bms_limits_w(status) if bms_use is BmsUse.ENFORCED else None
    bms_unknown = bms_use in (BmsUse.WAITING, BmsUse.MISSING)
    charge: list[tuple[float, LimitSource]] = []
    discharge: list[tuple[float, LimitSource]] = []
    if mode == "discharge":
        charge.append((0.0, LimitSource.MODE))
    if mode == "charge":
        discharge.append((0.0, LimitSource.MODE))
    if soc is None:
        charge.append((config.charge_table.smallest_w(), LimitSource.SOC_UNKNOWN))
        discharge.append((0.0, LimitSource.SOC_UNKNOWN))
    if bms_unknown:
        charge.append((config.charge_table.smallest_w(), LimitSource.BMS_UNKNOWN))
        discharge.append((0.0, LimitSource.BMS_UNKNOWN))
    if soc is not None:
        charge.append((config.charge_table.charge_limit_w(soc), LimitSource.SOC_TABLE))
        discharge.append((config.discharge_table.discharge_limit_w(soc), LimitSource.SOC_TABLE))
    if bms is not None:
        charge.append((bms[0], LimitSource.BMS))
        discharge.append((bms[1], LimitSource.BMS))
    charge.append((config.inverter_max_charge_w, LimitSource.INVERTER))
    discharge.append((config.inverter_max_discharge_w, LimitSource.INVERTER))
    max_charge_w, charge_source = _tightest(charge)
    max_discharge_w, discharge_source = _tightest(discharge)
    degraded = LimitSource.SOC_UNKNOWN if soc is None else LimitSource.BMS_UNKNOWN if bms_unknown else None
    return PowerLimits(max_charge_w, max_discharge_w, charge_source, discharge_source, soc, degraded, bms_use)
