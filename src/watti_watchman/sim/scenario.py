"""Load/PV scenarios from YAML: per-phase household load and PV power as functions of time."""

import math
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from watti_watchman.domain.readings import PHASES, Phase
from watti_watchman.sim.plant import IDEAL, Installation

PhaseTriple = tuple[float, float, float]
NOISE_SLOT_S = 0.05


@dataclass(frozen=True)
class Step:
    """A load switched on at `at_s` for `duration_s` (None = forever) on some phases (W each)."""

    at_s: float
    load_w: float
    phases: tuple[Phase, ...]
    duration_s: float | None = None

    def value_w(self, t_s: float) -> float:
        """The step's power at `t_s` (W)."""
        end = math.inf if self.duration_s is None else self.at_s + self.duration_s
        return self.load_w if self.at_s <= t_s < end else 0.0


@dataclass(frozen=True)
class Ramp:
    """PV power ramping linearly from `from_w` to `to_w` between `from_s` and `to_s` (W per phase)."""

    from_s: float
    to_s: float
    from_w: float
    to_w: float
    phases: tuple[Phase, ...]

    def value_w(self, t_s: float) -> float | None:
        """The ramp's PV power at `t_s`, or None outside its span (W)."""
        if t_s < self.from_s or t_s >= self.to_s:
            return None
        share = (t_s - self.from_s) / (self.to_s - self.from_s)
        return self.from_w + (self.to_w - self.from_w) * share


@dataclass(frozen=True)
class Cycle:
    """A periodic load (fridge): on for `on_s`, off for `off_s`, starting at `start_s` (W)."""

    load_w: float
    on_s: float
    off_s: float
    phases: tuple[Phase, ...]
    start_s: float = 0.0

    def value_w(self, t_s: float) -> float:
        """The cycling load's power at `t_s` (W)."""
        if t_s < self.start_s:
            return 0.0
        return self.load_w if (t_s - self.start_s) % (self.on_s + self.off_s) < self.on_s else 0.0


