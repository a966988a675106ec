"""Closed loops in virtual time: the plant against the real `ChargeController` task or a baseline.

No network and no wall clock: the plant is advanced event by event (meter reads, setpoint
deliveries, the controller's own timeouts, trace samples) and the clock every component sees is the
plant's time, so a 30 s scenario runs in a fraction of a second. Controllers:

- `watti`: the production `ChargeController` task, fed through `Latest` holders exactly like the
  meters do: each meter is read by the production `PhaseLockedSchedule` in virtual time (reads
  take `Latencies.read_s`, start up to a random scheduling delay late, see the window the meter
  shows mid-way), and a new window is published on arrival stamped with its estimated close time.
  The meters' windows move as `RunOptions.timing` says (frequency wander, jitter, phase jumps), so
  the figures include the poller's timing losses. Its writes reach the inverter `write_s` later.
- `reference`: the original project's loop (`domain/reference_law.py`): each meter polled blindly
  every 100 ms at its own random phase, SOC every 10 s, a recompute on any update at most every
  200 ms with whatever values are newest (no alignment, no failsafe, no trim, no deadband).
- `meter_oracle`: at each grid-meter window end it knows that window's exact average load − PV and
  commands at once (no software or communication latency); the inverter still has its dead time,
  lag and slew. The physical limit given a 200 ms meter.
- `ideal_oracle`: knows load − PV continuously and commands every plant step without delay
  (orientation only: no real controller can see the load before a meter does).

All of them obey the same power limits (SOC tables, BMS, inverter maxima) of the controller config.
"""

import asyncio
import dataclasses
import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from prometheus_client.core import Metric

from watti_watchman.config.services import ChargeControllerConfig
from watti_watchman.domain.janitza_timing import PhaseLockedSchedule, ReadTiming
from watti_watchman.domain.limits import BmsTracking, PowerLimits, SocTable, power_limits, track_bms
from watti_watchman.domain.readings import PHASES, BatteryStatus, PhaseSetpoints, PowerSample
from watti_watchman.domain.reference_law import reference_setpoints
from watti_watchman.latest import Latest, Stamped
from watti_watchman.services.charge_controller import ChargeController, law_parameters
from watti_watchman.sim.meter_clock import FIELD, MeterTiming, meter_clocks
from watti_watchman.sim.plant import PRESETS, Installation, MeterKind, MeterWindow, Plant, PlantConfig
from watti_watchman.sim.scenario import Scenario

T = TypeVar("T")
ControllerKind = Literal["watti", "reference", "meter_oracle", "ideal_oracle"]
EPSILON_S = 1e-9
"""Times closer than this count as equal (s)."""
REFERENCE_POLL_S = 0.1
REFERENCE_MIN_INTERVAL_S = 0.2
REFERENCE_SOC_POLL_S = 10.0


@dataclass(frozen=True, slots=True)
class Latencies:
    """Software and communication delays of our loop (s): one Modbus read's round trip, the mean
    extra delay before a planned read goes out (task scheduling), setpoint write → the inverter
    acting on it (its own dead time comes on top)."""

    read_s: float = 0.002
    wake_s: float = 0.0005
    write_s: float = 0.005


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How a scenario is run: pre-roll held at the t = 0 values (s), trace period (s), random seed,
    delays, and how the meters' windows move."""

    pre_roll_s: float = 5.0
    trace_s: float = 0.01
    seed: int = 1
    latencies: Latencies = Latencies()
    timing: MeterTiming = FIELD


def default_controller_config(**overrides: Any) -> ChargeControllerConfig:
    """The original example's controller (its SOC tables, everything else default) with overrides."""
    values: dict[str, Any] = {
        "type": "ChargeController",
        "grid_meter_name": "hak",
        "battery_meter_name": "battery",
        "battery_controller_name": "victron",
        "charge_limits": {"0": 9000, "90": 2000, "97": 1000, "99": 500},
        "discharge_limits": {"100": 6000, "10": 1000, "5": 0},
    }
    values.update(overrides)
    return ChargeControllerConfig.model_validate(values)


