"""The zero feed-in control law: feed-forward S = B − G + T, limited, slewed, trimmed.

Pure: samples, battery status, parameters, the previous state and the elapsed time go in; integer
per-phase setpoints (W, + = charge), the limits in force, a reason and the next state come out.
Whatever the inputs, the setpoints respect the limits: the charging phases sum to at most
`max_charge_w`, the discharging phases to at most `max_discharge_w`.
"""

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from watti_watchman.domain.limits import LimitConfig, LimitSource, PowerLimits, power_limits
from watti_watchman.domain.readings import PHASES, BatteryStatus, Phase, PhaseSetpoints, PowerSample
from watti_watchman.domain.settings import Mode

Regulation = Literal["total", "per_phase"]
MAX_PLAUSIBLE_W = 1_000_000.0
"""Readings beyond ±1 MW are garbage and treated like non-finite ones."""
STEADY_W = 50.0
"""Battery samples closer than this (W, total) mean the battery power is not moving."""


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
    transient_w: float = 200.0
    """A load or command change between decisions, or a grid error, above this: trim frozen (W)."""
    steady_w: float = STEADY_W
    """The battery moving more than this between decisions is still settling: trim frozen (W)."""
    transient_hold_s: float = 1.0
    """The trim integrates only after this long without a transient."""
    max_dt_s: float = 1.0
    """Longer gaps between decisions count as this much time."""

    def __post_init__(self) -> None:
        if not self.phases or len(set(self.phases)) != len(self.phases):
            raise ValueError(f"phases {self.phases!r} must be non-empty and distinct")
        values = (
            self.import_bias_w,
            self.deadband_w,
            self.trim_gain_per_s,
            self.trim_limit_w,
            self.transient_w,
            self.steady_w,
            self.transient_hold_s,
            self.max_dt_s,
            1.0 if self.export_slew_w_per_s is None else self.export_slew_w_per_s,
        )
        if not all(math.isfinite(value) and value >= 0.0 for value in values):
            raise ValueError("law parameters must be finite and >= 0")


@dataclass(frozen=True, slots=True)
class LawState:
    """What the law remembers: setpoints in force (W), trim per phase (W), quiet time (s), load G − B
    and battery B of the last decision (W)."""

    setpoints: PhaseSetpoints
    trim_w: Mapping[Phase, float]
    quiet_s: float
    load: PowerSample | None
    battery: PowerSample | None = None


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


Alignment = Literal["battery_interpolated", "grid_interpolated", "nearest", "extrapolated", "held"]
RESPONSE_S = 0.6
"""After a command change the battery may still be on its way for this long (s): dead time, lag
and the meter window that must show it (the slowest preset needs ≈0.15 + 0.3 + 0.2 s)."""
STEP_W = 200.0
"""A command change larger than this (W, per component) is a step of our own making."""
History = Sequence[tuple[float, PowerSample]]
"""(time s, sample) pairs, oldest first."""


@dataclass(frozen=True, slots=True)
class Pairing:
    """Grid and battery values for one common time; skew = fresh grid time − that time (s)."""

    grid: PowerSample
    battery: PowerSample
    skew_s: float
    alignment: Alignment


def _plausible(sample: PowerSample | None) -> bool:
    """True when every value is finite and within ±MAX_PLAUSIBLE_W."""
    return sample is not None and all(
        math.isfinite(v) and abs(v) <= MAX_PLAUSIBLE_W
        for v in (sample.l1_w, sample.l2_w, sample.l3_w, sample.total_w)
    )


def _lerp(first: PowerSample, second: PowerSample, weight: float) -> PowerSample:
    """Linear interpolation: `weight` 0 gives `first`, 1 gives `second`."""

    def mix(a: float, b: float) -> float:
        return a + (b - a) * weight

    return PowerSample(
        mix(first.l1_w, second.l1_w),
        mix(first.l2_w, second.l2_w),
        mix(first.l3_w, second.l3_w),
        mix(first.total_w, second.total_w),
    )


def _values(sample: PowerSample) -> tuple[float, float, float, float]:
    return (sample.l1_w, sample.l2_w, sample.l3_w, sample.total_w)


@dataclass(frozen=True, slots=True)
class _Geometry:
    """Where the grid window lies relative to the newest battery window (in battery periods)."""

    overlap: float
    """Fraction of the grid window covered by the newest battery window (0..1)."""
    ahead: float
    """Grid window end − newest battery window end."""


def _bounds(
    newest: float, previous: float | None, targets: Sequence[float], geometry: _Geometry
) -> tuple[float, float]:
    """Lowest and highest mean battery power over the grid window (W) consistent with the samples.

    The battery moves monotonically toward the targets (our commands) without overshooting them,
    so it ends up between its newest sample and the farthest target. The newest battery window
    covers the first `overlap` of the grid window: moving up from at least min(previous, newest)
    at its start, its later part can lie at most (newest − (1 − φ)·start)/φ high (φ = overlap);
    the rest of the grid window at most at the target. Moving down likewise.
    """
    phi = geometry.overlap
    high_target = max(newest, *targets)
    low_target = min(newest, *targets)
    upper, lower = high_target, low_target
    if previous is not None and phi > 0.0:
        start_low, start_high = min(previous, newest), max(previous, newest)
        covered_high = min(high_target, (newest - (1.0 - phi) * start_low) / phi)
        covered_low = max(low_target, (newest - (1.0 - phi) * start_high) / phi)
        upper = phi * max(newest, covered_high) + (1.0 - phi) * high_target
        lower = phi * min(newest, covered_low) + (1.0 - phi) * low_target
    return lower, upper


