"""Device type `ModbusMeter`: a Modbus meter described by a register map (power, grid values, read once)."""

from watti_watchman.meters.base import Meter
from watti_watchman.meters.modbus_meter import ModbusMeterConfig
from watti_watchman.registry import BuildContext, DeviceReadError, DeviceType, TableReading, register


def _build(config: ModbusMeterConfig, context: BuildContext) -> Meter:
    from watti_watchman.meters.modbus_meter import ModbusMeter  # noqa: PLC0415 - keep `check` light

    return ModbusMeter(config, clock=context.clock)


async def _read_once(config: ModbusMeterConfig, context: BuildContext) -> TableReading:
    from watti_watchman.domain.meter_values import meter_table  # noqa: PLC0415
    from watti_watchman.meters.modbus_link import ModbusReadError  # noqa: PLC0415
    from watti_watchman.meters.modbus_meter import read_once  # noqa: PLC0415

    try:
        reading = await read_once(config)
    except ModbusReadError as error:
        where = f"{config.host}:{config.port} unit {config.unit} ({config.register_map.name})"
        raise DeviceReadError(f"cannot read {where}: {error}") from error
    return TableReading(meter_table(config.register_map.registers), reading.values)


def _summary(config: ModbusMeterConfig) -> str:
    inverted = ", inverted" if config.invert else ""
    where = f"{config.host}:{config.port} unit {config.unit} ({config.framing})"
    return f"{config.register_map.name} map at {where}, every {config.poll_interval_s:g} s{inverted}"


MODBUS_METER = register(
    DeviceType(
        config=ModbusMeterConfig,
        build=_build,
        capabilities=frozenset({"power", "grid_values"}),
        label="Modbus meter",
        summary=_summary,
        read_once=_read_once,
    )
)
