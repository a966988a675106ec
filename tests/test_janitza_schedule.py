"""Refresh tracking against simulated meter clocks on a manual clock (no real time).

The meter is `sim.meter_clock.WindowClock`: its windows follow a grid-frequency profile, jitter and
jump; ages are measured against its true close times, never against the schedule's estimate.
"""

from dataclasses import dataclass, field

import pytest

from watti_watchman.clock import ManualClock
from watti_watchman.domain.janitza_timing import (
    FixedSchedule,
    PhaseLockedSchedule,
    PollMode,
    PollSchedule,
    ReadTiming,
    TimingTuning,
)
from watti_watchman.sim.meter_clock import MeterTiming, WindowClock, sinusoidal, steady

PERIOD_S = 0.2
ALERT_READS_PER_S = 5.0 * (1 + 1 / TimingTuning().probe_every) + 1.0
"""After a jump: a data read each window, a probe every `probe_every`-th, ≈ 1 retry a second."""
RTT_S = 0.0008
LATE_S = 0.015
"""A window read more than this after it closed (the p99 target) counts as not locked."""


@dataclass
class Outcome:
    reads: int = 0
    ages_s: dict[int, float] = field(default_factory=dict)
    """Window index → true age (s) of the first read that showed it."""
    estimate_errors_s: list[float] = field(default_factory=list)
    """Estimated − true close time, in units of the estimate's own uncertainty."""

    def percentile_s(self, fraction: float) -> float:
        ordered = sorted(self.ages_s.values())
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]

    def bad_windows(self, first: int, last: int) -> list[int]:
        """Windows in [first, last] read late or never."""
        return [w for w in range(first, last + 1) if self.ages_s.get(w, 1.0) > LATE_S]


def run(
    schedule: PollSchedule,
    clock: ManualClock,
    meter: WindowClock | None,
    duration_s: float,
    settle_s: float,
    rtt_s: float = RTT_S,
    early_s: float = 0.0,
    extra_reads_s: tuple[float, ...] = (),
) -> Outcome:
    """Drive `schedule` against `meter` (None: values never change) for `duration_s`; a reply
    takes `rtt_s` and shows the values of its midpoint. Each read goes out `early_s` before its
    planned time (an event loop's timer firing early), and one more read goes out at each of
    `extra_reads_s` (s after the start) that the schedule did not plan."""
    start_s = clock()
    outcome = Outcome()
    previous: int | None = None
    extra = [start_s + t for t in extra_reads_s]
    while clock() - start_s < duration_s:
        planned_s = max(clock(), schedule.next_read_at() - early_s)
        if extra and extra[0] < planned_s:
            planned_s = max(clock(), extra.pop(0))
        clock.advance(planned_s - clock())
        sent_s = clock()
        window = 0 if meter is None else meter.shown_at(sent_s + rtt_s / 2)
        clock.advance(rtt_s)
        new_window = previous is not None and window != previous
        estimate = schedule.observe(ReadTiming(sent_s, clock(), new_window))
        previous = window
        if sent_s - start_s < settle_s:
            continue
        outcome.reads += 1
        if new_window and meter is not None and window not in outcome.ages_s:
            outcome.ages_s[window] = clock() - meter.close_s(window)
            if estimate is not None:
                error_s = estimate.at_s - meter.close_s(window)
                outcome.estimate_errors_s.append(error_s / (estimate.uncertainty_s + rtt_s))
    return outcome


def mode_of(schedule: PollSchedule) -> PollMode:
    """The schedule's current mode (a call, so type narrowing does not outlive a run)."""
    return schedule.mode


def meter_at(clock: ManualClock, timing: MeterTiming, phase_s: float = 0.0731) -> WindowClock:
    return WindowClock(timing, clock(), phase_s)


def test_locks_onto_the_refresh_phase_and_reads_each_window_within_a_few_ms(clock: ManualClock) -> None:
    meter = meter_at(clock, MeterTiming(frequency=steady(50.0), jitter_s=0.0))
    schedule = PhaseLockedSchedule(PERIOD_S)
    outcome = run(schedule, clock, meter, duration_s=20.0, settle_s=3.0)
    assert mode_of(schedule) == "phase_locked"
    assert outcome.percentile_s(0.5) < 0.004
    assert outcome.percentile_s(1.0) < 0.006
    assert outcome.reads / 17.0 <= 7.0, "steady state ≤ 7 reads/s"
    first, last = min(outcome.ages_s), max(outcome.ages_s)
    assert not outcome.bad_windows(first, last), "no window missed or late"
    assert schedule.slips == 0
    assert max(abs(e) for e in outcome.estimate_errors_s) <= 1.0, "close times within their uncertainty"


