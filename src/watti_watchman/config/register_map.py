"""Register-map files (YAML): the shipped maps by name, user files by path, validated strictly."""

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from watti_watchman.config.base import ConfigModel
from watti_watchman.domain.meter_values import QuantityKey
from watti_watchman.domain.register_map import (
    MAX_REGISTERS_PER_READ,
    DataType,
    RegisterMap,
    RegisterSpec,
    WordOrder,
)

MAPS_DIR = Path(__file__).resolve().parent.parent / "maps"
SHIPPED_MAPS: tuple[str, ...] = tuple(sorted(p.stem for p in MAPS_DIR.glob("*.yml")))


class RegisterEncoding(ConfigModel):
    """Encoding defaults for every register of a map."""

    data_type: DataType = "float32"
    word_order: WordOrder = "high_first"


class RegisterEntry(ConfigModel):
    """One quantity's register (0-based wire address) and encoding; value × scale = table unit."""

    address: int = Field(ge=0, le=65535)
    data_type: DataType | None = None
    word_order: WordOrder | None = None
    scale: float = Field(default=1.0, description="Factor to W, V, A, Hz or Wh.")

    @model_validator(mode="after")
    def _scale_not_zero(self) -> "RegisterEntry":
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self


class RegisterMapFile(ConfigModel):
    """A register-map file."""

    name: str = Field(min_length=1)
    function_code: Literal[3, 4] = Field(description="3: holding registers, 4: input registers.")
    poll_interval: float = Field(gt=0, le=60, description="Default polling period (s).")
    max_registers_per_read: int = Field(default=MAX_REGISTERS_PER_READ, ge=2, le=MAX_REGISTERS_PER_READ)
    defaults: RegisterEncoding = RegisterEncoding()
    registers: dict[QuantityKey, RegisterEntry] = Field(min_length=1)

    def to_map(self) -> RegisterMap:
        """The domain map."""
        specs: dict[str, RegisterSpec] = {
            key: RegisterSpec(
                entry.address,
                entry.data_type or self.defaults.data_type,
                entry.word_order or self.defaults.word_order,
                entry.scale,
            )
            for key, entry in self.registers.items()
        }
        if not any(key.startswith("power_") for key in specs):
            raise ValueError("a register map needs power_total or power_l1..l3")
        return RegisterMap(
            self.name, self.function_code, self.poll_interval, specs, self.max_registers_per_read
        )


def map_path(reference: str, base_dir: Path | None = None) -> Path:
    """The file for `reference`: a shipped map's name, or a path (relative to `base_dir`)."""
    if reference in SHIPPED_MAPS:
        return MAPS_DIR / f"{reference}.yml"
    path = Path(reference)
    return path if path.is_absolute() or base_dir is None else base_dir / path


def load_register_map(reference: str, base_dir: Path | None = None) -> RegisterMap:
    """Load and validate a map; ValueError with a readable message (neither the path nor the content)."""
    path = map_path(reference, base_dir)
    if reference not in SHIPPED_MAPS and path.suffix not in (".yml", ".yaml"):
        shipped = ", ".join(SHIPPED_MAPS)
        raise ValueError(f"not a shipped map ({shipped}) nor a .yml/.yaml file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"cannot read the map file: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"the map file is not valid YAML ({type(error).__name__})") from None
    try:
        return RegisterMapFile.model_validate(data).to_map()
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors()
        )
        raise ValueError(f"in the map file: {problems}") from None
