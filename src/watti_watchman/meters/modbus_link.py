"""One Modbus TCP (or RTU-over-TCP) connection with failures named for metrics and humans.

Shared by every meter adapter that speaks Modbus: it owns one pymodbus client, is closed after
any failure and never reused, so a late reply can never be taken for a later answer.
"""

import asyncio
import logging
import socket
from typing import Literal, Protocol, Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType

Framing = Literal["tcp", "rtu_over_tcp"]

FRAMERS: dict[Framing, FramerType] = {"tcp": FramerType.SOCKET, "rtu_over_tcp": FramerType.RTU}
EXCEPTION_NAMES = {
    0x01: "illegal function (wrong function_code for this device?)",
    0x02: "illegal data address: no such register block on this device",
    0x03: "illegal data value",
    0x04: "device failure",
    0x06: "device busy",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target failed to respond: check the unit id and the RS485 side",
}
METER_REASONS = (
    "connect_timeout",
    "connection_refused",
    "read_timeout",
    "connection_lost",
    "modbus_error",
    "wrong_length",
    "non_finite",
    "implausible",
)
"""Failure reasons a polled Modbus meter exports from the start (0 until seen); `dns` shows once seen."""


class ModbusReadError(Exception):
    """A read failed; `reason` is the metric label, the message is for humans."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class LinkConfig(Protocol):
    """What a device's configuration says about its Modbus connection."""

    @property
    def name(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def framing(self) -> Framing: ...
    @property
    def timeout(self) -> float: ...
    @property
    def unit(self) -> int: ...


class ModbusLink:
    """One pymodbus client for one connection; after any failure it is closed and never reused."""

    def __init__(
        self, *, host: str, port: int, framing: Framing, timeout_s: float, unit: int, name: str
    ) -> None:
        # Every failure is reported once through FailureLog / ModbusReadError; pymodbus would
        # log each retry on its own.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        self._host, self._port, self._framing = host, port, framing
        self._timeout_s, self._unit = timeout_s, unit
        self._client = AsyncModbusTcpClient(
            host,
            port=port,
            framer=FRAMERS[framing],
            timeout=timeout_s,
            retries=0,
            reconnect_delay=0,
            name=name,
        )

    @classmethod
    def for_config(cls, config: LinkConfig) -> Self:
        """A fresh link to the device `config` describes."""
        return cls(
            host=config.host,
            port=config.port,
            framing=config.framing,
            timeout_s=config.timeout,
            unit=config.unit,
            name=config.name,
        )

    async def connect(self) -> None:
        """Open the TCP connection; ModbusReadError(dns | connect_timeout | connection_refused)."""
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        if await self._client.connect():
            return
        host, port = self._host, self._port
        try:  # pymodbus hides why: tell a name that does not resolve apart
            await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise ModbusReadError("dns", f"cannot resolve {host} (port {port}): {error.strerror}") from None
        if loop.time() - started_s >= 0.9 * self._timeout_s:
            raise ModbusReadError(
                "connect_timeout", f"no TCP connection to {host}:{port} within {self._timeout_s} s"
            )
        raise ModbusReadError(
            "connection_refused",
            f"{host}:{port} refused the connection or is unreachable"
            " (check host and port; RS485 bridges often use 8899)",
        )

    async def read(self, function_code: Literal[3, 4], address: int, count: int) -> list[int]:
        """One read of `count` registers; ModbusReadError on timeout, exception or a lost link."""
        read = (
            self._client.read_input_registers if function_code == 4 else self._client.read_holding_registers
        )
        try:
            request = read(address, count=count, device_id=self._unit)
            async with asyncio.timeout(self._timeout_s):
                response = await request
        except TimeoutError:
            hint = " (transparent RS485 bridges need framing: rtu_over_tcp)" if self._framing == "tcp" else ""
            raise ModbusReadError("read_timeout", f"no reply within {self._timeout_s} s{hint}") from None
        except ConnectionException as error:
            raise ModbusReadError("connection_lost", f"connection lost: {error}") from error
        except ModbusException as error:
            raise ModbusReadError("modbus_error", f"garbled reply: {error}") from error
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            meaning = EXCEPTION_NAMES.get(code, "unknown exception")
            raise ModbusReadError(f"exception_{code:02x}", f"exception response 0x{code:02X}: {meaning}")
        return list(response.registers)

    def close(self) -> None:
        """Drop the connection so a late reply can never be taken for a later answer."""
        self._client.close()


def classify(error: BaseException) -> str | None:
    """Reason label for transient Modbus failures; None for programming errors (they propagate)."""
    if isinstance(error, ModbusReadError):
        return error.reason
    if isinstance(error, ModbusException):
        return "modbus_error"
    if isinstance(error, TimeoutError):
        return "read_timeout"
    if isinstance(error, OSError):
        return "connection_lost"
    return None
