"""The HTTP surface under abuse: idle and slow connections closed, a cap, quiet malformed requests."""

import asyncio
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.waiting import wait_until
from watti_watchman.cli import EXIT_BIND
from watti_watchman.http import SERVER_HEADER, ConnectionGuard, HttpServer, build_http_app
from watti_watchman.metrics import Exposition

HEADER_TIMEOUT_S = 0.5
IDLE_TIMEOUT_S = 1.5
WRITE_TIMEOUT_S = 0.5


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    guard = ConnectionGuard(
        max_connections=8, header_timeout_s=HEADER_TIMEOUT_S, write_timeout_s=WRITE_TIMEOUT_S
    )
    exposition = Exposition()
    instance = HttpServer(
        build_http_app(exposition, [], dict),
        "127.0.0.1",
        0,
        guard=guard,
        idle_timeout_s=IDLE_TIMEOUT_S,
    )
    exposition.add(instance)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


async def closed_after_s(reader: asyncio.StreamReader, limit_s: float) -> float:
    """Seconds until the server closes the connection (EOF), read data discarded."""
    started = time.monotonic()
    async with asyncio.timeout(limit_s):
        while await reader.read(65536):
            pass
    return time.monotonic() - started


async def request(port: int, raw: bytes) -> bytes:
    """Send `raw` on a fresh connection; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    return answer


async def test_idle_connection_is_closed_within_the_idle_timeout(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert server.guard.open == 1
    took_s = await closed_after_s(reader, IDLE_TIMEOUT_S + 2.0)
    assert IDLE_TIMEOUT_S - 0.1 <= took_s <= IDLE_TIMEOUT_S + 1.0
    writer.close()
    assert server.guard.open == 0


async def test_idle_keep_alive_connection_is_closed_after_its_last_response(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert f"Server: {SERVER_HEADER}\r\n".encode() in head
    assert b"aiohttp" not in head and b"Python" not in head
    took_s = await closed_after_s(reader, IDLE_TIMEOUT_S + 2.0)
    assert took_s <= IDLE_TIMEOUT_S + 1.0
    writer.close()


async def test_slow_headers_are_cut_at_the_header_timeout_although_bytes_keep_coming(
    server: HttpServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    started = time.monotonic()
    writer.write(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
    closed = asyncio.create_task(closed_after_s(reader, 5.0))
    for _ in range(100):  # one header byte every 50 ms: never idle, never complete
        if closed.done():
            break
        writer.write(b"y")
        await asyncio.sleep(0.05)
    await closed
    took_s = time.monotonic() - started
    assert HEADER_TIMEOUT_S - 0.1 <= took_s <= HEADER_TIMEOUT_S + 0.4
    assert server.guard.timeouts_total == {"header": 1, "write": 0}
    writer.close()


async def test_a_client_that_stops_reading_is_cut_at_the_write_timeout(server: HttpServer) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills quickly
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    _, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3000)  # ~27 MB of status pages, never read
    await wait_until(
        lambda: server.guard.timeouts_total["write"] == 1, timeout_s=10, what="the write timeout"
    )
    await wait_until(lambda: server.guard.open == 0, timeout_s=2, what="the connection to close")
    writer.close()


async def test_connections_over_the_cap_are_closed_at_once_and_the_server_recovers(
    server: HttpServer,
) -> None:
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(8)]
    extra = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(5)]
    for reader, _ in extra:
        assert await closed_after_s(reader, 1.0) < 0.5
    assert server.guard.refused_total["connection_limit"] == 5
    assert server.guard.open == 8
    for _, writer in held + extra:
        writer.close()
    await wait_until(lambda: server.guard.open == 0, timeout_s=2, what="the server to see the closes")
    answer = await request(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")


async def test_descriptor_reserve_refuses_http_before_the_limit(server: HttpServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert server.guard.open == 1
    writer.close()
    server.guard.fd_limit = server.guard.fd_reserve  # every descriptor number now lies in the reserve
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await closed_after_s(reader, 1.0) < 0.5
    assert server.guard.refused_total["fd_reserve"] == 1
    writer.close()


MALFORMED = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n",  # TLS hello
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"b" * 9000 + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"\x00\x01\x00\x00\x00\x06\x01\x03J8\x00N",  # a Modbus request
]


async def test_malformed_requests_are_counted_and_logged_below_warning(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rounds = 20
    for _ in range(rounds):
        for raw in MALFORMED:
            answer = await request(server.port, raw)
            assert answer[:10] in (b"HTTP/1.1 4", b"HTTP/1.0 4") or answer == b"", answer[:80]
            assert b"aiohttp" not in answer
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == []
    assert server.guard.bad_requests_total >= rounds * (len(MALFORMED) - 1)
    noted = [
        r for r in caplog.records if r.name == "watti_watchman.http" and "Error handling" in r.getMessage()
    ]
    assert all("\n" not in r.getMessage() and r.exc_info is None for r in noted)
    answer = await request(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"watti_http_bad_requests_total %d.0" % server.guard.bad_requests_total in answer


async def test_a_port_in_use_is_one_line_and_exit_code_3(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "watti_watchman.yml"
        config.write_text(
            f"meters:\n  - {{type: Janitza, name: hak, host: 127.0.0.1, port: {port}}}\n"
            f"http: {{port: {port}}}\n"
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "watti_watchman.cli", "run", "-c", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == EXIT_BIND
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith(f"cannot listen on 127.0.0.1:{port} (http): address already in use")
    assert out == b""
