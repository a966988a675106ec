"""The capabilities meters offer to services (structural protocols)."""

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from prometheus_client.core import Metric

from watti_watchman.domain.readings import BatteryStatus, PhaseSetpoints, PowerSample
from watti_watchman.latest import Latest


@runtime_checkable
class Component(Protocol):
    """Something the application runs: a meter or a service."""

    name: str

    async def run(self) -> None:
        """Run until cancelled; reconnects internally, never returns on transient errors."""
        ...

    def collect_metrics(self) -> Iterable[Metric]:
        """Current state as Prometheus families, from memory only."""
        ...

    def status(self) -> Mapping[str, Any]:
        """JSON-able summary for /api/status and the status page."""
        ...


class Meter(Component, Protocol):
    """A meter: its freshness decides /healthz."""

    def is_fresh(self) -> bool:
        """True when the newest reading is recent enough to act on."""
        ...


class PowerMeter(Meter, Protocol):
    """A meter delivering per-phase real power samples."""

    power: Latest[PowerSample]


class BatteryController(Meter, Protocol):
    """A battery inverter that takes per-phase setpoints (ESS mode 3)."""

    battery: Latest[BatteryStatus]

    def ready_for_setpoints(self) -> bool:
        """True once setpoints can be written (connected, inverter instance known)."""
        ...

    async def write_setpoints(self, setpoints: PhaseSetpoints) -> None:
        """Write integer W per phase; raises ConnectionError when it cannot be sent."""
        ...
