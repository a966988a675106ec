"""Janitza UMG meter over Modbus TCP (or RTU frames over TCP), polled in phase with its refresh.

The meter refreshes its values every 200 ms on its own clock. `PhaseLockedSchedule`
(domain/janitza_timing.py) tracks phase and period of that refresh and reads just after each
expected change; `JanitzaMeter` owns the connection, validates every read and publishes typed
readings into `Latest` holders stamped with the estimated time their window closed.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import Metric

from watti_watchman.clock import Clock, monotonic
from watti_watchman.config.meters import JanitzaConfig
from watti_watchman.devices.janitza import QUANTITIES, quantity_values
from watti_watchman.domain.janitza import (
    JANITZA_REGISTER_COUNT,
    JANITZA_VALUE_COUNT,
    JanitzaReading,
    decode_registers,
    reading_from_values,
    rejection_reason,
)
from watti_watchman.domain.janitza_timing import (
    POLL_MODES,
    ChangeEstimate,
    PhaseLockedSchedule,
    PollSchedule,
    ReadTiming,
)
from watti_watchman.domain.quantities import Quantity, QuantityValues
from watti_watchman.domain.readings import PowerSample
from watti_watchman.failures import FailureLog
from watti_watchman.latest import Latest
from watti_watchman.meters.modbus_link import METER_REASONS, ModbusLink, ModbusReadError, classify
from watti_watchman.metrics import Families, Histogram
from watti_watchman.supervisor import Backoff, SupervisedLink, reraise_swallowed_cancel

SAMPLE_AGE_BUCKETS_S = (0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


JanitzaReadError = ModbusReadError
"""A read failed; `reason` is the metric label, the message is for humans."""


async def _read_block(link: ModbusLink, config: JanitzaConfig) -> list[int]:
    """One function-3 read of the meter's register block."""
    return await link.read(3, config.start_address, JANITZA_REGISTER_COUNT)


def values_from_registers(registers: list[int]) -> tuple[float, ...]:
    """Decode and validate one reply; JanitzaReadError(wrong_length | non_finite | implausible)."""
    if len(registers) != JANITZA_REGISTER_COUNT:
        raise JanitzaReadError(
            "wrong_length",
            f"reply has {len(registers)} registers ({len(registers) / 2:g} floats), expected "
            f"{JANITZA_REGISTER_COUNT} ({JANITZA_VALUE_COUNT} floats)",
        )
    values = decode_registers(registers)
    reason = rejection_reason(values)
    if reason == "non_finite":
        raise JanitzaReadError(reason, "reply contains NaN or infinite values")
    if reason is not None:
        raise JanitzaReadError(reason, "reply contains physically impossible values")
    return values


async def read_meter(config: JanitzaConfig) -> JanitzaReading:
    """Connect, read the block once and disconnect; JanitzaReadError with a clear message on failure."""
    link = ModbusLink.for_config(config)
    try:
        await link.connect()
        registers = await _read_block(link, config)
    finally:
        link.close()
    return reading_from_values(values_from_registers(registers), config.invert)


# --- the meter ------------------------------------------------------------------------------------


