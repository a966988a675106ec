"""The zero feed-in control law: feed-forward S = B − G + T, limited, slewed, trimmed.

Pure: paired samples, battery status, parameters, the previous state and the elapsed time go in;
integer per-phase setpoints (W, + = charge), the limits in force, a reason and the next state come
out. Whatever the inputs, the setpoints respect the limits: the charging phases sum to at most
`max_charge_w`, the discharging phases to at most `max_discharge_w`.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

from watti_watchman.domain.limits import (
    NO_BMS_SEEN,
    BmsTracking,
    LimitConfig,
    LimitSource,
    PowerLimits,
    power_limits,
    track_bms,
)
from watti_watchman.domain.readings import (
    MAX_PLAUSIBLE_W,
    PHASES,
    BatteryStatus,
    Phase,
    PhaseSetpoints,
    PowerSample,
    plausible,
)
from watti_watchman.domain.settings import Mode
from watti_watchman.domain.tuning import TUNING, Tuning

Regulation = Literal["total", "per_phase"]


class Reason(StrEnum):
    """Why the setpoint is what it is (one per decision)."""

    REGULATING = "regulating"
    CHARGE_LIMITED = "charge_limited"
    DISCHARGE_LIMITED = "discharge_limited"
    MODE_BLOCKED = "mode_blocked"
    SLEW_LIMITED = "slew_limited"
    SOC_UNKNOWN = "soc_unknown"
    BMS_UNKNOWN = "bms_unknown"
    GRID_STALE = "grid_stale"
    GRID_INVALID = "grid_invalid"
    BATTERY_STALE = "battery_stale"
    BATTERY_INVALID = "battery_invalid"
    TARGET_INVALID = "target_invalid"


FAILSAFE_REASONS = frozenset(
    {
        Reason.GRID_STALE,
        Reason.GRID_INVALID,
        Reason.BATTERY_STALE,
        Reason.BATTERY_INVALID,
        Reason.TARGET_INVALID,
    }
)
"""Reasons for which nothing was computed and every controlled phase is set to 0 W."""


@dataclass(frozen=True, slots=True)
class LawParameters:
    """Static parameters of the law (W, W/s, 1/s, s); validated on construction."""

    limits: LimitConfig
    phases: tuple[Phase, ...] = PHASES
    regulation: Regulation = "total"
    import_bias_w: float = 0.0
    export_slew_w_per_s: float | None = None
    deadband_w: float = 0.0
    trim_gain_per_s: float = 0.0
    trim_limit_w: float = 0.0
    tuning: Tuning = TUNING

    def __post_init__(self) -> None:
        if not self.phases or len(set(self.phases)) != len(self.phases):
            raise ValueError(f"phases {self.phases!r} must be non-empty and distinct")
        values = (
            self.import_bias_w,
            self.deadband_w,
            self.trim_gain_per_s,
            self.trim_limit_w,
            1.0 if self.export_slew_w_per_s is None else self.export_slew_w_per_s,
        )
        if not all(math.isfinite(value) and value >= 0.0 for value in values):
            raise ValueError("law parameters must be finite and >= 0")


@dataclass(frozen=True, slots=True)
class GainLearning:
    """What the law has learned about the actuator: a Multi that delivers g × setpoint needs the
    feed-forward scaled by 1 + correction (≈ 1/g − 1); the trim keeps only the offset."""

    correction: float = 0.0
    settled_s: float = 0.0
    """How long the trim has been converged (s)."""
    reference: tuple[float, float] | None = None
    """(total feed-forward W, total trim W) at the last converged operating point."""


NOTHING_LEARNED = GainLearning()
"""Learning at start."""


@dataclass(frozen=True, slots=True)
class LawState:
    """What the law remembers: setpoints in force (W), trim per phase (W), quiet time (s), load G − B
    and battery B of the last decision (W), what the BMS policy has seen, the actuator's gain."""

    setpoints: PhaseSetpoints
    trim_w: Mapping[Phase, float]
    quiet_s: float
    load: PowerSample | None
    battery: PowerSample | None = None
    bms: BmsTracking = NO_BMS_SEEN
    gain: GainLearning = NOTHING_LEARNED
    held_s: float = 0.0
    """How long the setpoints in force have stood (s); changes up to a quarter of
    `Tuning.actuator_error_w` (rounding, the integrator's creep) do not count."""


