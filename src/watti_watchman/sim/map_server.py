"""A simulated register-map meter: a real pymodbus server on loopback serving a map's registers.

Speaks Modbus TCP (gateway mode) or RTU frames over TCP (transparent RS485 bridge), answers only
the map's function code, returns 0 for unmapped registers inside a read (like real meters) and
can inject the faults seen in the field: slow replies, exception responses, silence.
"""

import asyncio
import logging
from collections.abc import Mapping, Sequence

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer

from watti_watchman.broker import free_port
from watti_watchman.domain.register_map import RegisterMap, encode_value
from watti_watchman.lifecycle import StartStop
from watti_watchman.meters.modbus_link import FRAMERS, Framing


class _MapRegisters(ModbusServerContext):
    """The register image and fault switches, answering pymodbus' datastore calls."""

    def __init__(self, register_map: RegisterMap, unit: int) -> None:
        # The base initialiser builds pymodbus' deprecated device tables, which are not used here.
        self.old_simulator = True
        self.simdevices = []
        self.register_map = register_map
        self.unit = unit
        self.image: dict[int, int] = {}
        self.response_delay_s = 0.0
        self.exception_code: int | None = None
        self.requests = 0

    def device_ids(self) -> list[int]:
        """The one unit id this device answers."""
        return [self.unit]

    async def async_getValues(  # noqa: N802 - pymodbus datastore API
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        """Registers for a read (0 where nothing is mapped), after the injected delay or fault."""
        if device_id != self.unit:
            raise NoSuchIdException(f"unit {device_id} is not {self.unit}")
        self.requests += 1
        words = [self.image.get(address + i, 0) for i in range(count)]
        if self.response_delay_s > 0:
            await asyncio.sleep(self.response_delay_s)
        if self.exception_code is not None:
            return ExcCodes(self.exception_code)
        if func_code != self.register_map.function_code:
            return ExcCodes.ILLEGAL_FUNCTION
        return words

    async def async_setValues(  # noqa: N802 - pymodbus datastore API
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        """Measured values are read-only."""
        return ExcCodes.ILLEGAL_FUNCTION


class MapServer(StartStop):
    """Serves `register_map` on 127.0.0.1; values in table units via `set_values`."""

    def __init__(
        self, register_map: RegisterMap, *, framing: Framing = "tcp", unit: int = 1, port: int | None = None
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.framing: Framing = framing
        self._registers = _MapRegisters(register_map, unit)
        self._server: ModbusTcpServer | None = None
        logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)

    @property
    def unit(self) -> int:
        """Modbus unit id the device answers to."""
        return self._registers.unit

    @property
    def requests(self) -> int:
        """Read requests received so far."""
        return self._registers.requests

    def set_values(self, values: Mapping[str, float]) -> None:
        """Encode `values` (quantity key → W, V, A, Hz or Wh) into the map's registers."""
        specs = self._registers.register_map.registers
        for key, value in values.items():
            spec = specs[key]
            self.set_registers(spec.address, encode_value(spec, value))

    def set_registers(self, address: int, words: Sequence[int]) -> None:
        """Serve raw 16-bit `words` from `address` on (a documented or captured frame)."""
        for offset, word in enumerate(words):
            self._registers.image[address + offset] = word

    def delay_responses(self, seconds: float) -> None:
        """Answer every request `seconds` late (0: on time); longer than the client's timeout is silence."""
        self._registers.response_delay_s = seconds

    def fail_requests(self, exception_code: int | None) -> None:
        """Answer every request with Modbus exception `exception_code` (None: answer normally)."""
        self._registers.exception_code = exception_code

    async def start(self) -> None:
        """Listen on `host:port`."""
        if self._server is not None:
            return
        server = ModbusTcpServer(
            self._registers, framer=FRAMERS[self.framing], address=(self.host, self.port)
        )
        await server.serve_forever(background=True)
        self._server = server

    async def stop(self) -> None:
        """Stop listening and drop every client connection."""
        if self._server is None:
            return
        server, self._server = self._server, None
        await server.shutdown()  # type: ignore[no-untyped-call]
