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
from watti_watchman.sim.generic_site import generic_site
from watti_watchman.sim.janitza_server import JanitzaServer
from watti_watchman.sim.meter_clock import FIELD, MeterTiming, meter_clocks
from watti_watchman.sim.plant import ACTUATOR_ERROR, PRESETS, Installation, Plant, PlantConfig, Profile
from watti_watchman.sim.scenario import load_scenario
from watti_watchman.sim.venus import VenusEmulator
from watti_watchman.sim.world import RealTimePlant
from watti_watchman.supervisor import cancel_and_wait

logger = logging.getLogger("watti_watchman.demo")
HOST = "127.0.0.1"
PORTAL_ID = "c0ffee000001"
GRID_UNIT = 2
BATTERY_UNIT = 1


@dataclass
class SimulatedSite:
    """Everything the demo simulates on loopback: two Janitza servers, the GX and the plant."""

    mqtt_port: int
    grid_server: JanitzaServer
    battery_server: JanitzaServer
    venus: VenusEmulator
    world: RealTimePlant

    def environment(self) -> dict[str, str]:
        """The ${WATTI_DEMO_*} variables of the bundled demo configuration for this site."""
        return {
            "WATTI_DEMO_MQTT_PORT": str(self.mqtt_port),
            "WATTI_DEMO_GRID_PORT": str(self.grid_server.port),
            "WATTI_DEMO_BATTERY_PORT": str(self.battery_server.port),
            "WATTI_DEMO_PORTAL_ID": PORTAL_ID,
        }

    def config(self, http_port: int) -> ResolvedConfig:
        """The bundled demo configuration with this site's ports filled in."""
        return parse_config(
            demo_config_text().replace("port: 9292", f"port: {http_port}"), self.environment()
        )


def demo_config_text() -> str:
    """The bundled demo configuration (with ${WATTI_DEMO_*} placeholders)."""
    return resources.files("watti_watchman.sim").joinpath("demo_config.yml").read_text()


@contextlib.asynccontextmanager
async def simulated_site(
    load: Profile,
    pv: Profile,
    *,
    mqtt_port: int,
    initial_soc_percent: float = 50.0,
    plant_preset: str = "medium",
    run_plant: bool = True,
    installation: Installation = ACTUATOR_ERROR,
    timing: MeterTiming = FIELD,
) -> AsyncIterator[SimulatedSite]:
    """Start the simulated peers against the broker at 127.0.0.1:`mqtt_port`; the plant runs as a task.

    With `run_plant` False the meters serve whatever the caller sets (latency measurements). The
    default installation has a Multi with an actuator error the trim must remove, and a BMS. The
    meters' windows move as `timing` says (default: the field's frequency wander and jitter).
    """
    config = PlantConfig(
        inverter=PRESETS[plant_preset], installation=installation, initial_soc_percent=initial_soc_percent
    )
    plant = Plant(
        config,
        load,
        pv,
        window_clocks=meter_clocks(timing, config.grid_window_offset_s, config.battery_window_offset_s),
    )
    zero = [0.0] * 39
    grid_server = JanitzaServer(zero, unit=GRID_UNIT)
    battery_server = JanitzaServer(zero, unit=BATTERY_UNIT)
    await grid_server.start()
    await battery_server.start()
    connection = MqttConnectionConfig(name="venus", host=HOST, port=mqtt_port, client_id="demo_gx")
    venus = VenusEmulator(connection, PORTAL_ID, bms_limits=installation.bms)
    if installation.bms:
        venus.set_bms_limits(plant.config.bms_max_charge_current_a, plant.config.bms_max_discharge_current_a)
    world = RealTimePlant(plant, grid_server, battery_server, venus, frequency=timing.frequency)
    site = SimulatedSite(mqtt_port, grid_server, battery_server, venus, world)
    tasks = [asyncio.create_task(venus.run(), name="venus")]
    await venus.session.connected.wait()  # a real GX is up before the service starts
    if run_plant:
        tasks.append(asyncio.create_task(world.run(), name="plant"))
    try:
        yield site
    finally:
        await cancel_and_wait(tasks, logger)
        await grid_server.stop()
        await battery_server.stop()


async def run_demo(duration_s: float | None, port: int, scenario: str, site: str = "victron") -> int:
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
    peers = generic_site if site == "generic" else simulated_site
    async with (
        EmbeddedBroker(HOST) as broker,
        peers(
            chosen.load_w, chosen.pv_w, mqtt_port=broker.port, initial_soc_percent=chosen.initial_soc_percent
        ) as simulated,
    ):
        app = Application(simulated.config(port), http_host=HOST, http_port=port)
        app_task = asyncio.create_task(app.run(stop), name="app")
        await app.started.wait()
        base = f"http://{HOST}:{app.http_port}"
        print(f"WattiWatchman demo, {site} site ({chosen.name}: {chosen.description})", flush=True)
        print(f"  status page: {base}/", flush=True)
        print(f"  metrics:     {base}/metrics", flush=True)
        gx = f" (portal id {PORTAL_ID})" if site == "victron" else ""
        print(f"  MQTT broker: {HOST}:{broker.port}{gx}", flush=True)
        print("  Ctrl-C to stop" if duration_s is None else f"  stopping after {duration_s:g} s", flush=True)
        if duration_s is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(duration_s):
                    await stop.wait()
            stop.set()
        await app_task
    return 0
