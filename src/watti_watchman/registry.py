"""The device registry: every meter type is one module that registers itself by its config `type`.

A `DeviceType` carries the type's config model, a factory, the capabilities it offers (declared
once, checked structurally against the protocols in `meters/base.py` whenever a meter is built),
a one-line summary for `check` and, optionally, a one-shot read for `read-meter`. The config
union (`meters[]` in the schema and the models), name resolution, `check`, `read-meter` and the
application all ask the registry; the built-in types live in `watti_watchman.devices`, every
module of which is imported on first use.
"""

import importlib
import pkgutil
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import Field, create_model

from watti_watchman.clock import Clock
from watti_watchman.config.meters import MeterConfig
from watti_watchman.config.model import WattiConfig
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.domain.quantities import Quantity, QuantityValues
from watti_watchman.meters.base import (
    BatteryMeter,
    GridMeter,
    Meter,
    PowerMeter,
    SetpointWriter,
)

Capability = Literal["power", "grid_values", "battery_status", "setpoints"]
CAPABILITY_PROTOCOLS: Mapping[Capability, type] = {
    "power": PowerMeter,
    "grid_values": GridMeter,
    "battery_status": BatteryMeter,
    "setpoints": SetpointWriter,
}
"""The protocol a meter must satisfy for each capability it declares."""
CAPABILITY_TEXT: Mapping[Capability, str] = {
    "power": "deliver power readings",
    "grid_values": "deliver grid meter values (a table with Venus grid paths)",
    "battery_status": "report battery status (SOC, BMS limits)",
    "setpoints": "accept battery setpoints",
}

C = TypeVar("C", bound=MeterConfig)
ROLE_SUFFIXES = ("_meter_name", "_controller_name")
"""Service fields naming a meter; the field gives the meter its role (`grid_meter_name` → Grid meter)."""


class DeviceReadError(Exception):
    """A one-shot read failed; the message says where and why (for humans)."""


@dataclass(frozen=True)
class BuildContext:
    """What a factory may use besides its own config: the clock and the MQTT connections by name."""

    clock: Clock
    connections: Mapping[str, MqttConnectionConfig]

    def connection(self, name: str) -> MqttConnectionConfig:
        """The MQTT connection called `name` (resolution guarantees it exists)."""
        return self.connections[name]


@dataclass(frozen=True)
class TableReading:
    """One reading taken once: the device's quantity table and its values."""

    quantities: Sequence[Quantity]
    values: QuantityValues


@dataclass(frozen=True)
class DeviceType(Generic[C]):
    """One meter type: config model, factory, capabilities and how `check`/`read-meter` show it."""

    config: type[C]
    """Its config model; `type: Literal["<Name>"]` is the registry key."""
    build: Callable[[C, BuildContext], Meter]
    capabilities: frozenset[Capability]
    label: str
    """What it is in a few words, e.g. `Janitza meter` (HA model and default device name)."""
    summary: Callable[[C], str]
    """One line for `check`, e.g. `Janitza at 10.0.0.2:502 unit 2 (tcp)`."""
    read_once: Callable[[C, BuildContext], Awaitable[TableReading]] | None = None
    """Connect, read once, disconnect (for `read-meter`); raises DeviceReadError."""
    manufacturer: str = "WattiWatchman"
    name: str = field(init=False)

    def __post_init__(self) -> None:
        """Take the registry key from the config model's `type` literal."""
        annotation = self.config.model_fields["type"].annotation
        choices: tuple[Any, ...] = getattr(annotation, "__args__", ())
        if getattr(annotation, "__origin__", None) is not Literal or len(choices) != 1:
            raise TypeError(f"{self.config.__name__}.type must be Literal['<type name>']")
        unknown = set(self.capabilities) - set(CAPABILITY_PROTOCOLS)
        if unknown:
            raise TypeError(f"{self.config.__name__}: unknown capabilities {sorted(unknown)}")
        object.__setattr__(self, "name", choices[0])

    def create(self, config: MeterConfig, context: BuildContext) -> Meter:
        """Build the meter for `config`; TypeError unless it offers every declared capability."""
        if not isinstance(config, self.config):
            raise TypeError(f"{config.name}: not a {self.config.__name__}")
        meter = self.build(config, context)
        missing = missing_capabilities(meter, self.capabilities)
        if missing:
            raise TypeError(f"{self.name} meter {config.name!r} lacks declared capabilities {missing}")
        return meter


