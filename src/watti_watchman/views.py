"""What the HTTP surface shows besides /metrics: /api/status and the status page's live feed.

Built from protocols and quantity tables only (no device types): a meter's current values come
from its table, the live view from the first controller and the `power`/`battery_status`
capabilities of the meters it uses.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from watti_watchman import __version__
from watti_watchman.clock import Clock
from watti_watchman.meters.base import BatteryMeter, Component, Meter, PowerMeter, Source
from watti_watchman.services.charge_controller import ChargeController


def current_values(meter: Meter) -> dict[str, float | int] | None:
    """The meter's fresh values as its table shows them (integers for codes), or None when stale."""
    newest = meter.values.snapshot()
    if newest is None or not meter.is_fresh():
        return None
    return {q.key: q.shown(newest.value[q.key]) for q in meter.quantities if q.key in newest.value}


class StatusViews:
    """/api/status (every component) and /api/live (the first controller's view of the plant)."""

    def __init__(
        self,
        meters: Mapping[str, Meter],
        services: Sequence[Component],
        controllers: Sequence[ChargeController],
        *,
        clock: Clock,
        dry_run: bool,
    ) -> None:
        self.meters = meters
        self.services = services
        self.controllers = controllers
        self._clock = clock
        self.dry_run = dry_run

    def status(self) -> Mapping[str, Any]:
        """A JSON-able snapshot of every component, for /api/status and the status page."""
        return {
            "version": __version__,
            "dry_run": self.dry_run,
            "meters": {
                name: {**meter.status(), "values": current_values(meter) or {}}
                for name, meter in self.meters.items()
            },
            "services": {service.name: dict(service.status()) for service in self.services},
        }

    def _power_view(self, name: str) -> dict[str, float] | None:
        meter = self.meters.get(name)
        stamped = meter.power.snapshot() if isinstance(meter, PowerMeter) else None
        if stamped is None or meter is None or not meter.is_fresh():
            return None
        sample = stamped.value
        return {"l1": sample.l1_w, "l2": sample.l2_w, "l3": sample.l3_w, "total": sample.total_w}

    def live(self) -> Mapping[str, Any]:
        """The status page's feed: the first controller's view of the plant, flat and small."""
        now_s = self._clock()
        meters = {
            name: {"fresh": meter.is_fresh(), "age_s": _age_s(meter, now_s)}
            for name, meter in self.meters.items()
        }
        result: dict[str, Any] = {
            "t": now_s,
            "meters": meters,
            "grid": None,
            "battery": None,
            "setpoints": None,
            "soc": None,
            "limits": None,
            "reason": None,
            "target_w": None,
            "mode": None,
        }
        controller = next(iter(self.controllers), None)
        if controller is None:
            return result
        config = controller.config
        status = controller.status()
        limits = status["limits"] or {}
        battery_meter = self.meters[config.battery_controller_name]
        stamped = battery_meter.battery.snapshot() if isinstance(battery_meter, BatteryMeter) else None
        battery_status = stamped.value if stamped and battery_meter.is_fresh() else None
        result.update(
            grid=self._power_view(config.grid_meter_name),
            battery=self._power_view(config.battery_meter_name),
            setpoints=status["setpoints_w"] or None,
            soc=None if battery_status is None else battery_status.soc_percent,
            limits={"charge_w": limits.get("max_charge_w"), "discharge_w": limits.get("max_discharge_w")},
            reason=status["reason"],
            target_w=status["target_w"],
            mode=status["mode"],
        )
        return result


def _age_s(meter: Source, now_s: float) -> float | None:
    """Seconds since the meter's newest power sample, or None."""
    newest = meter.power.snapshot() if isinstance(meter, PowerMeter) else None
    return None if newest is None else now_s - newest.at_s
