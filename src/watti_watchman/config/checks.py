"""Semantic checks after typing: what the models accept but the service could not run with.

Errors make `check` and `run` exit 2; warnings are printed by `check` and logged by `run`.
Messages name the path and what is expected, never the value (it may be a secret).
"""

import ipaddress
import re
import socket
import ssl
from collections.abc import Mapping
from typing import Any

from watti_watchman.config.errors import ConfigIssue, ItemPath, Lines, line_of
from watti_watchman.config.model import WattiConfig
from watti_watchman.config.services import ChargeControllerConfig

METER_KEYS = ("grid_meter_name", "battery_meter_name")
HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class _Issues:
    """Collects errors and warnings with their lines."""

    def __init__(self, lines: Lines) -> None:
        self.lines = lines
        self.errors: list[ConfigIssue] = []
        self.warnings: list[ConfigIssue] = []

    def error(self, path: ItemPath, message: str) -> None:
        self.errors.append(ConfigIssue(path, message, line_of(self.lines, path)))

    def warning(self, path: ItemPath, message: str) -> None:
        self.warnings.append(ConfigIssue(path, message, line_of(self.lines, path)))


def is_host_name(text: str) -> bool:
    """True for a syntactically valid DNS host name (RFC 1123; the last label not all digits)."""
    labels = text.removesuffix(".").split(".")
    return (
        0 < len(text) <= 253 and all(HOST_LABEL.match(label) for label in labels) and not labels[-1].isdigit()
    )


def _check_listen_host(issues: _Issues, host: str) -> None:
    """The HTTP bind address: an IP address, or a host name that resolves (as `run` binds it)."""
    path: ItemPath = ("http", "host")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not is_host_name(host):
        issues.error(path, "expected an IP address to listen on (127.0.0.1, ::1, 0.0.0.0) or a host name")
        return
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        if error.errno == socket.EAI_AGAIN:  # DNS not up yet (boot): `run` retries the bind (exit 3)
            issues.warning(path, "the host name could not be resolved now (temporary DNS failure)")
        else:
            issues.error(path, "the host name does not resolve to an address to listen on")
    except UnicodeError:
        issues.error(path, "the host name does not resolve to an address to listen on")


def _check_ca_file(issues: _Issues, path: ItemPath, ca_file: str) -> None:
    """The CA bundle loads as `run` would load it."""
    try:
        ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        issues.error(path, "CA file not found")
    except PermissionError:
        issues.error(path, "CA file not readable by this user")
    except (ssl.SSLError, OSError, ValueError):
        issues.error(path, "not a PEM CA bundle")


def _check_soc_table(issues: _Issues, path: ItemPath, table: Mapping[str, float]) -> None:
    if not table:
        issues.error(path, "empty table: needs at least one SOC % entry")
        return
    seen: dict[float, str] = {}
    for key in table:
        soc = float(key)
        if soc > 100:
            issues.error((*path, key), "SOC key above 100 %")
        if soc in seen:
            issues.error((*path, key), f"the same SOC as key {seen[soc]}")
        seen.setdefault(soc, key)


def _check_controller(
    issues: _Issues, path: ItemPath, service: ChargeControllerConfig, meters: Mapping[str, tuple[int, Any]]
) -> None:
    if service.grid_meter_name == service.battery_meter_name:
        issues.error(
            (*path, "battery_meter_name"),
            "the same meter as grid_meter_name: the house load (grid − battery) would always be 0",
        )
    for key in METER_KEYS:
        _, meter = meters.get(getattr(service, key), (-1, None))
        if getattr(meter, "delivers_power", True) is False:  # a type whose power is optional, not configured
            issues.error(
                (*path, key), "this meter delivers no power as configured (MqttBattery: feedback.power)"
            )
    for key in ("charge_limits", "discharge_limits"):
        _check_soc_table(issues, (*path, key), getattr(service, key))
    for index, phase in enumerate(service.phases):
        if phase in service.phases[:index]:
            issues.error((*path, "phases", index), "duplicate phase")
    intervals = [
        (interval_s, index)
        for index, meter in (meters.get(getattr(service, key), (-1, None)) for key in METER_KEYS)
        if isinstance(interval_s := getattr(meter, "interval", None), int | float)
    ]
    if not intervals:
        return
    interval_s, index = max(intervals, key=lambda pair: (pair[0], -pair[1]))
    if service.max_age < interval_s:
        issues.error(
            (*path, "max_age"),
            f"shorter than meters[{index}].interval: the inputs would always be stale (failsafe)",
        )
    elif service.max_age < 2 * interval_s:
        issues.warning(
            (*path, "max_age"), f"less than two meters[{index}].interval: one late reading stops regulation"
        )


def semantic_issues(config: WattiConfig, lines: Lines) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    """(errors, warnings) of a typed configuration; names need not resolve (resolve reports that)."""
    issues = _Issues(lines)
    if not config.meters:
        issues.error(("meters",), "no meters configured: nothing to read or control")
    meters = {meter.name: (index, meter) for index, meter in enumerate(config.meters)}
    for index, meter in enumerate(config.meters):
        interval_s = getattr(meter, "interval", None)
        max_age_s = getattr(meter, "max_age", None)
        if (
            isinstance(interval_s, int | float)
            and isinstance(max_age_s, int | float)
            and max_age_s < interval_s
        ):
            issues.error(("meters", index, "max_age"), "shorter than interval: every reading would be stale")
    for index, connection in enumerate(config.mqtt_connections):
        tls = connection.tls_config()
        path: ItemPath = ("mqtt_connections", index, "tls")
        if tls is not None and tls.ca_file is not None:
            _check_ca_file(issues, (*path, "ca_file"), tls.ca_file)
        if tls is not None and tls.insecure:
            issues.warning((*path, "insecure"), "the broker's host name is not verified")
    for index, service in enumerate(config.services):
        if isinstance(service, ChargeControllerConfig):
            _check_controller(issues, ("services", index), service, meters)
    _check_listen_host(issues, config.http.host)
    return issues.errors, issues.warnings
