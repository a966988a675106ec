"""A generic (non-Victron) installation on loopback: an Eastron SDM630 behind an RS485 bridge as grid
meter, an inverter with its own MQTT bridge (setpoint in; battery power and state out) and a Seplos
BMS behind a TCP bridge — all driven by the simulated plant in real time.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources

from watti_watchman.clock import Clock, monotonic
from watti_watchman.config.loader import parse_config
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.config.register_map import load_register_map
from watti_watchman.config.resolve import ResolvedConfig
from watti_watchman.config.services import ChargeControllerConfig
from watti_watchman.domain.mqtt_payload import PayloadError, extract
from watti_watchman.domain.readings import PHASES, Phase, PowerSample
from watti_watchman.meters.modbus_meter import ModbusMeter, ModbusMeterConfig
from watti_watchman.meters.mqtt_battery import MqttBattery, MqttBatteryConfig
from watti_watchman.meters.mqtt_meter import MqttMeter, MqttMeterConfig
from watti_watchman.mqtt import MqttSession, NotConnectedError
from watti_watchman.services.charge_controller import ChargeController
from watti_watchman.sim.map_server import MapServer
from watti_watchman.sim.plant import (
    ACTUATOR_ERROR,
    PRESETS,
    Installation,
    MeterWindow,
    Plant,
    PlantConfig,
    Profile,
)
from watti_watchman.sim.seplos_server import SeplosServer
from watti_watchman.sim.world import NOMINAL_VOLTAGE_V, POLL_S, EnergyCounters
from watti_watchman.supervisor import cancel_and_wait

logger = logging.getLogger("watti_watchman.sim.generic")
HOST = "127.0.0.1"
TOPIC_PREFIX = "inverter"
SETPOINT_TOPIC = f"{TOPIC_PREFIX}/setpoint"
POWER_TOPIC = f"{TOPIC_PREFIX}/battery/power"
STATE_TOPIC = f"{TOPIC_PREFIX}/battery/state"
STATE_INTERVAL_S = 1.0
INVERTER_WATCHDOG_S = 10.0
"""The simulated inverter falls back to 0 W when no setpoint arrived for this long (s)."""
SDM630_UNIT = 1
SDM630_REPLY_S = 0.17
"""A 76-register reply plus its request on RS485 at 9600 baud (8N1, ~1 ms per byte), before the bridge
forwards it: the SDM630's values are this old when they arrive."""


class InverterBridge:
    """The inverter's own MQTT bridge: takes a total setpoint (W, + = charge), reports battery power
    per meter window and SOC/voltage/BMS limits every second; 0 W after its watchdog expires."""

    def __init__(self, connection: MqttConnectionConfig, *, clock: Clock = monotonic) -> None:
        self._clock = clock
        self.session = MqttSession(
            connection, "sim_inverter", clock=clock, on_message=self._on_message, on_connect=self._on_connect
        )
        self.total_w = 0.0
        self.received_s: float | None = None
        self.garbage = 0

    async def _on_connect(self, session: MqttSession) -> None:
        await session.subscribe(SETPOINT_TOPIC)

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            self.total_w = extract(payload, ())
        except PayloadError:
            self.garbage += 1
            return
        self.received_s = self._clock()

    def setpoints(self) -> dict[Phase, int]:
        """What the inverter acts on: the total split evenly, 0 W once the watchdog has expired."""
        if self.received_s is None or self._clock() - self.received_s > INVERTER_WATCHDOG_S:
            return dict.fromkeys(PHASES, 0)
        return dict.fromkeys(PHASES, round(self.total_w / 3))

    async def publish(self, topic: str, payload: str) -> None:
        """Publish if connected (a bridge drops what it cannot send)."""
        with contextlib.suppress(NotConnectedError):
            await self.session.publish(topic, payload)


def sdm630_values(sample: PowerSample, energy: EnergyCounters) -> dict[str, float]:
    """What the SDM630 shows for one window: powers, voltages, currents, frequency, energy (Wh)."""
    powers = {"power_l1": sample.l1_w, "power_l2": sample.l2_w, "power_l3": sample.l3_w}
    values = {**powers, "power_total": sample.total_w, "frequency": 50.0}
    for n, watts in enumerate(powers.values(), start=1):
        values[f"voltage_l{n}"] = NOMINAL_VOLTAGE_V
        values[f"current_l{n}"] = abs(watts) / NOMINAL_VOLTAGE_V
    values["energy_import"] = sum(energy.import_wh)
    values["energy_export"] = sum(energy.export_wh)
    return values