@dataclass
class Trace:
    """The scored part of a run (t >= 0): samples every `RunOptions.trace_s`, grid windows, counters."""

    times_s: list[float] = field(default_factory=list)
    grid_w: list[float] = field(default_factory=list)
    """Instantaneous grid power, total (W, + = import)."""
    battery_w: list[float] = field(default_factory=list)
    """Instantaneous battery power, total (W, + = charging)."""
    setpoint_w: list[float] = field(default_factory=list)
    """Total setpoint the inverter is following (delivered, before its dead time) (W)."""
    soc_percent: list[float] = field(default_factory=list)
    grid_windows: list[tuple[float, float]] = field(default_factory=list)
    """(end s, total W) of every grid-meter window that ended after t = 0."""
    export_wh: float = 0.0
    import_wh: float = 0.0
    writes: int = 0
    """Setpoint writes (commands) sent after t = 0."""


@dataclass(frozen=True)
class RunResult:
    """One scenario run on one plant with one controller."""

    scenario: Scenario
    plant: str
    controller: ControllerKind
    target_w: float
    trace: Trace


class Agent(Protocol):
    """A controller plugged into the virtual loop."""

    def start(self) -> None:
        """Called once before the plant starts moving."""
        ...

    def on_window(self, window: MeterWindow) -> None:
        """A meter window ended now (plant time)."""
        ...

    def wake_s(self) -> float:
        """The next time (plant s) the agent must run without any event; inf for none."""
        ...

    async def settle(self) -> None:
        """Run whatever became due until the agent waits again."""
        ...


class VirtualLoop:
    """Advances the plant from event to event; agents schedule reads and setpoint deliveries on it."""

    def __init__(self, plant: Plant, trace_s: float) -> None:
        self.plant = plant
        self.trace = Trace()
        self.writes = 0
        self._trace_s = trace_s
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._setpoint_w = 0.0
        self._energy_at_zero: tuple[float, float] | None = None
        self._writes_at_zero = 0

    def now_s(self) -> float:
        """The plant time (s): the clock of every component in the loop."""
        return self.plant.time_s

    def schedule(self, at_s: float, action: Callable[[], None]) -> None:
        """Run `action` when the plant reaches `at_s` (s); same-time actions run in schedule order."""
        heapq.heappush(self._events, (at_s, next(self._order), action))

    def deliver(self, setpoints: PhaseSetpoints, delay_s: float) -> None:
        """Count a setpoint write now; it reaches the inverter `delay_s` later."""
        self.writes += 1
        command = dict(setpoints)

        def arrive() -> None:
            self.plant.command(command)
            self._setpoint_w = float(sum(command.values()))

        if delay_s <= 0.0:
            arrive()
        else:
            self.schedule(self.now_s() + delay_s, arrive)

    async def run(self, agent: Agent, until_s: float, on_zero: Callable[[], None] | None = None) -> Trace:
        """Run plant and agent to plant time `until_s`; scoring starts at t = 0 (`on_zero` runs then)."""
        agent.start()
        next_trace_s = 0.0 if self.now_s() <= 0.0 else math.inf
        while True:
            now_s = self.now_s()
            if now_s >= -EPSILON_S and self._energy_at_zero is None:
                if on_zero is not None:
                    on_zero()
                self._energy_at_zero = (self.plant.export_wh, self.plant.import_wh)
                self._writes_at_zero = self.writes
            if now_s >= next_trace_s - EPSILON_S:
                self._record(now_s)
                next_trace_s += self._trace_s
            if now_s >= until_s - EPSILON_S:
                break
            stop_s = min(
                until_s,
                next_trace_s,
                0.0 if now_s < -EPSILON_S else math.inf,
                self._events[0][0] if self._events else math.inf,
                self.plant.next_window_end_s(),
                max(agent.wake_s(), now_s),
            )
            if stop_s > now_s + EPSILON_S:
                for window in self.plant.advance(stop_s - now_s):
                    if window.meter == "grid" and window.end_s > EPSILON_S:
                        self.trace.grid_windows.append((window.end_s, window.sample.total_w))
                    agent.on_window(window)
            while self._events and self._events[0][0] <= self.now_s() + EPSILON_S:
                heapq.heappop(self._events)[2]()
            await agent.settle()
        export_0, import_0 = self._energy_at_zero or (0.0, 0.0)
        self.trace.export_wh = self.plant.export_wh - export_0
        self.trace.import_wh = self.plant.import_wh - import_0
        self.trace.writes = self.writes - self._writes_at_zero
        return self.trace

    def _record(self, now_s: float) -> None:
        trace, plant = self.trace, self.plant
        trace.times_s.append(now_s)
        trace.grid_w.append(sum(plant.grid_w()))
        trace.battery_w.append(sum(plant.battery_w))
        trace.setpoint_w.append(self._setpoint_w)
        trace.soc_percent.append(plant.soc_percent)


