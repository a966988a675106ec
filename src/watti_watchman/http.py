"""The HTTP server: /metrics (Prometheus), /healthz, /api/status and the status page.

Hardened for a LAN: loopback by default, header-read, idle and write timeouts, a connection cap and a
descriptor reserve (HTTP is refused long before the meters' and brokers' sockets could be),
malformed requests counted and logged at DEBUG, no server version header.
"""

import asyncio
import json
import logging
import os
import resource
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client.core import Metric

from watti_watchman.failures import OnceLog
from watti_watchman.meters.base import Source
from watti_watchman.metrics import CONTENT_TYPE, Exposition, Families

logger = logging.getLogger("watti_watchman.http")

StatusProvider = Callable[[], Mapping[str, Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HEADER_TIMEOUT_S = 5.0
"""A request whose headers are not complete this long after its first byte: connection closed."""
IDLE_TIMEOUT_S = 15.0
"""A connection without a request this long (after opening or the last response): closed."""
WRITE_TIMEOUT_S = 10.0
"""A client that reads nothing of a response for this long (send buffers full): closed."""
MAX_CONNECTIONS = 64
"""Concurrent HTTP connections; more are closed at once (Prometheus needs one or two)."""
FD_RESERVE = 64
"""Descriptors kept free for the meters and MQTT sessions: HTTP is refused within this margin."""
BACKLOG = 128
"""Listen backlog; also the most connections accepted per wake-up (each judged before the next)."""
ACCEPT_PAUSE_S = 1.0
"""After accept() itself fails (descriptors exhausted elsewhere), stop accepting this long."""
SERVER_HEADER = "WattiWatchman"


def _status_page() -> bytes:
    """The bundled single-file status page."""
    return resources.files("watti_watchman").joinpath("status_page.html").read_bytes()


def build_http_app(
    exposition: Exposition,
    meters: Sequence[Source],
    status: StatusProvider,
    live: StatusProvider | None = None,
) -> web.Application:
    """The aiohttp application; every handler answers from memory (no device I/O)."""

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=exposition.render())
        response.headers["Content-Type"] = CONTENT_TYPE
        asyncio.get_running_loop().call_soon(exposition.refresh)  # runs once the reply is written
        return response

    async def healthz(_: web.Request) -> web.Response:
        stale = [meter.name for meter in meters if not meter.is_fresh()]
        body = {"status": "ok" if not stale else "stale", "stale_meters": stale}
        return web.json_response(body, status=200 if not stale else 503)

    def json_response(provider: StatusProvider) -> web.Response:
        return web.Response(
            text=json.dumps(provider(), allow_nan=False, default=str), content_type="application/json"
        )

    async def api_status(_: web.Request) -> web.Response:
        return json_response(status)

    async def api_live(_: web.Request) -> web.Response:
        return json_response(live or status)

    async def index(_: web.Request) -> web.Response:
        return web.Response(body=_status_page(), content_type="text/html", charset="utf-8")

    app = web.Application(middlewares=[_track_requests])
    app.on_response_prepare.append(_hide_version)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/status", api_status)
    app.router.add_get("/api/live", api_live)
    app.router.add_get("/", index)
    return app


async def _hide_version(_: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_HEADER


class HttpBindError(Exception):
    """The HTTP server cannot listen on its configured address (one-line message)."""


class _RequestLog:
    """aiohttp's per-request error log: client errors counted and logged at DEBUG in one line."""

    def __init__(self, guard: "ConnectionGuard") -> None:
        self._guard = guard

    def debug(self, msg: str, *args: object, exc_info: object = None, **_: object) -> None:
        if isinstance(exc_info, BaseException):
            self._guard.bad_requests_total += 1
            logger.debug(msg + ": %s", *args, _one_line(exc_info))
        else:
            logger.debug(msg, *args)

    def exception(self, msg: str, *args: object, exc_info: object = True, **_: object) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.debug(msg, *args, exc_info=exc_info)
        else:  # a handler failed: our bug, keep the traceback
            logger.error(msg, *args, exc_info=exc_info)  # type: ignore[arg-type]

    def warning(self, msg: str, *args: object, **kwargs: Any) -> None:
        logger.warning(msg, *args, **kwargs)


def _one_line(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error)
    return f"{type(error).__name__}: {' '.join(str(text).split())[:200]}"


class ConnectionGuard:
    """Counts HTTP connections and decides which to refuse; exports the counters."""

    def __init__(
        self,
        max_connections: int = MAX_CONNECTIONS,
        fd_reserve: int = FD_RESERVE,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.write_timeout_s = write_timeout_s
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.fd_reserve = fd_reserve
        self.open = 0
        self.refused_total: dict[str, int] = {"connection_limit": 0, "fd_reserve": 0, "accept_failed": 0}
        self.timeouts_total: dict[str, int] = {"header": 0, "write": 0}
        self.bad_requests_total = 0
        self._families = Families()

    def refusal(self, fileno: int) -> str | None:
        """Why a new connection on descriptor `fileno` must be closed at once, or None to serve it."""
        if self.open >= self.max_connections:
            return "connection_limit"
        # Descriptors are allocated lowest first: a high number means nearly all are in use.
        if self.fd_limit != resource.RLIM_INFINITY and fileno >= self.fd_limit - self.fd_reserve:
            return "fd_reserve"
        return None

    def collect_metrics(self) -> Iterable[Metric]:
        """Open connections, refusals by reason, header timeouts and malformed requests."""
        families = self._families
        yield families.gauge("watti_http_connections", "Open HTTP connections", ()).one(self.open)
        refused = families.counter(
            "watti_http_connections_refused", "HTTP connections closed at once, by reason", ("reason",)
        )
        yield refused.set(([reason], count) for reason, count in sorted(self.refused_total.items()))
        timeouts = families.counter(
            "watti_http_timeouts",
            f"HTTP connections closed: headers slower than {self.header_timeout_s:g} s (header) or"
            f" a response unread for {self.write_timeout_s:g} s (write)",
            ("reason",),
        )
        yield timeouts.set(([reason], count) for reason, count in sorted(self.timeouts_total.items()))
        bad = families.counter("watti_http_bad_requests", "Malformed HTTP requests (answered 400)", ())
        yield bad.one(self.bad_requests_total)


class _GuardedHandler(web.RequestHandler):
    """aiohttp's protocol plus the guard's header-read and write timeouts."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.guard = guard
        self.in_request = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.open -= 1
        self.request_started()
        if self._write_timer is not None:
            self._write_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and not self.in_request and self._header_timer is None:
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(self.guard.header_timeout_s, self._header_timeout)
        super().data_received(data)

    def request_started(self) -> None:
        """The headers are complete (or the connection is gone): stop the header timer."""
        self.in_request = True
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def request_done(self) -> None:
        """The response is written; the next request's first byte starts the timer again."""
        self.in_request = False

    def _header_timeout(self) -> None:
        self._header_timer = None
        self.guard.timeouts_total["header"] += 1
        logger.debug("HTTP request headers not complete within %g s: closed", self.guard.header_timeout_s)
        self.force_close()

    def pause_writing(self) -> None:
        super().pause_writing()
        loop = asyncio.get_running_loop()
        self._write_timer = loop.call_later(self.guard.write_timeout_s, self._write_timeout)

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().resume_writing()

    def _write_timeout(self) -> None:
        self._write_timer = None
        self.guard.timeouts_total["write"] += 1
        logger.debug("HTTP client read nothing for %g s: closed", self.guard.write_timeout_s)
        if self.transport is not None:
            self.transport.abort()  # close() would wait for the buffered data to drain

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, message)
        response.headers["Server"] = SERVER_HEADER
        return response


@web.middleware
async def _track_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    protocol = request.protocol
    if isinstance(protocol, _GuardedHandler):
        protocol.request_started()
    try:
        return await handler(request)
    finally:
        if isinstance(protocol, _GuardedHandler):
            protocol.request_done()


class HttpServer:
    """Runs the HTTP application on host:port until stopped; `guard` holds its counters."""

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        guard: ConnectionGuard | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.guard = guard or ConnectionGuard()
        self._handler_options: dict[str, Any] = {
            "access_log": None,
            "keepalive_timeout": idle_timeout_s,
            "logger": _RequestLog(self.guard),
        }
        self._runner = web.AppRunner(app, handle_signals=False, **self._handler_options)
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._accept_failures = OnceLog(logger)
        self.host = host
        self.port = port

    async def start(self) -> None:
        """Bind and serve; `port` 0 picks a free port (read it back from `self.port`).

        Raises HttpBindError when the address cannot be bound.
        """
        await self._runner.setup()
        try:
            self._listeners = await _listen(self.host, self.port)
        except OSError as error:
            await self._runner.cleanup()
            if error.errno and not isinstance(error, socket.gaierror):
                reason = os.strerror(error.errno).lower()
            else:  # a host name that does not resolve: the resolver's own words
                reason = (error.strerror or str(error)).lower()
            raise HttpBindError(f"cannot listen on {self.host}:{self.port} (http): {reason}") from None
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.add_reader(listener.fileno(), self._accept, listener)
        if self.port == 0:
            self.port = self._listeners[0].getsockname()[1]
        logger.info("HTTP server on http://%s:%d/ (metrics at /metrics)", self.host, self.port)

    def _accept(self, listener: socket.socket) -> None:
        """Accept pending connections one by one, closing each refused one before the next.

        asyncio's own accept loop takes up to a backlog of sockets before any protocol can refuse
        one, which can exhaust the descriptors the meters need; here none is ever held.
        """
        loop = asyncio.get_running_loop()
        for _ in range(BACKLOG):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # EMFILE/ENFILE/ENOBUFS: descriptors exhausted elsewhere
                self.guard.refused_total["accept_failed"] += 1
                self._accept_failures.warn(
                    "accept", "HTTP accept failed, pausing %g s: %s", ACCEPT_PAUSE_S, error
                )
                loop.remove_reader(listener.fileno())
                loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting, listener)
                return
            reason = self.guard.refusal(conn.fileno())
            if reason is not None:
                self.guard.refused_total[reason] += 1
                logger.debug("HTTP connection refused: %s", reason)
                conn.close()
                continue
            self.guard.open += 1
            task = loop.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resume_accepting(self, listener: socket.socket) -> None:
        if listener.fileno() >= 0:
            asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener)

    async def _serve(self, conn: socket.socket) -> None:
        """Hand an accepted socket to aiohttp's protocol (its connection_lost releases the slot)."""
        manager = self._runner.server
        assert manager is not None
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: _GuardedHandler(manager, self.guard, loop=loop, **self._handler_options), conn
            )
        except OSError as error:  # the client left before the transport existed
            self.guard.open -= 1
            conn.close()
            logger.debug("HTTP connection lost while accepting: %s", error)

    def collect_metrics(self) -> Iterable[Metric]:
        """The guard's connection counters."""
        return self.guard.collect_metrics()

    async def stop(self) -> None:
        """Stop listening, close the connections."""
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            if listener.fileno() >= 0:
                loop.remove_reader(listener.fileno())
            listener.close()
        await self._runner.cleanup()


async def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of `host` (as asyncio's create_server binds them)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            listener = socket.socket(family, kind, proto)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and listeners[:-1]:  # one free port for every address
                listener.bind((address[0], listeners[0].getsockname()[1], *address[2:]))
            else:
                listener.bind(address)
            listener.listen(BACKLOG)
            listener.setblocking(False)
    except OSError:
        for listener in listeners:
            listener.close()
        raise
    return listeners