def initial_state(phases: Sequence[Phase]) -> LawState:
    """State before the first decision: 0 W everywhere, no trim, in transient."""
    return LawState(dict.fromkeys(phases, 0), dict.fromkeys(phases, 0.0), 0.0, None)


@dataclass(frozen=True, slots=True)
class LawInputs:
    """One decision's inputs: aligned samples (None = stale/missing), status, runtime target/mode, dt (s)."""

    grid: PowerSample | None
    battery: PowerSample | None
    status: BatteryStatus | None
    target_w: float
    mode: Mode
    dt_s: float


@dataclass(frozen=True, slots=True)
class LawOutput:
    """One decision: integer setpoints per controlled phase (W) and what led to them."""

    setpoints: PhaseSetpoints
    reason: Reason
    limits: PowerLimits
    raw_w: float | None
    """Total command before limits, slew and deadband (W); None when nothing was computed."""
    grid_w: float | None
    battery_w: float | None
    load_w: float | None
    """Estimated uncontrolled power D = G − B (W, total)."""
    trim_w: float
    state: LawState

    @property
    def failsafe(self) -> bool:
        """True when the inputs were unusable and the setpoints were forced to 0 W."""
        return self.reason in FAILSAFE_REASONS

    @property
    def total_w(self) -> int:
        """Sum of the setpoints (W)."""
        return sum(self.setpoints.values())


def _regulated(params: LawParameters, sample: PowerSample) -> list[float]:
    """What the law regulates (W): the total in `total` mode, each controlled phase in `per_phase`."""
    if params.regulation == "total":
        return [sample.total_w]
    return [sample.phase_w(phase) for phase in params.phases]


def _changed(params: LawParameters, new: PowerSample, old: PowerSample | None, threshold_w: float) -> bool:
    """True when any regulated quantity differs by more than `threshold_w` (or there is no `old`)."""
    if old is None:
        return True
    pairs = zip(_regulated(params, new), _regulated(params, old), strict=True)
    return any(abs(a - b) > threshold_w for a, b in pairs)


def _input_failure(inputs: LawInputs) -> Reason | None:
    """The failsafe reason when the inputs cannot be computed on, else None."""
    if not math.isfinite(inputs.target_w) or abs(inputs.target_w) > MAX_PLAUSIBLE_W:
        return Reason.TARGET_INVALID
    if inputs.grid is None:
        return Reason.GRID_STALE
    if not plausible(inputs.grid):
        return Reason.GRID_INVALID
    if inputs.battery is None:
        return Reason.BATTERY_STALE
    if not plausible(inputs.battery):
        return Reason.BATTERY_INVALID
    return None


def _split_total(total_w: int, count: int) -> list[int]:
    """Split an integer total over `count` phases; parts differ by at most 1 W, sum is exact."""
    base = int(total_w / count)
    remainder = total_w - base * count
    step = 1 if remainder > 0 else -1
    return [base + (step if index < abs(remainder) else 0) for index in range(count)]


def _within(setpoints: Sequence[int], limits: PowerLimits) -> bool:
    """True when the charging phases and discharging phases each stay within the limits."""
    charge = sum(v for v in setpoints if v > 0)
    discharge = -sum(v for v in setpoints if v < 0)
    return charge <= limits.max_charge_w and discharge <= limits.max_discharge_w


def _enforce(setpoints: list[int], limits: PowerLimits) -> list[int]:
    """Last guard against rounding: shave 1 W off the largest offender until within the limits."""
    result = list(setpoints)
    while sum(v for v in result if v > 0) > limits.max_charge_w:
        index = max(range(len(result)), key=lambda i: result[i])
        result[index] -= 1
    while -sum(v for v in result if v < 0) > limits.max_discharge_w:
        index = min(range(len(result)), key=lambda i: result[i])
        result[index] += 1
    return result