class ManualLatest(Latest[T]):
    """A `Latest` whose `wait_newer` timeout elapses on the loop's clock (fired by `fire_due`)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self._now = clock
        self._waiter: asyncio.Future[None] | None = None
        self.deadline_s = math.inf
        self.parked = False

    def publish(self, value: T, at_s: float | None = None) -> Stamped[T]:
        """Store and wake the waiter at once."""
        stamped = super().publish(value, at_s)
        self._wake()
        return stamped

    def fire_due(self) -> None:
        """Wake a waiter whose timeout has passed."""
        if self.parked and self._now() >= self.deadline_s - EPSILON_S:
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self.parked = False

    async def wait_newer(self, seq: int, timeout_s: float | None) -> Stamped[T] | None:
        """As `Latest.wait_newer`, the timeout counted on the loop's clock."""
        newest = self.snapshot()
        if newest is not None and newest.seq > seq:
            return newest
        self.deadline_s = math.inf if timeout_s is None else self._now() + timeout_s
        if self._now() >= self.deadline_s - EPSILON_S:
            return None
        self._waiter = asyncio.get_running_loop().create_future()
        self.parked = True
        await self._waiter
        newest = self.snapshot()
        return newest if newest is not None and newest.seq > seq else None


class SimulatedMeter:
    """A power meter holder fed by the loop (the `PowerMeter` protocol)."""

    def __init__(self, name: str, power: Latest[PowerSample]) -> None:
        self.name = name
        self.power = power

    def is_fresh(self) -> bool:
        """True while a sample at most 1 s old is present."""
        return self.power.is_fresh(1.0)

    async def run(self) -> None:
        """Nothing to do: the loop publishes."""

    def collect_metrics(self) -> Iterable[Metric]:
        """No metrics in the simulation."""
        return ()

    def status(self) -> Mapping[str, Any]:
        """No status in the simulation."""
        return {}


class _Battery:
    """The battery controller side (`BatteryController` protocol): writes go through the loop."""

    def __init__(self, loop: VirtualLoop, write_s: float) -> None:
        self.name = "victron"
        self.battery: Latest[BatteryStatus] = Latest(loop.now_s)
        self._loop = loop
        self._write_s = write_s

    def is_fresh(self) -> bool:
        """True while a status at most 5 s old is present."""
        return self.battery.is_fresh(5.0)

    def ready_for_setpoints(self) -> bool:
        """Always ready: the simulated inverter never goes away."""
        return True

    async def write_setpoints(self, setpoints: PhaseSetpoints) -> None:
        """Hand the setpoints to the inverter; they arrive `write_s` later."""
        self._loop.deliver(setpoints, self._write_s)

    async def run(self) -> None:
        """Nothing to do: the loop publishes."""

    def collect_metrics(self) -> Iterable[Metric]:
        """No metrics in the simulation."""
        return ()

    def status(self) -> Mapping[str, Any]:
        """No status in the simulation."""
        return {}


