"""A simulated Seplos V2 BMS behind a transparent RS485-TCP bridge, on loopback.

Answers 0x42 (telemetry) and 0x44 (alarms) for its address like the real BMS, ignores frames
for other addresses (a shared RS485 bus) and can misbehave as field bridges do: corrupt the
checksum, send a wrong LENGTH, or stay silent.
"""

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import Literal

from watti_watchman.broker import free_port
from watti_watchman.domain.seplos import (
    CID2_ALARMS,
    CID2_TELEMETRY,
    Frame,
    SeplosFrameError,
    Telemetry,
    decode_frame,
    encode_alarms,
    encode_frame,
    encode_telemetry,
    frame_checksum,
    length_checksum,
)
from watti_watchman.lifecycle import StartStop

Fault = Literal["none", "bad_checksum", "wrong_length", "silence"]
logger = logging.getLogger("watti_watchman.sim.seplos")

DEFAULT_TELEMETRY = Telemetry(
    cell_voltages_v=(3.300,) * 16,
    temperatures_c=(22.0, 22.5, 22.1, 22.3, 21.0, 24.0),
    current_a=0.0,
    voltage_v=52.80,
    residual_capacity_ah=140.0,
    capacity_ah=280.0,
    soc_percent=50.0,
    rated_capacity_ah=280.0,
    cycles=12,
    soh_percent=100.0,
    port_voltage_v=52.79,
)


def _with_wrong_length(address: int, info: bytes) -> bytes:
    """A reply whose LENGTH announces two more INFO bytes than it carries, with a valid CHKSUM."""
    lenid = 2 * len(info) + 4
    length = (length_checksum(lenid) << 12) | lenid
    body = f"20{address:02X}4600{length:04X}{info.hex().upper()}".encode()
    return b"~" + body + f"{frame_checksum(body):04X}".encode() + b"\r"


class SeplosServer(StartStop):
    """One pack at `address` served on 127.0.0.1; state and faults changeable while running."""

    def __init__(self, *, address: int = 0, port: int | None = None, reply_delay_s: float = 0.08) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.address = address
        self.reply_delay_s = reply_delay_s
        """The BMS's own answer time (a 0x42 reply is ~150 characters: ~80 ms at 19200 baud)."""
        self.telemetry = DEFAULT_TELEMETRY
        self.alarm_events: tuple[str, ...] = ()
        self.charge_switch_on = True
        self.discharge_switch_on = True
        self.fault: Fault = "none"
        self.requests = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    def set(self, **changes: object) -> None:
        """Change telemetry fields (e.g. `soc_percent=80.0`, `current_a=-20.0`)."""
        self.telemetry = replace(self.telemetry, **changes)  # type: ignore[arg-type]

    def reply(self, request: bytes) -> bytes | None:
        """The bytes the BMS sends for one request frame, None for silence."""
        try:
            frame = decode_frame(request)
        except SeplosFrameError:
            return None  # the real BMS ignores what it cannot parse
        if frame.address != self.address or self.fault == "silence":
            return None
        if frame.cid2 == CID2_TELEMETRY:
            info = encode_telemetry(self.telemetry, self.address)
        elif frame.cid2 == CID2_ALARMS:
            info = encode_alarms(
                self.address,
                cells=len(self.telemetry.cell_voltages_v),
                temperatures=len(self.telemetry.temperatures_c),
                events=self.alarm_events,
                charge_switch_on=self.charge_switch_on,
                discharge_switch_on=self.discharge_switch_on,
            )
        else:
            return encode_frame(Frame(self.address, 0x04, b""))  # CID2 invalid
        if self.fault == "wrong_length":
            return _with_wrong_length(self.address, info)
        raw = encode_frame(Frame(self.address, 0x00, info))
        if self.fault == "bad_checksum":
            raw = raw[:-2] + (b"0" if raw[-2:-1] != b"0" else b"1") + b"\r"
        return raw

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            while True:
                request = await reader.readuntil(b"\r")
                self.requests += 1
                answer = self.reply(request)
                if answer is None:
                    continue
                await asyncio.sleep(self.reply_delay_s)
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): end quietly (asyncio's server callback would log the cancellation)
        finally:
            self._handlers.discard(handler)
            writer.close()

    async def start(self) -> None:
        """Listen on `host:port`."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        handlers = list(self._handlers)
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        with contextlib.suppress(Exception):
            await server.wait_closed()
