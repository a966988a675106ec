"""The HTTP server: /metrics (Prometheus), /healthz, /api/status and the status page."""

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

from aiohttp import web

from watti_watchman.meters.base import Source
from watti_watchman.metrics import CONTENT_TYPE, Exposition

logger = logging.getLogger("watti_watchman.http")

StatusProvider = Callable[[], Mapping[str, Any]]


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

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/status", api_status)
    app.router.add_get("/api/live", api_live)
    app.router.add_get("/", index)
    return app


class HttpServer:
    """Runs the HTTP application on host:port until stopped."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.host = host
        self.port = port

    async def start(self) -> None:
        """Bind and serve; `port` 0 picks a free port (read it back from `self.port`)."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server
        if server is not None and self.port == 0:
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1]
        logger.info("HTTP server on http://%s:%d/ (metrics at /metrics)", self.host, self.port)

    async def stop(self) -> None:
        """Stop serving."""
        await self._runner.cleanup()