class GenericRealTimePlant:
    """Runs `plant` against the wall clock for the generic installation."""

    def __init__(
        self,
        plant: Plant,
        grid_server: MapServer,
        bridge: InverterBridge,
        seplos: SeplosServer,
        *,
        clock: Clock = monotonic,
    ) -> None:
        self.plant = plant
        self.grid_server = grid_server
        self.bridge = bridge
        self.seplos = seplos
        self._clock = clock
        self._energy = EnergyCounters.starting_at(4_000_000.0, 150_000.0)
        self._applied: dict[Phase, int] = {}
        self.last_windows: dict[str, MeterWindow] = {}

    async def _publish_window(self, window: MeterWindow) -> None:
        self.last_windows[window.meter] = window
        if window.meter == "grid":
            self._energy.add(window.sample, self.plant.config.window_s)
            self.grid_server.set_values(sdm630_values(window.sample, self._energy))
        else:
            await self.bridge.publish(POWER_TOPIC, f"{window.sample.total_w:.1f}")

    async def _publish_state(self) -> None:
        plant, config = self.plant, self.plant.config
        status = plant.battery_status()
        total_w = sum(plant.battery_w)
        self.seplos.set(
            soc_percent=round(plant.soc_percent, 1),
            voltage_v=config.voltage_v,
            current_a=round(total_w / config.voltage_v, 2),
        )
        state = {
            "soc": round(plant.soc_percent, 1),
            "voltage": config.voltage_v,
            "max_charge_current": status.max_charge_current_a,
            "max_discharge_current": status.max_discharge_current_a,
        }
        await self.bridge.publish(STATE_TOPIC, json.dumps({k: v for k, v in state.items() if v is not None}))

    async def run(self) -> None:
        """Advance the plant with the wall clock until cancelled."""
        start_s = self._clock() - self.plant.time_s
        next_state_s = 0.0
        await self._publish_window(MeterWindow("grid", 0.0, PowerSample(0.0, 0.0, 0.0, 0.0)))
        while True:
            now_s = self._clock() - start_s
            for window in self.plant.advance(max(0.0, now_s - self.plant.time_s)):
                await self._publish_window(window)
            setpoints = self.bridge.setpoints()
            if setpoints != self._applied:
                self._applied = setpoints
                self.plant.command(setpoints)
            if now_s >= next_state_s:
                next_state_s = now_s + STATE_INTERVAL_S
                await self._publish_state()
            await asyncio.sleep(POLL_S)


@dataclass
class GenericSite:
    """The simulated peers of the generic installation."""

    mqtt_port: int
    grid_server: MapServer
    seplos: SeplosServer
    bridge: InverterBridge
    world: GenericRealTimePlant

    def environment(self) -> dict[str, str]:
        """The ${WATTI_DEMO_*} variables of the generic demo configuration for this site."""
        return {
            "WATTI_DEMO_MQTT_PORT": str(self.mqtt_port),
            "WATTI_DEMO_GRID_PORT": str(self.grid_server.port),
            "WATTI_DEMO_SEPLOS_PORT": str(self.seplos.port),
        }

    def config(self, http_port: int) -> ResolvedConfig:
        """The bundled generic demo configuration with this site's ports filled in."""
        text = resources.files("watti_watchman.sim").joinpath("demo_generic.yml").read_text()
        return parse_config(text.replace("port: 9292", f"port: {http_port}"), self.environment())


@contextlib.asynccontextmanager
async def generic_site(
    load: Profile,
    pv: Profile,
    *,
    mqtt_port: int,
    initial_soc_percent: float = 50.0,
    plant_preset: str = "medium",
    installation: Installation = ACTUATOR_ERROR,
) -> AsyncIterator[GenericSite]:
    """Start the generic installation's peers against the broker at 127.0.0.1:`mqtt_port`."""
    plant = Plant(
        PlantConfig(
            inverter=PRESETS[plant_preset], installation=installation, initial_soc_percent=initial_soc_percent
        ),
        load,
        pv,
    )
    grid_server = MapServer(load_register_map("eastron_sdm630"), framing="rtu_over_tcp", unit=SDM630_UNIT)
    seplos = SeplosServer(address=0)
    connection = MqttConnectionConfig(name="site", host=HOST, port=mqtt_port, client_id="sim_generic")
    bridge = InverterBridge(connection)
    world = GenericRealTimePlant(plant, grid_server, bridge, seplos)
    grid_server.delay_responses(SDM630_REPLY_S)
    await grid_server.start()
    await seplos.start()
    tasks = [asyncio.create_task(bridge.session.run(), name="inverter bridge")]
    await bridge.session.connected.wait()
    tasks.append(asyncio.create_task(world.run(), name="generic plant"))
    try:
        yield GenericSite(mqtt_port, grid_server, seplos, bridge, world)
    finally:
        await cancel_and_wait(tasks, logger)
        await grid_server.stop()
        await seplos.stop()


@contextlib.asynccontextmanager
async def generic_stack(
    site: GenericSite,
    connection: MqttConnectionConfig,
    *,
    controller_config: ChargeControllerConfig,
    grid_interval_s: float | None = None,
) -> AsyncIterator[ChargeController]:
    """The generic installation's components built from their configs and running (no Application):
    ModbusMeter (SDM630 map) `grid`, MqttMeter `battery`, MqttBattery `inverter` with SOC and BMS
    limits from the bridge's state topic, and the ChargeController; 0 W handed back on exit."""
    grid = ModbusMeter(
        ModbusMeterConfig(
            type="ModbusMeter",
            name="grid",
            host=site.grid_server.host,
            port=site.grid_server.port,
            unit=SDM630_UNIT,
            framing="rtu_over_tcp",
            map="eastron_sdm630",
            interval=grid_interval_s,
        )
    )
    battery_meter = MqttMeter(
        MqttMeterConfig.model_validate(
            {
                "type": "MqttMeter",
                "name": "battery",
                "mqtt_connection_name": connection.name,
                "values": {"power_total": {"topic": POWER_TOPIC}},
                "max_age": 1.0,
            }
        ),
        connection,
    )
    inverter = MqttBattery(
        MqttBatteryConfig.model_validate(
            {
                "type": "MqttBattery",
                "name": "inverter",
                "mqtt_connection_name": connection.name,
                "setpoint_topic": SETPOINT_TOPIC,
                "feedback": {
                    key: {"topic": STATE_TOPIC, "path": key}
                    for key in ("soc", "voltage", "max_charge_current", "max_discharge_current")
                },
            }
        ),
        connection,
    )
    controller = ChargeController(controller_config, grid, battery_meter, inverter)
    tasks = [asyncio.create_task(c.run(), name=c.name) for c in (grid, battery_meter, inverter, controller)]
    try:
        yield controller
    finally:
        await controller.shutdown()
        await cancel_and_wait(tasks, logger)
