"""The capabilities meters offer to services: structural, `runtime_checkable` protocols.

A device type declares its capabilities once in the registry; every built meter is checked
against these protocols, and services ask for a protocol, never for a concrete type.
"""

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from prometheus_client.core import Metric

from watti_watchman.domain.quantities import Quantity, QuantityValues
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


@runtime_checkable
class Source(Component, Protocol):
    """A component delivering readings; its freshness decides /healthz."""

    def is_fresh(self) -> bool:
        """True when the newest reading is recent enough to act on."""
        ...


@runtime_checkable
class Meter(Source, Protocol):
    """A configured device: its quantity table and current values."""

    quantities: tuple[Quantity, ...]
    """The one description of every value `values` may hold (fixed for the meter's life)."""
    values: Latest[QuantityValues]
    """Current values keyed by `Quantity.key`, published whenever the device delivers."""


@runtime_checkable
class PowerMeter(Source, Protocol):
    """Capability `power`: per-phase real power samples."""

    power: Latest[PowerSample]


@runtime_checkable
class GridMeter(Meter, Protocol):
    """Capability `grid_values`: a table with Venus grid paths (power per phase at least)."""


@runtime_checkable
class BatteryMeter(Source, Protocol):
    """Capability `battery_status`: SOC and BMS limits of a battery system."""

    battery: Latest[BatteryStatus]


@runtime_checkable
class SetpointWriter(Source, Protocol):
    """Capability `setpoints`: a battery inverter that takes per-phase setpoints (ESS mode 3)."""

    def ready_for_setpoints(self) -> bool:
        """True once setpoints can be written (connected, inverter instance known)."""
        ...

    async def write_setpoints(self, setpoints: PhaseSetpoints) -> None:
        """Write integer W per phase; raises ConnectionError when it cannot be sent."""
        ...


@runtime_checkable
class BatteryController(BatteryMeter, SetpointWriter, Protocol):
    """What a ChargeController steers: battery status plus setpoints."""