@dataclass(frozen=True, slots=True)
class _Command:
    """Integer setpoints per controlled phase and what shaped them."""

    setpoints: list[int]
    raw_w: float
    charge_clamped: bool
    discharge_clamped: bool
    slewed: bool


def _shape(
    params: LawParameters,
    wanted: list[float],
    raw_w: float,
    limits: PowerLimits,
    state: LawState,
    dt_s: float,
) -> _Command:
    """Apply export slew, limits and integer rounding to the wanted per-phase (or total) command."""
    slewed = False
    if params.export_slew_w_per_s is not None:
        previous = [state.setpoints.get(phase, 0) for phase in params.phases]
        if params.regulation == "total":
            floor_w = sum(previous) - params.export_slew_w_per_s * dt_s
            if wanted[0] < floor_w:
                wanted, slewed = [floor_w], True
        else:
            step_w = params.export_slew_w_per_s * dt_s / len(params.phases)
            slewed_wanted = [max(w, p - step_w) for w, p in zip(wanted, previous, strict=True)]
            slewed = slewed_wanted != wanted
            wanted = slewed_wanted
    charging = sum(w for w in wanted if w > 0)
    discharging = -sum(w for w in wanted if w < 0)
    charge_clamped = charging > limits.max_charge_w
    discharge_clamped = discharging > limits.max_discharge_w
    charge_factor = limits.max_charge_w / charging if charge_clamped else 1.0
    discharge_factor = limits.max_discharge_w / discharging if discharge_clamped else 1.0
    limited = [w * (charge_factor if w > 0 else discharge_factor) for w in wanted]
    if params.regulation == "total":
        # Clamped exactly: w × (limit / w) can come out a hair inside the limit and truncate 1 W short.
        total_w = min(limits.max_charge_w, max(-limits.max_discharge_w, wanted[0]))
        setpoints = _split_total(int(total_w), len(params.phases))
    else:
        setpoints = [int(w) for w in limited]
    return _Command(_enforce(setpoints, limits), raw_w, charge_clamped, discharge_clamped, slewed)


def _reason(command: _Command, limits: PowerLimits) -> Reason:
    """The most important explanation of a computed decision."""
    if limits.degraded is LimitSource.SOC_UNKNOWN:
        return Reason.SOC_UNKNOWN
    if limits.degraded is LimitSource.BMS_UNKNOWN:
        return Reason.BMS_UNKNOWN
    if command.charge_clamped:
        return Reason.MODE_BLOCKED if limits.charge_source is LimitSource.MODE else Reason.CHARGE_LIMITED
    if command.discharge_clamped:
        if limits.discharge_source is LimitSource.MODE:
            return Reason.MODE_BLOCKED
        return Reason.DISCHARGE_LIMITED
    if command.slewed:
        return Reason.SLEW_LIMITED
    return Reason.REGULATING


def _next_trim(
    params: LawParameters,
    grid: PowerSample,
    target_w: float,
    trim: Mapping[Phase, float],
    dt_s: float,
) -> dict[Phase, float]:
    """Integrate the grid error T − G into the per-phase trim (W), bounded by ±trim_limit/phases.

    A small import (less than the deadband) is what the deadband itself holds: integrating it would
    only push the command past the deadband toward export and back, so it counts as no error.
    """
    count = len(params.phases)
    bound_w = params.trim_limit_w / count
    result: dict[Phase, float] = {}
    for phase in params.phases:
        if params.regulation == "total":
            error_w = target_w - grid.total_w
        else:
            error_w = target_w / count - grid.phase_w(phase)
        if -params.deadband_w < error_w < 0.0:
            error_w = 0.0
        if params.regulation == "total":
            error_w /= count
        value = trim.get(phase, 0.0) + params.trim_gain_per_s * dt_s * error_w
        result[phase] = min(bound_w, max(-bound_w, value))
    return result


