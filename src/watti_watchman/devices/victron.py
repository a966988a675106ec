"""Device type `Victron`: a GX device (Venus OS) over MQTT (power, battery status, ESS setpoints)."""

from watti_watchman.config.meters import VictronConfig
from watti_watchman.domain.quantities import Quantity
from watti_watchman.domain.victron import VALUES, ValueSpec
from watti_watchman.meters.base import Meter
from watti_watchman.registry import BuildContext, DeviceType, register

_ACRONYMS = {"soc": "SOC", "ac": "AC", "dc": "DC", "bms": "BMS", "l1": "L1", "l2": "L2", "l3": "L3"}


def _title(key: str) -> str:
    words = [_ACRONYMS.get(word, word) for word in key.split("_")]
    return " ".join([words[0][:1].upper() + words[0][1:], *words[1:]])


def _quantity(spec: ValueSpec) -> Quantity:
    code = spec.device_class is None
    return Quantity(
        key=spec.key,
        label=_title(spec.key),
        unit=spec.unit,
        device_class=spec.device_class,
        state_class=spec.state_class,
        metric=spec.metric,
        metric_help=spec.help,
        metric_labels=spec.labels,
        metric_scale=spec.scale,
        precision=None if code else 1,
        diagnostic=code,
        integer=code,
    )


QUANTITIES: tuple[Quantity, ...] = tuple(_quantity(spec) for spec in VALUES)
"""Every mapped Venus value as the generic table; unclassified codes are integer diagnostics."""


def _build(config: VictronConfig, context: BuildContext) -> Meter:
    from watti_watchman.meters.victron import VictronMeter  # noqa: PLC0415 - keep `check` light

    return VictronMeter(config, context.connection(config.mqtt_connection_name), clock=context.clock)


def _summary(config: VictronConfig) -> str:
    return f"Victron GX via {config.mqtt_connection_name}, portal id {config.id or 'discovered'}"


VICTRON = register(
    DeviceType(
        config=VictronConfig,
        build=_build,
        capabilities=frozenset({"power", "battery_status", "setpoints"}),
        label="Victron GX (Venus OS)",
        summary=_summary,
        manufacturer="Victron",
    )
)
