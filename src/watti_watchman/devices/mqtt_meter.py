"""Device type `MqttMeter`: power and optional grid values from MQTT payloads (topic, JSON path, scale)."""

from watti_watchman.meters.base import Meter
from watti_watchman.meters.mqtt_meter import MqttMeterConfig
from watti_watchman.registry import BuildContext, DeviceReadError, DeviceType, TableReading, register


def _build(config: MqttMeterConfig, context: BuildContext) -> Meter:
    from watti_watchman.meters.mqtt_meter import MqttMeter  # noqa: PLC0415 - keep `check` light

    return MqttMeter(config, context.connection(config.mqtt_connection_name), clock=context.clock)


async def _read_once(config: MqttMeterConfig, context: BuildContext) -> TableReading:
    from watti_watchman.domain.meter_values import meter_table  # noqa: PLC0415
    from watti_watchman.meters.mqtt_meter import MqttReadError, read_once  # noqa: PLC0415

    try:
        reading = await read_once(config, context.connection(config.mqtt_connection_name))
    except MqttReadError as error:
        raise DeviceReadError(f"cannot read via {config.mqtt_connection_name}: {error}") from error
    return TableReading(meter_table(config.values), reading.values)


def _summary(config: MqttMeterConfig) -> str:
    topics = sorted({value.topic for value in config.values.values()})
    keys = ", ".join(sorted(config.values))
    return f"MQTT meter via {config.mqtt_connection_name}: {keys} from {', '.join(topics)}"


MQTT_METER = register(
    DeviceType(
        config=MqttMeterConfig,
        build=_build,
        capabilities=frozenset({"power", "grid_values"}),
        label="MQTT meter",
        summary=_summary,
        read_once=_read_once,
    )
)
