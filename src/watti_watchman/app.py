"""Composition root: builds meters and services from the configuration and runs them together."""

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from watti_watchman import __version__
from watti_watchman.clock import Clock, monotonic
from watti_watchman.config.meters import JanitzaConfig, MeterConfig, VictronConfig
from watti_watchman.config.resolve import ResolvedConfig
from watti_watchman.config.services import (
    ChargeControllerConfig,
    HassDynamicConfigConfig,
    HassFeederConfig,
    VictronGridFeederConfig,
)
from watti_watchman.http import HttpServer, build_http_app
from watti_watchman.meters.base import BatteryController, Component, Meter, PowerMeter
from watti_watchman.meters.janitza import JanitzaMeter
from watti_watchman.meters.victron import VictronMeter
from watti_watchman.metrics import Exposition
from watti_watchman.services.charge_controller import ChargeController
from watti_watchman.supervisor import cancel_and_wait

logger = logging.getLogger("watti_watchman.app")
SHUTDOWN_TIMEOUT_S = 3.0


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
        self.meters: dict[str, Meter] = {m.name: self._build_meter(m) for m in config.meters}
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
        self.exposition = Exposition()
        self.exposition.add(self._own_metrics)
        for component in self.components:
            self.exposition.add(component)
        self.http: HttpServer | None = None
        self.started = asyncio.Event()
        """Set once the HTTP server listens (`http_port` then holds the bound port)."""

    @property
    def components(self) -> list[Component]:
        """Meters first, then services (controllers first among them)."""
        return [*self.meters.values(), *self.services]

    def _build_meter(self, config: MeterConfig) -> Meter:
        if isinstance(config, JanitzaConfig):
            return JanitzaMeter(config, clock=self.clock)
        if isinstance(config, VictronConfig):
            connection = self.resolved.connection(config.mqtt_connection_name)
            return VictronMeter(config, connection, clock=self.clock)
        raise TypeError(f"no meter adapter for {config!r}")  # pragma: no cover - schema prevents it

    def _power_meter(self, name: str) -> PowerMeter:
        meter = self.meters[name]
        if not isinstance(meter, (JanitzaMeter, VictronMeter)):  # pragma: no cover - resolve checks
            raise TypeError(f"meter {name!r} delivers no power readings")
        return meter

    def _build_controller(self, config: ChargeControllerConfig) -> ChargeController:
        battery = self.meters[config.battery_controller_name]
        if not isinstance(battery, VictronMeter):  # pragma: no cover - resolve checks this
            raise TypeError(f"meter {config.battery_controller_name!r} accepts no setpoints")
        controller: BatteryController = battery
        return ChargeController(
            config,
            self._power_meter(config.grid_meter_name),
            self._power_meter(config.battery_meter_name),
            controller,
            clock=self.clock,
            dry_run=self.dry_run,
        )

    def _build_service(self, config: Any) -> Component:
        if isinstance(config, VictronGridFeederConfig):
            from watti_watchman.services.victron_grid import VictronGridFeeder  # noqa: PLC0415

            grid = self.meters[config.grid_meter_name]
            assert isinstance(grid, JanitzaMeter)
            return VictronGridFeeder(
                config, self.resolved.connection(config.mqtt_connection_name), grid, clock=self.clock
            )
        if isinstance(config, HassFeederConfig):
            from watti_watchman.services.hass import HassFeeder  # noqa: PLC0415

            return HassFeeder(
                config,
                self.resolved.connection(config.mqtt_connection_name),
                list(self.meters.values()),
                list(self.controllers.values()),
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
        info = GaugeMetricFamily("watti_build_info", "WattiWatchman version", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        dry = GaugeMetricFamily("watti_dry_run", "1 when setpoints are computed but not written")
        dry.add_metric([], 1.0 if self.dry_run else 0.0)
        yield dry
        render = GaugeMetricFamily(
            "watti_metrics_render_seconds", "Time the previous /metrics render took (s)"
        )
        render.add_metric([], self.exposition.last_render_s)
        yield render

    def status(self) -> Mapping[str, Any]:
        """A JSON-able snapshot of every component, for /api/status and the status page."""
        return {
            "version": __version__,
            "dry_run": self.dry_run,
            "meters": {name: dict(meter.status()) for name, meter in self.meters.items()},
            "services": {service.name: dict(service.status()) for service in self.services},
        }

    def _power_view(self, name: str) -> dict[str, float] | None:
        meter = self.meters.get(name)
        stamped = meter.power.snapshot() if isinstance(meter, (JanitzaMeter, VictronMeter)) else None
        if stamped is None or not meter or not meter.is_fresh():
            return None
        sample = stamped.value
        return {"l1": sample.l1_w, "l2": sample.l2_w, "l3": sample.l3_w, "total": sample.total_w}

    def live(self) -> Mapping[str, Any]:
        """The status page's feed: the first controller's view of the plant, flat and small."""
        now_s = self.clock()
        meters = {
            name: {"fresh": meter.is_fresh(), "age_s": _age_s(meter, now_s)}
            for name, meter in self.meters.items()
        }
        result: dict[str, Any] = {
            "t": now_s,
            "meters": meters,
            "grid": None,
            "battery": None,
            "setpoints": None,
            "soc": None,
            "limits": None,
            "reason": None,
            "target_w": None,
            "mode": None,
        }
        controller = next(iter(self.controllers.values()), None)
        if controller is None:
            return result
        config = controller.config
        status = controller.status()
        limits = status["limits"] or {}
        battery_meter = self.meters[config.battery_controller_name]
        battery_stamped = (
            battery_meter.battery.snapshot() if isinstance(battery_meter, VictronMeter) else None
        )
        battery_status = battery_stamped.value if battery_stamped and battery_meter.is_fresh() else None
        result.update(
            grid=self._power_view(config.grid_meter_name),
            battery=self._power_view(config.battery_meter_name),
            setpoints=status["setpoints_w"] or None,
            soc=None if battery_status is None else battery_status.soc_percent,
            limits={"charge_w": limits.get("max_charge_w"), "discharge_w": limits.get("max_discharge_w")},
            reason=status["reason"],
            target_w=status["target_w"],
            mode=status["mode"],
        )
        return result

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
            build_http_app(self.exposition, list(self.meters.values()), self.status, self.live),
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


def _age_s(meter: Meter, now_s: float) -> float | None:
    """Seconds since the meter's newest power sample, or None."""
    power = getattr(meter, "power", None)
    newest = power.snapshot() if power is not None else None
    return None if newest is None else now_s - newest.at_s
