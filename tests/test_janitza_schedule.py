"""Phase-locked polling, simulated against a meter model on a manual clock (no real time)."""

import math
from dataclasses import dataclass, field

from watti_watchman.clock import ManualClock
from watti_watchman.meters.janitza import (
    FixedSchedule,
    PhaseLockedSchedule,
    PollMode,
    PollSchedule,
    ReadTiming,
)

PERIOD_S = 0.2


@dataclass
class MeterModel:
    """Values change at phase_s + k·period_s; a reply takes rtt_s and samples at its midpoint."""

    phase_s: float = 0.0731
    period_s: float = PERIOD_S
    rtt_s: float = 0.0008
    static: bool = False

    def window(self, at_s: float) -> int:
        """Index of the measuring window whose values are shown at `at_s`."""
        return 0 if self.static else math.floor((at_s - self.phase_s) / self.period_s)

    def changed_at_s(self, window: int) -> float:
        """When `window`'s values appeared."""
        return self.phase_s + window * self.period_s


@dataclass
class Outcome:
    reads: int = 0
    ages_s: list[float] = field(default_factory=list)
    windows_seen: set[int] = field(default_factory=set)

    def percentile_s(self, fraction: float) -> float:
        ordered = sorted(self.ages_s)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def run(
    schedule: PollSchedule, clock: ManualClock, meter: MeterModel, duration_s: float, settle_s: float
) -> Outcome:
    """Drive `schedule` against `meter` for `duration_s`; ages and reads count after `settle_s`."""
    start_s = clock()
    outcome = Outcome()
    previous_window: int | None = None
    while clock() - start_s < duration_s:
        clock.advance(max(0.0, schedule.next_read_at() - clock()))
        sent_s = clock()
        window = meter.window(sent_s + meter.rtt_s / 2)
        clock.advance(meter.rtt_s)
        new_window = previous_window is None or window != previous_window
        schedule.observe(ReadTiming(sent_s, clock(), new_window))
        previous_window = window
        if sent_s - start_s >= settle_s:
            outcome.reads += 1
            if new_window:
                outcome.ages_s.append(clock() - meter.changed_at_s(window))
                outcome.windows_seen.add(window)
    return outcome


def mode_of(schedule: PollSchedule) -> PollMode:
    """The schedule's current mode (a call, so type narrowing does not outlive a run)."""
    return schedule.mode


def windows_between(meter: MeterModel, start_s: float, end_s: float) -> set[int]:
    """Windows that appeared (and were complete before `end_s`) in the interval."""
    return set(range(meter.window(start_s) + 1, meter.window(end_s)))


def test_locks_onto_the_refresh_phase_and_reads_each_window_within_a_few_ms(clock: ManualClock) -> None:
    meter = MeterModel(phase_s=clock() + 0.0731)
    schedule = PhaseLockedSchedule(PERIOD_S)
    outcome = run(schedule, clock, meter, duration_s=20.0, settle_s=3.0)
    assert mode_of(schedule) == "phase_locked"
    assert outcome.percentile_s(0.5) < 0.003
    assert outcome.percentile_s(0.99) < 0.006
    assert outcome.reads / 17.0 <= 10.0
    assert outcome.windows_seen >= windows_between(meter, clock() - 17.0, clock()), "no window missed"
    assert schedule.slips == 0


def test_follows_a_window_that_drifts_against_our_clock(clock: ManualClock) -> None:
    meter = MeterModel(phase_s=clock() + 0.011, period_s=PERIOD_S * (1 + 0.0015))
    schedule = PhaseLockedSchedule(PERIOD_S)
    outcome = run(schedule, clock, meter, duration_s=30.0, settle_s=3.0)
    assert mode_of(schedule) == "phase_locked"
    assert outcome.percentile_s(0.5) < 0.005
    assert outcome.reads / 27.0 <= 10.0


def test_blind_polling_is_slower(clock: ManualClock) -> None:
    meter = MeterModel(phase_s=clock() + 0.0731)
    outcome = run(FixedSchedule(0.1), clock, meter, duration_s=10.0, settle_s=1.0)
    assert outcome.percentile_s(0.5) > 0.01
    assert 9.0 <= outcome.reads / 9.0 <= 11.0


def test_falls_back_to_fixed_interval_when_values_never_change(clock: ManualClock) -> None:
    schedule = PhaseLockedSchedule(PERIOD_S)
    outcome = run(schedule, clock, MeterModel(static=True), duration_s=10.0, settle_s=5.0)
    assert mode_of(schedule) == "fixed"
    assert abs(outcome.reads - 5.0 / PERIOD_S) <= 1, "one read per interval"


def test_falls_back_to_fixed_interval_when_refresh_is_irregular(clock: ManualClock) -> None:
    schedule = PhaseLockedSchedule(PERIOD_S)
    run(schedule, clock, MeterModel(period_s=1.0), duration_s=10.0, settle_s=0.0)
    assert mode_of(schedule) == "fixed"
    assert schedule.slips >= 3


def test_returns_to_phase_locking_when_regular_refresh_appears(clock: ManualClock) -> None:
    schedule = PhaseLockedSchedule(PERIOD_S)
    run(schedule, clock, MeterModel(static=True), duration_s=5.0, settle_s=0.0)
    assert mode_of(schedule) == "fixed"
    outcome = run(schedule, clock, MeterModel(phase_s=clock() + 0.05), duration_s=5.0, settle_s=3.0)
    assert mode_of(schedule) == "phase_locked"
    assert outcome.percentile_s(0.5) < 0.003


def test_an_unusable_reply_delays_the_next_read_by_half_a_period(clock: ManualClock) -> None:
    schedule = PhaseLockedSchedule(PERIOD_S)
    schedule.observe(ReadTiming(clock(), clock() + 0.001, None))
    assert schedule.next_read_at() >= clock() + PERIOD_S / 2


def test_a_pause_keeps_the_lock(clock: ManualClock) -> None:
    meter = MeterModel(phase_s=clock() + 0.0731)
    schedule = PhaseLockedSchedule(PERIOD_S)
    run(schedule, clock, meter, duration_s=5.0, settle_s=0.0)
    slips = schedule.slips
    clock.advance(3.0)  # a reconnect pause
    outcome = run(schedule, clock, meter, duration_s=3.0, settle_s=0.5)
    assert mode_of(schedule) == "phase_locked"
    assert schedule.slips == slips
    assert outcome.percentile_s(0.5) < 0.003