@pytest.mark.parametrize("frequency_hz", [49.8, 50.2])
def test_tracks_a_held_off_nominal_grid_frequency(clock: ManualClock, frequency_hz: float) -> None:
    meter = meter_at(clock, MeterTiming(frequency=steady(frequency_hz), jitter_s=0.0))
    schedule = PhaseLockedSchedule(PERIOD_S)
    outcome = run(schedule, clock, meter, duration_s=30.0, settle_s=3.0)
    assert mode_of(schedule) == "phase_locked"
    assert abs(schedule.implied_frequency_hz - frequency_hz) < 0.02
    assert not outcome.bad_windows(min(outcome.ages_s), max(outcome.ages_s))
    assert outcome.percentile_s(0.5) < 0.004
    assert outcome.reads / 27.0 <= 7.0


def test_an_early_change_before_the_period_is_known_is_not_taken_for_a_jump(clock: ManualClock) -> None:
    """At 50.2 Hz the nominal period is 0.8 ms per window too long: the first probe sees the change
    early (a slip), but that is the period's error, not a restart, so no dense probing follows
    (probing every window while alert: 9.8 reads/s over these 9 s if it did, 7.9 without)."""
    meter = meter_at(clock, MeterTiming(frequency=steady(50.2), jitter_s=0.0))
    schedule = PhaseLockedSchedule(PERIOD_S, TimingTuning(probe_every=1))
    outcome = run(schedule, clock, meter, duration_s=10.0, settle_s=1.0)
    assert schedule.slips >= 1, "the start's slip happened"
    assert outcome.reads / 9.0 < 8.5


def test_follows_a_sinusoidal_wander_with_jitter(clock: ManualClock) -> None:
    timing = MeterTiming(frequency=sinusoidal(50.0, 0.2, 20.0), jitter_s=0.002, seed=3)
    meter = meter_at(clock, timing)
    schedule = PhaseLockedSchedule(PERIOD_S)
    outcome = run(schedule, clock, meter, duration_s=40.0, settle_s=3.0)
    assert mode_of(schedule) == "phase_locked"
    late = outcome.bad_windows(min(outcome.ages_s), max(outcome.ages_s))
    assert len(late) <= 0.02 * len(outcome.ages_s)
    assert outcome.percentile_s(0.5) < 0.005
    assert outcome.percentile_s(0.99) < 0.015
    assert outcome.reads / 37.0 <= 11.0, "a ±0.2 Hz swing every 20 s costs retries and re-bursts"


@pytest.mark.parametrize("shift_ms", [-190, -120, -70, -30, -10, 10, 30, 70, 120, 190])
@pytest.mark.parametrize("quiet", [False, True], ids=["alert", "quiet"])
def test_relocks_after_a_phase_step(clock: ManualClock, shift_ms: int, quiet: bool) -> None:
    """A jump either way is found within two windows (an early one within five once probes are
    sparse: no jump for 5 s), no blind hold; alert = 1.5 s after an earlier jump."""
    step_at_s = 9.0 if quiet else 4.5
    earlier = () if quiet else ((3.0, 0.04),)
    timing = MeterTiming(
        frequency=steady(50.1), jitter_s=0.001, scripted_jumps=(*earlier, (step_at_s, shift_ms / 1000))
    )
    meter = meter_at(clock, timing)
    schedule = PhaseLockedSchedule(PERIOD_S)
    outcome = run(schedule, clock, meter, duration_s=step_at_s + 3.0, settle_s=step_at_s - 1.0)
    jumped, _ = meter.jumps[-1]
    allowed = 5 if quiet and shift_ms < 0 else 2
    late = outcome.bad_windows(jumped, max(outcome.ages_s))
    assert late == [w for w in late if w < jumped + allowed], f"re-locked within {allowed} windows"
    assert mode_of(schedule) == "phase_locked"
    assert outcome.reads <= 4.0 * ALERT_READS_PER_S + 20, "one scan (≤ 16 reads at 12 ms), no blind hold"


