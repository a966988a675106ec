"""The whole `watti_watchman.yml` as one typed object."""

from pydantic import Field

from watti_watchman.config.base import ConfigModel
from watti_watchman.config.meters import MeterConfig
from watti_watchman.config.mqtt import HttpConfig, MqttConnectionConfig
from watti_watchman.config.services import ServiceConfig


class WattiConfig(ConfigModel):
    """Root of the configuration file (`registry.config_model()` narrows `meters` to the registered types)."""

    mqtt_connections: list[MqttConnectionConfig] = Field(default_factory=list)
    meters: list[MeterConfig] = Field(default_factory=list)
    services: list[ServiceConfig] = Field(default_factory=list)
    http: HttpConfig = Field(default_factory=HttpConfig)
