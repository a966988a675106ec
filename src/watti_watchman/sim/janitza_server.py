"""A simulated Janitza UMG: a real pymodbus server on loopback serving the 39-float block.

Speaks Modbus TCP (gateway mode) or RTU frames over TCP (transparent bridge) and can inject
the faults seen in the field: slow replies, exception responses, oversized replies, garbage values.
When the values change on the meter's own clock (`sim/meter_clock.py`, driven by `sim/world.py` or
a benchmark), the server records the true time of every change and of every request: the
independent reference that polling delay is measured against.
"""

import asyncio
import logging
from collections import deque
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer

from watti_watchman.broker import free_port
from watti_watchman.clock import Clock, monotonic
from watti_watchman.domain.janitza import JANITZA_START_ADDRESS, JANITZA_VALUE_COUNT, encode_values
from watti_watchman.lifecycle import StartStop
from watti_watchman.meters.modbus_link import FRAMERS, Framing

HOLDING_REGISTER_READ = 3
HISTORY = 100_000
"""Change and request times kept (about 2.7 h of windows, 1.5 h of requests at 20/s)."""


class _JanitzaRegisters(ModbusServerContext):
    """The register image and fault switches, answering pymodbus' datastore calls."""

    def __init__(self, values: Sequence[float], unit: int, start_address: int, clock: Clock) -> None:
        # The base initialiser builds pymodbus' deprecated device tables, which are not used here.
        self.old_simulator = True
        self.simdevices = []
        self.unit = unit
        self.start_address = start_address
        self.values: tuple[float, ...] = tuple(values)
        self.extra_values: tuple[float, ...] = ()
        self.response_delay_s = 0.0
        self.delayed_requests_left = 0
        self.exception_code: int | None = None
        self.exceptions_left = 0
        self.requests = 0
        self.answers = 0
        self.clock = clock
        self.requested_at_s: deque[float] = deque(maxlen=HISTORY)

    def device_ids(self) -> list[int]:
        """The one unit id this device answers."""
        return [self.unit]

    async def async_getValues(  # noqa: N802 - pymodbus datastore API
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        """Registers for a read, after the injected delay; an ExcCodes for an injected fault."""
        if device_id != self.unit:
            raise NoSuchIdException(f"unit {device_id} is not {self.unit}")
        self.requests += 1
        self.requested_at_s.append(self.clock())
        try:
            return await self._answer(func_code, address, count)
        finally:
            self.answers += 1

    async def _answer(self, func_code: int, address: int, count: int) -> list[int] | ExcCodes:
        registers = list(encode_values((*self.values, *self.extra_values)))
        if self.delayed_requests_left > 0:
            self.delayed_requests_left -= 1
            await asyncio.sleep(self.response_delay_s)
        if self.exceptions_left > 0 and self.exception_code is not None:
            self.exceptions_left -= 1
            return ExcCodes(self.exception_code)
        first = address - self.start_address
        if func_code != HOLDING_REGISTER_READ or first < 0 or first + count > 2 * JANITZA_VALUE_COUNT:
            return ExcCodes.ILLEGAL_ADDRESS
        if self.extra_values and first == 0:
            return registers
        return registers[first : first + count]

    async def async_setValues(  # noqa: N802 - pymodbus datastore API
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        """The meter's block is read-only."""
        return ExcCodes.ILLEGAL_FUNCTION


class JanitzaServer(StartStop):
    """A Janitza block served on 127.0.0.1; restartable on the same port (`stop()` / `start()`)."""

    def __init__(
        self,
        values: Sequence[float],
        *,
        framing: Framing = "tcp",
        unit: int = 1,
        port: int | None = None,
        start_address: int = JANITZA_START_ADDRESS,
        clock: Clock = monotonic,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.framing: Framing = framing
        self.connections = 0
        self._registers = _JanitzaRegisters(values, unit, start_address, clock)
        self.changed_at_s: deque[float] = deque(maxlen=HISTORY)
        """True time (s, the server's clock) of every change of the served values."""
        self._server: ModbusTcpServer | None = None
        logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)

    @property
    def unit(self) -> int:
        """Modbus unit id (slave address) the device answers to."""
        return self._registers.unit

    @property
    def values(self) -> tuple[float, ...]:
        """The 39 values currently served."""
        return self._registers.values

    @property
    def requests(self) -> int:
        """Read requests received so far (including faulty answers)."""
        return self._registers.requests

    @property
    def answers(self) -> int:
        """Replies produced so far, including late ones whose client has gone."""
        return self._registers.answers

    @property
    def requested_at_s(self) -> deque[float]:
        """Arrival time (s, the server's clock) of every read request."""
        return self._registers.requested_at_s

    @property
    def is_running(self) -> bool:
        """True while listening."""
        return self._server is not None

    def set_values(self, values: Sequence[float]) -> None:
        """Serve `values` (39 floats, NaN/Inf allowed) from the next request on; call from the loop."""
        if len(values) != JANITZA_VALUE_COUNT:
            raise ValueError(f"a Janitza block has {JANITZA_VALUE_COUNT} values, got {len(values)}")
        if tuple(values) != self._registers.values:
            self.changed_at_s.append(self._registers.clock())
        self._registers.values = tuple(values)

    def delay_responses(self, seconds: float, count: int = 1) -> None:
        """Answer the next `count` requests `seconds` late (values taken when the request arrived)."""
        self._registers.response_delay_s = seconds
        self._registers.delayed_requests_left = count

    def fail_requests(self, exception_code: int, count: int = 1) -> None:
        """Answer the next `count` requests with Modbus exception `exception_code` (e.g. 0x02, 0x0B)."""
        self._registers.exception_code = exception_code
        self._registers.exceptions_left = count

    def oversize_replies(self, extra_values: Sequence[float]) -> None:
        """Append `extra_values` to every full-block reply (a bridge sending 43 floats for 39)."""
        self._registers.extra_values = tuple(extra_values)

    def clear_faults(self) -> None:
        """Answer normally again."""
        self.delay_responses(0.0, 0)
        self.fail_requests(0, 0)
        self.oversize_replies(())

    async def start(self) -> None:
        """Listen on `host:port` (the same port after a `stop()`)."""
        if self._server is not None:
            return
        server = ModbusTcpServer(
            self._registers,
            framer=FRAMERS[self.framing],
            address=(self.host, self.port),
            trace_connect=self._on_connect,
        )
        await server.serve_forever(background=True)
        self._server = server

    async def stop(self) -> None:
        """Stop listening and drop every client connection."""
        if self._server is None:
            return
        server, self._server = self._server, None
        await server.shutdown()  # type: ignore[no-untyped-call]

    def _on_connect(self, connected: bool) -> None:
        if connected:
            self.connections += 1
