"""A loopback TCP proxy in front of a broker: cut connections without an MQTT DISCONNECT, or
accept and stay silent (a black hole), as a dying network or a hung broker would."""

import asyncio
import contextlib


class LoopbackProxy:
    """Listens on a free 127.0.0.1 port and forwards to `host:port` (or, `black_hole`, to nothing)."""

    def __init__(self, host: str, port: int, *, black_hole: bool = False) -> None:
        self.target = (host, port)
        self.black_hole = black_hole
        self.port = 0
        self.upstream_reads: list[bytes] = []
        """Each read from a client on its way to the broker (how the client's bytes were segmented)."""
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen on a free loopback port (read it from `port`)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self.black_hole:
            while await reader.read(65536):
                pass
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.append(up_writer)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    if sink is up_writer:
                        self.upstream_reads.append(data)
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def sever(self) -> None:
        """Abort every proxied connection (both sides)."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    def close(self) -> None:
        """Stop accepting and cut everything."""
        self.sever()
        if self._server is not None:
            self._server.close()