def test_repeated_phase_jumps_cost_one_scan_each(clock: ManualClock) -> None:
    """Jumps of up to ±190 ms every 2–4 s on a wandering, jittering clock: each is re-locked within
    two windows, and costs about one scan (the bracket it leaves is narrowed by the data reads
    themselves, no extra probing beyond the alert spacing)."""
    timing = MeterTiming(
        frequency=sinusoidal(50.0, 0.2, 60.0), jitter_s=0.002, jump_every_s=(2.0, 4.0), seed=5
    )
    meter = meter_at(clock, timing)
    schedule = PhaseLockedSchedule(PERIOD_S)
    outcome = run(schedule, clock, meter, duration_s=120.0, settle_s=8.0)
    jumps = [index for index, _ in meter.jumps if index > min(outcome.ages_s) + 1]
    assert len(jumps) >= 25
    last = max(outcome.ages_s)
    for jumped in jumps:
        late = outcome.bad_windows(jumped, min(last, jumped + 8))
        assert late == [w for w in late if w < jumped + 2], f"jump at window {jumped} re-locked within 2"
    assert outcome.reads / 112.0 <= ALERT_READS_PER_S + 4.0, "+ one scan (≈ 8 reads) and ≈ 3 retries per jump"


def test_a_read_that_goes_out_early_is_not_repeated(clock: ManualClock) -> None:
    """uvloop's timers have millisecond resolution against a cached loop time: about a third of
    the service's reads went out up to 1.4 ms before their planned time. A probe sent early is
    still this window's probe: it was repeated at once (1.2 reads/s more per meter)."""
    timing = MeterTiming(frequency=steady(50.0), jitter_s=0.002)
    on_time = run(PhaseLockedSchedule(PERIOD_S), clock, meter_at(clock, timing), 30.0, settle_s=5.0)
    schedule = PhaseLockedSchedule(PERIOD_S)
    early = run(schedule, clock, meter_at(clock, timing), 30.0, settle_s=5.0, early_s=0.0005)
    assert early.reads <= 1.05 * on_time.reads, "no second probe"
    assert early.reads / 25.0 <= 7.3
    assert early.percentile_s(0.99) < 0.006
    assert schedule.slips == 0


def test_a_rescan_that_starts_after_the_change_scans_the_next_window(clock: ManualClock) -> None:
    """An unplanned read (a second probe, as uvloop's early timers made) sees the change 6 ms early
    1 ms after the probe that still showed the old values: a tight bracket, so the rescan of the
    next window starts 198 ms after the probe. That window comes 150 ms earlier still: the rescan's
    first read already shows it, a 196 ms bracket. It was bisected, reading the window after it
    49 ms late (up to 98); that window is scanned instead."""
    timing = MeterTiming(frequency=steady(50.0), jitter_s=0.0, scripted_jumps=((4.0, -0.006), (4.1, -0.15)))
    meter = meter_at(clock, timing)
    schedule = PhaseLockedSchedule(PERIOD_S)
    run(schedule, clock, meter, duration_s=3.0, settle_s=3.0)
    start_s = clock()
    first = meter.index_after(meter.start_s + 4.0 - 0.001)
    assert meter.jumps[0][0] == first, "the early change is the first window closing after 4 s"
    extra_s = meter.close_s(first) - 0.0003 - start_s  # after the probe: shows the early change
    outcome = run(schedule, clock, meter, duration_s=3.0, settle_s=0.0, extra_reads_s=(extra_s,))
    jumped, _ = meter.jumps[1]
    assert jumped == first + 1
    late = outcome.bad_windows(jumped, max(outcome.ages_s))
    assert late == [w for w in late if w < jumped + 1], "the window after the jump is read in time"


@pytest.mark.parametrize(("early_ms", "after_s"), [(-50, 0.25), (-100, 0.25), (-50, 0.45)])
def test_an_early_jump_while_bisecting_is_probed(clock: ManualClock, early_ms: int, after_s: float) -> None:
    """A late jump leaves a scan bracket of ≈ 12 ms that the data reads bisect; an early jump in the
    next windows came before the bracket. With no probe while bisecting, the bisecting read took it
    for the lower half and the windows were read 40–100 ms late for three windows; the probe now
    goes before the bracket and sees it."""
    timing = MeterTiming(
        frequency=steady(50.1),
        jitter_s=0.001,
        scripted_jumps=((3.0, 0.04), (4.5, 0.05), (4.5 + after_s, early_ms / 1000)),
    )
    meter = meter_at(clock, timing)
    schedule = PhaseLockedSchedule(PERIOD_S)
    outcome = run(schedule, clock, meter, duration_s=7.0, settle_s=3.5)
    jumped, _ = meter.jumps[-1]
    late = outcome.bad_windows(jumped, max(outcome.ages_s))
    assert late == [w for w in late if w < jumped + 2], "re-locked within 2 windows"


