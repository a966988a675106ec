"""The one control task: fresh grid sample → paired battery sample → pure law → setpoint write."""

import asyncio
import logging
import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client.core import Metric

from watti_watchman.clock import Clock, monotonic
from watti_watchman.config.services import ChargeControllerConfig
from watti_watchman.domain.law import LawInputs, LawOutput, LawParameters, Reason, decide, initial_state
from watti_watchman.domain.limits import BmsUse, LimitConfig, LimitSource, SocTable
from watti_watchman.domain.pairing import Alignment, Pairing, pair
from watti_watchman.domain.readings import PHASES, BatteryStatus, PhaseSetpoints, PowerSample
from watti_watchman.domain.settings import MODES, Mode, RuntimeSettings, SettingsHolder
from watti_watchman.domain.tuning import TUNING
from watti_watchman.failures import FailureLog
from watti_watchman.latest import Stamped
from watti_watchman.meters.base import BatteryController, BatteryMeter, PowerMeter
from watti_watchman.metrics import Families, Histogram

logger = logging.getLogger("watti_watchman.charge_controller")

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
RETRY_S = 0.25
"""After a failed or impossible write, try again at the latest this much later (s)."""
TOLERANCE_S = 1e-6
"""Deadlines this close count as reached (a timeout computed from them may round short)."""


def law_parameters(config: ChargeControllerConfig) -> LawParameters:
    """The law's static parameters from the controller configuration."""
    return LawParameters(
        limits=LimitConfig(
            SocTable.from_mapping(config.charge_limits),
            SocTable.from_mapping(config.discharge_limits),
            config.max_charge_power,
            config.max_discharge_power,
            config.bms_limits,
        ),
        phases=tuple(config.phases),
        regulation=config.regulation,
        import_bias_w=config.import_bias,
        export_slew_w_per_s=config.export_slew_limit,
        deadband_w=config.deadband,
        trim_gain_per_s=config.trim_gain,
        trim_limit_w=config.trim_limit,
        tuning=replace(TUNING, response_s=config.response_time),
    )


@dataclass(frozen=True, slots=True)
class ControllerDecision:
    """One decision: when (monotonic s), on which grid sample (s), its pairing, settings, output."""

    at_s: float
    grid_at_s: float | None
    pairing_skew_s: float | None
    alignment: Alignment | None
    target_w: float
    mode: Mode
    output: LawOutput


