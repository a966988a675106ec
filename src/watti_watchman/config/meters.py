"""Configuration of meters (`meters[]`): the shared base and the built-in types' models.

Which models make up the `meters[]` union is decided by the device registry
(`watti_watchman.registry`), not here.
"""

from typing import Literal

from pydantic import Field

from watti_watchman.config.base import ConfigModel
from watti_watchman.config.mqtt import Name, Port


class MeterConfig(ConfigModel):
    """What every meter's configuration has: its `type` (the registry key), name and display name."""

    type: str
    name: Name
    display_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Device name in Home Assistant; default: role and name, e.g. 'Grid meter (hak)'.",
    )


class JanitzaConfig(MeterConfig):
    """A Janitza UMG power meter read over Modbus TCP (or RTU frames over TCP)."""

    type: Literal["Janitza"]
    host: str = Field(min_length=1)
    port: Port = 502
    unit: int = Field(default=1, ge=0, le=247, description="Modbus unit id (slave address).")
    framing: Literal["tcp", "rtu_over_tcp"] = Field(
        default="tcp", description="tcp: Modbus TCP / gateway mode; rtu_over_tcp: transparent bridge."
    )
    timeout: float = Field(default=0.5, gt=0, le=10, description="Connect and read timeout (s).")
    invert: bool = Field(default=False, description="Negate powers and swap import/export (reversed CTs).")
    interval: float = Field(
        default=0.2, gt=0, le=60, description="Meter refresh period (s); the poller aligns to it."
    )
    max_age: float = Field(default=1.0, gt=0, le=60, description="A reading older than this is stale (s).")
    start_address: int = Field(default=19000, ge=0, le=65535, description="First register of the block.")


class VictronConfig(MeterConfig):
    """A Victron GX device (Venus OS) reached over MQTT: readings plus ESS mode-3 setpoints."""

    type: Literal["Victron"]
    mqtt_connection_name: Name
    id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9]+$",
        description="Portal id (VRM id); omitted: discovered when exactly one GX answers.",
    )
    soc_source: Literal["auto", "system", "battery", "vebus"] = Field(
        default="auto", description="auto prefers system/0/Dc/Battery/Soc, then battery, then vebus."
    )
    vebus_instance: int | None = Field(default=None, ge=0, description="Discovered when omitted.")
    battery_instance: int | None = Field(default=None, ge=0, description="Discovered when omitted.")
    keepalive: Literal["auto", "flashmq", "legacy"] = Field(
        default="auto", description="Keepalive dialect: FlashMQ options or the old dbus-mqtt bridge."
    )
    max_age: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="GX silent (no heartbeat, no probe reply) for longer: values stale (s).",
    )
