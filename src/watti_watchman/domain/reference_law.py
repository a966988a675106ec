"""The original project's law, kept as a benchmark baseline: S = B − G + T within the SOC tables.

No sample alignment, no failsafe, no trim, no BMS or inverter limits: whatever samples are newest
go in. Not used for control.
"""

from watti_watchman.domain.limits import SocTable
from watti_watchman.domain.readings import PHASES, PhaseSetpoints, PowerSample


def reference_setpoints(
    grid: PowerSample,
    battery: PowerSample,
    soc_percent: float,
    target_w: float,
    charge_table: SocTable,
    discharge_table: SocTable,
) -> PhaseSetpoints:
    """Total command B − G + T (W) clamped by the SOC tables, split evenly over L1..L3 (integer W)."""
    command_w = battery.total_w - grid.total_w + target_w
    command_w = min(command_w, charge_table.charge_limit_w(soc_percent))
    command_w = max(command_w, -discharge_table.discharge_limit_w(soc_percent))
    per_phase_w = int(command_w / len(PHASES))
    return dict.fromkeys(PHASES, per_phase_w)
