"""Scores of a virtual-time run: energy, RMS error, settling, overshoot and band reversals.

Energy and RMS use the instantaneous total grid power; settling, overshoot and reversals use the
grid meter's 200 ms window averages (what a meter, and therefore any controller, can see).

Disturbance events come from the scenario: every step or cycle edge, and the end of every PV ramp
that changes the power. An event's *segment* runs from the event to the next disturbance (an edge
or the start of a ramp) or the end of the run; ramps themselves are tracking, not settling.
"""

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from watti_watchman.sim.scenario import Scenario
from watti_watchman.sim.virtual import RunResult

BAND_W = 50.0
"""Settled = every window after this within ± this of the target (W)."""
MERGE_S = 1.0
"""Edges closer than this after an event belong to it (a fridge's inrush and its run) (s)."""
STEADY_S = 20.0
"""The steady-state error is the mean over this final stretch of a run (s) ..."""
STEADY_QUIET_S = 25.0
"""... when no disturbance happens in this final stretch (s)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """Scored stretch after a disturbance: from `start_s` to `end_s` (plant s)."""

    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class Score:
    """The figures of one run (Wh, W, s; None where no event applies or it never settled)."""

    export_wh: float
    import_wh: float
    rms_w: float
    settling_s: float | None
    """Longest settling to ±BAND_W over the events; None when there are no events."""
    unsettled: int
    """Segments that ended outside the band."""
    overshoot_w: float | None
    """Largest excursion past the target on the side opposite to a disturbance's first error (W)."""
    reversals: int
    """Most band exits of alternating sign within one segment (≥ 2 means ringing)."""
    writes: int
    steady_error_w: float | None
    """Mean grid − target over the final STEADY_S of the run (W); None when it is not quiet."""


def _edges(scenario: Scenario) -> tuple[list[float], list[tuple[float, float]]]:
    """(step and cycle edges, (start, end) of each ramp that changes the power) in plant s."""
    duration_s = scenario.duration_s
    edges: list[float] = []
    for step in scenario.steps:
        edges.append(step.at_s)
        if step.duration_s is not None:
            edges.append(step.at_s + step.duration_s)
    for cycle in scenario.cycles:
        period_s = cycle.on_s + cycle.off_s
        for index in range(math.ceil((duration_s - cycle.start_s) / period_s) + 1):
            edges.extend((cycle.start_s + index * period_s, cycle.start_s + index * period_s + cycle.on_s))
    ramps = [(r.from_s, r.to_s) for r in scenario.pv_ramps if r.from_w != r.to_w]
    return sorted(t for t in edges if 0.0 < t < duration_s), ramps


def segments(scenario: Scenario) -> list[Segment]:
    """Settling segments of the scenario (empty when nothing happens in it)."""
    edges, ramps = _edges(scenario)
    ramp_starts = {from_s for from_s, _ in ramps}
    starts: list[float] = []
    for at_s in sorted({*edges, *(to_s for _, to_s in ramps if to_s < scenario.duration_s)}):
        if not starts or at_s - starts[-1] >= MERGE_S:
            starts.append(at_s)
    result = []
    for at_s in starts:
        later = [t for t in (*starts, *ramp_starts) if t > at_s]
        result.append(Segment(at_s, min(later, default=scenario.duration_s)))
    return result


def _reversals(errors: Sequence[float]) -> int:
    """Band exits of alternating sign in a series of errors (W)."""
    signs = [1 if e > BAND_W else -1 for e in errors if abs(e) > BAND_W]
    return sum(1 for a, b in itertools.pairwise(signs) if a != b)


def _overshoot_w(errors: Sequence[float]) -> float:
    """Excursion past zero after the largest error, on its opposite side (W, >= 0)."""
    if not errors:
        return 0.0
    peak = max(range(len(errors)), key=lambda i: abs(errors[i]))
    sign = 1.0 if errors[peak] > 0 else -1.0
    return max((0.0, *(-sign * e for e in errors[peak:])))


def score(result: RunResult) -> Score:
    """Score a run against its target."""
    trace, target_w = result.trace, result.target_w
    grid = trace.grid_w
    rms_w = math.sqrt(sum((g - target_w) ** 2 for g in grid) / len(grid)) if grid else 0.0
    windows = [(end_s, w - target_w) for end_s, w in trace.grid_windows]
    parts = segments(result.scenario) or [Segment(0.0, result.scenario.duration_s)]
    settling: list[float] = []
    overshoots: list[float] = []
    reversals = unsettled = 0
    events = bool(segments(result.scenario))
    for part in parts:
        inside = [(t, e) for t, e in windows if part.start_s < t <= part.end_s + 1e-9]
        errors = [e for _, e in inside]
        reversals = max(reversals, _reversals(errors))
        if not events or not inside:
            continue
        overshoots.append(_overshoot_w(errors))
        if abs(errors[-1]) > BAND_W:
            unsettled += 1
            continue
        outside = [t for t, e in inside if abs(e) > BAND_W]
        settling.append(max(outside, default=part.start_s) - part.start_s)
    return Score(
        trace.export_wh,
        trace.import_wh,
        rms_w,
        max(settling) if settling else None,
        unsettled,
        max(overshoots) if overshoots else None,
        reversals,
        trace.writes,
        _steady_error_w(result.scenario, windows),
    )


def _steady_error_w(scenario: Scenario, windows: Sequence[tuple[float, float]]) -> float | None:
    """Mean error of the windows in the final STEADY_S (W), if no disturbance precedes them closely."""
    edges, ramps = _edges(scenario)
    disturbances = [*edges, *(t for ramp in ramps for t in ramp)]
    quiet_from_s = scenario.duration_s - STEADY_QUIET_S
    if scenario.cycles or scenario.loop or quiet_from_s < 0 or any(t > quiet_from_s for t in disturbances):
        return None
    tail = [e for t, e in windows if t > scenario.duration_s - STEADY_S]
    return sum(tail) / len(tail) if tail else None
