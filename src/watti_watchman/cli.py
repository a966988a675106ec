"""Command line: run, check, schema, read-meter, demo, simulate."""

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from watti_watchman import __version__
from watti_watchman.clock import monotonic
from watti_watchman.config.loader import ConfigError, load_config
from watti_watchman.config.resolve import ResolvedConfig
from watti_watchman.config.schema import schema_text
from watti_watchman.domain.quantities import format_values
from watti_watchman.registry import BuildContext, DeviceReadError, device_type

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_BIND = 3
"""The HTTP port could not be bound (in use, or the address is not on this host)."""
DEFAULT_CONFIG = Path("watti_watchman.yml")
logger = logging.getLogger("watti_watchman")


def _log_level_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default: INFO)",
    )


def _parser() -> argparse.ArgumentParser:
    # Global options are accepted before and after the subcommand; SUPPRESS keeps the
    # subcommand's copy from overwriting a value given before it.
    global_opts = argparse.ArgumentParser(add_help=False)
    _log_level_option(global_opts, argparse.SUPPRESS)
    config_opt = argparse.ArgumentParser(add_help=False, parents=[global_opts])
    config_opt.add_argument(
        "-c", "--config", type=Path, default=DEFAULT_CONFIG, help="configuration file (default: %(default)s)"
    )
    parser = argparse.ArgumentParser(
        prog="watti-watchman", description="Zero feed-in control of a Victron ESS from Janitza meters."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _log_level_option(parser, "INFO")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", parents=[config_opt], help="run every configured meter and service")
    run.add_argument("--dry-run", action="store_true", help="compute and export setpoints, write none")
    commands.add_parser("check", parents=[config_opt], help="validate the configuration and summarise it")
    commands.add_parser("schema", parents=[global_opts], help="print the JSON schema of the configuration")
    read_meter = commands.add_parser("read-meter", parents=[config_opt], help="read one meter once")
    read_meter.add_argument("meter", metavar="NAME", help="name of a meter that can be read once")
    demo = commands.add_parser(
        "demo", parents=[global_opts], help="simulated plant + embedded broker + live status page"
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--port", type=int, default=9292, help="HTTP port on 127.0.0.1 (0 = any free)")
    demo.add_argument("--scenario", default="demo", help="load scenario (default: %(default)s)")
    demo.add_argument(
        "--site",
        choices=["victron", "generic"],
        default="victron",
        help="victron: Janitza meters + GX; generic: SDM630 + MQTT inverter + Seplos (default: %(default)s)",
    )
    simulate = commands.add_parser(
        "simulate", parents=[global_opts], help="plant + control law faster than real time"
    )
    simulate.add_argument("--scenario", required=True, help="scenario name or YAML file")
    simulate.add_argument("--plant", default="medium", help="plant preset (fast, medium, slow)")
    simulate.add_argument("--controller", default="watti", choices=["watti", "reference"])
    simulate.add_argument("--plot", type=Path, default=None, help="write an HTML plot to this file")
    return parser


def _summary(resolved: ResolvedConfig, path: Path) -> str:
    config = resolved.config
    lines = [f"configuration OK: {path}"]
    for connection in config.mqtt_connections:
        tls = " (TLS)" if connection.tls_config() else ""
        lines.append(f"  mqtt connection {connection.name}: {connection.host}:{connection.port}{tls}")
    for meter in config.meters:
        lines.append(f"  meter {meter.name}: {device_type(meter.type).summary(meter)}")
    for service in config.services:
        fields = service.model_dump(exclude={"type", "name"})
        shown = ", ".join(
            f"{k}={v}" for k, v in fields.items() if k.endswith("_name") or k in {"target_setpoint", "mode"}
        )
        lines.append(f"  service {service.type} '{service.name}': {shown}")
    reach = "this host only" if _is_loopback(config.http.host) else "reachable from the network"
    lines.append(f"  http: {config.http.host}:{config.http.port} ({reach})")
    return "\n".join(lines)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def _run_until_signal(resolved: ResolvedConfig, dry_run: bool) -> int:
    from watti_watchman.app import Application  # noqa: PLC0415 - keep `check`/`schema` light
    from watti_watchman.http import HttpBindError  # noqa: PLC0415

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await Application(resolved, dry_run=dry_run).run(stop)
    except HttpBindError as error:
        logger.error("%s", error)
        return EXIT_BIND
    return EXIT_OK


async def _read_meter(resolved: ResolvedConfig, name: str) -> int:
    readable = {m.name: m for m in resolved.config.meters if device_type(m.type).read_once is not None}
    meter = readable.get(name)
    read_once = None if meter is None else device_type(meter.type).read_once
    if meter is None or read_once is None:
        known = ", ".join(readable) or "none"
        print(f"no meter that can be read once named {name!r} (known: {known})", file=sys.stderr)
        return EXIT_CONFIG
    try:
        reading = await read_once(meter, BuildContext(monotonic, resolved.connections))
    except DeviceReadError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(format_values(reading.quantities, reading.values))
    return EXIT_OK


T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on uvloop's event loop where it is installed (Linux, macOS).

    uvloop's loop runs the service's I/O (MQTT, Modbus, HTTP) for ≈12 % less CPU than asyncio's
    own (docs/BENCHMARKS.md § CPU); everything else is unchanged.
    """
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `watti-watchman` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.command == "schema":
        sys.stdout.write(schema_text())
        return EXIT_OK
    if args.command == "demo":
        from watti_watchman.sim.demo import run_demo  # noqa: PLC0415

        return run_loop(
            run_demo(duration_s=args.duration, port=args.port, scenario=args.scenario, site=args.site)
        )
    if args.command == "simulate":
        from watti_watchman.sim.simulate import run_simulate  # noqa: PLC0415

        return run_simulate(args.scenario, args.plant, args.controller, args.plot)
    try:
        resolved = load_config(args.config)
    except ConfigError as error:
        for issue in error.issues:  # one line each, the same for `check`, `run` and `read-meter`
            print(f"{args.config}: {issue}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in resolved.warnings:
        if args.command == "check":
            print(f"{args.config}: warning: {warning}", file=sys.stderr)
        else:
            logger.warning("%s: %s", args.config, warning)
    if args.command == "check":
        print(_summary(resolved, args.config))
        return EXIT_OK
    if args.command == "read-meter":
        return run_loop(_read_meter(resolved, args.meter))
    return run_loop(_run_until_signal(resolved, args.dry_run))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
