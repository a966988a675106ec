"""Shared base for configuration models: strict keys, frozen, documented."""

from pydantic import BaseModel, ConfigDict


class ConfigModel(BaseModel):
    """A frozen configuration object; unknown keys and non-finite numbers are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
