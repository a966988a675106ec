"""Name resolution with capability checks, after schema validation."""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from watti_watchman.config.errors import ConfigError, ConfigIssue, PathElem
from watti_watchman.config.meters import MeterConfig
from watti_watchman.config.model import WattiConfig
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.config.services import (
    ChargeControllerConfig,
    HassDynamicConfigConfig,
    VictronGridFeederConfig,
)
from watti_watchman.registry import CAPABILITY_TEXT, Capability, device_type


@dataclass(frozen=True)
class ResolvedConfig:
    """A validated configuration whose names all resolve; lookups by name never fail."""

    config: WattiConfig
    connections: dict[str, MqttConnectionConfig]
    meters: dict[str, MeterConfig]
    warnings: tuple[ConfigIssue, ...] = ()
    """Legitimate but suspicious settings: `check` prints them, `run` logs them."""

    def connection(self, name: str) -> MqttConnectionConfig:
        """The MQTT connection called `name`."""
        return self.connections[name]

    def meter(self, name: str) -> MeterConfig:
        """The meter called `name`."""
        return self.meters[name]


def resolve(config: WattiConfig, lines: dict[tuple[PathElem, ...], int] | None = None) -> ResolvedConfig:
    """Check names and capabilities; raises ConfigError listing every problem."""
    line_of = lines or {}
    issues: list[ConfigIssue] = []

    def issue(path: tuple[PathElem, ...], message: str) -> None:
        issues.append(ConfigIssue(path, message, line_of.get(path)))

    def check_unique(section: str, names: Sequence[str]) -> None:
        counts = Counter(names)
        for index, name in enumerate(names):
            if counts[name] > 1 and names.index(name) != index:
                issue((section, index, "name"), f"duplicate name {name!r}")

    check_unique("mqtt_connections", [c.name for c in config.mqtt_connections])
    check_unique("meters", [m.name for m in config.meters])
    check_unique("services", [s.name for s in config.services])
    connections = {c.name: c for c in config.mqtt_connections}
    meters = {m.name: m for m in config.meters}

    def check_connection(path: tuple[PathElem, ...], name: str) -> None:
        if name not in connections:
            known = ", ".join(sorted(connections)) or "none configured"
            issue(path, f"no mqtt connection named {name!r} (known: {known})")

    def check_meter(path: tuple[PathElem, ...], name: str, *needs: Capability) -> None:
        meter = meters.get(name)
        if meter is None:
            issue(path, f"no meter named {name!r}")
            return
        offered = device_type(meter.type).capabilities
        for capability in needs:
            if capability not in offered:
                issue(path, f"meter {name!r} ({meter.type}) does not {CAPABILITY_TEXT[capability]}")
                return

    for index, meter in enumerate(config.meters):
        connection = getattr(meter, "mqtt_connection_name", None)
        if isinstance(connection, str):
            check_connection(("meters", index, "mqtt_connection_name"), connection)
    controlled: dict[str, int] = {}
    for index, service in enumerate(config.services):
        path: tuple[PathElem, ...] = ("services", index)
        if hasattr(service, "mqtt_connection_name"):
            check_connection((*path, "mqtt_connection_name"), service.mqtt_connection_name)
        if isinstance(service, ChargeControllerConfig):
            check_meter((*path, "grid_meter_name"), service.grid_meter_name, "power")
            check_meter((*path, "battery_meter_name"), service.battery_meter_name, "power")
            check_meter(
                (*path, "battery_controller_name"),
                service.battery_controller_name,
                "setpoints",
                "battery_status",
            )
            if service.battery_status_meter_name is not None:
                check_meter(
                    (*path, "battery_status_meter_name"), service.battery_status_meter_name, "battery_status"
                )
            if service.battery_controller_name in controlled:
                issue(
                    (*path, "battery_controller_name"),
                    f"already controlled by services[{controlled[service.battery_controller_name]}]"
                    " (exactly one writer per battery)",
                )
            controlled.setdefault(service.battery_controller_name, index)
        elif isinstance(service, VictronGridFeederConfig):
            check_meter((*path, "grid_meter_name"), service.grid_meter_name, "grid_values")
        elif isinstance(service, HassDynamicConfigConfig) and not any(
            isinstance(s, ChargeControllerConfig) for s in config.services
        ):
            issue(path, "HassDynamicConfig needs a ChargeController to configure")
    if issues:
        raise ConfigError(issues)
    return ResolvedConfig(config=config, connections=connections, meters=meters)
