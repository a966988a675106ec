"""Configuration of one MQTT broker connection (`mqtt_connections[]`)."""

from typing import Annotated

from pydantic import Field

from watti_watchman.config.base import ConfigModel

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=64)]
Port = Annotated[int, Field(ge=1, le=65535)]


class TlsConfig(ConfigModel):
    """TLS for an MQTT connection."""

    enabled: bool = Field(default=True, description="Use TLS (typically port 8883).")
    ca_file: str | None = Field(default=None, description="CA bundle (PEM); system CAs if omitted.")
    insecure: bool = Field(default=False, description="Skip host name verification.")


class MqttConnectionConfig(ConfigModel):
    """One MQTT broker; services and meters refer to it by `name`."""

    name: Name
    host: str = Field(min_length=1, description="Broker host name or address.")
    port: Port = 1883
    username: str | None = None
    password: str | None = Field(default=None, description="Use ${ENV_VAR} to keep it out of the file.")
    tls: bool | TlsConfig = Field(default=False, description="true/false or a TLS block.")
    client_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="MQTT client id prefix; each component appends its own suffix.",
    )
    keepalive: int = Field(default=30, ge=5, le=600, description="MQTT keepalive (s).")

    def tls_config(self) -> TlsConfig | None:
        """The effective TLS settings, or None for plain TCP."""
        if self.tls is True:
            return TlsConfig()
        if isinstance(self.tls, TlsConfig) and self.tls.enabled:
            return self.tls
        return None


class HttpConfig(ConfigModel):
    """The HTTP server for /metrics, /healthz and the status page."""

    host: str = Field(
        default="127.0.0.1",
        description="Listen address; 0.0.0.0 or :: opts in to the LAN (the environment variable"
        " WATTI_HTTP_HOST sets it when this key is absent).",
    )
    port: Annotated[int, Field(ge=0, le=65535)] = 9292
