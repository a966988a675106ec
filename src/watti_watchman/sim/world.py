"""The simulated plant in real time, wired to two Janitza Modbus servers and a Venus OS emulator.

Each meter's windows close on its own clock (`sim/meter_clock.py`: grid-frequency wander, update
jitter, phase jumps); the values reach the Modbus server at the close, to the millisecond.
"""

import asyncio
import logging
import math
from dataclasses import dataclass

from watti_watchman.clock import Clock, monotonic
from watti_watchman.domain.janitza import JANITZA_VALUE_COUNT
from watti_watchman.domain.readings import Phase, PowerSample
from watti_watchman.sim.janitza_server import JanitzaServer
from watti_watchman.sim.meter_clock import FrequencyProfile, steady
from watti_watchman.sim.plant import MeterWindow, Plant
from watti_watchman.sim.venus import VenusEmulator

logger = logging.getLogger("watti_watchman.sim.world")
NOMINAL_VOLTAGE_V = 230.0
LINE_VOLTAGE_V = NOMINAL_VOLTAGE_V * math.sqrt(3)
POLL_S = 0.005
VENUS_INTERVAL_S = 0.1
NOMINAL_FREQUENCY = steady(50.0)


@dataclass
class EnergyCounters:
    """Per-phase import/export energy a simulated meter has counted (Wh)."""

    import_wh: list[float]
    export_wh: list[float]

    @classmethod
    def starting_at(cls, import_wh: float, export_wh: float) -> "EnergyCounters":
        """Counters that start at plausible non-zero readings (Wh per phase)."""
        return cls([import_wh] * 3, [export_wh] * 3)

    def add(self, sample: PowerSample, duration_s: float) -> None:
        """Integrate one window of per-phase power (W) over `duration_s`."""
        for index, watts in enumerate((sample.l1_w, sample.l2_w, sample.l3_w)):
            if watts >= 0:
                self.import_wh[index] += watts * duration_s / 3600.0
            else:
                self.export_wh[index] -= watts * duration_s / 3600.0


def janitza_values(sample: PowerSample, energy: EnergyCounters, frequency_hz: float = 50.0) -> list[float]:
    """The 39 register values of a Janitza block for one window of per-phase power (W)."""
    powers = [sample.l1_w, sample.l2_w, sample.l3_w]
    reactive = [0.15 * abs(p) + 40.0 for p in powers]
    apparent = [math.hypot(p, q) for p, q in zip(powers, reactive, strict=True)]
    currents = [s / NOMINAL_VOLTAGE_V for s in apparent]
    cos_phi = [p / s if s > 0 else 1.0 for p, s in zip(powers, apparent, strict=True)]
    vector_sum_a = abs(currents[0] + currents[1] * complex(-0.5, 0.866) + currents[2] * complex(-0.5, -0.866))
    net = [i - e for i, e in zip(energy.import_wh, energy.export_wh, strict=True)]
    values = [
        *[NOMINAL_VOLTAGE_V] * 3,
        *[LINE_VOLTAGE_V] * 3,
        *currents,
        vector_sum_a,
        *powers,
        sum(powers),
        *apparent,
        sum(apparent),
        *reactive,
        sum(reactive),
        *cos_phi,
        frequency_hz,
        1.0,
        *net,
        sum(net),
        *energy.import_wh,
        sum(energy.import_wh),
        *energy.export_wh,
        sum(energy.export_wh),
    ]
    assert len(values) == JANITZA_VALUE_COUNT
    return values


class RealTimePlant:
    """Runs `plant` against the wall clock: meter windows go to the Modbus servers when they end,
    the Multi's setpoints come from the Venus emulator, the battery state goes back to it.
    `frequency` (Hz over plant time) goes into the meters' frequency register."""

    def __init__(
        self,
        plant: Plant,
        grid_server: JanitzaServer,
        battery_server: JanitzaServer,
        venus: VenusEmulator,
        *,
        clock: Clock = monotonic,
        frequency: FrequencyProfile = NOMINAL_FREQUENCY,
    ) -> None:
        self.plant = plant
        self._frequency = frequency
        self._servers = {"grid": grid_server, "battery": battery_server}
        self._energy = {
            "grid": EnergyCounters.starting_at(4_000_000.0, 150_000.0),
            "battery": EnergyCounters.starting_at(900_000.0, 800_000.0),
        }
        self.venus = venus
        self._clock = clock
        self._applied: dict[Phase, int] = {}
        self.last_windows: dict[str, MeterWindow] = {}

    def _publish_window(self, window: MeterWindow) -> None:
        energy = self._energy[window.meter]
        energy.add(window.sample, self.plant.config.window_s)
        frequency_hz = self._frequency(window.end_s)
        self._servers[window.meter].set_values(janitza_values(window.sample, energy, frequency_hz))
        self.last_windows[window.meter] = window

    def _sync_setpoints(self) -> None:
        setpoints = self.venus.setpoints()
        if setpoints != self._applied:
            self._applied = dict(setpoints)
            self.plant.command(setpoints)

    def _sync_venus(self) -> None:
        plant = self.plant
        battery_w = [round(w, 1) for w in plant.battery_w]
        self.venus.set_ac_in(*battery_w)
        self.venus.set_soc(round(plant.soc_percent, 1))
        voltage_v = plant.config.voltage_v
        total_w = sum(battery_w)
        self.venus.set_battery(voltage_v, round(total_w / voltage_v, 1), round(total_w, 1))

    async def run(self) -> None:
        """Advance the plant with the wall clock until cancelled."""
        start_s = self._clock() - self.plant.time_s
        next_venus_s = 0.0
        for meter in ("grid", "battery"):  # serve plausible values before the first window ends
            self._publish_window(MeterWindow(meter, 0.0, PowerSample(0.0, 0.0, 0.0, 0.0)))
        while True:
            now_s = self._clock() - start_s
            for window in self.plant.advance(max(0.0, now_s - self.plant.time_s)):
                self._publish_window(window)
            self._sync_setpoints()
            if now_s >= next_venus_s:
                next_venus_s = now_s + VENUS_INTERVAL_S
                self._sync_venus()
            wake_s = min(self.plant.next_window_end_s(), now_s + POLL_S)
            await asyncio.sleep(max(0.0, wake_s - (self._clock() - start_s)))
