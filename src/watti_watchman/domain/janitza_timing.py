"""When to read a meter that refreshes its registers on its own clock (pure logic, time injected).

A Janitza's 200 ms window is 10 grid cycles: its period follows grid frequency (±0.8 ms per window
within 49.8–50.2 Hz), each register update jitters by a few ms, and the phase jumps when the meter
or an RS485 bridge restarts. `PhaseLockedSchedule` estimates phase *and* period from the brackets
in which the values were seen to change, reads just after each predicted change, probes just
before it now and then, and re-acquires at once when a read contradicts the prediction.
"""

import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

PollMode = Literal["searching", "phase_locked", "reacquiring", "fixed"]
POLL_MODES: tuple[PollMode, ...] = ("searching", "phase_locked", "reacquiring", "fixed")
NOMINAL_GRID_HZ = 50.0


@dataclass(frozen=True, slots=True)
class ReadTiming:
    """When one read was sent and its reply arrived (monotonic s) and what it showed."""

    sent_s: float
    arrived_s: float
    new_window: bool | None
    """True: values differ from the previous usable read; False: the same; None: unusable reply."""


@dataclass(frozen=True, slots=True)
class ChangeEstimate:
    """Estimated time (monotonic s) a window's values appeared and its half-width uncertainty (s)."""

    at_s: float
    uncertainty_s: float


class PollSchedule(Protocol):
    """Decides when the next read is due from what earlier reads showed."""

    mode: PollMode

    def next_read_at(self) -> float:
        """Monotonic time (s) of the next read; in the past means now."""
        ...

    def observe(self, read: ReadTiming) -> ChangeEstimate | None:
        """Learn from one read; for a new window, when its values appeared."""
        ...


class FixedSchedule:
    """Blind polling every `interval_s`, start to start (the baseline phase locking is measured against)."""

    mode: PollMode = "fixed"

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: ReadTiming | None = None
        self._last_usable: ReadTiming | None = None

    def next_read_at(self) -> float:
        """Monotonic time (s) of the next read."""
        return -math.inf if self._last is None else self._last.sent_s + self.interval_s

    def observe(self, read: ReadTiming) -> ChangeEstimate | None:
        """Record the read; a new window appeared somewhere since the previous read was sent."""
        previous, self._last = self._last_usable, read
        if read.new_window is None:
            return None
        self._last_usable = read
        if not read.new_window or previous is None:
            return None
        return ChangeEstimate((previous.sent_s + read.arrived_s) / 2, (read.arrived_s - previous.sent_s) / 2)


