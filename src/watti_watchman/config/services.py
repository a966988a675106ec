"""Configuration of services (`services[]`), one model per `type`."""

from typing import Annotated, Literal

from pydantic import Field

from watti_watchman.config.base import ConfigModel
from watti_watchman.config.mqtt import Name
from watti_watchman.domain.limits import DEFAULT_CHARGE_LIMITS_W, DEFAULT_DISCHARGE_LIMITS_W, BmsPolicy
from watti_watchman.domain.tuning import TUNING

SocKey = Annotated[str, Field(pattern=r"^(100|[1-9]?[0-9])(\.[0-9]+)?$")]
LimitTable = dict[SocKey, Annotated[float, Field(ge=0)]]
Phase = Literal["L1", "L2", "L3"]
ALL_PHASES: tuple[Phase, ...] = ("L1", "L2", "L3")

DEFAULT_CHARGE_LIMITS: dict[str, float] = {f"{soc:g}": w for soc, w in DEFAULT_CHARGE_LIMITS_W.items()}
DEFAULT_DISCHARGE_LIMITS: dict[str, float] = {f"{soc:g}": w for soc, w in DEFAULT_DISCHARGE_LIMITS_W.items()}


class ChargeControllerConfig(ConfigModel):
    """The zero feed-in control loop: grid meter + battery meter → battery setpoints."""

    type: Literal["ChargeController"]
    name: Name = "charge_controller"
    grid_meter_name: Name
    battery_meter_name: Name
    battery_controller_name: Name
    battery_status_meter_name: Name | None = Field(
        default=None,
        description="Meter delivering SOC and BMS limits (e.g. a Seplos BMS); default: battery controller.",
    )
    target_setpoint: float = Field(default=0, ge=-50000, le=50000, description="Grid target (W, + = import).")
    mode: Literal["both", "charge", "discharge"] = "both"
    charge_limits: LimitTable = Field(
        default_factory=lambda: dict(DEFAULT_CHARGE_LIMITS),
        description="SOC % → max charge W; the entry with the largest key <= SOC applies.",
    )
    discharge_limits: LimitTable = Field(
        default_factory=lambda: dict(DEFAULT_DISCHARGE_LIMITS),
        description="SOC % → max discharge W; the entry with the smallest key >= SOC applies.",
    )
    bms_limits: BmsPolicy = Field(
        default="auto",
        description=(
            "BMS charge/discharge limits from the GX: auto = enforced while reported, SOC tables and"
            " inverter maxima govern if never reported, no discharge if they vanish; required = no"
            " discharge without them; ignore = never used."
        ),
    )
    regulation: Literal["total", "per_phase"] = "total"
    phases: list[Phase] = Field(
        default_factory=lambda: list(ALL_PHASES),
        min_length=1,
        max_length=3,
        description="Phases the battery inverter serves.",
    )
    max_charge_power: float = Field(default=10000, ge=0, description="Inverter maximum charge (W).")
    max_discharge_power: float = Field(default=10000, ge=0, description="Inverter maximum discharge (W).")
    deadband: float = Field(
        default=10,
        ge=0,
        description="Command changes toward export smaller than this are skipped (W); toward import never.",
    )
    resend_interval: float = Field(
        default=1.0, gt=0, le=2, description="Re-send period for unchanged setpoints (s)."
    )
    max_age: float = Field(default=1.0, gt=0, le=10, description="Inputs older than this are stale (s).")
    import_bias: float = Field(
        default=0, ge=0, le=5000, description="Added to the target to stay on the import side (W)."
    )
    export_slew_limit: float | None = Field(
        default=None, gt=0, description="Max command change toward export (W/s); none = unlimited."
    )
    trim_gain: float = Field(default=0.2, ge=0, le=5, description="Integral trim gain (1/s); 0 disables.")
    trim_limit: float = Field(default=300, ge=0, description="Largest trim correction (W).")
    response_time: float = Field(
        default=TUNING.response_s,
        gt=0,
        le=5,
        description="Longest time from a setpoint write to the battery meter showing it (s).",
    )


class VictronGridFeederConfig(ConfigModel):
    """Feeds a Janitza grid meter into Venus OS as a virtual grid meter (dbus-mqtt-devices)."""

    type: Literal["VictronGridFeeder"]
    name: Name = "victron_grid_feeder"
    mqtt_connection_name: Name
    grid_meter_name: Name
    write_prefix: str | None = Field(
        default=None, description="W/<portalId>/grid/<instance>: skip registration and write here."
    )
    client_id: str = Field(default="watti_watchman_grid", pattern=r"^[A-Za-z0-9_]+$")
    label: str = Field(default="grid", pattern=r"^[A-Za-z0-9_]+$")
    power_interval: float = Field(default=0.2, ge=0.05, le=60, description="Power write period (s).")
    slow_interval: float = Field(
        default=1.0, ge=0.2, le=600, description="Voltage/current/energy write period (s)."
    )


class HassFeederConfig(ConfigModel):
    """Home Assistant MQTT discovery and states for every meter and the controller."""

    type: Literal["HassFeeder"]
    name: Name = "hass_feeder"
    mqtt_connection_name: Name
    update_interval: float = Field(default=5, gt=0, le=3600, description="State publish period (s).")
    discovery_prefix: str = "homeassistant"
    base_topic: str = "watti_watchman"


class HassDynamicConfigConfig(ConfigModel):
    """Runtime settings (controller target and mode) as Home Assistant number/select entities."""

    type: Literal["HassDynamicConfig"]
    name: Name = "hass_dynamic_config"
    mqtt_connection_name: Name
    persistent: bool = Field(default=False, description="Retain settings and restore them at start.")
    discovery_prefix: str = "homeassistant"
    base_topic: str = "watti_watchman"


ServiceConfig = Annotated[
    ChargeControllerConfig | VictronGridFeederConfig | HassFeederConfig | HassDynamicConfigConfig,
    Field(discriminator="type"),
]
