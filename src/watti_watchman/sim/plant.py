"""A simple step-driven plant for closed-loop tests and the simulator (no I/O, no clock, no asyncio).

Per phase: household load and PV (functions of time), a battery inverter that follows its setpoint
through dead time, a first-order lag and a slew limit on the phases it serves, with an actuator
error (gain and offset per phase: a real Multi delivers a few % and tens of W off its setpoint),
the BMS charge limit when the installation has a managed BMS (the Multi obeys it; it ignores the
discharge limit, as in ESS mode 3) and SOC integration over a capacity. Grid = load − PV + battery
per phase. Two meters average grid and battery power over 200 ms windows whose phases
are independent, as two real, unsynchronised meters would report.
"""

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from watti_watchman.domain.readings import PHASES, BatteryStatus, Phase, PowerSample
from watti_watchman.sim.meter_clock import WindowClock

PhaseTriple = tuple[float, float, float]
Profile = Callable[[float], PhaseTriple]
"""Power per phase L1..L3 (W) as a function of plant time (s)."""
MeterKind = Literal["grid", "battery"]


def constant(l1_w: float, l2_w: float = 0.0, l3_w: float = 0.0) -> Profile:
    """A profile that never changes (W per phase)."""
    value = (l1_w, l2_w, l3_w)
    return lambda _t_s: value


def steps(initial: PhaseTriple, *changes: tuple[float, PhaseTriple]) -> Profile:
    """A piecewise-constant profile: `initial`, then each (time s, W per phase) from its time on."""
    ordered = sorted(changes)

    def profile(t_s: float) -> PhaseTriple:
        value = initial
        for at_s, step_value in ordered:
            if t_s >= at_s:
                value = step_value
        return value

    return profile


@dataclass(frozen=True, slots=True)
class InverterModel:
    """How the battery inverter follows its setpoint: dead time and lag (s), slew per phase (W/s)."""

    name: str
    dead_time_s: float
    lag_s: float
    slew_w_per_s: float | None


PRESETS: Mapping[str, InverterModel] = {
    "fast": InverterModel("fast", dead_time_s=0.05, lag_s=0.1, slew_w_per_s=None),
    "medium": InverterModel("medium", dead_time_s=0.1, lag_s=0.25, slew_w_per_s=2000.0),
    "slow": InverterModel("slow", dead_time_s=0.15, lag_s=0.3, slew_w_per_s=400.0),
}
"""Named inverter variants (slew applies to each phase's output)."""


@dataclass(frozen=True, slots=True)
class Installation:
    """What differs between real installations: phases served, actuator error, a managed BMS."""

    phases: tuple[Phase, ...] = PHASES
    """Phases the battery inverter(s) serve; setpoints for the others have no effect."""
    actuator_gain: PhaseTriple = (1.0, 1.0, 1.0)
    """Per phase, the inverter delivers gain × setpoint + offset."""
    actuator_offset_w: PhaseTriple = (0.0, 0.0, 0.0)
    """Per phase (W); see `actuator_gain`."""
    bms: bool = True
    """A managed BMS reports charge/discharge current limits; without one, none are reported."""

    def __post_init__(self) -> None:
        if not self.phases or len(set(self.phases)) != len(self.phases):
            raise ValueError(f"phases {self.phases!r} must be non-empty and distinct")
        if not all(math.isfinite(g) and g > 0 for g in self.actuator_gain):
            raise ValueError("actuator gains must be finite and > 0")
        if not all(math.isfinite(w) for w in self.actuator_offset_w):
            raise ValueError("actuator offsets must be finite")


IDEAL = Installation()
"""Three phases, no actuator error, a BMS."""
ACTUATOR_ERROR = Installation(actuator_gain=(0.97, 0.97, 0.97), actuator_offset_w=(-25.0, -25.0, -25.0))
"""A Multi that delivers 3 % and 25 W per phase less than commanded."""


@dataclass(frozen=True, slots=True)
class PlantConfig:
    """Plant parameters: inverter model, installation, battery (Wh, %, V, A), meter windows (s), step (s)."""

    inverter: InverterModel = PRESETS["medium"]
    installation: Installation = IDEAL
    capacity_wh: float = 10_000.0
    initial_soc_percent: float = 50.0
    voltage_v: float = 51.2
    bms_max_charge_current_a: float = 200.0
    bms_max_discharge_current_a: float = 200.0
    window_s: float = 0.2
    grid_window_offset_s: float = 0.0
    battery_window_offset_s: float = 0.09
    step_s: float = 0.005


@dataclass(frozen=True, slots=True)
class MeterWindow:
    """One completed meter window: which meter, when it ended (plant s) and its average power (W)."""

    meter: MeterKind
    end_s: float
    sample: PowerSample


class _WindowMeter:
    """Averages per-phase power over fixed windows starting at `offset_s`, or over the windows of
    a meter clock (`sim/meter_clock.py`) when one is given."""

    def __init__(
        self, kind: MeterKind, window_s: float, offset_s: float, start_s: float, clock: WindowClock | None
    ) -> None:
        self.kind = kind
        self.window_s = window_s
        self.offset_s = offset_s
        self.clock = clock
        self.index = clock.index_after(start_s) if clock else math.floor((start_s - offset_s) / window_s) + 1
        self.energy = [0.0, 0.0, 0.0]
        self.duration_s = 0.0

    @property
    def next_end_s(self) -> float:
        if self.clock is not None:
            return self.clock.close_s(self.index)
        return self.offset_s + self.index * self.window_s

    def add(self, power: PhaseTriple, h_s: float) -> None:
        for i in range(3):
            self.energy[i] += power[i] * h_s
        self.duration_s += h_s

    def close(self) -> MeterWindow:
        end_s = self.next_end_s
        l1, l2, l3 = (e / self.duration_s for e in self.energy) if self.duration_s > 0 else (0.0, 0.0, 0.0)
        self.index += 1
        self.energy = [0.0, 0.0, 0.0]
        self.duration_s = 0.0
        return MeterWindow(self.kind, end_s, PowerSample(l1, l2, l3, l1 + l2 + l3))


