"""Every constant that shapes the control law and the battery estimator, in one frozen object."""

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class Tuning:
    """Thresholds and times of the law and the pairing (W, s); validated on construction.

    `response_s` depends on the plant (Multi dead time and lag, battery meter window) and is
    configurable; the others describe what counts as a change and suit any plant.
    """

    response_s: float = 0.6
    """After a command change the battery may still be on its way for this long (s): dead time,
    lag and the meter window that must show it (the slowest preset needs ≈0.15 + 0.3 + 0.2 s)."""
    step_w: float = 200.0
    """A command change larger than this (W, per component) is a step of our own making."""
    transient_w: float = 200.0
    """A load or command change between decisions, or a regulated error, above this: trim frozen (W)."""
    steady_w: float = 50.0
    """Battery samples closer than this (W) mean the battery power is not moving: trim may run,
    and the pairing treats the battery as steady."""
    transient_hold_s: float = 1.0
    """The trim integrates only after this long without a transient (s)."""
    max_dt_s: float = 1.0
    """Longer gaps between decisions count as this much time (s)."""
    converged_w: float = 15.0
    """The regulated error within this (W) while quiet and unclamped: the trim has converged ..."""
    converged_s: float = 2.0
    """... once that has lasted this long (s); converged operating points teach the gain correction."""
    learn_step_w: float = 500.0
    """Two converged operating points this far apart (W, total feed-forward) give a gain estimate."""
    max_gain_correction: float = 0.15
    """The learned actuator gain correction stays within ± this (a Multi within ±13 % of its setpoint)."""
    actuator_error_w: float = 15.0
    """A battery settled on the setpoints in force (unchanged for `response_s`, quiet for
    `transient_hold_s`, moving less than half this between decisions) that delivers more than this
    (W, regulated quantity) less charge / more discharge than the trim expects (an error that
    exports): the trim is set to the error the battery meter shows at once instead of integrating
    toward it (a trim jump counts as a transient). Setpoint changes up to a quarter of this do not
    restart the settling."""
    bms_wait_s: float = 10.0
    """`bms_limits: auto`: fresh battery status without BMS limits for this long since start means
    the installation has none (s); until then the safe default holds."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"tuning {field.name} must be finite and >= 0")


TUNING = Tuning()
"""The defaults."""