class PolledMeter:
    """One meter as `JanitzaMeter` reads it, in virtual time: the production schedule decides when
    to read; a read sees the newest window closed half a round trip after it was sent."""

    def __init__(
        self, loop: VirtualLoop, power: Latest[PowerSample], latencies: Latencies, rng: random.Random
    ) -> None:
        self._loop = loop
        self._power = power
        self._latencies = latencies
        self._rng = rng
        self.schedule = PhaseLockedSchedule(loop.plant.config.window_s)
        self.reads = 0
        self._windows: list[MeterWindow] = []
        self._last_seen = -1
        self.on_publish: Callable[[], None] = lambda: None

    def start(self) -> None:
        """Plan the first read."""
        self._plan()

    def window_closed(self, window: MeterWindow) -> None:
        """The meter's registers hold `window` from now on."""
        self._windows.append(window)

    def _plan(self) -> None:
        at_s = max(self._loop.now_s(), self.schedule.next_read_at())
        at_s += self._rng.expovariate(1 / self._latencies.wake_s) if self._latencies.wake_s > 0 else 0.0
        self._loop.schedule(at_s, self._send)

    def _send(self) -> None:
        sent_s = self._loop.now_s()
        self._loop.schedule(sent_s + self._latencies.read_s / 2, lambda: self._sample(sent_s))

    def _sample(self, sent_s: float) -> None:
        shown = len(self._windows) - 1
        self._loop.schedule(sent_s + self._latencies.read_s, lambda: self._arrive(sent_s, shown))

    def _arrive(self, sent_s: float, shown: int) -> None:
        arrived_s = self._loop.now_s()
        self.reads += 1
        new_window = shown != self._last_seen
        self._last_seen = shown
        estimate = self.schedule.observe(ReadTiming(sent_s, arrived_s, new_window))
        if new_window and shown >= 0:
            at_s = arrived_s - self._loop.plant.config.window_s / 2 if estimate is None else estimate.at_s
            self._power.publish(self._windows[shown].sample, min(arrived_s, at_s))
            self.on_publish()
        self._plan()


