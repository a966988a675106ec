"""Load `watti_watchman.yml`: bounded YAML with line numbers, ${ENV} substitution, one validation.

One pass, shared by `check` and `run`: YAML → plain data (aliases bounded, duplicate keys and
unknown tags refused) → the typed models (pydantic; their union members may come from a
registry) → name resolution → semantic checks. Every problem is a `ConfigIssue` naming the path
and line, never the value.
"""

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from watti_watchman.config.checks import semantic_issues
from watti_watchman.config.errors import ConfigError, ConfigIssue, ItemPath, Lines, PathElem, line_of
from watti_watchman.config.model import WattiConfig
from watti_watchman.config.resolve import ResolvedConfig, resolve
from watti_watchman.registry import config_model

__all__ = ["ConfigError", "ConfigIssue", "PathElem", "load_config", "parse_config"]

ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
HTTP_HOST_ENV = "WATTI_HTTP_HOST"
"""Fills in `http.host` when the file does not set it (containers set 0.0.0.0 here)."""
MAX_FILE_BYTES = 1 << 20
"""Larger files are refused unread (a configuration is a few KiB)."""
MAX_DEPTH = 32
"""Deeper nesting is refused (the schema needs five levels)."""
MAX_VALUES = 20_000
"""More values than this after expanding aliases is refused (alias bombs)."""
YAML_TAG = "tag:yaml.org,2002:"
UNION_KINDS = {"meters": "meter", "services": "service"}
SUBSTITUTION_RETYPED = frozenset({"missing", "extra_forbidden"})


class _RefusedError(Exception):
    """The YAML cannot be turned into data at all (one issue)."""

    def __init__(self, issue: ConfigIssue) -> None:
        super().__init__(str(issue))
        self.issue = issue


class _YamlReader:
    """Turns composed YAML nodes into plain data, substituting ${ENV} and recording lines.

    Aliases are expanded with a bound on the total number of values and refused when recursive;
    duplicate keys, non-scalar keys and unknown tags are issues.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.lines: dict[ItemPath, int] = {}
        self.issues: list[ConfigIssue] = []
        self.substituted: dict[ItemPath, str] = {}
        """Unquoted scalars with a ${NAME}: path → text; retyped only where no text is expected."""
        self._values = 0
        self._open: set[int] = set()

    def data(self, node: yaml.Node, path: ItemPath = (), depth: int = 0) -> Any:
        """Plain data for `node` at `path`; each path's line (1-based) goes to `lines`."""
        line = node.start_mark.line + 1
        self.lines.setdefault(path, line)
        self._values += 1
        if self._values > MAX_VALUES:
            raise _RefusedError(
                ConfigIssue((), f"more than {MAX_VALUES} values once aliases are expanded", line)
            )
        if depth > MAX_DEPTH:
            raise _RefusedError(ConfigIssue(path, f"nested deeper than {MAX_DEPTH} levels", line))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path, line)
        if id(node) in self._open:
            raise _RefusedError(ConfigIssue(path, "recursive alias (an anchor used inside itself)", line))
        expected = "map" if isinstance(node, yaml.MappingNode) else "seq"
        if node.tag != YAML_TAG + expected:
            self.issues.append(ConfigIssue(path, f"unsupported tag {node.tag}", line))
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path, depth)
            return [self.data(item, (*path, index), depth + 1) for index, item in enumerate(node.value)]
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: ItemPath, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        merged: list[yaml.MappingNode] = []
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == YAML_TAG + "merge":
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                if not all(isinstance(source, yaml.MappingNode) for source in sources):
                    self.issues.append(ConfigIssue(path, "a merge key (<<) needs a mapping", key_line))
                merged += [source for source in sources if isinstance(source, yaml.MappingNode)]
                continue
            if not isinstance(key_node, yaml.ScalarNode) or "${" in key_node.value:
                self.issues.append(ConfigIssue(path, "keys must be plain text", key_line))
                continue
            key = str(self._scalar(key_node, path, key_line))
            key_path = (*path, key)
            if key in result:
                first = self.lines[key_path]
                self.issues.append(ConfigIssue(key_path, f"duplicate key (first at line {first})", key_line))
                continue
            self.lines[key_path] = key_line
            result[key] = self.data(value_node, key_path, depth + 1)
            self.lines[key_path] = key_line  # the key's line, not the value's
        explicit_lines = {(*path, key): self.lines[(*path, key)] for key in result}
        for source in merged:  # explicit keys win, then earlier merged mappings
            if id(source) in self._open:
                raise _RefusedError(ConfigIssue(path, "recursive alias (an anchor used inside itself)", None))
            self._open.add(id(source))
            try:
                extra = self._mapping(source, path, depth)
            finally:
                self._open.discard(id(source))
            for key, value in extra.items():
                result.setdefault(key, value)
        self.lines.update(explicit_lines)
        return result

    def _scalar(self, node: yaml.ScalarNode, path: ItemPath, line: int) -> Any:
        if not node.tag.startswith(YAML_TAG):
            self.issues.append(ConfigIssue(path, f"unknown tag {node.tag}", line))
            return None
        if "${" in node.value:
            return self._substituted(node, path, line)
        try:
            return _construct(node)
        except (yaml.YAMLError, ValueError, TypeError):
            self.issues.append(ConfigIssue(path, f"not a valid {node.tag.removeprefix(YAML_TAG)}", line))
            return None

    def _substituted(self, node: yaml.ScalarNode, path: ItemPath, line: int) -> str:
        """The scalar's text with `${NAME}` replaced; always a string at first (see `substituted`)."""

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.env:
                self.issues.append(ConfigIssue(path, f"environment variable {name} is not set", line))
                return match.group(0)
            return self.env[name]

        text = ENV_PATTERN.sub(replace, node.value)
        if node.style is None:
            self.substituted[path] = text
        return text