_TYPES: dict[str, DeviceType[Any]] = {}
_generation = 0


def register(device_type: DeviceType[Any]) -> DeviceType[Any]:
    """Add a device type; ValueError when its name is taken. Returns it (for module constants)."""
    global _generation  # noqa: PLW0603 - the registry is process-wide by design
    if device_type.name in _TYPES:
        raise ValueError(f"device type {device_type.name!r} is already registered")
    _TYPES[device_type.name] = device_type
    _generation += 1
    return device_type


def unregister(name: str) -> None:
    """Remove a device type (tests registering toy types clean up with this)."""
    global _generation  # noqa: PLW0603
    del _TYPES[name]
    _generation += 1


@cache
def _load_builtin() -> None:
    """Import every module of `watti_watchman.devices`: each registers its type."""
    from watti_watchman import devices  # noqa: PLC0415 - the modules import this one

    for module in pkgutil.iter_modules(devices.__path__):
        importlib.import_module(f"{devices.__name__}.{module.name}")


def device_types() -> Mapping[str, DeviceType[Any]]:
    """Every registered type by name, sorted by name (whatever the import order registered first)."""
    _load_builtin()
    return dict(sorted(_TYPES.items()))


def device_type(name: str) -> DeviceType[Any]:
    """The registered type called `name`; KeyError when unknown."""
    return device_types()[name]


@dataclass(frozen=True)
class DeviceLabel:
    """How a meter is shown as a device (Home Assistant): readable name, model, manufacturer."""

    name: str
    model: str
    manufacturer: str


def device_labels(config: WattiConfig) -> dict[str, DeviceLabel]:
    """Per meter: its `display_name`, else role and name (e.g. `Grid meter (hak)`), and its type's model.

    The role is the first service field naming the meter; a meter no service uses is named after
    its type's label.
    """
    roles: dict[str, str] = {}
    for service in config.services:
        for field_name, value in service:
            if field_name.endswith(ROLE_SUFFIXES) and isinstance(value, str):
                roles.setdefault(value, field_name.removesuffix("_name").replace("_", " ").capitalize())
    labels = {}
    for meter in config.meters:
        kind = device_type(meter.type)
        name = meter.display_name or f"{roles.get(meter.name, kind.label)} ({meter.name})"
        labels[meter.name] = DeviceLabel(name, kind.label, kind.manufacturer)
    return labels


def missing_capabilities(meter: object, capabilities: Iterable[Capability]) -> list[Capability]:
    """Declared capabilities `meter` does not satisfy structurally (empty when it offers all)."""
    missing = [c for c in sorted(capabilities) if not isinstance(meter, CAPABILITY_PROTOCOLS[c])]
    if not isinstance(meter, Meter):
        return ["table", *missing]  # type: ignore[list-item]
    if "grid_values" in capabilities and not any(q.venus_path for q in meter.quantities):
        missing.append("grid_values")
    return missing


def config_model() -> type[WattiConfig]:
    """The root config model whose `meters[]` is the union of every registered type's model."""
    types = device_types()
    return _config_model(_generation, tuple(t.config for t in types.values()))


@cache
def _config_model(generation: int, models: tuple[type[MeterConfig], ...]) -> type[WattiConfig]:
    union: Any = Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007 - built at runtime
    model: type[WattiConfig] = create_model(
        "WattiConfig",
        __base__=WattiConfig,
        __module__=WattiConfig.__module__,
        meters=(list[union], Field(default_factory=list)),
    )
    model.__doc__ = WattiConfig.__doc__
    return model
