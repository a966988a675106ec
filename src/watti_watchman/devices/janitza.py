"""Device type `Janitza`: a Janitza UMG meter over Modbus TCP (power, grid values, one-shot read)."""

from watti_watchman.config.meters import JanitzaConfig
from watti_watchman.domain.janitza import JANITZA_QUANTITIES, JanitzaQuantity, JanitzaReading
from watti_watchman.domain.quantities import Quantity, QuantityValues
from watti_watchman.meters.base import Meter
from watti_watchman.registry import BuildContext, DeviceReadError, DeviceType, TableReading, register

_PRECISION = {"V": 1, "A": 2, "W": 1, "VA": 1, "var": 1, "Hz": 2, "Wh": 0}


def _quantity(row: JanitzaQuantity) -> Quantity:
    return Quantity(
        key=row.key,
        label=row.label,
        unit=row.unit or None,
        device_class=row.device_class,
        state_class=row.state_class,
        metric=row.metric,
        metric_type=row.metric_type,
        metric_help=row.metric_help,
        metric_labels=() if row.phase is None else (("phase", row.phase),),
        metric_scale=row.metric_scale,
        venus_path=row.venus_path,
        venus_scale=row.venus_scale,
        precision=0 if row.quantity == "rotation_field" else _PRECISION.get(row.unit, 3),
        integer=row.quantity == "rotation_field",
    )


QUANTITIES: tuple[Quantity, ...] = tuple(_quantity(row) for row in JANITZA_QUANTITIES)
"""The 39 values of the block in register order, as the generic table."""


def quantity_values(reading: JanitzaReading) -> QuantityValues:
    """A reading's oriented values keyed by table key."""
    return dict(zip((q.key for q in QUANTITIES), reading.oriented_values, strict=True))


def _build(config: JanitzaConfig, context: BuildContext) -> Meter:
    from watti_watchman.meters.janitza import JanitzaMeter  # noqa: PLC0415 - keep `check` light

    return JanitzaMeter(config, clock=context.clock)


async def _read_once(config: JanitzaConfig, context: BuildContext) -> TableReading:
    from watti_watchman.meters.janitza import JanitzaReadError, read_meter  # noqa: PLC0415

    try:
        reading = await read_meter(config)
    except JanitzaReadError as error:
        where = f"{config.host}:{config.port} unit {config.unit}"
        raise DeviceReadError(f"cannot read {where}: {error}") from error
    return TableReading(QUANTITIES, quantity_values(reading))


def _summary(config: JanitzaConfig) -> str:
    inverted = ", inverted" if config.invert else ""
    return f"Janitza at {config.host}:{config.port} unit {config.unit} ({config.framing}){inverted}"


JANITZA = register(
    DeviceType(
        config=JanitzaConfig,
        build=_build,
        capabilities=frozenset({"power", "grid_values"}),
        label="Janitza UMG",
        summary=_summary,
        read_once=_read_once,
        manufacturer="Janitza",
    )
)