class WattiAgent:
    """The production `ChargeController` task, its meters read by modelled pollers."""

    def __init__(
        self, loop: VirtualLoop, config: ChargeControllerConfig, latencies: Latencies, rng: random.Random
    ) -> None:
        self._loop = loop
        self.grid_power: ManualLatest[PowerSample] = ManualLatest(loop.now_s)
        self._battery_power: Latest[PowerSample] = Latest(loop.now_s)
        self.battery = _Battery(loop, latencies.write_s)
        self.meters: dict[MeterKind, PolledMeter] = {
            "grid": PolledMeter(loop, self.grid_power, latencies, rng),
            "battery": PolledMeter(loop, self._battery_power, latencies, rng),
        }
        self.meters["battery"].on_publish = self._battery_status
        self.controller = ChargeController(
            config,
            SimulatedMeter("hak", self.grid_power),
            SimulatedMeter("battery", self._battery_power),
            self.battery,
            clock=loop.now_s,
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Publish the battery status, start the pollers and the controller task."""
        self.battery.battery.publish(self._loop.plant.battery_status())
        for meter in self.meters.values():
            meter.start()
        self._task = asyncio.create_task(self.controller.run(), name="charge_controller")

    def on_window(self, window: MeterWindow) -> None:
        """The meter shows the window from now on; its poller reads it when it reads."""
        self.meters[window.meter].window_closed(window)

    def _battery_status(self) -> None:
        self.battery.battery.publish(self._loop.plant.battery_status())

    def wake_s(self) -> float:
        """The controller's own timeout (re-send or staleness) while it waits."""
        return self.grid_power.deadline_s if self.grid_power.parked else math.inf

    async def settle(self) -> None:
        """Fire a due timeout and yield until the controller waits again."""
        self.grid_power.fire_due()
        for _ in range(10_000):
            if self.grid_power.parked:
                return
            if self._task is not None and self._task.done():
                self._task.result()
                return
            await asyncio.sleep(0)
        raise RuntimeError("the charge controller did not come back to waiting")

    async def stop(self) -> None:
        """Cancel the controller task."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _split(total_w: float, limits: PowerLimits, installation: Installation) -> PhaseSetpoints:
    """`total_w` clamped to the limits, split evenly over the served phases, with the actuator error
    inverted so that the inverter delivers it (integer W)."""
    clamped = max(-limits.max_discharge_w, min(limits.max_charge_w, total_w))
    share_w = clamped / len(installation.phases)
    return {
        phase: int((share_w - installation.actuator_offset_w[i]) / installation.actuator_gain[i])
        for i, phase in enumerate(PHASES)
        if phase in installation.phases
    }


class _SyncAgent:
    """Base for the baselines: no task to settle."""

    def __init__(self, loop: VirtualLoop, config: ChargeControllerConfig) -> None:
        self._loop = loop
        self._config = config
        self._limits = law_parameters(config).limits

    def start(self) -> None:
        """Nothing to start."""

    def on_window(self, window: MeterWindow) -> None:
        """Ignore meter windows unless overridden."""

    def wake_s(self) -> float:
        """No timeouts unless overridden."""
        return math.inf

    async def settle(self) -> None:
        """Nothing runs asynchronously."""

    def _command(self, load_w: float, delay_s: float) -> None:
        """Command target − load within the limits in force now."""
        plant = self._loop.plant
        status = plant.battery_status()
        settled = BmsTracking(unreported_s=math.inf)
        bms_use, _ = track_bms(self._limits.bms_policy, status, settled, 0.0, 0.0)
        limits = power_limits(self._limits, status, self._config.mode, bms_use)
        target_w = self._config.target_setpoint + self._config.import_bias
        self._loop.deliver(_split(target_w - load_w, limits, plant.config.installation), delay_s)


class MeterOracle(_SyncAgent):
    """At each grid window end: that window's exact average load − PV, commanded without delay.

    Needs a plant whose battery meter windows coincide with the grid's (`oracle_plant_config`), so
    that grid − battery over one window is the exact average of load − PV.
    """

    def __init__(self, loop: VirtualLoop, config: ChargeControllerConfig) -> None:
        super().__init__(loop, config)
        self._grid: MeterWindow | None = None

    def on_window(self, window: MeterWindow) -> None:
        """Pair the grid and battery windows of the same interval; command on the pair."""
        if window.meter == "grid":
            self._grid = window
        elif self._grid is not None and abs(self._grid.end_s - window.end_s) < EPSILON_S:
            self._command(self._grid.sample.total_w - window.sample.total_w, 0.0)
            self._grid = None


class IdealOracle(_SyncAgent):
    """Every plant step: the instantaneous load − PV, commanded without delay."""

    def __init__(
        self, loop: VirtualLoop, config: ChargeControllerConfig, load_w: Callable[[float], float]
    ) -> None:
        super().__init__(loop, config)
        self._load_w = load_w
        self._next_s = -math.inf

    def wake_s(self) -> float:
        """The next plant step."""
        return self._next_s

    async def settle(self) -> None:
        """Command when a step is due."""
        now_s = self._loop.now_s()
        if now_s >= self._next_s - EPSILON_S:
            self._command(self._load_w(now_s), 0.0)
            self._next_s = now_s + self._loop.plant.config.step_s


class ReferenceAgent(_SyncAgent):
    """The original loop: blind 100 ms polls per meter, SOC every 10 s, recompute ≤ every 200 ms."""

    def __init__(
        self, loop: VirtualLoop, config: ChargeControllerConfig, latencies: Latencies, rng: random.Random
    ) -> None:
        super().__init__(loop, config)
        self._latencies = latencies
        self._phases_s = {
            "grid": rng.uniform(0.0, REFERENCE_POLL_S),
            "battery": rng.uniform(0.0, REFERENCE_POLL_S),
            "soc": rng.uniform(0.0, REFERENCE_SOC_POLL_S),
        }
        self._charge_table = SocTable.from_mapping(config.charge_limits)
        self._discharge_table = SocTable.from_mapping(config.discharge_limits)
        self._windows: dict[str, PowerSample] = {}
        self._values: dict[str, PowerSample] = {}
        self._soc_percent: float | None = None
        self._last_compute_s = -math.inf

    def start(self) -> None:
        """Read the SOC once, then schedule the periodic polls at their phases."""
        now_s = self._loop.now_s()
        self._poll_soc()
        for name, period_s in (("grid", REFERENCE_POLL_S), ("battery", REFERENCE_POLL_S)):
            self._schedule_poll(name, period_s, now_s)
        self._schedule_poll("soc", REFERENCE_SOC_POLL_S, now_s)

    def _schedule_poll(self, name: str, period_s: float, after_s: float) -> None:
        phase_s = self._phases_s[name]
        at_s = phase_s + (math.floor((after_s - phase_s) / period_s + EPSILON_S) + 1) * period_s
        self._loop.schedule(at_s, lambda: self._poll(name, period_s))

    def on_window(self, window: MeterWindow) -> None:
        """The meter's registers now hold this window."""
        self._windows[window.meter] = window.sample

    def _poll(self, name: str, period_s: float) -> None:
        now_s = self._loop.now_s()
        self._schedule_poll(name, period_s, now_s)
        if name == "soc":
            self._poll_soc()
            return
        sample = self._windows.get(name)
        if sample is not None:
            self._loop.schedule(now_s + self._latencies.read_s, lambda: self._update(name, sample))

    def _poll_soc(self) -> None:
        self._soc_percent = self._loop.plant.soc_percent
        self._recompute()

    def _update(self, name: str, sample: PowerSample) -> None:
        self._values[name] = sample
        self._recompute()

    def _recompute(self) -> None:
        now_s = self._loop.now_s()
        grid, battery, soc = self._values.get("grid"), self._values.get("battery"), self._soc_percent
        if grid is None or battery is None or soc is None:
            return
        if now_s - self._last_compute_s < REFERENCE_MIN_INTERVAL_S - EPSILON_S:
            return
        self._last_compute_s = now_s
        setpoints = reference_setpoints(
            grid, battery, soc, self._config.target_setpoint, self._charge_table, self._discharge_table
        )
        self._loop.deliver(setpoints, self._latencies.write_s)


def oracle_plant_config(config: PlantConfig) -> PlantConfig:
    """`config` with the battery meter's windows moved onto the grid meter's (the oracle's view)."""
    return dataclasses.replace(config, battery_window_offset_s=config.grid_window_offset_s)


async def run_loop(
    scenario: Scenario,
    plant_config: PlantConfig,
    controller: ControllerKind,
    controller_config: ChargeControllerConfig,
    options: RunOptions = RunOptions(),
) -> Trace:
    """Run `scenario` (pre-rolled at its t = 0 values) on the plant with `controller`; the scored trace."""
    if controller == "meter_oracle":
        plant_config = oracle_plant_config(plant_config)

    def load(t_s: float) -> tuple[float, float, float]:
        return scenario.load_w(max(t_s, 0.0))

    def pv(t_s: float) -> tuple[float, float, float]:
        return scenario.pv_w(max(t_s, 0.0))

    clocks = meter_clocks(
        options.timing,
        plant_config.grid_window_offset_s,
        plant_config.battery_window_offset_s,
        start_s=-options.pre_roll_s,
    )
    if controller == "meter_oracle":
        clocks["battery"] = clocks["grid"]
    plant = Plant(
        dataclasses.replace(plant_config, initial_soc_percent=scenario.initial_soc_percent),
        load,
        pv,
        start_s=-options.pre_roll_s,
        window_clocks=clocks,
    )
    loop = VirtualLoop(plant, options.trace_s)

    def net_load_w(t_s: float) -> float:
        return sum(load(t_s)) - sum(pv(t_s))

    def reset_soc() -> None:
        plant.soc_percent = scenario.initial_soc_percent

    agent: Agent
    if controller == "watti":
        watti = WattiAgent(loop, controller_config, options.latencies, random.Random(options.seed))
        try:
            return await loop.run(watti, scenario.duration_s, reset_soc)
        finally:
            await watti.stop()
    if controller == "reference":
        rng = random.Random(options.seed)
        agent = ReferenceAgent(loop, controller_config, options.latencies, rng)
    elif controller == "meter_oracle":
        agent = MeterOracle(loop, controller_config)
    else:
        agent = IdealOracle(loop, controller_config, net_load_w)
    return await loop.run(agent, scenario.duration_s, reset_soc)


def simulate_run(
    scenario: Scenario,
    plant: str,
    controller: ControllerKind,
    controller_config: ChargeControllerConfig | None = None,
    options: RunOptions = RunOptions(),
) -> RunResult:
    """Run one scenario on the plant preset `plant` (a key of `PRESETS`) with `controller` (blocking)."""
    installation = scenario.installation
    config = (controller_config or default_controller_config()).model_copy(
        update={"phases": list(installation.phases)}
    )
    plant_config = PlantConfig(inverter=PRESETS[plant], installation=installation)
    trace = asyncio.run(run_loop(scenario, plant_config, controller, config, options))
    return RunResult(scenario, plant, controller, config.target_setpoint + config.import_bias, trace)
