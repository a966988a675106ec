"""Markdown configuration reference rendered from the bundled schema (docs/CONFIGURATION.md)."""

import json
from typing import Any

from watti_watchman.config.schema import build_schema
from watti_watchman.registry import device_types


def sections() -> tuple[tuple[str, str], ...]:
    """(heading, schema definition) pairs in reference order; meter types from the registry."""
    meters = tuple((f"meters[] type: {name}", t.config.__name__) for name, t in device_types().items())
    return (*BASE_SECTIONS, *meters, *SERVICE_SECTIONS)


BASE_SECTIONS = (
    ("mqtt_connections[]", "MqttConnectionConfig"),
    ("http", "HttpConfig"),
    ("tls (block form)", "TlsConfig"),
)
SERVICE_SECTIONS = (
    ("services[] type: ChargeController", "ChargeControllerConfig"),
    ("services[] type: VictronGridFeeder", "VictronGridFeederConfig"),
    ("services[] type: HassFeeder", "HassFeederConfig"),
    ("services[] type: HassDynamicConfig", "HassDynamicConfigConfig"),
)


def _type_text(prop: dict[str, Any]) -> str:
    if "const" in prop:
        return f"`{prop['const']}`"
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(_type_text(p) for p in prop["anyOf"])
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[1].removesuffix("Config") + " block"
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type_text(prop.get('items', {}))}"
    if kind == "object":
        return "map SOC % → number"
    bounds = [
        f"{sym} {prop[key]}"
        for key, sym in (
            ("minimum", "≥"),
            ("exclusiveMinimum", ">"),
            ("maximum", "≤"),
            ("exclusiveMaximum", "<"),
        )
        if key in prop
    ]
    return str(kind) + (f" ({', '.join(bounds)})" if bounds else "")


def render_reference() -> str:
    """The configuration reference as Markdown, one table per section."""
    defs = build_schema()["$defs"]
    out = [
        "# Configuration reference",
        "",
        "Generated from the schema (`dist/schema.json`) by `watti_watchman.config.reference`;",
        "a test fails when this file is out of date. Keys marked required have no default.",
        "",
    ]
    for title, def_name in sections():
        definition = defs[def_name]
        required = set(definition.get("required", []))
        out += [f"## {title}", "", definition.get("description", ""), ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for key, prop in definition["properties"].items():
            default = "required" if key in required else f"`{json.dumps(prop.get('default'))}`"
            if "default" not in prop and key not in required:
                default = "computed"
            meaning = prop.get("description", "").replace("|", "\\|")
            out.append(f"| `{key}` | {_type_text(prop)} | {default} | {meaning} |")
        out.append("")
    return "\n".join(out)