def _observed_trim(
    params: LawParameters, battery: PowerSample, state: LawState, dt_s: float
) -> dict[Phase, float] | None:
    """The trim that makes the actuator model true for a battery settled on the setpoints in force.

    The law commands S = (B − G + T) × (1 + c) + trim, i.e. it expects the battery to deliver
    (S − trim) / (1 + c). Once the setpoints have stood for the response time, nothing moved for
    the transient hold and the battery moved less than half of `actuator_error_w` since the last
    decision, the battery meter shows what the actuator delivers for them: trim = S − B × (1 + c)
    is the actuator's error at this operating point, read off the battery meter alone (the load
    does not enter it), where the integrator would take seconds to find it from the grid (a Multi's
    offset, seen even while the command is clamped at 0 W; the share of a step its gain error
    leaves). It is also the integrator's fixed point, so the two never pull apart. Taken only
    where the battery delivers less charge (more discharge) than the trim expects by more than
    `actuator_error_w`, i.e. where the error exports; an error toward import stays the
    integrator's, like everything the deadband holds (per phase: only phases short that way move).
    None when not settled, not short that way, or beyond the trim limit: that is a battery not
    following (full, empty, BMS), not an actuator error.
    """
    tuning = params.tuning
    if (
        params.trim_gain_per_s <= 0.0
        or state.held_s + dt_s < tuning.response_s
        or state.quiet_s + dt_s < tuning.transient_hold_s
        or _changed(params, battery, state.battery, tuning.actuator_error_w / 2)
    ):
        return None
    scale = 1.0 + state.gain.correction
    count = len(params.phases)
    bound_w = params.trim_limit_w / count
    if params.regulation == "total":
        in_force_w = sum(state.setpoints.get(phase, 0) for phase in params.phases)
        shares = dict.fromkeys(params.phases, (in_force_w - battery.total_w * scale) / count)
    else:
        shares = {p: state.setpoints.get(p, 0) - battery.phase_w(p) * scale for p in params.phases}
    if any(abs(value) > bound_w for value in shares.values()):
        return None
    trim = {p: state.trim_w.get(p, 0.0) for p in params.phases}
    if params.regulation == "total":
        short_w = sum(shares.values()) - sum(trim.values())
        return shares if short_w > tuning.actuator_error_w else None
    if max(shares[p] - trim[p] for p in params.phases) <= tuning.actuator_error_w:
        return None
    return {p: max(trim[p], shares[p]) for p in params.phases}


def _learn(
    params: LawParameters,
    gain: GainLearning,
    feed_forward: Mapping[Phase, float],
    trim: dict[Phase, float],
    converged_dt_s: float | None,
) -> tuple[GainLearning, dict[Phase, float]]:
    """Learn the actuator's gain from converged operating points; the updated learning and trim.

    A converged trim holds what the feed-forward (per phase, W) misses at that operating point.
    Between two converged points `learn_step_w` apart, the change of the trim per W of feed-forward
    is the gain error the correction has not covered yet: the correction takes it over (within
    ±`max_gain_correction`) and the trim is re-based so that the command does not jump. Not
    converged (`converged_dt_s` None): nothing is learned.
    """
    tuning = params.tuning
    if converged_dt_s is None:
        return replace(gain, settled_s=0.0), trim
    settled_s = gain.settled_s + converged_dt_s
    if settled_s < tuning.converged_s:
        return replace(gain, settled_s=settled_s), trim
    feed_forward_w, trim_w = sum(feed_forward.values()), sum(trim.values())
    correction = gain.correction
    if gain.reference is not None and abs(feed_forward_w - gain.reference[0]) >= tuning.learn_step_w:
        slope = (trim_w - gain.reference[1]) / (feed_forward_w - gain.reference[0])
        bound = tuning.max_gain_correction
        correction = min(bound, max(-bound, gain.correction + slope))
        learned = correction - gain.correction
        limit_w = params.trim_limit_w / len(params.phases)
        trim = {p: min(limit_w, max(-limit_w, trim[p] - learned * feed_forward[p])) for p in trim}
        trim_w = sum(trim.values())
    return GainLearning(correction, settled_s, (feed_forward_w, trim_w)), trim


