"""The bundled JSON schema of `watti_watchman.yml`, generated from the typed models."""

import json
from typing import Any

from watti_watchman.registry import config_model

SCHEMA_ID = "urn:watti-watchman:config:v1"


def _close_pattern_properties(node: Any) -> None:
    """Make every `patternProperties` object reject keys that match no pattern."""
    if isinstance(node, dict):
        if "patternProperties" in node:
            node.setdefault("additionalProperties", False)
        for child in node.values():
            _close_pattern_properties(child)
    elif isinstance(node, list):
        for child in node:
            _close_pattern_properties(child)


def build_schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) every configuration file is validated against."""
    schema = config_model().model_json_schema()
    _close_pattern_properties(schema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "WattiWatchman configuration (watti_watchman.yml)",
    }


def schema_text() -> str:
    """The schema as committed in `dist/schema.json` (stable key order, trailing newline)."""
    return json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n"