def _estimate_battery(
    grid: float,
    newest: float,
    previous: float | None,
    earlier: float | None,
    geometry: _Geometry,
    targets: Sequence[float],
    own_step: bool,
    load: float | None,
    steady_w: float,
) -> tuple[float, bool]:
    """One component of the mean battery power over the grid window (W) and whether it was held.

    `newest`/`previous`/`earlier`: the last three battery windows; `targets`: the battery powers the commands
    in force and written since drive it to (setpoint − trim); `own_step`: one of those commands
    was a step of our own within the response time; `load`: the previous decision's G − B.

    `_bounds` gives the interval the battery must lie in. Point estimate: the battery's own trend
    extrapolated to the grid window (linear while it moves at a steady rate, as on a slew limit;
    shrunk by the ratio of its last two movements while it decelerates into a lag), kept inside
    the interval (never beyond a command). After a step of our own the response may not show in
    any battery window yet, so the trend says nothing: then, if the previous load G − B is
    consistent with the interval, it is kept (the battery's movement explains the grid's; the
    command stands, as it would with synchronised meters); if not, the load provably changed and
    the point estimate is used. No plant dynamics are assumed beyond "moves toward the command,
    monotonically", and an estimate that was wrong does not drive the next command further the
    same way: no ringing.
    """
    trend = newest
    if previous is not None and abs(newest - previous) >= steady_w:
        step = newest - previous
        if earlier is not None and (previous - earlier) * step > 0.0:
            step *= min(1.0, step / (previous - earlier))
        trend = newest + step * geometry.ahead
    if not targets:
        return trend, False
    lower, upper = _bounds(newest, previous, targets, geometry)
    if own_step and load is not None and lower <= grid - load <= upper:
        return grid - load, True
    return min(upper, max(lower, trend)), False


def pair(
    grid: History,
    battery: History,
    now_s: float,
    max_age_s: float,
    steady_w: float = STEADY_W,
    *,
    commands: History | None = None,
    load: PowerSample | None = None,
    response_s: float = RESPONSE_S,
    step_w: float = STEP_W,
) -> Pairing | None:
    """Align the newest grid sample with the battery series (samples older than `max_age_s` ignored).

    Battery samples bracketing the grid time: interpolate the battery to the grid time. Otherwise,
    with the command history (`commands`: write time, battery power each write drives to, i.e.
    setpoint − trim) see `_estimate_battery`; `load` is the previous decision's G − B. Without it
    (nothing written yet, dry run): battery steady (its last two samples differ by less than
    `steady_w`): the newest battery sample still holds at the grid time; battery moving:
    interpolate the grid to the newest battery time, so both describe the same instant. None when
    either series has no fresh sample.
    """
    fresh_grid = [(at_s, sample) for at_s, sample in grid if now_s - at_s <= max_age_s]
    fresh = [(at_s, sample) for at_s, sample in battery if now_s - at_s <= max_age_s]
    if not fresh_grid or not fresh:
        return None
    grid_at_s, grid_sample = fresh_grid[-1]
    for (t0, s0), (t1, s1) in itertools.pairwise(fresh):
        if t0 <= grid_at_s <= t1 and t1 > t0:
            battery_sample = _lerp(s0, s1, (grid_at_s - t0) / (t1 - t0))
            return Pairing(grid_sample, battery_sample, 0.0, "battery_interpolated")
    battery_at_s, battery_sample = fresh[-1]
    if commands is not None and battery_at_s < grid_at_s:
        return _estimate(fresh_grid, grid_sample, fresh, commands, load, response_s, steady_w, step_w)
    moving = len(fresh) >= 2 and not abs(battery_sample.total_w - fresh[-2][1].total_w) < steady_w
    if moving and len(fresh_grid) >= 2:
        previous_at_s, previous = fresh_grid[-2]
        if previous_at_s <= battery_at_s < grid_at_s:
            weight = (battery_at_s - previous_at_s) / (grid_at_s - previous_at_s)
            aligned = _lerp(previous, grid_sample, weight)
            return Pairing(aligned, battery_sample, grid_at_s - battery_at_s, "grid_interpolated")
    battery_at_s, battery_sample = min(fresh, key=lambda item: abs(grid_at_s - item[0]))
    return Pairing(grid_sample, battery_sample, grid_at_s - battery_at_s, "nearest")


