"""Shared base for configuration models: strict keys, frozen, documented."""

from pydantic import BaseModel, ConfigDict


class ConfigModel(BaseModel):
    """A frozen configuration object; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)
