"""The HTTP server: /metrics (Prometheus), /healthz, /api/status and the status page.

Hardened for a LAN: loopback by default, header-read and idle timeouts, a connection cap and a
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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from watti_watchman.meters.base import Meter
from watti_watchman.metrics import CONTENT_TYPE, Exposition

logger = logging.getLogger("watti_watchman.http")

StatusProvider = Callable[[], Mapping[str, Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HEADER_TIMEOUT_S = 5.0
"""A request whose headers are not complete this long after its first byte: connection closed."""
IDLE_TIMEOUT_S = 15.0
"""A connection without a request this long (after opening or the last response): closed."""
MAX_CONNECTIONS = 64
"""Concurrent HTTP connections; more are closed at once (Prometheus needs one or two)."""
FD_RESERVE = 64
"""Descriptors kept free for the meters and MQTT sessions: HTTP is refused within this margin."""
SERVER_HEADER = "WattiWatchman"


def _status_page() -> bytes:
    """The bundled single-file status page."""
    return resources.files("watti_watchman").joinpath("status_page.html").read_bytes()


def build_http_app(
    exposition: Exposition,
    meters: Sequence[Meter],
    status: StatusProvider,
    live: StatusProvider | None = None,
) -> web.Application:
    """The aiohttp application; every handler answers from memory (no device I/O)."""

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=exposition.render())
        response.headers["Content-Type"] = CONTENT_TYPE
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
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.fd_reserve = fd_reserve
        self.open = 0
        self.refused_total: dict[str, int] = {"connection_limit": 0, "fd_reserve": 0}
        self.header_timeouts_total = 0
        self.bad_requests_total = 0

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
        current = GaugeMetricFamily("watti_http_connections", "Open HTTP connections")
        current.add_metric([], self.open)
        yield current
        refused = CounterMetricFamily(
            "watti_http_connections_refused", "HTTP connections closed at once, by reason", labels=["reason"]
        )
        for reason, count in sorted(self.refused_total.items()):
            refused.add_metric([reason], count)
        yield refused
        timeouts = CounterMetricFamily(
            "watti_http_header_timeouts",
            f"HTTP requests whose headers took over {self.header_timeout_s:g} s",
        )
        timeouts.add_metric([], self.header_timeouts_total)
        yield timeouts
        bad = CounterMetricFamily("watti_http_bad_requests", "Malformed HTTP requests (answered 400)")
        bad.add_metric([], self.bad_requests_total)
        yield bad


class _GuardedHandler(web.RequestHandler):
    """aiohttp's protocol plus the guard: refuse over the limits, header-read timeout."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.guard = guard
        self.refused = False
        self.in_request = False
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        reason = self.guard.refusal(sock.fileno() if sock is not None else -1)
        if reason is not None:
            self.refused = True
            self.guard.refused_total[reason] += 1
            logger.debug("HTTP connection refused: %s", reason)
            transport.close()
            return
        self.guard.open += 1
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.refused:
            return
        self.guard.open -= 1
        self.request_started()
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
        self.guard.header_timeouts_total += 1
        logger.debug("HTTP request headers not complete within %g s: closed", self.guard.header_timeout_s)
        self.force_close()

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
        self._server: asyncio.Server | None = None
        self.host = host
        self.port = port

    async def start(self) -> None:
        """Bind and serve; `port` 0 picks a free port (read it back from `self.port`).

        Raises HttpBindError when the address cannot be bound.
        """
        await self._runner.setup()
        manager = self._runner.server
        assert manager is not None
        loop = asyncio.get_running_loop()

        def protocol() -> _GuardedHandler:
            return _GuardedHandler(manager, self.guard, loop=loop, **self._handler_options)

        try:
            self._server = await loop.create_server(protocol, self.host, self.port, reuse_address=True)
        except OSError as error:
            await self._runner.cleanup()
            if error.errno and not isinstance(error, socket.gaierror):
                reason = os.strerror(error.errno).lower()
            else:  # a host name that does not resolve: the resolver's own words
                reason = (error.strerror or str(error)).lower()
            raise HttpBindError(f"cannot listen on {self.host}:{self.port} (http): {reason}") from None
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        logger.info("HTTP server on http://%s:%d/ (metrics at /metrics)", self.host, self.port)

    def collect_metrics(self) -> Iterable[Metric]:
        """The guard's connection counters."""
        return self.guard.collect_metrics()

    async def stop(self) -> None:
        """Stop listening, close the connections."""
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()
