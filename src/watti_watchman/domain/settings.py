"""Runtime-changeable controller settings (target and mode), validated on every change."""

import math
from dataclasses import dataclass, replace
from typing import Literal

Mode = Literal["both", "charge", "discharge"]
MODES: tuple[Mode, ...] = ("both", "charge", "discharge")


class SettingRejectedError(ValueError):
    """A requested runtime setting is out of range or malformed."""


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """Target grid power (W, + = import) and mode, as currently in force."""

    target_w: float
    mode: Mode


@dataclass(frozen=True, slots=True)
class TargetRange:
    """Allowed range and step of the target (W) offered to Home Assistant."""

    min_w: float = -5000.0
    max_w: float = 5000.0
    step_w: float = 10.0


class SettingsHolder:
    """The single mutable home of one controller's runtime settings.

    Writers (Home Assistant) call `set_target`/`set_mode`; the control task reads `current`
    once per sample, so a change takes effect on the next sample.
    """

    def __init__(self, initial: RuntimeSettings, target_range: TargetRange | None = None) -> None:
        self.current = initial
        self.target_range = target_range or TargetRange()

    def set_target(self, value: object) -> RuntimeSettings:
        """Validate and apply a new target (W), snapped to the range's step; raises SettingRejectedError."""
        try:
            target = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError) as error:
            raise SettingRejectedError(f"target {value!r} is not a number") from error
        bounds = self.target_range
        if not math.isfinite(target) or not bounds.min_w <= target <= bounds.max_w:
            raise SettingRejectedError(f"target {value!r} outside {bounds.min_w:g}..{bounds.max_w:g} W")
        snapped = min(max(round(target / bounds.step_w) * bounds.step_w, bounds.min_w), bounds.max_w)
        self.current = replace(self.current, target_w=float(snapped))
        return self.current

    def set_mode(self, value: object) -> RuntimeSettings:
        """Validate and apply a new mode; raises SettingRejectedError."""
        if value not in MODES:
            raise SettingRejectedError(f"mode {value!r} not one of {', '.join(MODES)}")
        self.current = replace(self.current, mode=value)
        return self.current
