"""Load `watti_watchman.yml`: YAML with line numbers, ${ENV} substitution, schema validation."""

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from watti_watchman.config.resolve import ResolvedConfig, resolve
from watti_watchman.config.schema import build_schema
from watti_watchman.registry import config_model

PathElem = str | int
ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
UNION_LISTS = {"meters": "meter", "services": "service"}


def format_path(path: Sequence[PathElem]) -> str:
    """`("services", 2, "grid_meter_name")` → `services[2].grid_meter_name`."""
    text = ""
    for elem in path:
        text += f"[{elem}]" if isinstance(elem, int) else (f".{elem}" if text else str(elem))
    return text or "(top level)"


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file, located by path and, where known, YAML line."""

    path: tuple[PathElem, ...]
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{format_path(self.path)}: {self.message}{where}"


class ConfigError(Exception):
    """The configuration is invalid; `issues` lists every problem found."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class _YamlReader:
    """Turns composed YAML nodes into plain data, substituting ${ENV} and recording lines."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.lines: dict[tuple[PathElem, ...], int] = {}
        self.issues: list[ConfigIssue] = []

    def data(self, node: yaml.Node, path: tuple[PathElem, ...] = ()) -> Any:
        """Plain data for `node` at `path`; each path's line (1-based) goes to `lines`."""
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = str(_scalar(key_node))
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                result[key] = self.data(value_node, (*path, key))
                self.lines[(*path, key)] = key_node.start_mark.line + 1  # the key's line, not the value's
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.data(item, (*path, index)) for index, item in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode) and "${" in node.value:
            return self._substituted(node, path)
        return _scalar(node)

    def _substituted(self, node: yaml.ScalarNode, path: tuple[PathElem, ...]) -> Any:
        """A scalar with `${NAME}` replaced; a plain (unquoted) one is then typed as YAML would."""

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.env:
                self.issues.append(
                    ConfigIssue(path, f"environment variable {name} is not set", self.lines.get(path))
                )
                return match.group(0)
            return self.env[name]

        text = ENV_PATTERN.sub(replace, node.value)
        if node.style is not None:
            return text
        loader = yaml.SafeLoader("")
        tag = loader.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
        loader.dispose()
        return _scalar(yaml.ScalarNode(tag, text))


def _scalar(node: yaml.Node) -> Any:
    """Construct one scalar node with YAML's safe rules (so `502` is int, `"502"` is str)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _schema_issues(data: Any, lines: dict[tuple[PathElem, ...], int]) -> list[ConfigIssue]:
    """Validate against the bundled schema; union items are checked against their own branch."""
    schema = build_schema()
    validator = Draft202012Validator(schema)
    branches = {
        name: {
            ref["$ref"].rsplit("/", 1)[1]: ref["$ref"] for ref in schema["properties"][name]["items"]["oneOf"]
        }
        for name in UNION_LISTS
    }
    type_by_def = {
        def_name: schema["$defs"][def_name]["properties"]["type"]["const"]
        for refs in branches.values()
        for def_name in refs
    }
    issues: list[ConfigIssue] = []
    for error in validator.iter_errors(data):
        path = tuple(error.absolute_path)
        if error.validator == "oneOf" and len(path) == 2 and path[0] in UNION_LISTS:
            issues.extend(
                _branch_issues(path, error.instance, branches[str(path[0])], type_by_def, schema, lines)
            )
        else:
            issues.append(_issue_from_error(path, error, lines))
    return issues


def _branch_issues(
    path: tuple[PathElem, ...],
    item: Any,
    refs: dict[str, str],
    type_by_def: dict[str, str],
    schema: dict[str, Any],
    lines: dict[tuple[PathElem, ...], int],
) -> list[ConfigIssue]:
    """Errors of one meter/service item, judged by the branch its `type` selects."""
    kind = UNION_LISTS[str(path[0])]
    known = sorted(type_by_def[d] for d in refs)
    if not isinstance(item, dict):
        return [ConfigIssue(path, f"a {kind} must be a mapping", lines.get(path))]
    item_type = item.get("type")
    def_name = next((d for d in refs if type_by_def[d] == item_type), None)
    if def_name is None:
        message = (
            f"unknown {kind} type {item_type!r} (known: {', '.join(known)})"
            if "type" in item
            else f"missing 'type' (one of: {', '.join(known)})"
        )
        return [ConfigIssue((*path, "type"), message, lines.get((*path, "type"), lines.get(path)))]
    branch = Draft202012Validator({"$defs": schema["$defs"], "$ref": refs[def_name]})
    return [
        _issue_from_error((*path, *error.absolute_path), error, lines) for error in branch.iter_errors(item)
    ]


def _issue_from_error(
    path: tuple[PathElem, ...], error: ValidationError, lines: dict[tuple[PathElem, ...], int]
) -> ConfigIssue:
    """A readable issue for one jsonschema error; unknown keys are named in the path."""
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
        allowed = set(schema.get("properties", {}))
        patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
        extra = [
            key for key in error.instance if key not in allowed and not any(p.search(key) for p in patterns)
        ]
        if extra:
            key_path = (*path, extra[0])
            return ConfigIssue(key_path, "unknown key", lines.get(key_path, lines.get(path)))
    return ConfigIssue(path, error.message, lines.get(path))


def parse_config(text: str, env: Mapping[str, str] | None = None) -> ResolvedConfig:
    """Parse, substitute, validate and resolve a configuration; raises ConfigError."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigIssue((), f"not valid YAML: {error}", line)]) from error
    reader = _YamlReader(os.environ if env is None else env)
    data = {} if node is None else reader.data(node)
    lines = reader.lines
    if reader.issues:
        raise ConfigError(reader.issues)
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue((), "the file must hold a mapping", lines.get(()))])
    issues = _schema_issues(data, lines)
    if issues:
        raise ConfigError(issues)
    config = config_model().model_validate(data)
    return resolve(config, lines)


def load_config(path: Path, env: Mapping[str, str] | None = None) -> ResolvedConfig:
    """Read and validate the configuration file at `path`; raises ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([ConfigIssue((), f"cannot read {path}: {error.strerror}")]) from error
    return parse_config(text, env)
