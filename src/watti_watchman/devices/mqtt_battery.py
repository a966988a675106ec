"""Device type `MqttBattery`: a battery inverter commanded over MQTT (setpoints; status, power: feedback)."""

from watti_watchman.meters.base import Meter
from watti_watchman.meters.mqtt_battery import MqttBatteryConfig
from watti_watchman.registry import BuildContext, DeviceType, register


def _build(config: MqttBatteryConfig, context: BuildContext) -> Meter:
    from watti_watchman.meters.mqtt_battery import MqttBattery  # noqa: PLC0415 - keep `check` light

    return MqttBattery(config, context.connection(config.mqtt_connection_name), clock=context.clock)


def _summary(config: MqttBatteryConfig) -> str:
    feedback = f", feedback {', '.join(sorted(config.feedback))}" if config.feedback else ", no feedback"
    return f"MQTT battery via {config.mqtt_connection_name}: setpoints to {config.setpoint_topic}{feedback}"


MQTT_BATTERY = register(
    DeviceType(
        config=MqttBatteryConfig,
        build=_build,
        capabilities=frozenset({"setpoints", "battery_status", "power"}),
        label="MQTT battery inverter",
        summary=_summary,
    )
)