def _construct(node: yaml.ScalarNode) -> Any:
    """One scalar node by YAML's safe rules (so `502` is int, `"502"` is str)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _typed(text: str) -> Any:
    """`text` typed as an unquoted YAML scalar would be (`502` → 502, `yes` → True)."""
    loader = yaml.SafeLoader("")
    tag = loader.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    loader.dispose()
    try:
        return _construct(yaml.ScalarNode(tag, text))
    except (yaml.YAMLError, ValueError):
        return text


def _yaml_issue(error: yaml.YAMLError) -> ConfigIssue:
    """A YAML syntax or reader error without the source snippet (it may hold a secret)."""
    if isinstance(error, yaml.reader.ReaderError):
        return ConfigIssue((), f"not valid YAML text: {error.reason} (character #x{error.character:04x})")
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or type(error).__name__
    context = getattr(error, "context", None)
    text = f"not valid YAML: {problem}" + (f" ({context})" if context else "")
    return ConfigIssue((), text, None if mark is None else mark.line + 1)


def read_yaml(text: str, env: Mapping[str, str]) -> tuple[Any, _YamlReader]:
    """Plain data of `text` and the reader (lines, substitutions); raises ConfigError."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        raise ConfigError([_yaml_issue(error)]) from None
    except RecursionError:
        raise ConfigError([ConfigIssue((), f"nested deeper than {MAX_DEPTH} levels")]) from None
    reader = _YamlReader(env)
    try:
        data = {} if node is None else reader.data(node)
    except _RefusedError as refused:
        raise ConfigError([refused.issue]) from None
    if reader.issues:
        raise ConfigError(reader.issues)
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue((), "the file must hold a mapping", reader.lines.get(()))])
    return data, reader


def _union_types(model: type[WattiConfig]) -> dict[str, str]:
    """`meters`/`services` → the known `type` names, as `model`'s discriminated unions list them."""
    properties = model.model_json_schema()["properties"]
    return {
        section: ", ".join(sorted(properties[section]["items"].get("discriminator", {}).get("mapping", {})))
        for section in UNION_KINDS
    }


def _data_path(data: Any, error: ErrorDetails) -> ItemPath:
    """The path in the data of a pydantic error location, without union member tags."""
    loc = error["loc"]
    path: list[PathElem] = []
    node = data
    for index, elem in enumerate(loc):
        last = index == len(loc) - 1
        found = (isinstance(node, dict) and elem in node) or (
            isinstance(node, list) and isinstance(elem, int) and 0 <= elem < len(node)
        )
        if found:
            path.append(elem)
            node = node[elem]
        elif last and error["type"] == "missing":
            path.append(elem)
    return tuple(path)


def _message(error: ErrorDetails) -> str:
    """What is expected at an error's location; never the value found there."""
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    fixed = {
        "missing": "missing required key",
        "extra_forbidden": "unknown key",
        "int_type": "expected an integer",
        "int_parsing": "expected an integer",
        "int_from_float": "expected an integer",
        "float_type": "expected a number",
        "float_parsing": "expected a number",
        "finite_number": "expected a finite number (not .nan or .inf)",
        "string_type": 'expected text (quote it: "…")',
        "bool_type": "expected true or false",
        "bool_parsing": "expected true or false",
        "dict_type": "expected a mapping",
        "model_type": "expected a mapping",
        "model_attributes_type": "expected a mapping",
        "list_type": "expected a list",
    }
    if kind in fixed:
        return fixed[kind]
    bounds = {"greater_than": ">", "greater_than_equal": "≥", "less_than": "<", "less_than_equal": "≤"}
    if kind in bounds:
        (limit,) = ctx.values()
        return f"must be {bounds[kind]} {limit:g}" if isinstance(limit, int | float) else "out of range"
    if kind == "string_too_short":
        return (
            "must not be empty"
            if ctx.get("min_length") == 1
            else f"needs ≥ {ctx.get('min_length')} characters"
        )
    if kind == "string_too_long":
        return f"longer than {ctx.get('max_length')} characters"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"at most {ctx.get('max_length')} item(s) allowed"
    if kind == "string_pattern_mismatch":
        what = "key" if error["loc"][-1] == "[key]" else "text"
        return f"{what} must match {ctx.get('pattern')}"
    if kind in ("literal_error", "enum"):
        return f"expected {ctx.get('expected')}"
    if kind == "value_error":  # a model's own check; its messages never quote the value
        return str(ctx.get("error", "invalid value"))
    return "invalid value"


