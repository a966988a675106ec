"""Composition root: builds meters (through the device registry) and services, then runs them."""

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any, TypeVar

from prometheus_client.core import Metric

from watti_watchman import __version__
from watti_watchman.clock import Clock, monotonic
from watti_watchman.config.resolve import ResolvedConfig
from watti_watchman.config.services import (
    ChargeControllerConfig,
    HassDynamicConfigConfig,
    HassFeederConfig,
    VictronGridFeederConfig,
)
from watti_watchman.http import HttpServer, build_http_app
from watti_watchman.meters.base import (
    BatteryController,
    BatteryMeter,
    Component,
    GridMeter,
    Meter,
    PowerMeter,
)
from watti_watchman.metrics import Exposition, Families
from watti_watchman.registry import BuildContext, device_labels, device_type
from watti_watchman.services.charge_controller import ChargeController
from watti_watchman.supervisor import cancel_and_wait
from watti_watchman.views import StatusViews

logger = logging.getLogger("watti_watchman.app")
SHUTDOWN_TIMEOUT_S = 3.0
P = TypeVar("P")


class Application:
    """Every configured meter and service, the metrics exposition and the HTTP server."""

    def __init__(
        self,
        resolved: ResolvedConfig,
        *,
        clock: Clock = monotonic,
        dry_run: bool = False,
        http_host: str | None = None,
        http_port: int | None = None,
    ) -> None:
        self.resolved = resolved
        self.clock = clock
        self.dry_run = dry_run
        config = resolved.config
        self.http_host = http_host if http_host is not None else config.http.host
        self.http_port = http_port if http_port is not None else config.http.port
        context = BuildContext(clock, resolved.connections)
        self.meters: dict[str, Meter] = {
            m.name: device_type(m.type).create(m, context) for m in config.meters
        }
        self.controllers: dict[str, ChargeController] = {}
        self.services: list[Component] = []
        for service in config.services:
            if isinstance(service, ChargeControllerConfig):
                controller = self._build_controller(service)
                self.controllers[controller.name] = controller
                self.services.append(controller)
        for service in config.services:
            if not isinstance(service, ChargeControllerConfig):
                self.services.append(self._build_service(service))
        self.views = StatusViews(
            self.meters, self.services, list(self.controllers.values()), clock=clock, dry_run=dry_run
        )
        self.exposition = Exposition()
        self._families = Families()
        self.exposition.add(self._own_metrics)
        for meter in self.meters.values():
            self.exposition.add(meter)
        for component in self.services:
            self.exposition.add(component)
        self.http: HttpServer | None = None
        self.started = asyncio.Event()
        """Set once the HTTP server listens (`http_port` then holds the bound port)."""

    @property
    def components(self) -> list[Component]:
        """Meters first, then services (controllers first among them)."""
        return [*self.meters.values(), *self.services]

    def _meter(self, name: str, protocol: type[P]) -> P:
        """Meter `name` as the capability `protocol` (resolution has checked it offers it)."""
        meter = self.meters[name]
        if not isinstance(meter, protocol):  # pragma: no cover - resolve and the registry check this
            raise TypeError(f"meter {name!r} is no {protocol.__name__}")
        return meter

    def _build_controller(self, config: ChargeControllerConfig) -> ChargeController:
        return ChargeController(
            config,
            self._meter(config.grid_meter_name, PowerMeter),  # type: ignore[type-abstract]
            self._meter(config.battery_meter_name, PowerMeter),  # type: ignore[type-abstract]
            self._meter(config.battery_controller_name, BatteryController),  # type: ignore[type-abstract]
            battery_status=None
            if config.battery_status_meter_name is None
            else self._meter(config.battery_status_meter_name, BatteryMeter),  # type: ignore[type-abstract]
            clock=self.clock,
            dry_run=self.dry_run,
        )

    def _build_service(self, config: Any) -> Component:
        if isinstance(config, VictronGridFeederConfig):
            from watti_watchman.services.victron_grid import VictronGridFeeder  # noqa: PLC0415

            return VictronGridFeeder(
                config,
                self.resolved.connection(config.mqtt_connection_name),
                self._meter(config.grid_meter_name, GridMeter),  # type: ignore[type-abstract]
                clock=self.clock,
            )
        if isinstance(config, HassFeederConfig):
            from watti_watchman.services.hass import HassFeeder  # noqa: PLC0415

            return HassFeeder(
                config,
                self.resolved.connection(config.mqtt_connection_name),
                list(self.meters.values()),
                list(self.controllers.values()),
                labels=device_labels(self.resolved.config),
                clock=self.clock,
            )
        if isinstance(config, HassDynamicConfigConfig):
            from watti_watchman.services.hass import HassDynamicConfig  # noqa: PLC0415

            return HassDynamicConfig(
                config,
                self.resolved.connection(config.mqtt_connection_name),
                list(self.controllers.values()),
                clock=self.clock,
            )
        raise TypeError(f"no service for {config!r}")  # pragma: no cover - schema prevents it

    def _own_metrics(self) -> Iterable[Metric]:
        families = self._families
        yield families.gauge("watti_build_info", "WattiWatchman version", ("version",)).one(1.0, __version__)
        dry_run = families.gauge("watti_dry_run", "1 when setpoints are computed but not written", ())
        yield dry_run.one(1.0 if self.dry_run else 0.0)
        render = families.gauge(
            "watti_metrics_render_seconds", "Time the previous /metrics render took (s)", ()
        )
        yield render.one(self.exposition.last_render_s)

    async def _shutdown_services(self) -> None:
        """Let services hand control back (controllers write 0 W) while meters still run."""
        for service in self.services:
            shutdown = getattr(service, "shutdown", None)
            if shutdown is None:
                continue
            try:
                async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                    await shutdown()
            except TimeoutError:
                logger.warning("%s: shutdown did not finish within %.0f s", service.name, SHUTDOWN_TIMEOUT_S)

    async def run(self, stop: asyncio.Event) -> None:
        """Run everything until `stop` is set, then shut down in order.

        A component that fails (a programming error: transient errors are handled inside) stops
        the whole application the same way, after which its exception is raised.
        """
        self.http = HttpServer(
            build_http_app(self.exposition, list(self.meters.values()), self.views.status, self.views.live),
            self.http_host,
            self.http_port,
        )
        self.exposition.add(self.http)
        await self.http.start()
        self.http_port = self.http.port
        self.started.set()
        tasks = [asyncio.create_task(c.run(), name=c.name) for c in self.components]
        stop_requested = asyncio.create_task(stop.wait(), name="stop requested")
        try:
            done, _ = await asyncio.wait([*tasks, stop_requested], return_when=asyncio.FIRST_COMPLETED)
            failed = [task for task in done if task is not stop_requested and not task.cancelled()]
            for task in failed:
                logger.error("%s stopped unexpectedly: %r", task.get_name(), task.exception())
            logger.info("stopping: handing control back")
            await self._shutdown_services()
        finally:
            stop_requested.cancel()
            await cancel_and_wait(tasks, logger)
            with contextlib.suppress(Exception):
                await self.http.stop()
        logger.info("stopped")
        errors = [error for task in failed if isinstance(error := task.exception(), Exception)]
        if errors:
            raise ExceptionGroup("components failed", errors)