def decide(params: LawParameters, inputs: LawInputs, state: LawState) -> LawOutput:
    """One decision of the law; pure and total (any inputs give setpoints within the limits)."""
    tuning = params.tuning
    dt_s = min(inputs.dt_s, tuning.max_dt_s) if math.isfinite(inputs.dt_s) and inputs.dt_s > 0 else 0.0
    bms_use, bms = track_bms(params.limits.bms_policy, inputs.status, state.bms, dt_s, tuning.bms_wait_s)
    limits = power_limits(params.limits, inputs.status, inputs.mode, bms_use)
    phases = params.phases
    trim = {phase: state.trim_w.get(phase, 0.0) for phase in phases}
    failure = _input_failure(inputs)
    if failure is not None or inputs.grid is None or inputs.battery is None:
        zero = dict.fromkeys(phases, 0)
        return LawOutput(
            zero,
            failure or Reason.GRID_STALE,
            limits,
            None,
            None,
            None,
            None,
            sum(trim.values()),
            LawState(zero, trim, 0.0, None, None, bms, replace(state.gain, settled_s=0.0)),
        )
    grid, battery = inputs.grid, inputs.battery
    observed = _observed_trim(params, battery, state, dt_s)
    if observed is not None:
        trim = observed
    target_w = inputs.target_w + params.import_bias_w
    scale = 1.0 + state.gain.correction
    count = len(phases)
    feed_forward = {p: battery.phase_w(p) - grid.phase_w(p) + target_w / count for p in phases}
    feed_forward_w = battery.total_w - grid.total_w + target_w
    if params.regulation == "total":
        raw_w = feed_forward_w * scale + sum(trim.values())
        wanted = [raw_w]
    else:
        wanted = [feed_forward[p] * scale + trim[p] for p in phases]
        raw_w = sum(wanted)
    command = _shape(params, wanted, raw_w, limits, state, dt_s)
    previous = [state.setpoints.get(phase, 0) for phase in phases]
    setpoints = command.setpoints
    largest_change_w = max(abs(new - old) for new, old in zip(setpoints, previous, strict=True))
    total_change_w = abs(sum(setpoints) - sum(previous))
    toward_import = any(new > old for new, old in zip(setpoints, previous, strict=True))
    if (
        not toward_import
        and max(largest_change_w, total_change_w) < params.deadband_w
        and _within(previous, limits)
    ):
        setpoints = previous
    load = PowerSample(
        grid.l1_w - battery.l1_w,
        grid.l2_w - battery.l2_w,
        grid.l3_w - battery.l3_w,
        grid.total_w - battery.total_w,
    )
    transient = (
        _changed(params, load, state.load, tuning.transient_w)
        or _changed(params, battery, state.battery, tuning.steady_w)
        or max(abs(new - old) for new, old in zip(setpoints, previous, strict=True)) > tuning.transient_w
        or abs(sum(setpoints) - sum(previous)) > tuning.transient_w
        or observed is not None
    )
    quiet_s = 0.0 if transient else state.quiet_s + dt_s
    share_w = target_w / count
    l1, l2, l3 = (share_w if phase in phases else 0.0 for phase in PHASES)
    target = PowerSample(l1, l2, l3, target_w)
    frozen = (
        command.charge_clamped
        or command.discharge_clamped
        or command.slewed
        or _changed(params, grid, target, tuning.transient_w)
    )
    integrating = params.trim_gain_per_s > 0 and not frozen and quiet_s >= tuning.transient_hold_s
    if integrating and observed is None:
        trim = _next_trim(params, grid, target_w, trim, dt_s)
    converged = integrating and not _changed(params, grid, target, tuning.converged_w)
    if params.regulation == "total":
        feed_forward = dict.fromkeys(phases, feed_forward_w / count)
    gain, trim = _learn(params, state.gain, feed_forward, trim, dt_s if converged else None)
    result = dict(zip(phases, setpoints, strict=True))
    moved_w = 0.0 if setpoints is previous else max(largest_change_w, total_change_w)
    held_s = state.held_s + dt_s if moved_w <= tuning.actuator_error_w / 4 else 0.0
    return LawOutput(
        result,
        _reason(command, limits),
        limits,
        raw_w,
        grid.total_w,
        battery.total_w,
        load.total_w,
        sum(trim.values()),
        LawState(result, trim, quiet_s, load, battery, bms, gain, held_s),
    )