def _join(messages: list[str]) -> str:
    """Alternatives of a union as one message: `expected A or B`."""
    unique = list(dict.fromkeys(messages))
    if len(unique) > 1 and all(m.startswith("expected ") for m in unique):
        return "expected " + " or ".join(m.removeprefix("expected ") for m in unique)
    return "; ".join(unique)


def _model_issues(
    error: ValidationError, data: Any, lines: Lines, model: type[WattiConfig]
) -> list[ConfigIssue]:
    """Readable issues of a pydantic error, one per path (union alternatives joined)."""
    by_path: dict[ItemPath, list[str]] = {}
    for detail in error.errors(include_url=False, include_input=False):
        path = _data_path(data, detail)
        if detail["type"] in ("union_tag_invalid", "union_tag_not_found") and path[:1] in (
            ("meters",),
            ("services",),
        ):
            section = str(path[0])
            known = _union_types(model)[section]
            if detail["type"] == "union_tag_invalid":
                message = f"unknown {UNION_KINDS[section]} type (known: {known})"
            else:
                message = f"missing 'type' (one of: {known})"
            by_path.setdefault((*path, "type"), []).append(message)
        else:
            by_path.setdefault(path, []).append(_message(detail))
    return [ConfigIssue(path, _join(messages), line_of(lines, path)) for path, messages in by_path.items()]


def _set(data: Any, path: ItemPath, value: Any) -> None:
    for elem in path[:-1]:
        data = data[elem]
    data[path[-1]] = value


def validate_data(data: dict[str, Any], reader: _YamlReader, model: type[WattiConfig]) -> WattiConfig:
    """`data` as `model` (the root model, its unions possibly built from a registry); a `${NAME}`
    where no text is expected is typed as YAML would."""
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as error:
        retype = {
            path
            for detail in error.errors(include_url=False, include_input=False)
            if detail["type"] not in SUBSTITUTION_RETYPED
            and (path := _data_path(data, detail)) in reader.substituted
        }
        if not retype:
            raise ConfigError(_model_issues(error, data, reader.lines, model)) from None
    for path in retype:
        _set(data, path, _typed(reader.substituted[path]))
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as error:
        raise ConfigError(_model_issues(error, data, reader.lines, model)) from None


def parse_config(text: str, env: Mapping[str, str] | None = None) -> ResolvedConfig:
    """Parse, substitute, validate, resolve and check a configuration; raises ConfigError.

    Warnings (legitimate but suspicious settings) are returned in `ResolvedConfig.warnings`.
    """
    environ = os.environ if env is None else env
    data, reader = read_yaml(text, environ)
    http = data.get("http")
    if HTTP_HOST_ENV in environ and (http is None or (isinstance(http, dict) and "host" not in http)):
        data["http"] = {**(http or {}), "host": environ[HTTP_HOST_ENV]}
    config = validate_data(data, reader, config_model())
    issues: list[ConfigIssue] = []
    try:
        resolved = resolve(config, reader.lines)
    except ConfigError as error:
        issues += error.issues
        resolved = None
    errors, warnings = semantic_issues(config, reader.lines)
    issues += errors
    if issues or resolved is None:
        raise ConfigError(issues)
    return dataclasses.replace(resolved, warnings=tuple(warnings))


def load_config(path: Path, env: Mapping[str, str] | None = None) -> ResolvedConfig:
    """Read and validate the configuration file at `path` (UTF-8); raises ConfigError."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)  # bounded: `-c /dev/zero` must not hang
    except OSError as error:
        raise ConfigError([ConfigIssue((), f"cannot read the file: {error.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([ConfigIssue((), f"larger than {MAX_FILE_BYTES // 1024} KiB: not a configuration")])
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError([ConfigIssue((), "the file is UTF-16; save it as UTF-8")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ConfigError([ConfigIssue((), "not UTF-8 text (save the file as UTF-8)", line)]) from None
    return parse_config(text, env)
