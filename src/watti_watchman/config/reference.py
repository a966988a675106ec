"""Markdown configuration reference rendered from the bundled schema (docs/CONFIGURATION.md)."""

import json
from typing import Any

from watti_watchman.config.schema import build_schema

SECTIONS = (
    ("mqtt_connections[]", "MqttConnectionConfig"),
    ("http", "HttpConfig"),
    ("tls (block form)", "TlsConfig"),
    ("meters[] type: Janitza", "JanitzaConfig"),
    ("meters[] type: Victron", "VictronConfig"),
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
    for title, def_name in SECTIONS:
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