class ChargeController:
    """Zero feed-in control loop: keeps grid power at the target by writing battery setpoints."""

    def __init__(
        self,
        config: ChargeControllerConfig,
        grid: PowerMeter,
        battery_meter: PowerMeter,
        battery: BatteryController,
        *,
        battery_status: BatteryMeter | None = None,
        clock: Clock = monotonic,
        dry_run: bool = False,
    ) -> None:
        self.name = config.name
        self.config = config
        self.dry_run = dry_run
        self.settings = SettingsHolder(RuntimeSettings(config.target_setpoint, config.mode))
        self.parameters = law_parameters(config)
        self.last_decision: ControllerDecision | None = None
        self.decisions_total = 0
        self.writes_total = 0
        self.write_failures: Counter[str] = Counter()
        self._grid = grid
        self._battery_meter = battery_meter
        self._battery = battery
        self._status_source: BatteryMeter = battery_status or battery
        self._clock = clock
        self._state = initial_state(self.parameters.phases)
        self._zero: PhaseSetpoints = dict.fromkeys(self.parameters.phases, 0)
        self._applied: PhaseSetpoints | None = None
        self._write_due_s = -math.inf
        self._grid_seq = 0
        self._previous_grid_at_s: float | None = None
        self._commands: deque[tuple[float, PowerSample]] = deque()
        """(write time s, battery power the write drives to: (setpoint − trim) / (1 + gain
        correction)), oldest first."""
        self._stopping = False
        self._write_lock = asyncio.Lock()
        self.families = Families()
        self._latency = Histogram(
            "watti_controller_decision_latency_seconds",
            "Estimated close of the grid meter window to setpoint write done (s; polling delay included)",
            config.name,
            LATENCY_BUCKETS_S,
        )
        self._failures = FailureLog(logger, clock)

    @property
    def applied_setpoints(self) -> PhaseSetpoints | None:
        """The setpoints last written (dry run: last computed), W per phase; None before the first."""
        return self._applied

    async def run(self) -> None:
        """Decide on every fresh grid sample; failsafe and re-send on timeouts; returns after shutdown."""
        max_age_s = self.config.max_age
        while not self._stopping:
            timeout_s = max(0.0, self._next_wake_s(max_age_s) - self._clock())
            stamped = await self._grid.power.wait_newer(self._grid_seq, timeout_s)
            if self._stopping:
                return
            if stamped is not None and stamped.seq > self._grid_seq:
                self._grid_seq = stamped.seq
                await self._on_grid_sample(stamped)
            else:
                await self._on_timeout()

    async def shutdown(self) -> None:
        """Stop deciding and write 0 W on every controlled phase (nothing in dry run)."""
        async with self._write_lock:
            self._stopping = True
            if self.dry_run:
                return
            if not self._battery.ready_for_setpoints():
                logger.warning("%s: cannot hand back control: battery controller not ready", self.name)
                return
            try:
                await self._battery.write_setpoints(dict(self._zero))
            except ConnectionError as error:
                logger.warning("%s: could not write 0 W at shutdown: %s", self.name, error)
                return
            self.writes_total += 1
            self._applied = dict(self._zero)
            logger.info("%s: wrote 0 W on %s at shutdown", self.name, ", ".join(self._zero))

    def _next_wake_s(self, max_age_s: float) -> float:
        """When to wake without a new grid sample: the next (re)send or the grid going stale (s)."""
        wake_s = self._write_due_s
        newest = self._grid.power.snapshot()
        decision = self.last_decision
        if newest is not None and (decision is None or not decision.output.failsafe):
            wake_s = min(wake_s, newest.at_s + max_age_s)
        return wake_s

    def _battery_status(self) -> BatteryStatus | None:
        """SOC and BMS limits when their source (status meter, else battery controller) has them fresh."""
        newest = self._status_source.battery.snapshot()
        return newest.value if newest is not None and self._status_source.is_fresh() else None

    async def _on_grid_sample(self, stamped: Stamped[PowerSample]) -> None:
        now_s = self._clock()
        max_age_s = self.config.max_age
        fresh = now_s - stamped.at_s <= max_age_s
        grid_history = [
            (item.at_s, item.value) for item in self._grid.power.history() if item.seq <= stamped.seq
        ]
        battery_history = [(item.at_s, item.value) for item in self._battery_meter.power.history()]
        pairing = (
            pair(
                grid_history,
                battery_history,
                now_s,
                max_age_s,
                commands=list(self._commands),
                load=self._state.load,
                tuning=self.parameters.tuning,
            )
            if fresh
            else None
        )
        grid = stamped.value if fresh else None
        previous_s = self._previous_grid_at_s
        dt_s = 0.0 if previous_s is None else stamped.at_s - previous_s
        decision = self._decide(now_s, stamped.at_s, grid, pairing, dt_s)
        self._previous_grid_at_s = None if decision.output.failsafe else stamped.at_s
        if await self._send(decision.output.setpoints, now_s):
            self._latency.observe(max(0.0, self._clock() - stamped.at_s))

    async def _on_timeout(self) -> None:
        now_s = self._clock()
        newest = self._grid.power.snapshot()
        if newest is None or now_s >= newest.at_s + self.config.max_age - TOLERANCE_S:
            decision = self._decide(now_s, None, None, None, 0.0)
            self._previous_grid_at_s = None
            await self._send(decision.output.setpoints, now_s)
        elif self._applied is not None:
            await self._send(self._applied, now_s)

    def _decide(
        self,
        now_s: float,
        grid_at_s: float | None,
        grid: PowerSample | None,
        pairing: Pairing | None,
        dt_s: float,
    ) -> ControllerDecision:
        settings = self.settings.current
        if pairing is not None:
            grid = pairing.grid
        battery = None if pairing is None else pairing.battery
        inputs = LawInputs(grid, battery, self._battery_status(), settings.target_w, settings.mode, dt_s)
        output = decide(self.parameters, inputs, self._state)
        self._state = output.state
        decision = ControllerDecision(
            now_s,
            grid_at_s,
            None if pairing is None else pairing.skew_s,
            None if pairing is None else pairing.alignment,
            settings.target_w,
            settings.mode,
            output,
        )
        self.last_decision = decision
        self.decisions_total += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: %s", self.name, describe(decision))
        return decision

    async def _send(self, setpoints: PhaseSetpoints, now_s: float) -> bool:
        """Write when changed or the re-send is due; True when a write went out (dry run: was due).

        A dry run keeps the command history of the writes it would have sent, so its pairing and
        decisions are the live loop's.
        """
        if setpoints == self._applied and now_s < self._write_due_s - TOLERANCE_S:
            return False
        if self.dry_run:
            self._applied = dict(setpoints)
            self._write_due_s = now_s + self.config.resend_interval
            self._remember(setpoints, now_s)
            return True
        async with self._write_lock:
            if self._stopping:
                return False
            if not self._battery.ready_for_setpoints():
                self._write_failed("not_ready", "battery controller not ready for setpoints", now_s)
                return False
            try:
                await self._battery.write_setpoints(dict(setpoints))
            except ConnectionError as error:
                self._write_failed("connection", error, now_s)
                return False
        self.writes_total += 1
        self._applied = dict(setpoints)
        self._write_due_s = now_s + self.config.resend_interval
        self._remember(setpoints, now_s)
        self._failures.success(f"{self.name}: setpoint writes recovered")
        return True

    def _remember(self, setpoints: PhaseSetpoints, now_s: float) -> None:
        """Keep the written command (as the battery power it drives to) for the pairing."""
        trim, scale = self._state.trim_w, 1.0 + self._state.gain.correction
        l1, l2, l3 = ((setpoints.get(phase, 0) - trim.get(phase, 0.0)) / scale for phase in PHASES)
        self._commands.append((now_s, PowerSample(l1, l2, l3, l1 + l2 + l3)))
        horizon_s = self.config.max_age + self.parameters.tuning.response_s
        while len(self._commands) > 1 and now_s - self._commands[1][0] > horizon_s:
            self._commands.popleft()

    def _write_failed(self, reason: str, detail: object, now_s: float) -> None:
        self.write_failures[reason] += 1
        if self.writes_total == 0 and reason == "not_ready":
            # At start-up the GX's portal id and inverter instance take a moment to discover.
            logger.debug("%s: waiting for the battery controller before the first write", self.name)
        else:
            self._failures.failure(f"{self.name}: setpoint write failed ({reason})", detail)
        self._write_due_s = now_s + min(RETRY_S, self.config.resend_interval)

    def collect_metrics(self) -> Iterable[Metric]:
        """Decision inputs, command, setpoints, limits, reason, latency and write counters."""
        families, name = self.families, self.name
        settings = self.settings.current
        target = families.gauge("watti_controller_target_watts", "Grid power target (W, + = import)")
        yield target.one(settings.target_w, name)
        mode = families.gauge("watti_controller_mode", "Operating mode (1 = current)", ("name", "mode"))
        yield mode.set(([name, m], 1.0 if m == settings.mode else 0.0) for m in MODES)
        yield from self._decision_metrics(self.last_decision)
        setpoint = families.gauge(
            "watti_controller_setpoint_watts",
            "Setpoint last written per phase (W, + = charge; dry run: computed)",
            ("name", "phase"),
        )
        yield setpoint.set(([name, phase.lower()], value) for phase, value in (self._applied or {}).items())
        yield from self._latency.collect()
        yield families.counter("watti_controller_decisions", "Decisions taken").one(
            self.decisions_total, name
        )
        yield families.counter("watti_controller_writes", "Setpoint writes sent").one(self.writes_total, name)
        failures = families.counter(
            "watti_controller_write_failures", "Setpoint writes not sent, by reason", ("name", "reason")
        )
        yield failures.set(([name, r], n) for r, n in sorted(self.write_failures.items()))

    def _decision_metrics(self, decision: ControllerDecision | None) -> Iterable[Metric]:
        """Families describing the last decision; inputs only while they are fresh."""
        families, name = self.families, self.name
        reason = families.gauge(
            "watti_controller_reason", "Why the setpoint is what it is (1 = current)", ("name", "reason")
        )
        failsafe = families.gauge(
            "watti_controller_failsafe", "1 while inputs are unusable and 0 W is commanded"
        )
        limit = families.gauge(
            "watti_controller_limit_watts", "Battery power limit in force (W)", ("name", "direction")
        )
        source = families.gauge(
            "watti_controller_limit_source",
            "Constraint setting each limit (1 = binding)",
            ("name", "direction", "source"),
        )
        bms = families.gauge(
            "watti_controller_bms_limits",
            "How BMS limits take part under the configured policy (1 = current)",
            ("name", "policy", "use"),
        )
        inputs = [
            families.gauge(metric, text)
            for metric, text in (
                ("watti_controller_grid_watts", "Grid power used by the last decision (W, + = import)"),
                ("watti_controller_battery_watts", "Battery power paired with it (W, + = charging)"),
                ("watti_controller_load_watts", "Estimated uncontrolled power G − B (W)"),
                ("watti_controller_raw_command_watts", "Total command before limits, slew and deadband (W)"),
                ("watti_controller_trim_watts", "Integral trim in the command (W)"),
                (
                    "watti_controller_pairing_skew_seconds",
                    "Grid sample time − time G and B are aligned to (s)",
                ),
            )
        ]
        if decision is None:
            yield from (family.set(()) for family in (reason, failsafe, limit, source, bms, *inputs))
            return
        output = decision.output
        yield reason.set(([name, r], 1.0 if r == output.reason else 0.0) for r in Reason)
        yield failsafe.one(1.0 if output.failsafe else 0.0, name)
        limits = output.limits
        bounds = (
            ("charge", limits.max_charge_w, limits.charge_source),
            ("discharge", limits.max_discharge_w, limits.discharge_source),
        )
        yield limit.set(([name, direction], watts) for direction, watts, _ in bounds)
        yield source.set(
            ([name, direction, s], 1.0 if s == binding else 0.0)
            for direction, _, binding in bounds
            for s in LimitSource
        )
        policy = self.config.bms_limits
        yield bms.set(([name, policy, use], 1.0 if use == limits.bms else 0.0) for use in BmsUse)
        fresh = self._clock() - decision.at_s <= self.config.max_age
        values = (
            output.grid_w,
            output.battery_w,
            output.load_w,
            output.raw_w,
            output.trim_w,
            decision.pairing_skew_s,
        )
        for family, value in zip(inputs, values, strict=True):
            yield family.set([([name], value)] if fresh and value is not None else ())

    def status(self) -> Mapping[str, Any]:
        """JSON-able summary: reason, setpoints, limits, target, mode and the last decision."""
        settings = self.settings.current
        decision = self.last_decision
        result: dict[str, Any] = {
            "target_w": settings.target_w,
            "mode": settings.mode,
            "regulation": self.config.regulation,
            "phases": list(self.parameters.phases),
            "dry_run": self.dry_run,
            "setpoints_w": dict(self._applied or {}),
            "writes_total": self.writes_total,
            "write_failures": dict(self.write_failures),
            "reason": None,
            "failsafe": None,
            "limits": None,
            "bms_limits": {"policy": self.config.bms_limits, "use": None},
            "last_decision": None,
        }
        if decision is not None:
            output, limits = decision.output, decision.output.limits
            result["reason"] = str(output.reason)
            result["failsafe"] = output.failsafe
            result["limits"] = {
                "max_charge_w": limits.max_charge_w,
                "charge_source": str(limits.charge_source),
                "max_discharge_w": limits.max_discharge_w,
                "discharge_source": str(limits.discharge_source),
                "soc_percent": limits.soc_percent,
            }
            result["bms_limits"]["use"] = str(limits.bms)
            result["last_decision"] = {
                "age_s": self._clock() - decision.at_s,
                "grid_w": output.grid_w,
                "battery_w": output.battery_w,
                "load_w": output.load_w,
                "raw_w": output.raw_w,
                "trim_w": output.trim_w,
                "gain_correction": output.state.gain.correction,
                "pairing_skew_s": decision.pairing_skew_s,
                "setpoints_w": dict(output.setpoints),
            }
        return result


def describe(decision: ControllerDecision) -> str:
    """One human-readable line for a decision (the DEBUG log)."""
    output, limits = decision.output, decision.output.limits
    setpoints = " ".join(f"{phase}={value:+d}" for phase, value in output.setpoints.items())
    if output.failsafe:
        return f"{output.reason}: nothing computed → {setpoints} W"
    skew = "" if decision.pairing_skew_s is None else f" skew={decision.pairing_skew_s * 1000:+.0f}ms"
    return (
        f"G={output.grid_w:+.0f} B={output.battery_w:+.0f} D={output.load_w:+.0f} W{skew}"
        f" T={decision.target_w:+.0f} trim={output.trim_w:+.0f} raw={output.raw_w:+.0f} W"
        f" limits=-{limits.max_discharge_w:.0f}({limits.discharge_source})"
        f"..+{limits.max_charge_w:.0f}({limits.charge_source}) W"
        f" → {setpoints} W ({output.reason}, {decision.mode})"
    )