class JanitzaMeter(SupervisedLink):
    """Polls one Janitza meter, publishing `reading` and `power` stamped with the estimated time
    their window closed (`close_uncertainty_s` is its half-width)."""

    _classify = staticmethod(classify)

    def __init__(self, config: JanitzaConfig, *, clock: Clock = monotonic) -> None:
        self.name = config.name
        self.config = config
        self._clock = clock
        self.reading: Latest[JanitzaReading] = Latest(clock)
        self.power: Latest[PowerSample] = Latest(clock)
        self.quantities: tuple[Quantity, ...] = QUANTITIES
        self.values: Latest[QuantityValues] = Latest(clock)
        self.schedule: PollSchedule = PhaseLockedSchedule(config.interval)
        self.close_uncertainty_s: float | None = None
        """Half-width (s) of the estimate of the newest published window's close time."""
        self._logger = logging.getLogger(f"watti_watchman.janitza.{config.name}")
        self._failures = FailureLog(self._logger, clock)
        self._backoff = Backoff(initial_s=min(0.2, config.interval), cap_s=10.0)
        self._last_values: tuple[float, ...] | None = None
        self._last_published: JanitzaReading | None = None
        self._last_new_window_s: float | None = None
        self.connected = False
        self.reads = 0
        self.new_windows = 0
        self.missed_windows = 0
        self.reconnects = 0
        self.overruns = 0
        self.energy_regressions = 0
        self.read_seconds = 0.0
        self.decode_seconds = 0.0
        self.sample_ages_s: deque[float] = deque(maxlen=1000)
        self._families = Families()
        self._sample_age = Histogram(
            "watti_janitza_sample_age_seconds",
            "Time from the estimated close of the meter's window to the arrival of the reply (s)",
            config.name,
            SAMPLE_AGE_BUCKETS_S,
        )

    def is_fresh(self) -> bool:
        """True when a reading at most `max_age` s old is present."""
        return self.reading.is_fresh(self.config.max_age)

    async def _session(self) -> None:
        link = ModbusLink.for_config(self.config)
        try:
            await link.connect()
            self.connected = True
            while True:
                delay_s = self.schedule.next_read_at() - self._clock()
                if delay_s > 0:
                    await asyncio.sleep(delay_s)
                await self._poll(link)
                reraise_swallowed_cancel()  # pymodbus awaits replies with wait_for
        finally:
            self.connected = False
            link.close()

    async def _poll(self, link: ModbusLink) -> None:
        sent_s = self._clock()
        registers = await _read_block(link, self.config)
        arrived_s = self._clock()
        self.reads += 1
        self.read_seconds += arrived_s - sent_s
        if arrived_s - sent_s > self.config.interval:
            self.overruns += 1
        decode_started = time.perf_counter()
        try:
            values = values_from_registers(registers)
        except JanitzaReadError as error:
            self.schedule.observe(ReadTiming(sent_s, arrived_s, None))
            self._failures.failure(error.reason, error)
            return
        new_window = values != self._last_values
        self._last_values = values
        estimate = self.schedule.observe(ReadTiming(sent_s, arrived_s, new_window))
        self._failures.success(f"{self.name}: reading again")
        self._backoff.reset()
        if new_window:
            self._count_window(arrived_s, estimate)
        elif not self._confirms_static_values(arrived_s):
            self.decode_seconds += time.perf_counter() - decode_started
            return
        if estimate is None:  # the first read, or unchanged values confirmed: within the last window
            half_s = self.config.interval / 2
            estimate = ChangeEstimate(arrived_s - half_s, half_s)
        at_s = min(arrived_s, estimate.at_s)
        self.close_uncertainty_s = estimate.uncertainty_s
        reading = reading_from_values(values, self.config.invert, previous=self._last_published)
        if reading.energy_regressed:
            self.energy_regressions += 1
            self._logger.warning(
                "energy counters went backwards (meter power loss?): %s", sorted(reading.energy_regressed)
            )
        self._last_published = reading
        self.reading.publish(reading, at_s)
        self.power.publish(reading.power_sample(), at_s)
        self.values.publish(quantity_values(reading), at_s)
        self.decode_seconds += time.perf_counter() - decode_started

    def _confirms_static_values(self, arrived_s: float) -> bool:
        """Unchanged values are republished only when the meter shows no regular refresh."""
        newest = self.reading.snapshot()
        if newest is None:
            return True
        return self.schedule.mode == "fixed" and arrived_s - newest.at_s >= 1.5 * self.config.interval

    def _count_window(self, arrived_s: float, estimate: ChangeEstimate | None) -> None:
        self.new_windows += 1
        if self._last_new_window_s is not None:
            windows = round((arrived_s - self._last_new_window_s) / self.config.interval)
            self.missed_windows += max(0, windows - 1)
        self._last_new_window_s = arrived_s
        if estimate is not None:
            age_s = max(0.0, arrived_s - estimate.at_s)
            self.sample_ages_s.append(age_s)
            self._sample_age.observe(age_s)

    def collect_metrics(self) -> Iterable[Metric]:
        """Connection state, counters and sample age (the 39 values are exported from the table)."""
        families, name = self._families, self.name
        up = families.gauge("watti_janitza_up", "1 while readings are fresh (at most max_age old)")
        yield up.one(1.0 if self.is_fresh() else 0.0, name)
        for metric, help_text, value in (
            ("watti_janitza_reads", "Replies received (valid or not)", self.reads),
            ("watti_janitza_new_windows", "Reads that delivered a new measuring window", self.new_windows),
            ("watti_janitza_missed_windows", "Measuring windows never read (estimated)", self.missed_windows),
            ("watti_janitza_reconnects", "Reconnections after a failure", self.reconnects),
            (
                "watti_janitza_cycle_overruns",
                "Reads whose round trip exceeded the refresh interval",
                self.overruns,
            ),
            (
                "watti_janitza_energy_regressions",
                "Readings with an energy counter lower than before",
                self.energy_regressions,
            ),
            ("watti_janitza_read_seconds", "Time spent waiting for replies (s)", self.read_seconds),
            (
                "watti_janitza_processing_seconds",
                "Time spent decoding, validating and publishing (s)",
                self.decode_seconds,
            ),
        ):
            yield families.counter(metric, help_text).one(value, name)
        errors = families.counter(
            "watti_janitza_errors", "Failed reads and connection attempts by reason", ("name", "reason")
        )
        by_reason = self._failures.by_reason
        yield errors.set(([name, r], by_reason[r]) for r in sorted(set(METER_REASONS) | set(by_reason)))
        yield from self._sample_age.collect()
        mode = families.gauge("watti_janitza_poll_mode", "1 for the current polling mode", ("name", "mode"))
        yield mode.set(([name, m], 1.0 if self.schedule.mode == m else 0.0) for m in POLL_MODES)
        yield from self._tracking_metrics()
        connected = families.gauge("watti_janitza_connected", "1 while the TCP connection is open")
        yield connected.one(1.0 if self.connected else 0.0, name)

    def _tracking_metrics(self) -> Iterable[Metric]:
        """Estimated period, implied grid frequency, bracket, close-time uncertainty, slips."""
        families, name, schedule = self._families, self.name, self.schedule
        gauges: list[tuple[str, str, float | None]] = [
            (
                "watti_janitza_window_close_uncertainty_seconds",
                "Half-width of the estimated close time of the newest published window (s)",
                self.close_uncertainty_s,
            )
        ]
        if isinstance(schedule, PhaseLockedSchedule):
            gauges += [
                (
                    "watti_janitza_refresh_phase_uncertainty_seconds",
                    "Time between the probe and the data read around the next expected refresh (s)",
                    schedule.bracket_width_s,
                ),
                ("watti_janitza_refresh_period_seconds", "Estimated refresh period (s)", schedule.period_s),
                (
                    "watti_janitza_refresh_implied_frequency_hertz",
                    "Grid frequency the estimated refresh period implies (10 cycles per 200 ms window)",
                    schedule.implied_frequency_hz,
                ),
            ]
            slips = families.counter(
                "watti_janitza_refresh_slips", "Reads that contradicted the predicted refresh"
            )
            yield slips.one(schedule.slips, name)
            reacquisitions = families.counter(
                "watti_janitza_refresh_reacquisitions", "Phase jumps after which the refresh was re-acquired"
            )
            yield reacquisitions.one(schedule.reacquisitions, name)
        for metric, help_text, value in gauges:
            if value is not None:
                yield families.gauge(metric, help_text).one(value, name)

    def status(self) -> Mapping[str, Any]:
        """JSON-able summary for /api/status."""
        config = self.config
        reading = self.reading.get(config.max_age)
        age_s = self.reading.age_s()
        ages_ms = sorted(a * 1000 for a in self.sample_ages_s)
        return {
            "type": "Janitza",
            "address": f"{config.host}:{config.port}",
            "unit": config.unit,
            "framing": config.framing,
            "connected": self.connected,
            "fresh": reading is not None,
            "age_s": None if age_s is None else round(age_s, 3),
            "power_w": None if reading is None else round(reading.power_total_w, 1),
            "power_phases_w": None if reading is None else [round(p, 1) for p in reading.power_w],
            "poll_mode": self.schedule.mode,
            "refresh_period_ms": round(self.schedule.period_s * 1000, 3)
            if isinstance(self.schedule, PhaseLockedSchedule)
            else None,
            "sample_age_p50_ms": round(ages_ms[len(ages_ms) // 2], 1) if ages_ms else None,
            "reads": self.reads,
            "reconnects": self.reconnects,
            "errors": dict(self._failures.by_reason),
        }
