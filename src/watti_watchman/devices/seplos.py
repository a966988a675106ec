"""Device type `Seplos`: a Seplos V2 BMS via an RS485-TCP bridge (battery status: SOC and BMS limits)."""

from watti_watchman.meters.base import Meter
from watti_watchman.meters.seplos import SeplosConfig
from watti_watchman.registry import BuildContext, DeviceType, register


def _build(config: SeplosConfig, context: BuildContext) -> Meter:
    from watti_watchman.meters.seplos import SeplosMeter  # noqa: PLC0415 - keep `check` light

    return SeplosMeter(config, clock=context.clock)


def _summary(config: SeplosConfig) -> str:
    limits = f"{config.max_charge_current:g} A charge / {config.max_discharge_current:g} A discharge"
    return f"Seplos BMS at {config.host}:{config.port} address {config.address}, limits {limits}"


SEPLOS = register(
    DeviceType(
        config=SeplosConfig,
        build=_build,
        capabilities=frozenset({"battery_status"}),
        label="Seplos BMS",
        summary=_summary,
        manufacturer="Seplos",
    )
)
