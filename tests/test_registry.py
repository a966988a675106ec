"""The device registry: a toy device type registered from the test suite alone (no edit to the
package) validates, resolves, runs, and shows in /metrics, /api/status, HA discovery and read-meter."""

import asyncio
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
import yaml
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field

from tests.support.waiting import wait_until
from tests.test_hass import recording
from watti_watchman.app import Application
from watti_watchman.cli import EXIT_CONFIG, EXIT_OK, main
from watti_watchman.clock import Clock
from watti_watchman.config.loader import ConfigError, parse_config
from watti_watchman.config.meters import MeterConfig
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.config.schema import build_schema
from watti_watchman.domain.hass import validate_discovery
from watti_watchman.domain.quantities import Quantity, QuantityValues
from watti_watchman.domain.readings import PowerSample
from watti_watchman.latest import Latest
from watti_watchman.meters.base import Meter
from watti_watchman.registry import (
    BuildContext,
    DeviceType,
    TableReading,
    device_type,
    device_types,
    register,
    unregister,
)

TOY_PERIOD_S = 0.05


class ToyConfig(MeterConfig):
    """A meter that reports a configured constant power."""

    type: Literal["Toy"]
    watts: float = Field(default=42.0, ge=0, description="The power it reports (W).")


TOY_TABLE: tuple[Quantity, ...] = (
    Quantity(
        "power_l1",
        "Power L1",
        "W",
        "power",
        "measurement",
        metric="watti_toy_power_watts",
        metric_help="Toy power (W)",
        metric_labels=(("phase", "l1"),),
        precision=1,
    ),
    Quantity("mode_code", "Mode code", None, metric="watti_toy_mode", metric_help="Mode", integer=True),
)


class ToyMeter:
    """Publishes its configured power (L1 only) and mode code 3 every TOY_PERIOD_S."""

    def __init__(self, config: ToyConfig, clock: Clock) -> None:
        self.name = config.name
        self.config = config
        self.quantities = TOY_TABLE
        self.values: Latest[QuantityValues] = Latest(clock)
        self.power: Latest[PowerSample] = Latest(clock)

    def is_fresh(self) -> bool:
        return self.values.is_fresh(1.0)

    async def run(self) -> None:
        while True:
            watts = self.config.watts
            self.values.publish({"power_l1": watts, "mode_code": 3.0})
            self.power.publish(PowerSample(watts, 0.0, 0.0, watts))
            await asyncio.sleep(TOY_PERIOD_S)  # the toy device's own refresh period

    def collect_metrics(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("watti_toy_up", "1 while fresh", labels=["name"])
        up.add_metric([self.name], 1.0 if self.is_fresh() else 0.0)
        yield up

    def status(self) -> Mapping[str, Any]:
        return {"type": "Toy", "fresh": self.is_fresh()}


def _build(config: ToyConfig, context: BuildContext) -> Meter:
    return ToyMeter(config, context.clock)


async def _read_once(config: ToyConfig, context: BuildContext) -> TableReading:
    return TableReading(TOY_TABLE, {"power_l1": config.watts, "mode_code": 3.0})


def toy_type(**overrides: Any) -> DeviceType[ToyConfig]:
    options: dict[str, Any] = {
        "config": ToyConfig,
        "build": _build,
        "capabilities": frozenset({"power"}),
        "label": "Toy meter",
        "summary": lambda c: f"Toy reporting {c.watts:g} W",
        "read_once": _read_once,
    }
    return DeviceType(**(options | overrides))


@pytest.fixture
def toy() -> Iterator[DeviceType[ToyConfig]]:
    """The toy type, registered for one test."""
    registered = register(toy_type())
    try:
        yield registered
    finally:
        unregister("Toy")


def config_text(broker: MqttConnectionConfig | None = None, unique_id: str = "t", **toy: Any) -> str:
    data: dict[str, Any] = {"meters": [{"type": "Toy", "name": "toy", **toy}], "http": {"port": 0}}
    if broker is not None:
        data["mqtt_connections"] = [{"name": "ha", "host": broker.host, "port": broker.port}]
        data["services"] = [
            {
                "type": "HassFeeder",
                "mqtt_connection_name": "ha",
                "update_interval": 0.1,
                "discovery_prefix": f"{unique_id}_ha",
                "base_topic": unique_id,
            }
        ]
    return yaml.safe_dump(data)


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {})
    return [str(issue) for issue in caught.value.issues]


