"""Pairing: the grid sample and the battery power over the same window, from their timed series.

Pure. Inputs are (time s, sample) series whose times are what the meters' adapters publish (the
time each sample describes); nothing else about the meters is assumed.
"""

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from watti_watchman.domain.readings import PowerSample, plausible
from watti_watchman.domain.tuning import TUNING, Tuning

Alignment = Literal["battery_interpolated", "nearest", "extrapolated", "held"]

History = Sequence[tuple[float, PowerSample]]
"""(time s, sample) pairs, oldest first."""


@dataclass(frozen=True, slots=True)
class Pairing:
    """Grid and battery values for one common time; skew = fresh grid time − that time (s)."""

    grid: PowerSample
    battery: PowerSample
    skew_s: float
    alignment: Alignment


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
    shrunk by the ratio of its last two movements while it decelerates into a lag; from rest, as a
    ramp that began inside the newest window, since that window's mean lags its end), kept inside
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
        if earlier is not None and abs(previous - earlier) < steady_w:
            # Steady until the newest window: the movement began inside it, so that window's mean
            # shows at most half of a ramp from its start (the level at its end is ≥ 2 × step away).
            trend = previous + 2.0 * step * (geometry.ahead + 0.5)
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
    *,
    commands: History,
    load: PowerSample | None,
    tuning: Tuning = TUNING,
) -> Pairing | None:
    """Align the newest grid sample with the battery series (samples older than `max_age_s` ignored).

    Battery samples bracketing the grid time: the battery interpolated to the grid time. Newest
    battery sample older than the grid's: the battery over the grid window estimated from its
    samples and our command history (`commands`: write time, battery power each write drives to,
    i.e. setpoint − trim; empty before the first write), see `_estimate_battery`; `load` is the
    previous decision's G − B. Every battery sample newer than the grid's: the nearest one. None
    when either series has no fresh sample.
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
    if fresh[-1][0] < grid_at_s:
        return _estimate(grid_at_s, grid_sample, fresh, commands, load, tuning)
    battery_at_s, battery_sample = fresh[0]
    return Pairing(grid_sample, battery_sample, grid_at_s - battery_at_s, "nearest")


def _estimate(
    grid_at_s: float,
    grid_sample: PowerSample,
    fresh: History,
    commands: History,
    load: PowerSample | None,
    tuning: Tuning,
) -> Pairing:
    """The battery over the grid window from its samples and our own command history."""
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
    since_s = grid_at_s - tuning.response_s
    chain = [sample for at_s, sample in commands if at_s <= since_s][-1:]
    recent = [sample for at_s, sample in commands if at_s > since_s]
    before = chain or [fresh[0][1]]
    """What the battery was told (or, before any write, did) before the recent commands."""
    chain.extend(recent)
    usable = load if plausible(load) else None
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
            any(abs(b - a) > tuning.step_w for a, b in steps),
            None if usable is None else _values(usable)[index],
            tuning.steady_w,
        )
        values.append(value)
        held = held or component_held
    estimate = PowerSample(values[0], values[1], values[2], values[3])
    return Pairing(grid_sample, estimate, grid_at_s - battery_at_s, "held" if held else "extrapolated")