@pytest.mark.parametrize("rtt_ms", [4, 8])
def test_slow_replies_are_planned_around(clock: ManualClock, rtt_ms: int) -> None:
    """A gateway's round trip is measured: reads still land just after each change."""
    meter = meter_at(clock, MeterTiming(frequency=steady(50.1), jitter_s=0.002))
    schedule = PhaseLockedSchedule(PERIOD_S)
    outcome = run(schedule, clock, meter, duration_s=20.0, settle_s=3.0, rtt_s=rtt_ms / 1000)
    assert mode_of(schedule) == "phase_locked"
    assert outcome.percentile_s(0.5) < rtt_ms / 1000 + 0.003, "late by about the reply's own travel"
    # At 8 ms one probe finds a change 6 ms before its prediction (the phase lags behind the 50.1 Hz
    # drift), a slip: 25 windows with a probe each, 8.8 reads/s. (It passed 8.0 only while a fall
    # of the round-trip estimate moved the probe later and repeated it, feeding the fit.)
    assert outcome.reads / 17.0 <= 9.0


def test_falls_back_to_fixed_100_ms_polling_when_values_never_change(clock: ManualClock) -> None:
    schedule = PhaseLockedSchedule(PERIOD_S)
    outcome = run(schedule, clock, None, duration_s=10.0, settle_s=5.0)
    assert mode_of(schedule) == "fixed"
    assert abs(outcome.reads - 5.0 / 0.1) <= 1, "one read per 100 ms"


def test_falls_back_to_fixed_polling_when_refresh_is_irregular(clock: ManualClock) -> None:
    schedule = PhaseLockedSchedule(PERIOD_S)
    meter = meter_at(clock, MeterTiming(frequency=steady(10.0), jitter_s=0.0))  # a 1 s refresh
    outcome = run(schedule, clock, meter, duration_s=10.0, settle_s=5.0)
    assert mode_of(schedule) == "fixed"
    assert outcome.reads <= 5.0 / 0.1 + 1


def test_returns_to_phase_locking_when_regular_refresh_appears(clock: ManualClock) -> None:
    schedule = PhaseLockedSchedule(PERIOD_S)
    run(schedule, clock, None, duration_s=5.0, settle_s=0.0)
    assert mode_of(schedule) == "fixed"
    meter = meter_at(clock, MeterTiming(frequency=steady(50.0), jitter_s=0.0), phase_s=0.05)
    outcome = run(schedule, clock, meter, duration_s=5.0, settle_s=2.0)
    assert mode_of(schedule) == "phase_locked"
    assert outcome.percentile_s(0.5) < 0.004


def test_blind_polling_is_slower(clock: ManualClock) -> None:
    meter = meter_at(clock, MeterTiming(frequency=steady(50.0), jitter_s=0.0))
    outcome = run(FixedSchedule(0.1), clock, meter, duration_s=10.0, settle_s=1.0)
    assert outcome.percentile_s(0.5) > 0.01
    assert 9.0 <= outcome.reads / 9.0 <= 11.0


def test_an_unusable_reply_delays_the_next_read_by_half_a_period(clock: ManualClock) -> None:
    schedule = PhaseLockedSchedule(PERIOD_S)
    schedule.observe(ReadTiming(clock(), clock() + 0.001, None))
    assert schedule.next_read_at() >= clock() + PERIOD_S / 2


def test_a_pause_keeps_the_lock(clock: ManualClock) -> None:
    meter = meter_at(clock, MeterTiming(frequency=steady(50.0), jitter_s=0.0))
    schedule = PhaseLockedSchedule(PERIOD_S)
    run(schedule, clock, meter, duration_s=5.0, settle_s=0.0)
    reacquisitions = schedule.reacquisitions
    clock.advance(3.0)  # a reconnect pause
    outcome = run(schedule, clock, meter, duration_s=3.0, settle_s=0.5)
    assert mode_of(schedule) == "phase_locked"
    assert schedule.reacquisitions == reacquisitions
    assert outcome.percentile_s(0.5) < 0.004
