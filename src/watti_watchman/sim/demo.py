"""`watti-watchman demo`: embedded broker, simulated plant and the real service stack, on loopback."""

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources

from watti_watchman.app import Application
from watti_watchman.broker import EmbeddedBroker
from watti_watchman.config.loader import parse_config
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.config.resolve import ResolvedConfig
from watti_watchman.sim.janitza_server import JanitzaServer
from watti_watchman.sim.plant import PRESETS, Plant, PlantConfig
from watti_watchman.sim.scenario import Scenario, load_scenario
from watti_watchman.sim.venus import VenusEmulator
from watti_watchman.sim.world import RealTimePlant

logger = logging.getLogger("watti_watchman.demo")
HOST = "127.0.0.1"
PORTAL_ID = "c0ffee000001"
GRID_UNIT = 2
BATTERY_UNIT = 1
PLANT_OFFSET_W = 20.0


@dataclass
class SimulatedSite:
    """Everything the demo simulates: broker, two Janitza servers, the GX and the plant."""

    broker: EmbeddedBroker
    grid_server: JanitzaServer
    battery_server: JanitzaServer
    venus: VenusEmulator
    world: RealTimePlant

    def config(self, http_port: int) -> ResolvedConfig:
        """The bundled demo configuration with this site's ports filled in."""
        text = resources.files("watti_watchman.sim").joinpath("demo_config.yml").read_text()
        env = {
            "WATTI_DEMO_MQTT_PORT": str(self.broker.port),
            "WATTI_DEMO_GRID_PORT": str(self.grid_server.port),
            "WATTI_DEMO_BATTERY_PORT": str(self.battery_server.port),
            "WATTI_DEMO_PORTAL_ID": PORTAL_ID,
        }
        resolved = parse_config(text.replace("port: 9292", f"port: {http_port}"), env)
        return resolved


@contextlib.asynccontextmanager
async def simulated_site(scenario: Scenario, plant_preset: str = "medium") -> AsyncIterator[SimulatedSite]:
    """Start the simulated peers on loopback; stop them on exit. The plant runs as a task."""
    plant = Plant(
        PlantConfig(
            inverter=PRESETS[plant_preset],
            initial_soc_percent=scenario.initial_soc_percent,
            offset_w=PLANT_OFFSET_W,
        ),
        scenario.load_w,
        scenario.pv_w,
    )
    zero = [0.0] * 39
    async with EmbeddedBroker(HOST) as broker:
        grid_server = JanitzaServer(zero, unit=GRID_UNIT)
        battery_server = JanitzaServer(zero, unit=BATTERY_UNIT)
        await grid_server.start()
        await battery_server.start()
        connection = MqttConnectionConfig(name="venus", host=HOST, port=broker.port, client_id="demo_gx")
        venus = VenusEmulator(connection, PORTAL_ID)
        venus.set_bms_limits(plant.config.bms_max_charge_current_a, plant.config.bms_max_discharge_current_a)
        world = RealTimePlant(plant, grid_server, battery_server, venus)
        site = SimulatedSite(broker, grid_server, battery_server, venus, world)
        tasks = [
            asyncio.create_task(venus.run(), name="venus"),
            asyncio.create_task(world.run(), name="plant"),
        ]
        try:
            yield site
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await grid_server.stop()
            await battery_server.stop()


async def run_demo(duration_s: float | None, port: int, scenario: str) -> int:
    """Run the demo until Ctrl-C/SIGTERM or `duration_s`; returns the exit code."""
    try:
        chosen = load_scenario(scenario)
    except (ValueError, KeyError) as error:
        print(f"demo: {error}")
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with simulated_site(chosen) as site:
        app = Application(site.config(port), http_host=HOST, http_port=port)
        app_task = asyncio.create_task(app.run(stop), name="app")
        while app.http is None or app.http.port == 0 and not app_task.done():
            await asyncio.sleep(0.01)
        base = f"http://{HOST}:{app.http.port}"
        print(f"WattiWatchman demo ({chosen.name}: {chosen.description})", flush=True)
        print(f"  status page: {base}/", flush=True)
        print(f"  metrics:     {base}/metrics", flush=True)
        print(f"  MQTT broker: {HOST}:{site.broker.port} (portal id {PORTAL_ID})", flush=True)
        print("  Ctrl-C to stop" if duration_s is None else f"  stopping after {duration_s:g} s", flush=True)
        if duration_s is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration_s)
            stop.set()
        await app_task
    return 0