def test_a_name_registers_once_and_capabilities_are_checked(toy: DeviceType[ToyConfig]) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(toy_type())
    assert device_type("Toy") is toy
    liar = toy_type(capabilities=frozenset({"power", "setpoints"}))
    config = ToyConfig(type="Toy", name="toy")
    with pytest.raises(TypeError, match="setpoints"):
        liar.create(config, BuildContext(lambda: 0.0, {}))
    assert isinstance(toy.create(config, BuildContext(lambda: 0.0, {})), ToyMeter)


def test_toy_type_validates_resolves_and_is_summarised(
    toy: DeviceType[ToyConfig], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    resolved = parse_config(config_text(watts=7), {})
    meter = resolved.meter("toy")
    assert isinstance(meter, ToyConfig)
    assert meter.watts == 7
    refs = [branch["$ref"] for branch in build_schema()["properties"]["meters"]["items"]["oneOf"]]
    assert "#/$defs/ToyConfig" in refs
    assert any(i.startswith("meters[0].watts: ") for i in issues(config_text(watts=-1))), "branch checked"
    text = config_text().replace("type: Toy", "type: Tooy")
    known = ", ".join(device_types())
    assert f"meters[0].type: unknown meter type (known: {known})" in "".join(issues(text))
    assert "Toy" in known
    controlled = yaml.safe_load(config_text())
    controlled["services"] = [
        {
            "type": "ChargeController",
            "grid_meter_name": "toy",
            "battery_meter_name": "toy",
            "battery_controller_name": "toy",
        }
    ]
    expected = "services[0].battery_controller_name: meter 'toy' (Toy) does not accept battery setpoints"
    assert any(problem.startswith(expected) for problem in issues(yaml.safe_dump(controlled)))
    path = tmp_path / "watti_watchman.yml"
    path.write_text(config_text(watts=7))
    assert main(["check", "-c", str(path)]) == EXIT_OK
    assert "meter toy: Toy reporting 7 W" in capsys.readouterr().out


def test_read_meter_reads_any_type_that_can_be_read_once(
    toy: DeviceType[ToyConfig], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "watti_watchman.yml"
    path.write_text(config_text(watts=12.5))
    assert main(["read-meter", "toy", "-c", str(path)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [["Power", "L1", "12.5", "W"], ["Mode", "code", "3"]]
    unregister("Toy")
    register(toy_type(read_once=None))
    assert main(["read-meter", "toy", "-c", str(path)]) == EXIT_CONFIG
    assert "no meter that can be read once named 'toy' (known: none)" in capsys.readouterr().err


async def test_toy_type_runs_into_metrics_status_and_home_assistant(
    toy: DeviceType[ToyConfig], mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    app = Application(parse_config(config_text(mqtt_connection, unique_id), {}), http_host="127.0.0.1")
    stop = asyncio.Event()
    async with recording(mqtt_connection) as recorder, aiohttp.ClientSession() as http:
        task = asyncio.create_task(app.run(stop))
        await asyncio.wait_for(app.started.wait(), 5)
        base = f"http://127.0.0.1:{app.http_port}"
        state_topic = f"{unique_id}/toy/state"
        await wait_until(lambda: recorder.on(state_topic), what="toy state in Home Assistant")
        async with http.get(f"{base}/metrics") as response:
            body = await response.text()
        async with http.get(f"{base}/api/status") as response:
            status = await response.json()
        stop.set()
        await asyncio.wait_for(task, 10)

    families = {f.name: f for f in text_string_to_metric_families(body)}
    (power,) = families["watti_toy_power_watts"].samples
    assert (power.labels, power.value) == ({"name": "toy", "phase": "l1"}, 42.0)
    assert families["watti_toy_mode"].samples[0].value == 3.0
    assert families["watti_toy_up"].samples[0].value == 1.0
    assert status["meters"]["toy"] == {
        "type": "Toy",
        "fresh": True,
        "values": {"power_l1": 42.0, "mode_code": 3},
    }
    configs = recorder.configs(f"{unique_id}_ha")
    for topic, payload in configs.items():
        validate_discovery(topic, payload, sw_version=payload["device"]["sw_version"])
    by_uid = {payload["unique_id"]: payload for payload in configs.values()}
    power_config = by_uid["watti_toy_power_l1"]
    assert power_config["device"]["name"] == "Toy meter (toy)"
    assert power_config["device"]["model"] == "Toy meter"
    assert (power_config["unit_of_measurement"], power_config["device_class"]) == ("W", "power")
    assert "watti_toy_mode_code" in by_uid
    state = json.loads(recorder.on(state_topic)[-1])
    assert state == {"power_l1": 42.0, "mode_code": 3}
    assert isinstance(state["mode_code"], int)
