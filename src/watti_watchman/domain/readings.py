"""Typed, frozen readings that cross component boundaries (units in the names)."""

import math
from dataclasses import dataclass
from typing import Literal

Phase = Literal["L1", "L2", "L3"]
PHASES: tuple[Phase, Phase, Phase] = ("L1", "L2", "L3")
MAX_PLAUSIBLE_W = 1_000_000.0
"""Readings beyond ±1 MW are garbage and treated like non-finite ones."""


@dataclass(frozen=True, slots=True)
class PowerSample:
    """Real power of one meter window per phase and summed (W).

    Sign as the meter sees it after its `invert` option: at the grid entry + = import,
    on the battery branch + = into the battery system (charging).
    """

    l1_w: float
    l2_w: float
    l3_w: float
    total_w: float

    def phase_w(self, phase: Phase) -> float:
        """Power of one phase (W)."""
        return {"L1": self.l1_w, "L2": self.l2_w, "L3": self.l3_w}[phase]

    def is_finite(self) -> bool:
        """True when every value is a finite number."""
        return all(math.isfinite(v) for v in (self.l1_w, self.l2_w, self.l3_w, self.total_w))


def plausible(sample: PowerSample | None) -> bool:
    """True when every value is finite and within ±MAX_PLAUSIBLE_W."""
    return sample is not None and all(
        math.isfinite(v) and abs(v) <= MAX_PLAUSIBLE_W
        for v in (sample.l1_w, sample.l2_w, sample.l3_w, sample.total_w)
    )


@dataclass(frozen=True, slots=True)
class BatteryStatus:
    """What the controller needs from the battery system; None = unknown/invalid."""

    soc_percent: float | None
    max_charge_current_a: float | None
    max_discharge_current_a: float | None
    voltage_v: float | None


PhaseSetpoints = dict[Phase, int]
"""Per-phase ESS setpoints (W, integer; + = charge from grid, − = feed in/discharge)."""
