"""Configuration problems located by path and YAML line (shared by loader, resolve and checks)."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PathElem = str | int
ItemPath = tuple[PathElem, ...]
Lines = Mapping[ItemPath, int]


def format_path(path: Sequence[PathElem]) -> str:
    """`("services", 2, "grid_meter_name")` → `services[2].grid_meter_name`."""
    text = ""
    for elem in path:
        text += f"[{elem}]" if isinstance(elem, int) else (f".{elem}" if text else str(elem))
    return text or "(top level)"


def line_of(lines: Lines, path: ItemPath) -> int | None:
    """The YAML line of `path`, else of its nearest ancestor that has one (1-based)."""
    for end in range(len(path), -1, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file, located by path and, where known, YAML line.

    The message names what is expected, never the configured value (it may be a secret).
    """

    path: ItemPath
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        item = f"{format_path(self.path)}: " if self.path else ""  # a problem of the whole file
        return f"{item}{self.message}{where}"


class ConfigError(Exception):
    """The configuration is invalid; `issues` lists every problem found."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))