class Plant:
    """The simulated house; deterministic, advanced explicitly by `advance`."""

    def __init__(
        self,
        config: PlantConfig,
        load: Profile,
        pv: Profile | None = None,
        start_s: float = 0.0,
        window_clocks: Mapping[MeterKind, WindowClock] | None = None,
    ) -> None:
        self.config = config
        self._load = load
        self._pv = pv or constant(0.0)
        self.time_s = start_s
        self.soc_percent = config.initial_soc_percent
        self.battery_w: list[float] = [0.0, 0.0, 0.0]
        self._target_w: list[float] = [0.0, 0.0, 0.0]
        self._pending: deque[tuple[float, PhaseTriple]] = deque()
        clocks = window_clocks or {}
        self._meters = (
            _WindowMeter("grid", config.window_s, config.grid_window_offset_s, start_s, clocks.get("grid")),
            _WindowMeter(
                "battery", config.window_s, config.battery_window_offset_s, start_s, clocks.get("battery")
            ),
        )
        self.import_wh = 0.0
        self.export_wh = 0.0

    def command(self, setpoints: Mapping[Phase, int]) -> None:
        """Send setpoints (W per phase, + = charge) now; they act after the dead time."""
        installation = self.config.installation
        l1, l2, l3 = (
            gain * setpoints.get(phase, 0) + offset_w if phase in installation.phases else 0.0
            for phase, gain, offset_w in zip(
                PHASES, installation.actuator_gain, installation.actuator_offset_w, strict=True
            )
        )
        self._pending.append((self.time_s + self.config.inverter.dead_time_s, (l1, l2, l3)))

    def next_window_end_s(self) -> float:
        """Plant time (s) the next meter window closes."""
        return min(meter.next_end_s for meter in self._meters)

    def grid_w(self) -> PhaseTriple:
        """Instantaneous grid power per phase (W, + = import)."""
        load, pv = self._load(self.time_s), self._pv(self.time_s)
        return (
            load[0] - pv[0] + self.battery_w[0],
            load[1] - pv[1] + self.battery_w[1],
            load[2] - pv[2] + self.battery_w[2],
        )

    def battery_status(self) -> BatteryStatus:
        """SOC (%) and BMS limits (A, V; None without a BMS) as the battery controller reports them."""
        config = self.config
        bms = config.installation.bms
        return BatteryStatus(
            self.soc_percent,
            config.bms_max_charge_current_a if bms else None,
            config.bms_max_discharge_current_a if bms else None,
            config.voltage_v,
        )

    def advance(self, duration_s: float) -> list[MeterWindow]:
        """Move the plant forward by `duration_s`; returns the meter windows completed meanwhile."""
        end_s = self.time_s + duration_s
        windows: list[MeterWindow] = []
        while self.time_s < end_s - 1e-12:
            boundary_s = min(meter.next_end_s for meter in self._meters)
            h_s = min(self.config.step_s, end_s - self.time_s, boundary_s - self.time_s)
            self._step(max(h_s, 0.0))
            for meter in self._meters:
                if self.time_s >= meter.next_end_s - 1e-9:
                    windows.append(meter.close())
        return windows

    def _inverter_target(self) -> list[float]:
        while self._pending and self._pending[0][0] <= self.time_s + 1e-12:
            self._target_w = list(self._pending.popleft()[1])
        return self._target_w

    def _step(self, h_s: float) -> None:
        config, inverter = self.config, self.config.inverter
        target = self._inverter_target()
        follow = 1.0 - math.exp(-h_s / inverter.lag_s) if inverter.lag_s > 0 else 1.0
        for i in range(3):
            change = (target[i] - self.battery_w[i]) * follow
            if inverter.slew_w_per_s is not None:
                limit = inverter.slew_w_per_s * h_s
                change = max(-limit, min(limit, change))
            self.battery_w[i] += change
        self._apply_battery_limits()
        grid = self.grid_w()
        for meter, power in zip(self._meters, (grid, tuple(self.battery_w)), strict=True):
            meter.add((power[0], power[1], power[2]), h_s)
        total_grid_w = sum(grid)
        self.import_wh += max(0.0, total_grid_w) * h_s / 3600.0
        self.export_wh += max(0.0, -total_grid_w) * h_s / 3600.0
        self.soc_percent += sum(self.battery_w) * h_s / 3600.0 / config.capacity_wh * 100.0
        self.soc_percent = min(100.0, max(0.0, self.soc_percent))
        self.time_s += h_s

    def _apply_battery_limits(self) -> None:
        """The inverter obeys the BMS charge limit and a full or empty battery (not the discharge limit)."""
        config = self.config
        max_charge_w = math.inf
        if config.installation.bms:
            max_charge_w = config.bms_max_charge_current_a * config.voltage_v
        if self.soc_percent >= 100.0:
            max_charge_w = 0.0
        max_discharge_w = math.inf if self.soc_percent > 0.0 else 0.0
        charging = sum(w for w in self.battery_w if w > 0)
        discharging = -sum(w for w in self.battery_w if w < 0)
        for i, value in enumerate(self.battery_w):
            if value > 0 and charging > max_charge_w:
                self.battery_w[i] = value * max_charge_w / charging
            elif value < 0 and discharging > max_discharge_w:
                self.battery_w[i] = value * max_discharge_w / discharging