@dataclass(frozen=True)
class Scenario:
    """Household load and PV per phase over time, the installation and the battery's starting point."""

    name: str
    description: str
    duration_s: float
    base_load_w: PhaseTriple
    base_pv_w: PhaseTriple
    steps: tuple[Step, ...] = ()
    pv_ramps: tuple[Ramp, ...] = ()
    cycles: tuple[Cycle, ...] = ()
    noise_w: float = 0.0
    seed: int = 1
    initial_soc_percent: float = 50.0
    loop: bool = False
    installation: Installation = IDEAL
    _noise: tuple[PhaseTriple, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.noise_w > 0 and not self._noise:
            rng = random.Random(self.seed)
            slots = int(self.duration_s / NOISE_SLOT_S) + 2
            noise = tuple(
                (rng.gauss(0, self.noise_w), rng.gauss(0, self.noise_w), rng.gauss(0, self.noise_w))
                for _ in range(slots)
            )
            object.__setattr__(self, "_noise", noise)

    def _time(self, t_s: float) -> float:
        return t_s % self.duration_s if self.loop else t_s

    def load_w(self, t_s: float) -> PhaseTriple:
        """Household consumption per phase at `t_s` (W, >= 0)."""
        t = self._time(t_s)
        values = list(self.base_load_w)
        for index, phase in enumerate(PHASES):
            values[index] += sum(s.value_w(t) for s in self.steps if phase in s.phases)
            values[index] += sum(c.value_w(t) for c in self.cycles if phase in c.phases)
        if self._noise:
            slot = self._noise[min(int(t / NOISE_SLOT_S), len(self._noise) - 1)]
            values = [v + n for v, n in zip(values, slot, strict=True)]
        return (max(values[0], 0.0), max(values[1], 0.0), max(values[2], 0.0))

    def pv_w(self, t_s: float) -> PhaseTriple:
        """PV production per phase at `t_s` (W, >= 0); a ramp overrides the base value."""
        t = self._time(t_s)
        values = list(self.base_pv_w)
        for index, phase in enumerate(PHASES):
            for ramp in self.pv_ramps:
                ramped = ramp.value_w(t)
                if ramped is not None and phase in ramp.phases:
                    values[index] = ramped
        return (max(values[0], 0.0), max(values[1], 0.0), max(values[2], 0.0))


def _phases(raw: Any) -> tuple[Phase, ...]:
    if raw in (None, "all"):
        return PHASES
    items = raw if isinstance(raw, list) else [raw]
    phases = tuple(str(p).upper() for p in items)
    for phase in phases:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
    return phases  # type: ignore[return-value]


def _triple(raw: Any, default: float = 0.0) -> PhaseTriple:
    if raw is None:
        return (default, default, default)
    if isinstance(raw, (int, float)):
        return (float(raw), float(raw), float(raw))
    l1, l2, l3 = (float(v) for v in raw)
    return (l1, l2, l3)


def scenario_from_dict(data: dict[str, Any]) -> Scenario:
    """Build a scenario from its YAML mapping; raises ValueError/KeyError on bad input."""
    return Scenario(
        name=str(data["name"]),
        description=str(data.get("description", "")),
        duration_s=float(data["duration_s"]),
        base_load_w=_triple(data.get("base_load_w")),
        base_pv_w=_triple(data.get("pv_w")),
        steps=tuple(
            Step(float(s["at_s"]), float(s["load_w"]), _phases(s.get("phases")), s.get("duration_s"))
            for s in data.get("steps", [])
        ),
        pv_ramps=tuple(
            Ramp(
                float(r["from_s"]),
                float(r["to_s"]),
                float(r["from_w"]),
                float(r["to_w"]),
                _phases(r.get("phases")),
            )
            for r in data.get("pv_ramps", [])
        ),
        cycles=tuple(
            Cycle(
                float(c["load_w"]),
                float(c["on_s"]),
                float(c["off_s"]),
                _phases(c.get("phases")),
                float(c.get("start_s", 0)),
            )
            for c in data.get("cycles", [])
        ),
        noise_w=float(data.get("noise_w", 0.0)),
        seed=int(data.get("seed", 1)),
        initial_soc_percent=float(data.get("initial_soc_percent", 50.0)),
        loop=bool(data.get("loop", False)),
        installation=_installation(data.get("installation") or {}),
    )


def _installation(data: dict[str, Any]) -> Installation:
    """The `installation` mapping: phases, actuator_gain, actuator_offset_w (one value or three), bms."""
    unknown = set(data) - {"phases", "actuator_gain", "actuator_offset_w", "bms"}
    if unknown:
        raise ValueError(f"unknown installation keys {sorted(unknown)}")
    return Installation(
        phases=_phases(data.get("phases")),
        actuator_gain=_triple(data.get("actuator_gain"), 1.0),
        actuator_offset_w=_triple(data.get("actuator_offset_w")),
        bms=bool(data.get("bms", True)),
    )


def bundled_scenarios() -> list[str]:
    """Names of the scenarios shipped with the package."""
    folder = resources.files("watti_watchman.sim").joinpath("scenarios")
    return sorted(p.name.removesuffix(".yml") for p in folder.iterdir() if p.name.endswith(".yml"))


def load_scenario(name_or_path: str) -> Scenario:
    """A bundled scenario by name, or a YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in {".yml", ".yaml"} and path.exists():
        text = path.read_text()
    else:
        resource = resources.files("watti_watchman.sim").joinpath("scenarios", f"{name_or_path}.yml")
        if not resource.is_file():
            known = ", ".join(bundled_scenarios())
            raise ValueError(f"unknown scenario {name_or_path!r} (bundled: {known})")
        text = resource.read_text()
    return scenario_from_dict(yaml.safe_load(text))