@dataclass(frozen=True, slots=True)
class TimingTuning:
    """Every constant of the refresh tracker (s unless noted), documented in one place."""

    period_tolerance: float = 0.01
    """Largest relative deviation of the period from nominal that is believed (±1 %: 49.5–50.5 Hz)."""
    margin_s: float = 0.0025
    """The data read comes this long after the predicted change."""
    creep_s: float = 0.00005
    """While data reads find the change already there, the prediction creeps earlier by this much
    per window, doubling after `creep_windows` in a row (up to `max_creep_s`): an early drift is
    followed, and a read that comes too early then brackets the change tightly."""
    creep_windows: int = 3
    max_creep_s: float = 0.001
    phase_gain: float = 0.3
    """A tight bracket moves the predicted phase this fraction of the way (update jitter averages out)."""
    guard_s: float = 0.006
    """A probe comes this long before the predicted change (must still see the old values)."""
    max_wake_s: float = 0.003
    """Largest mean lateness of reads against their plan that is planned around (task wake-up)."""
    retry_s: float = 0.002
    """After a read that still shows the old values, the next follows this soon (for `jump_s`)."""
    burst_s: float = 0.012
    """Spacing of reads while searching or re-acquiring a lost change."""
    probe_every: int = 1
    """After a phase jump (until quiet) one window in this many gets a probe. Every window: the
    window after an early jump is mostly read in time too; under a jump every 2–4 s, quiet-machine
    runs gave p99 36.8 ms on observable steps and re-lock ≤ 2 windows at 14.6 reads/s, against
    126 ms and up to 5 windows at 11.8 reads/s probing every 2nd window. Quiet meters (the field)
    read the same either way (docs/BENCHMARKS.md § Latency, the trade-off table)."""
    quiet_windows: int = 25
    """After this many windows without a slip the meter counts as quiet: probes get sparser."""
    quiet_probe_every: int = 5
    """Probe spacing (windows) of a quiet meter. Every 5th: 5 data reads + 1 probe + ≈1 retry
    ≈ 7 reads/s at 50 Hz, but the first early jump after a quiet spell is seen only within 5
    windows; every 2nd: ≈ 8.5 reads/s and ≤ 2 windows always (the trade-off table:
    docs/BENCHMARKS.md § Latency, from `bench_latency`)."""
    fit_points: int = 12
    """Tight change brackets the period least-squares fit uses (newest). A phase jump does not change
    the period: brackets from before it stay in the fit, each run between jumps with its own phase."""
    fit_span: int = 12
    """Windows the fitted brackets must span (summed over runs) before the period estimate changes:
    over 12 windows ±2 ms of update jitter moves the slope by at most ±0.33 ms per window."""
    tight_slack_s: float = 0.001
    """A bracket is tight (enters the fit) when at most the read spacing + 2 round trips + this."""
    jump_s: float = 0.008
    """A change later than predicted by more than this is a phase jump: the fit restarts."""
    search_periods: float = 2.0
    """Searching this many periods without any change means the values are not refreshing."""
    fixed_interval_s: float = 0.1
    """Polling interval when the values do not change regularly (never slower than the original)."""
    regular_changes: int = 3
    """Consecutive regular intervals between changes that end fixed polling."""


