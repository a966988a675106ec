"""Janitza UMG meter over Modbus TCP (or RTU frames over TCP), polled in phase with its refresh.

The meter refreshes its values every 200 ms. `PhaseLockedSchedule` learns when that happens from
when the values change and reads a few ms after each expected change; `JanitzaMeter` owns the
connection, validates every read and publishes typed readings into `Latest` holders.
"""

import asyncio
import logging
import math
import socket
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from prometheus_client.core import Metric
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType

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
from watti_watchman.domain.quantities import Quantity, QuantityValues
from watti_watchman.domain.readings import PowerSample
from watti_watchman.failures import FailureLog
from watti_watchman.latest import Latest
from watti_watchman.metrics import Families, Histogram
from watti_watchman.supervisor import Backoff, reraise_swallowed_cancel, supervise

PollMode = Literal["searching", "phase_locked", "fixed"]
POLL_MODES: tuple[PollMode, ...] = ("searching", "phase_locked", "fixed")

EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address: no such register block on this device",
    0x03: "illegal data value",
    0x04: "device failure",
    0x06: "device busy",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target failed to respond: check the unit id and the RS485 side",
}
KNOWN_REASONS = (
    "connect_timeout",
    "connection_refused",
    "read_timeout",
    "connection_lost",
    "modbus_error",
    "wrong_length",
    "non_finite",
    "implausible",
)
SAMPLE_AGE_BUCKETS_S = (0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
_FRAMERS = {"tcp": FramerType.SOCKET, "rtu_over_tcp": FramerType.RTU}


class JanitzaReadError(Exception):
    """A read failed; `reason` is the metric label, the message is for humans."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- when to read ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadTiming:
    """When one read was sent and its reply arrived (monotonic s) and what it showed."""

    sent_s: float
    arrived_s: float
    new_window: bool | None
    """True: values differ from the previous usable read; False: the same; None: unusable reply."""


class PollSchedule(Protocol):
    """Decides when the next read is due from what earlier reads showed."""

    mode: PollMode

    def next_read_at(self) -> float:
        """Monotonic time (s) of the next read; in the past means now."""
        ...

    def observe(self, read: ReadTiming) -> float | None:
        """Learn from one read; for a new window, the estimated time (s) its values appeared."""
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

    def observe(self, read: ReadTiming) -> float | None:
        """Record the read; a new window appeared, on average, midway since the previous read."""
        previous, self._last = self._last_usable, read
        if read.new_window is None:
            return None
        self._last_usable = read
        if not read.new_window or previous is None:
            return None
        return (previous.sent_s + read.arrived_s) / 2


class PhaseLockedSchedule:
    """Reads just after each expected refresh of a meter that refreshes every `period_s`.

    Keeps a bracket [lo, hi] (monotonic s) around the next value change: a read that still shows
    the old values raises lo, one that shows new values bounds hi. While the bracket is wider than
    `target_width_s` one read per window bisects it; the data read comes `margin_s` after hi. The
    bracket widens by `drift_s` per window so slow drift (the window follows grid frequency) is
    followed. Falls back to fixed polling when the values do not change regularly.
    """

    def __init__(
        self,
        period_s: float,
        *,
        margin_s: float = 0.002,
        target_width_s: float = 0.002,
        drift_s: float = 0.0005,
        search_timeout_s: float | None = None,
        fixed_hold_s: float = 30.0,
    ) -> None:
        self.period_s = period_s
        self.margin_s = margin_s
        self.target_width_s = target_width_s
        self.drift_s = drift_s
        self.search_timeout_s = search_timeout_s if search_timeout_s is not None else 10 * period_s
        self.fixed_hold_s = fixed_hold_s
        self.mode: PollMode = "searching"
        self.slips = 0
        """Times the values changed outside the predicted bracket (lock lost for a window)."""
        self._last: ReadTiming | None = None
        self._last_usable: ReadTiming | None = None
        self._lo_s = 0.0
        self._hi_s = 0.0
        self._probes = 0
        self._recent_slips = 0
        self._clean_windows = 0
        self._search_since_s: float | None = None
        self._fixed_until_s = 0.0
        self._consecutive_new = 0

    @property
    def bracket_width_s(self) -> float | None:
        """Width (s) of the bracket around the next change while locked, else None."""
        return self._hi_s - self._lo_s if self.mode == "phase_locked" else None

    def next_read_at(self) -> float:
        """Monotonic time (s) of the next read; in the past means now."""
        last = self._last
        if last is None:
            return -math.inf
        earliest = last.sent_s + (self.period_s / 2 if last.new_window is None else 0.001)
        if self.mode == "fixed":
            planned = last.sent_s + self.period_s
        elif self.mode == "searching":
            planned = last.sent_s + self.period_s / 2
        elif self._hi_s - self._lo_s > self.target_width_s and self._probes == 0:
            planned = (self._lo_s + self._hi_s) / 2
        else:
            planned = self._hi_s + self.margin_s
        return max(planned, earliest)

    def observe(self, read: ReadTiming) -> float | None:
        """Learn from one read; for a new window, the estimated time (s) its values appeared."""
        previous = self._last_usable
        self._last = read
        if read.new_window is None:
            return None
        self._last_usable = read
        if self._search_since_s is None:
            self._search_since_s = read.arrived_s
        if previous is None:
            return None
        if self.mode == "phase_locked":
            return self._observe_locked(previous, read)
        if self.mode == "searching":
            return self._observe_searching(previous, read)
        return self._observe_fixed(previous, read)

    def _observe_searching(self, previous: ReadTiming, read: ReadTiming) -> float | None:
        if read.new_window:
            if read.arrived_s - previous.sent_s <= 0.75 * self.period_s:
                self._lock(previous.sent_s, read.arrived_s)
            return (previous.sent_s + read.arrived_s) / 2
        if self._search_since_s is not None and read.arrived_s - self._search_since_s > self.search_timeout_s:
            self._enter_fixed(until_s=read.arrived_s)
        return None

    def _observe_fixed(self, previous: ReadTiming, read: ReadTiming) -> float | None:
        self._consecutive_new = self._consecutive_new + 1 if read.new_window else 0
        if self._consecutive_new >= 3 and read.arrived_s >= self._fixed_until_s:
            self.mode = "searching"
            self._search_since_s = read.arrived_s
        return (previous.sent_s + read.arrived_s) / 2 if read.new_window else None

    def _observe_locked(self, previous: ReadTiming, read: ReadTiming) -> float | None:
        if read.sent_s - previous.arrived_s > 2 * self.period_s:
            self._reproject(read)
            return None
        if read.new_window:
            lo_s, hi_s = max(self._lo_s, previous.sent_s), min(self._hi_s, read.arrived_s)
            if lo_s > hi_s:
                lo_s, hi_s = previous.sent_s, read.arrived_s
                self._slip(read)
            else:
                self._clean_window()
            if self.mode == "phase_locked":
                self._advance(lo_s, hi_s)
            return (lo_s + hi_s) / 2
        if read.sent_s > self._hi_s:
            self._slip(read)
            self._lo_s, self._hi_s = read.sent_s, read.sent_s + self.period_s / 8
            self._probes = 0
        else:
            self._lo_s = max(self._lo_s, read.sent_s)
            self._probes += 1
        return None

    def _lock(self, lo_s: float, hi_s: float) -> None:
        self.mode = "phase_locked"
        self._recent_slips = 0
        self._clean_windows = 0
        self._advance(lo_s, hi_s)

    def _advance(self, lo_s: float, hi_s: float) -> None:
        """Predict the next change from the bracket of the one just seen."""
        self._lo_s = lo_s + self.period_s - self.drift_s
        self._hi_s = hi_s + self.period_s + self.drift_s
        self._probes = 0

    def _reproject(self, read: ReadTiming) -> None:
        """After a long pause: carry the bracket forward to the first change after `read`."""
        windows = math.ceil((read.arrived_s - self._hi_s) / self.period_s)
        if windows > 0:
            self._lo_s += windows * (self.period_s - self.drift_s)
            self._hi_s += windows * (self.period_s + self.drift_s)
        self._probes = 0

    def _slip(self, read: ReadTiming) -> None:
        self.slips += 1
        self._recent_slips += 1
        self._clean_windows = 0
        if self._recent_slips >= 3:
            self._enter_fixed(until_s=read.arrived_s + self.fixed_hold_s)

    def _clean_window(self) -> None:
        self._clean_windows += 1
        if self._clean_windows >= 10:
            self._recent_slips = 0

    def _enter_fixed(self, until_s: float) -> None:
        self.mode = "fixed"
        self._fixed_until_s = until_s
        self._consecutive_new = 0


# --- one connection -------------------------------------------------------------------------------


class _ModbusLink:
    """One pymodbus client for one connection; after any failure it is closed and never reused."""

    def __init__(self, config: JanitzaConfig) -> None:
        # Every failure is reported once through FailureLog / JanitzaReadError; pymodbus would
        # log each retry on its own.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        self._config = config
        self._client = AsyncModbusTcpClient(
            config.host,
            port=config.port,
            framer=_FRAMERS[config.framing],
            timeout=config.timeout,
            retries=0,
            reconnect_delay=0,
            name=config.name,
        )

    async def connect(self) -> None:
        """Open the TCP connection; JanitzaReadError(dns | connect_timeout | connection_refused)."""
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        if await self._client.connect():
            return
        host, port = self._config.host, self._config.port
        try:  # pymodbus hides why: tell a name that does not resolve apart
            await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise JanitzaReadError("dns", f"cannot resolve {host} (port {port}): {error.strerror}") from None
        if loop.time() - started_s >= 0.9 * self._config.timeout:
            raise JanitzaReadError(
                "connect_timeout", f"no TCP connection to {host}:{port} within {self._config.timeout} s"
            )
        raise JanitzaReadError(
            "connection_refused",
            f"{host}:{port} refused the connection or is unreachable"
            " (check host and port; RS485 bridges often use 8899)",
        )

    async def read_registers(self) -> list[int]:
        """One function-3 read of the block; JanitzaReadError on timeout, exception or a lost link."""
        config = self._config
        try:
            request = self._client.read_holding_registers(
                config.start_address, count=JANITZA_REGISTER_COUNT, device_id=config.unit
            )
            async with asyncio.timeout(config.timeout):
                response = await request
        except TimeoutError:
            hint = (
                " (transparent RS485 bridges need framing: rtu_over_tcp)" if config.framing == "tcp" else ""
            )
            raise JanitzaReadError("read_timeout", f"no reply within {config.timeout} s{hint}") from None
        except ConnectionException as error:
            raise JanitzaReadError("connection_lost", f"connection lost: {error}") from error
        except ModbusException as error:
            raise JanitzaReadError("modbus_error", f"garbled reply: {error}") from error
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            meaning = EXCEPTION_NAMES.get(code, "unknown exception")
            raise JanitzaReadError(f"exception_{code:02x}", f"exception response 0x{code:02X}: {meaning}")
        return list(response.registers)

    def close(self) -> None:
        """Drop the connection so a late reply can never be taken for a later answer."""
        self._client.close()


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
    link = _ModbusLink(config)
    try:
        await link.connect()
        registers = await link.read_registers()
    finally:
        link.close()
    return reading_from_values(values_from_registers(registers), config.invert)


# --- the meter ------------------------------------------------------------------------------------


class JanitzaMeter:
    """Polls one Janitza meter, publishing `reading` and `power` with the reply's arrival time."""

    def __init__(self, config: JanitzaConfig, *, clock: Clock = monotonic) -> None:
        self.name = config.name
        self.config = config
        self._clock = clock
        self.reading: Latest[JanitzaReading] = Latest(clock)
        self.power: Latest[PowerSample] = Latest(clock)
        self.quantities: tuple[Quantity, ...] = QUANTITIES
        self.values: Latest[QuantityValues] = Latest(clock)
        self.schedule: PollSchedule = PhaseLockedSchedule(config.interval)
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
            "Time from the estimated refresh of the meter's values to the arrival of the reply (s)",
            config.name,
            SAMPLE_AGE_BUCKETS_S,
        )

    @property
    def errors_by_reason(self) -> Mapping[str, int]:
        """Failed reads and connection attempts, by reason label."""
        return self._failures.by_reason

    def is_fresh(self) -> bool:
        """True when a reading at most `max_age` s old is present."""
        return self.reading.is_fresh(self.config.max_age)

    async def run(self) -> None:
        """Poll until cancelled; reconnects with backoff and a fresh client after any failure."""
        await supervise(
            self._session,
            failures=self._failures,
            backoff=self._backoff,
            classify=_classify,
            on_reconnect=self._count_reconnect,
        )

    def _count_reconnect(self) -> None:
        self.reconnects += 1

    async def _session(self) -> None:
        link = _ModbusLink(self.config)
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

    async def _poll(self, link: _ModbusLink) -> None:
        sent_s = self._clock()
        registers = await link.read_registers()
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
        changed_at_s = self.schedule.observe(ReadTiming(sent_s, arrived_s, new_window))
        self._failures.success(f"{self.name}: reading again")
        self._backoff.reset()
        if new_window:
            self._count_window(arrived_s, changed_at_s)
        elif not self._confirms_static_values(arrived_s):
            self.decode_seconds += time.perf_counter() - decode_started
            return
        reading = reading_from_values(values, self.config.invert, previous=self._last_published)
        if reading.energy_regressed:
            self.energy_regressions += 1
            self._logger.warning(
                "energy counters went backwards (meter power loss?): %s", sorted(reading.energy_regressed)
            )
        self._last_published = reading
        self.reading.publish(reading, arrived_s)
        self.power.publish(reading.power_sample(), arrived_s)
        self.values.publish(quantity_values(reading), arrived_s)
        self.decode_seconds += time.perf_counter() - decode_started

    def _confirms_static_values(self, arrived_s: float) -> bool:
        """Unchanged values are republished only when the meter shows no regular refresh."""
        newest = self.reading.snapshot()
        return newest is None or arrived_s - newest.at_s >= 1.5 * self.config.interval

    def _count_window(self, arrived_s: float, changed_at_s: float | None) -> None:
        self.new_windows += 1
        if self._last_new_window_s is not None:
            windows = round((arrived_s - self._last_new_window_s) / self.config.interval)
            self.missed_windows += max(0, windows - 1)
        self._last_new_window_s = arrived_s
        if changed_at_s is not None:
            age_s = max(0.0, arrived_s - changed_at_s)
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
        yield errors.set(([name, r], by_reason[r]) for r in sorted(set(KNOWN_REASONS) | set(by_reason)))
        yield from self._sample_age.collect()
        mode = families.gauge("watti_janitza_poll_mode", "1 for the current polling mode", ("name", "mode"))
        yield mode.set(([name, m], 1.0 if self.schedule.mode == m else 0.0) for m in POLL_MODES)
        width_s = getattr(self.schedule, "bracket_width_s", None)
        if width_s is not None:
            width = families.gauge(
                "watti_janitza_refresh_phase_uncertainty_seconds",
                "Width of the time bracket around the meter's next expected refresh (s)",
            )
            yield width.one(width_s, name)
        connected = families.gauge("watti_janitza_connected", "1 while the TCP connection is open")
        yield connected.one(1.0 if self.connected else 0.0, name)

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
            "sample_age_p50_ms": round(ages_ms[len(ages_ms) // 2], 1) if ages_ms else None,
            "reads": self.reads,
            "reconnects": self.reconnects,
            "errors": dict(self._failures.by_reason),
        }


def _classify(error: BaseException) -> str | None:
    """Reason label for transient failures; None for programming errors (they propagate)."""
    if isinstance(error, JanitzaReadError):
        return error.reason
    if isinstance(error, ModbusException):
        return "modbus_error"
    if isinstance(error, TimeoutError):
        return "read_timeout"
    if isinstance(error, OSError):
        return "connection_lost"
    return None
