"""A simulated meter's own clock: when its measuring windows close, as a real Janitza's do.

A Janitza window is 10 grid cycles, so its period is 0.2 s × 50 Hz / f and follows grid frequency;
each register update jitters by a few ms; the phase jumps when the meter or an RS485 bridge
restarts. `WindowClock` generates those close times lazily and deterministically from a seed and
keeps them: they are the truth tests and benchmarks measure against, never the poller's estimate.
"""

import bisect
import dataclasses
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

FrequencyProfile = Callable[[float], float]
"""Grid frequency (Hz) at a time (s, the clock's own time base)."""

CYCLES_PER_WINDOW = 10
MIN_WINDOW_S = 0.005


def steady(frequency_hz: float) -> FrequencyProfile:
    """A constant grid frequency (Hz)."""
    return lambda _t_s: frequency_hz


def sinusoidal(center_hz: float, amplitude_hz: float, period_s: float) -> FrequencyProfile:
    """center ± amplitude (Hz), one full swing every `period_s`."""
    return lambda t_s: center_hz + amplitude_hz * math.sin(2 * math.pi * t_s / period_s)


def wander(seed: int, low_hz: float = 49.8, high_hz: float = 50.2) -> FrequencyProfile:
    """A slow random wander within [low, high] Hz (three sines of 20–300 s periods, seeded)."""
    rng = random.Random(seed)
    components = [
        (rng.uniform(20.0, 300.0), rng.uniform(0.0, 2 * math.pi), rng.uniform(0.5, 1.0)) for _ in range(3)
    ]
    scale = (high_hz - low_hz) / 2 / sum(weight for _, _, weight in components)
    center = (high_hz + low_hz) / 2

    def profile(t_s: float) -> float:
        return center + scale * sum(w * math.sin(2 * math.pi * t_s / p + ph) for p, ph, w in components)

    return profile


@dataclass(frozen=True, slots=True)
class MeterTiming:
    """How a simulated meter's windows move: frequency profile, update jitter, phase jumps."""

    frequency: FrequencyProfile = field(default_factory=lambda: wander(7))
    jitter_s: float = 0.002
    """Each register update comes up to this much early or late (uniform)."""
    jump_every_s: tuple[float, float] | None = None
    """A phase jump (meter restart) after a random time in this range (s), again and again."""
    jump_max_s: float = 0.19
    """A jump moves the window phase by up to this much, earlier or later (uniform)."""
    scripted_jumps: tuple[tuple[float, float], ...] = ()
    """Extra jumps at fixed times: (s after the start, shift s; + = later), in time order."""
    seed: int = 1


FIELD = MeterTiming()
"""The realistic default: slow wander within 49.8–50.2 Hz and ±2 ms update jitter, no restarts."""
DISTURBED = MeterTiming(jump_every_s=(2.0, 4.0))
"""The field plus a meter restart (phase jump of up to ±190 ms) every 2–4 s: the benchmarks' case."""
PERFECT = MeterTiming(frequency=steady(50.0), jitter_s=0.0)
"""An exact 200 ms grid (kinder than any real meter: only for tests of other things)."""


class WindowClock:
    """The close times (s) of one meter's windows from `start_s` on, generated on demand."""

    def __init__(self, timing: MeterTiming, start_s: float, phase_s: float = 0.0) -> None:
        self.timing = timing
        self.start_s = start_s
        self._rng = random.Random(timing.seed)
        self._boundaries = [start_s + phase_s]
        self._closes = [start_s + phase_s]
        self.jumps: list[tuple[int, float]] = []
        """(index of the first moved window, shift s; + = later) of every jump generated so far."""
        self._next_jump_s = self._jump_after(start_s)
        self._scripted = [(start_s + at_s, shift_s) for at_s, shift_s in timing.scripted_jumps]

    def close_s(self, index: int) -> float:
        """When window `index` (0, 1, …) closed: its values appear in the registers then (s)."""
        while len(self._closes) <= index:
            self._extend()
        return self._closes[index]

    def index_after(self, t_s: float) -> int:
        """The first window index closing strictly after `t_s`."""
        while self._closes[-1] <= t_s:
            self._extend()
        return bisect.bisect_right(self._closes, t_s)

    def shown_at(self, t_s: float) -> int:
        """Index of the window whose values the registers show at `t_s` (−1 before the first)."""
        return self.index_after(t_s) - 1

    def period_s(self, t_s: float) -> float:
        """The true window period at `t_s` (s)."""
        return CYCLES_PER_WINDOW / self.timing.frequency(t_s - self.start_s)

    def _extend(self) -> None:
        timing, boundary_s = self.timing, self._boundaries[-1]
        next_s = boundary_s + self.period_s(boundary_s)
        shift_s: float | None = None
        if self._scripted and next_s >= self._scripted[0][0]:
            shift_s = self._scripted.pop(0)[1]
        elif next_s >= self._next_jump_s:
            shift_s = self._rng.uniform(-timing.jump_max_s, timing.jump_max_s)
            self._next_jump_s = self._jump_after(next_s + shift_s)
        if shift_s is not None:
            shift_s = max(shift_s, MIN_WINDOW_S + 2 * timing.jitter_s - (next_s - boundary_s))
            self.jumps.append((len(self._closes), shift_s))
            next_s += shift_s
        self._boundaries.append(next_s)
        self._closes.append(max(self._closes[-1] + 1e-6, next_s + self._rng.uniform(-1, 1) * timing.jitter_s))

    def _jump_after(self, t_s: float) -> float:
        every = self.timing.jump_every_s
        return math.inf if every is None else t_s + self._rng.uniform(*every)


def meter_clocks(
    timing: MeterTiming, grid_offset_s: float, battery_offset_s: float, start_s: float = 0.0
) -> dict[Literal["grid", "battery"], WindowClock]:
    """Clocks for a site's two meters: one grid frequency, each its own jitter, jumps and phase."""
    battery = dataclasses.replace(timing, seed=timing.seed + 1)
    return {
        "grid": WindowClock(timing, start_s, grid_offset_s),
        "battery": WindowClock(battery, start_s, battery_offset_s),
    }