def _estimate(
    grid: History,
    grid_sample: PowerSample,
    fresh: History,
    commands: History,
    load: PowerSample | None,
    response_s: float,
    steady_w: float,
    step_w: float,
) -> Pairing:
    """The battery over the grid window from its samples and our own command history."""
    grid_at_s = grid[-1][0]
    battery_at_s, newest = fresh[-1]
    previous: PowerSample | None = None
    earlier: PowerSample | None = None
    geometry = _Geometry(0.0, 0.0)
    if len(fresh) >= 2 and fresh[-1][0] > fresh[-2][0]:
        previous = fresh[-2][1]
        earlier = fresh[-3][1] if len(fresh) >= 3 else None
        period_s = fresh[-1][0] - fresh[-2][0]
        overlap = (battery_at_s - grid_at_s + period_s) / period_s
        geometry = _Geometry(min(1.0, max(0.0, overlap)), (grid_at_s - battery_at_s) / period_s)
    since_s = grid_at_s - response_s
    chain = [sample for at_s, sample in commands if at_s <= since_s][-1:]
    recent = [sample for at_s, sample in commands if at_s > since_s]
    before = chain or [fresh[0][1]]
    """What the battery was told (or, before any write, did) before the recent commands."""
    chain.extend(recent)
    usable = load if _plausible(load) else None
    values: list[float] = []
    held = False
    for index in range(4):
        targets = [_values(sample)[index] for sample in chain]
        told = [_values(sample)[index] for sample in (*before, *recent)]
        steps = itertools.pairwise(told) if recent else ()
        value, component_held = _estimate_battery(
            _values(grid_sample)[index],
            _values(newest)[index],
            None if previous is None else _values(previous)[index],
            None if earlier is None else _values(earlier)[index],
            geometry,
            targets,
            any(abs(b - a) > step_w for a, b in steps),
            None if usable is None else _values(usable)[index],
            steady_w,
        )
        values.append(value)
        held = held or component_held
    estimate = PowerSample(values[0], values[1], values[2], values[3])
    return Pairing(grid_sample, estimate, grid_at_s - battery_at_s, "held" if held else "extrapolated")


def _deviation_w(first: PowerSample, second: PowerSample) -> tuple[float, float, float, float]:
    """Absolute differences per phase and of the totals (W)."""
    return (
        abs(first.l1_w - second.l1_w),
        abs(first.l2_w - second.l2_w),
        abs(first.l3_w - second.l3_w),
        abs(first.total_w - second.total_w),
    )


def _input_failure(inputs: LawInputs) -> Reason | None:
    """The failsafe reason when the inputs cannot be computed on, else None."""
    if not math.isfinite(inputs.target_w) or abs(inputs.target_w) > MAX_PLAUSIBLE_W:
        return Reason.TARGET_INVALID
    if inputs.grid is None:
        return Reason.GRID_STALE
    if not _plausible(inputs.grid):
        return Reason.GRID_INVALID
    if inputs.battery is None:
        return Reason.BATTERY_STALE
    if not _plausible(inputs.battery):
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
        setpoints = _split_total(int(limited[0]), len(params.phases))
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


def decide(params: LawParameters, inputs: LawInputs, state: LawState) -> LawOutput:
    """One decision of the law; pure and total (any inputs give setpoints within the limits)."""
    limits = power_limits(params.limits, inputs.status, inputs.mode)
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
            LawState(zero, trim, 0.0, None),
        )
    grid, battery = inputs.grid, inputs.battery
    dt_s = min(inputs.dt_s, params.max_dt_s) if math.isfinite(inputs.dt_s) and inputs.dt_s > 0 else 0.0
    target_w = inputs.target_w + params.import_bias_w
    if params.regulation == "total":
        raw_w = battery.total_w - grid.total_w + target_w + sum(trim.values())
        wanted = [raw_w]
    else:
        count = len(phases)
        wanted = [battery.phase_w(p) - grid.phase_w(p) + target_w / count + trim[p] for p in phases]
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
        state.load is None
        or max(_deviation_w(load, state.load)) > params.transient_w
        or max(abs(new - old) for new, old in zip(setpoints, previous, strict=True)) > params.transient_w
        or abs(sum(setpoints) - sum(previous)) > params.transient_w
        or state.battery is None
        or max(_deviation_w(battery, state.battery)) > params.steady_w
    )
    quiet_s = 0.0 if transient else state.quiet_s + dt_s
    target = PowerSample(target_w / 3, target_w / 3, target_w / 3, target_w)
    frozen = (
        command.charge_clamped
        or command.discharge_clamped
        or command.slewed
        or max(_deviation_w(grid, target)) > params.transient_w
    )
    if params.trim_gain_per_s > 0 and not frozen and quiet_s >= params.transient_hold_s:
        trim = _next_trim(params, grid, target_w, trim, dt_s)
    result = dict(zip(phases, setpoints, strict=True))
    return LawOutput(
        result,
        _reason(command, limits),
        limits,
        raw_w,
        grid.total_w,
        battery.total_w,
        load.total_w,
        sum(trim.values()),
        LawState(result, trim, quiet_s, load, battery),
    )