class PhaseLockedSchedule:
    """Reads just after each predicted refresh of a meter whose nominal period is `period_s`.

    Modes: `searching` (burst reads until a change is seen), `phase_locked` (a data read
    `margin_s` after each predicted change and a probe `guard_s` before it every `probe_every`-th
    window, every `quiet_probe_every`-th once quiet), `reacquiring` (a probe saw a change earlier
    than predicted: a scan every `burst_s` through the window where the next one must be) and
    `fixed` (no change within `search_periods`: polling every `fixed_interval_s` until the values
    change regularly again).

    The phase moves toward each tight bracket (a data read that came too early and its retries)
    and creeps earlier while the data reads find the change already there; after a re-acquisition
    the scan's bracket is narrowed by bisection: the data read goes to its middle, so each window
    halves it (or its retries find the change) without an extra read; a probe, when due, goes before
    the bracket (an early jump while bisecting is seen at once). A scan whose first read
    already shows the change (that window came earlier still) has only the wait before it as a
    bracket: the next window is scanned instead of bisected. The period is a least-squares
    fit over the tight brackets, one phase per run between jumps (a jump does not change the period).
    """

    def __init__(self, period_s: float, tuning: TimingTuning = TimingTuning()) -> None:
        self.nominal_period_s = period_s
        self.tuning = tuning
        self.mode: PollMode = "searching"
        self.slips = 0
        """Reads that contradicted the prediction by more than the update jitter."""
        self.reacquisitions = 0
        """Phase jumps: the change was found far from its prediction and the fit restarted."""
        self.period_s = period_s
        """Estimated refresh period (s)."""
        self._period_fitted = False
        """The period has been fitted once: from then on an early change is a jump, not its error."""
        self._last: ReadTiming | None = None
        self._old_sent_s: float | None = None
        self._search_since_s = -math.inf
        self._points: deque[tuple[int, int, float]] = deque(maxlen=tuning.fit_points)
        """(run, window index, change time s) of tight brackets; a run ends at each phase jump."""
        self._run_id = 0
        self._run_points = 0
        self._predicted_s = 0.0
        self._index = 0
        self._calm = tuning.quiet_windows
        """Windows since the last jump or slip (a fresh start is quiet: no jump has been seen)."""
        self._probe_due = True
        self._half_s = 0.0
        """Half-width (s) of the bracket of the predicted change while it is wider than a tight one
        (after a re-acquisition): the data read then splits it (bisection); 0 otherwise."""
        self._late = False
        self._run = 0
        self._reacquire_from_s = 0.0
        self._changes: deque[float] = deque(maxlen=tuning.regular_changes + 1)
        self._rtt_s = 0.0
        self._wake_s = 0.0

    @property
    def predicted_change_s(self) -> float:
        """Monotonic time (s) of the next change while locked."""
        return self._predicted_s

    @property
    def bracket_width_s(self) -> float | None:
        """Time (s) between the probe and the data read around the next change while locked, or the
        width of the bracket still being narrowed after a re-acquisition."""
        if self.mode != "phase_locked":
            return None
        return 2 * self._half_s if self._half_s else self.tuning.guard_s + self.tuning.margin_s

    @property
    def implied_frequency_hz(self) -> float:
        """Grid frequency the estimated period implies (Hz; the window is a whole number of cycles)."""
        return NOMINAL_GRID_HZ * self.nominal_period_s / self.period_s

    def next_read_at(self) -> float:
        """Monotonic time (s) of the next read; in the past means now."""
        last, tuning = self._last, self.tuning
        if last is None:
            return -math.inf
        if last.new_window is None:
            return last.sent_s + self.nominal_period_s / 2
        if self.mode == "fixed":
            return last.sent_s + tuning.fixed_interval_s
        if self.mode == "searching":
            return last.sent_s + tuning.burst_s
        if self.mode == "reacquiring":
            return max(self._reacquire_from_s, last.sent_s + tuning.burst_s)
        predicted_s = self._predicted_s
        if self._late:
            near = last.sent_s < predicted_s + self._half_s + tuning.jump_s
            return last.sent_s + (tuning.retry_s if near else tuning.burst_s)
        early_s = self._early_s()
        probe_s = self._planned_probe_s()
        if probe_s is not None:
            return probe_s
        if self._half_s:  # bisecting: one read in the middle of the bracket halves it
            return max(predicted_s - early_s, last.sent_s + tuning.retry_s)
        return max(predicted_s + tuning.margin_s - early_s, last.sent_s + tuning.retry_s)

    def _early_s(self) -> float:
        """How much earlier than the values are wanted a read is planned: a reply shows the values
        of about half its round trip after it was sent, and a read goes out about `_wake_s` after
        it was planned."""
        return self._rtt_s / 2 + self._wake_s

    def _planned_probe_s(self) -> float | None:
        """When this window's probe is planned while locked, if it is still to come."""
        last = self._last
        if self.mode != "phase_locked" or last is None or last.new_window is None or self._late:
            return None
        if not self._probe_due:
            return None
        # Before the bracket still being bisected, if any: a change before it is a jump.
        probe_s = self._predicted_s - self._half_s - self.tuning.guard_s - self._early_s()
        return probe_s if last.sent_s < probe_s else None

    def observe(self, read: ReadTiming) -> ChangeEstimate | None:
        """Learn from one read; for a new window, the estimated time its values appeared."""
        if self.mode == "phase_locked" and self._last is not None and self._last.new_window is not None:
            planned_s = self.next_read_at()
            if self._planned_probe_s() is not None:
                # This read was the probe, even if it went out before its planned time (uvloop's
                # timers fire up to a millisecond early) or the round-trip estimate moves the plan
                # after it: one probe per window.
                self._probe_due = False
            late_s = min(self.tuning.max_wake_s, max(0.0, read.sent_s - planned_s))
            self._wake_s += 0.1 * (late_s - self._wake_s)
        previous, self._last = self._last, read
        if read.new_window is None:
            return None
        rtt_s = read.arrived_s - read.sent_s
        self._rtt_s = rtt_s if self._rtt_s == 0.0 else self._rtt_s + 0.1 * (rtt_s - self._rtt_s)
        lo_s, self._old_sent_s = self._old_sent_s, read.sent_s
        if lo_s is None:
            self._search_since_s = read.sent_s
            return None
        if read.new_window:
            self._changes.append(read.arrived_s)
        if self.mode == "phase_locked":
            if previous is not None and read.sent_s - previous.arrived_s > 2 * self.period_s:
                return self._resume(lo_s, read)
            return self._observe_locked(lo_s, read)
        if self.mode == "fixed":
            return self._observe_fixed(lo_s, read)
        return self._observe_searching(lo_s, read)

    def _observe_searching(self, lo_s: float, read: ReadTiming) -> ChangeEstimate | None:
        if read.new_window:
            hi_s = read.arrived_s
            bracket = ChangeEstimate((lo_s + hi_s) / 2, (hi_s - lo_s) / 2)
            if self.mode == "reacquiring" and hi_s - lo_s > self._tight_s(self.tuning.burst_s):
                # The scan's first read already shows the change it was to find (that window came
                # earlier still): the bracket is the whole wait before the scan. Bisecting it would
                # read the next window up to half of it late; scan through it there instead.
                self._reacquire_from_s = lo_s + self.period_s * (1 - self.tuning.period_tolerance)
                self._search_since_s = read.sent_s
                self._advance(self._index + 1)
                return bracket
            if self.mode == "reacquiring" and abs(bracket.at_s - self._predicted_s) <= 2 * self.tuning.jump_s:
                self.mode = "phase_locked"  # drift, not a jump: the fit goes on
                if hi_s - lo_s <= self._tight_s(self.tuning.retry_s):
                    self._add_point(bracket.at_s)
                    self._half_s = 0.0
                else:
                    self._half_s = bracket.uncertainty_s
                self._predicted_s, self._run = bracket.at_s, 0
                self._advance(self._index + 1)
            elif self.mode == "reacquiring" or hi_s - lo_s <= self._tight_s(self.tuning.burst_s):
                if self.mode == "reacquiring":
                    self.reacquisitions += 1
                self._lock(lo_s, hi_s)
            return bracket
        if read.arrived_s - self._search_since_s > self.tuning.search_periods * self.period_s:
            self.mode = "fixed"
            self._changes.clear()
        return None

    def _observe_fixed(self, lo_s: float, read: ReadTiming) -> ChangeEstimate | None:
        if not read.new_window:
            return None
        changes, tuning = list(self._changes), self.tuning
        slack_s = tuning.fixed_interval_s + self.period_s * tuning.period_tolerance
        intervals = [b - a for a, b in itertools.pairwise(changes)]
        if len(intervals) >= tuning.regular_changes and all(
            abs(interval - self.period_s) <= slack_s for interval in intervals
        ):
            self._start_search(read.sent_s)
        return ChangeEstimate((lo_s + read.arrived_s) / 2, (read.arrived_s - lo_s) / 2)

    def _observe_locked(self, lo_s: float, read: ReadTiming) -> ChangeEstimate | None:
        tuning, predicted_s = self.tuning, self._predicted_s
        shown_s = (read.sent_s + read.arrived_s) / 2  # about when the meter produced the reply
        if not read.new_window:
            if shown_s > predicted_s:
                self._late = True
                if shown_s > predicted_s + self.period_s * (1 + tuning.period_tolerance):
                    self.slips += 1
                    self._start_search(predicted_s)  # no change for a whole period
            return None
        hi_s = read.arrived_s
        bracket = ChangeEstimate((lo_s + hi_s) / 2, (hi_s - lo_s) / 2)
        was_late, self._late = self._late, False
        if shown_s < predicted_s - self._half_s - tuning.guard_s / 2:
            self.slips += 1  # a probe saw the change: it came early, somewhere in (lo, hi]
            if self._period_fitted:
                self._calm = 0
            self.mode = "reacquiring"
            self._reacquire_from_s = lo_s + self.period_s * (1 - tuning.period_tolerance)
            self._search_since_s = read.sent_s
            self._advance(self._index + 1)
            return bracket
        if was_late and lo_s > predicted_s + self._half_s + tuning.jump_s:
            self.slips += 1  # later than predicted beyond the jitter: a phase jump
            self.reacquisitions += 1
            self._lock(lo_s, hi_s)
            return bracket
        tight = hi_s - lo_s <= self._tight_s(tuning.retry_s)
        if tight:
            self._add_point(bracket.at_s)
            gain = max(tuning.phase_gain, 1 / self._run_points)
            self._predicted_s += gain * (bracket.at_s - self._predicted_s)
            self._run = 0
            self._half_s = 0.0
        elif self._half_s:  # the splitting read came after the change: it was in the lower half
            floor_s = max(lo_s, predicted_s - self._half_s)
            bracket = ChangeEstimate((floor_s + hi_s) / 2, max(0.0, hi_s - floor_s) / 2)
            self._predicted_s = bracket.at_s
            narrow = 2 * bracket.uncertainty_s <= self._tight_s(tuning.retry_s)
            self._half_s = 0.0 if narrow else bracket.uncertainty_s
            self._advance(self._index + 1)
            return bracket
        else:
            self._run += 1
            excess = max(0, self._run - tuning.creep_windows)
            self._predicted_s -= min(tuning.max_creep_s, tuning.creep_s * 2**excess)
        estimate = bracket if tight else ChangeEstimate(min(hi_s, max(lo_s, predicted_s)), tuning.guard_s / 2)
        self._advance(self._index + 1)
        return estimate

    def _resume(self, lo_s: float, read: ReadTiming) -> ChangeEstimate | None:
        """After a pause in reading (reconnect): carry the prediction over the gap."""
        windows = math.floor((read.sent_s - self._predicted_s) / self.period_s) + 1
        self._late = False
        self._advance(self._index + windows, skipped=windows)
        if not read.new_window:
            return None
        change_s = self._predicted_s - self.period_s
        return ChangeEstimate(min(read.arrived_s, max(lo_s, change_s)), self.tuning.guard_s / 2)

    def _tight_s(self, spacing_s: float) -> float:
        """Widest bracket (s) reads `spacing_s` apart can give around a change."""
        return spacing_s + 2 * self._rtt_s + self.tuning.tight_slack_s

    def _start_search(self, since_s: float) -> None:
        self.mode = "searching"
        self._late = False
        self._search_since_s = since_s

    def _lock(self, lo_s: float, hi_s: float) -> None:
        """Restart the phase at this change (window 0); the period estimate is kept."""
        self.mode = "phase_locked"
        self._run_id += 1
        self._run_points = 0
        self._index = 0
        tight = hi_s - lo_s <= self._tight_s(self.tuning.retry_s)
        if tight:
            self._add_point((lo_s + hi_s) / 2)
        self._predicted_s = (lo_s + hi_s) / 2
        self._half_s = 0.0 if tight else (hi_s - lo_s) / 2
        if self.slips:  # after a jump, not at the first lock: probe densely for a while
            self._calm = 0
        self._run = 0
        self._advance(1)

    def _advance(self, index: int, skipped: int = 1) -> None:
        """Predict change `index` from the current one and plan its reads."""
        tuning = self.tuning
        self._predicted_s += skipped * self.period_s if skipped != 1 else self.period_s
        self._index = index
        self._calm += 1
        every = tuning.probe_every if self._calm < tuning.quiet_windows else tuning.quiet_probe_every
        self._probe_due = index % every == 0

    def _add_point(self, change_s: float) -> None:
        """A tight bracket around the change of the current window: into the period fit."""
        self._points.append((self._run_id, self._index, change_s))
        self._run_points += 1
        self._fit()

    def _fit(self) -> None:
        """Least-squares slope of change time over window index (one intercept per run between phase
        jumps), clamped to the tolerance."""
        tuning = self.tuning
        runs: dict[int, list[tuple[int, float]]] = {}
        for run, k, t in self._points:
            runs.setdefault(run, []).append((k, t))
        spread = covariance = 0.0
        span = 0
        for points in runs.values():
            if len(points) < 2:
                continue
            mean_k = sum(k for k, _ in points) / len(points)
            mean_t = sum(t for _, t in points) / len(points)
            spread += sum((k - mean_k) ** 2 for k, _ in points)
            covariance += sum((k - mean_k) * (t - mean_t) for k, t in points)
            span += points[-1][0] - points[0][0]
        if len(self._points) < 3 or span < tuning.fit_span or spread == 0.0:
            return
        low, high = (self.nominal_period_s * (1 + s * tuning.period_tolerance) for s in (-1, 1))
        self.period_s = min(high, max(low, covariance / spread))
        self._period_fitted = True
