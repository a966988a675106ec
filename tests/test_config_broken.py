"""Broken configurations: `check` and `run` agree, exit 2 with one line naming the item, no secret.

Every case is a working configuration with one fault. `check` and `run` share one validation, so
both must refuse it with the same line; `run` must refuse it before connecting anywhere.
"""

import asyncio
import os
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from watti_watchman.cli import EXIT_CONFIG, EXIT_OK, main
from watti_watchman.config.loader import MAX_VALUES, parse_config

SECRET = "S3cr3tPw-4711"
LEAK = "LEAKME"
"""Put into bad values: it must never appear in the output."""

BASE = """\
mqtt_connections:
  - name: venus
    host: 127.0.0.1
    port: {port}
    username: watti
    password: "S3cr3tPw-4711"
    keepalive: 30
meters:
  - type: Janitza
    name: grid
    host: 127.0.0.1
    port: {port}
    interval: 0.2
    max_age: 1.0
  - type: Janitza
    name: battery_meter
    host: 127.0.0.1
    port: {port}
    unit: 2
  - type: Victron
    name: gx
    mqtt_connection_name: venus
services:
  - type: ChargeController
    grid_meter_name: grid
    battery_meter_name: battery_meter
    battery_controller_name: gx
    target_setpoint: 0
    max_charge_power: 3000
    phases: [L1, L2, L3]
    charge_limits: {{"0": 3000, "90": 1000}}
    discharge_limits: {{"100": 3000, "10": 0}}
http:
  host: 127.0.0.1
  port: 0
"""


@dataclass(frozen=True)
class Case:
    """One fault: the file's bytes from the base text, and what the one error line must contain."""

    name: str
    make: Callable[[str], bytes]
    needle: str


def swap(old: str, new: str) -> Callable[[str], bytes]:
    """Replace the first `old` in the base text by `new`."""

    def make(base: str) -> bytes:
        assert old in base, old
        return base.replace(old, new, 1).encode()

    return make


def append(extra: str) -> Callable[[str], bytes]:
    return lambda base: (base + extra).encode()


def whole(text: str) -> Callable[[str], bytes]:
    return lambda _: text.encode()


BOMB = (
    "a: &a ["
    + ",".join(["x"] * 9)
    + "]\n"
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)
    )
)

CASES = [
    Case(
        "soc_key_above_100", swap('"90": 1000', '"100.5": 1000'), "services[0].charge_limits.100.5: SOC key"
    ),
    Case("soc_keys_equal", swap('"90": 1000', '"0.0": 1000'), "services[0].charge_limits.0.0: the same SOC"),
    Case("soc_key_not_a_number", swap('"90": 1000', '"full": 1000'), "charge_limits.full: key must"),
    Case("inf_limit", swap('"90": 1000', '"90": .inf'), "services[0].charge_limits.90: expected a finite"),
    Case(
        "inf_maximum",
        swap("max_charge_power: 3000", "max_charge_power: .inf"),
        "max_charge_power: expected a",
    ),
    Case("nan_target", swap("target_setpoint: 0", "target_setpoint: .nan"), "services[0].target_setpoint"),
    Case("nan_interval", swap("interval: 0.2", "interval: .NaN"), "meters[0].interval: expected a finite"),
    Case("duplicate_phase", swap("[L1, L2, L3]", "[L1, L1]"), "services[0].phases[1]: duplicate phase"),
    Case("unknown_phase", swap("[L1, L2, L3]", "[L1, L4]"), "services[0].phases[1]: expected"),
    Case(
        "http_host_not_a_name", swap("host: 127.0.0.1\n  port: 0", f"host: {LEAK} x!"), "http.host: expected"
    ),
    Case(
        "http_host_numeric_name", swap("host: 127.0.0.1\n  port: 0", "host: 999.1.1.1"), "http.host: expected"
    ),
    Case(
        "missing_ca_file",
        swap("keepalive: 30", f"tls: {{ca_file: /nonexistent/{LEAK}.pem}}"),
        "mqtt_connections[0].tls.ca_file: CA file not found",
    ),
    Case("ca_file_not_pem", swap("keepalive: 30", "tls: {ca_file: /etc/hostname}"), "not a PEM CA bundle"),
    Case("recursive_alias", append("extra: &loop\n  again: *loop\n"), "recursive alias"),
    Case("deep_nesting", append("extra: " + "[" * 5000 + "]" * 5000 + "\n"), "nested deeper than"),
    Case(
        "deep_block_nesting",
        append("".join(f"{' ' * i}k{i}:\n" for i in range(40)) + " " * 40 + "v: 1\n"),
        "nested",
    ),
    Case("alias_bomb", append(BOMB), f"more than {MAX_VALUES} values"),
    Case("non_utf8", lambda base: base.replace(SECRET, SECRET + "ä").encode("latin-1"), "not UTF-8 text"),
    Case("utf16", lambda base: base.encode("utf-16"), "UTF-16"),
    Case("nul_character", swap("username: watti", "username: wa\x00tti"), "not valid YAML text"),
    Case(
        "unknown_tag",
        swap("username: watti", f"username: !vault {LEAK}"),
        "mqtt_connections[0].username: unknown tag",
    ),
    Case("unknown_collection_tag", swap("phases: [L1, L2, L3]", "phases: !!set {L1, L2}"), "unsupported tag"),
    Case("merge_of_a_scalar", swap("username: watti", "<<: 5"), "merge key"),
    Case(
        "duplicate_key",
        swap("keepalive: 30", f"password: {LEAK}"),
        "mqtt_connections[0].password: duplicate key",
    ),
    Case(
        "same_meter_grid_and_battery",
        swap("battery_meter_name: battery_meter", "battery_meter_name: grid"),
        "same meter",
    ),
    Case("max_age_below_interval", append(""), ""),  # replaced below (needs two edits)
    Case(
        "meter_max_age_below_interval",
        swap("max_age: 1.0", "max_age: 0.1"),
        "meters[0].max_age: shorter than",
    ),
    Case(
        "empty_soc_table", swap('{"100": 3000, "10": 0}', "{}"), "services[0].discharge_limits: empty table"
    ),
    Case("no_meters", whole("http:\n  port: 0\n"), "meters: no meters configured"),
    Case("empty_file", whole(""), "meters: no meters configured"),
    Case("numeric_password", swap(f'password: "{SECRET}"', "password: 987654321"), "password: expected text"),
    Case(
        "unknown_key", swap("keepalive: 30", f"pasword: {LEAK}"), "mqtt_connections[0].pasword: unknown key"
    ),
    Case("port_as_text", swap("interval: 0.2", f"port: {LEAK}"), "meters[0].port"),
    Case("port_out_of_range", swap("unit: 2", "unit: 2\n    port: 70000"), "meters[1].port"),
    Case("unknown_meter_type", swap("type: Victron", f"type: {LEAK}"), "meters[2].type: unknown meter type"),
    Case(
        "missing_meter_type",
        swap("  - type: Victron\n    name: gx", "  - name: gx"),
        "meters[2].type: missing",
    ),
    Case(
        "unset_variable",
        swap(f'"{SECRET}"', '"${WATTI_TEST_UNSET_VARIABLE}"'),
        "WATTI_TEST_UNSET_VARIABLE is not set",
    ),
    Case("yaml_syntax", swap(f'password: "{SECRET}"', f'password: "{SECRET}'), "not valid YAML"),
    Case("tab_indent", swap("    username: watti", "\tusername: watti"), "not valid YAML"),
    Case("top_level_list", whole("- meters\n"), "the file must hold a mapping"),
    Case("two_documents", append("---\nmeters: []\n"), "not valid YAML"),
    Case(
        "keepalive_bool",
        swap("keepalive: 30", "keepalive: yes"),
        "mqtt_connections[0].keepalive: expected an integer",
    ),
    Case(
        "tls_text",
        swap("keepalive: 30", f"tls: {LEAK}"),
        "mqtt_connections[0].tls: expected true or false or a",
    ),
    Case(
        "binary_host",
        swap("host: 127.0.0.1\n    port", "host: !!binary aGVsbG8=\n    port"),
        "host: expected text",
    ),
    Case(
        "missing_reference",
        swap("grid_meter_name: grid", "grid_meter_name: nowhere"),
        "grid_meter_name: no meter",
    ),
    Case("key_is_a_mapping", append("? {a: 1}\n: 2\n"), "keys must be plain text"),
    Case("huge_file", append("#" * (1 << 20) + "\n"), "larger than 1024 KiB"),
]
CASES[CASES.index(next(c for c in CASES if c.name == "max_age_below_interval"))] = Case(
    "max_age_below_interval",
    lambda base: base.replace("target_setpoint: 0", "target_setpoint: 0\n    max_age: 0.1").encode(),
    "services[0].max_age: shorter than meters[0].interval",
)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener standing in for every peer: `run` must not connect to it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        yield sock


def write_case(case: Case, folder: Path, port: int) -> Path:
    path = folder / f"{case.name}.yml"
    path.write_bytes(case.make(BASE.format(port=port)))
    return path


def assert_refused(case: Case, path: Path, code: int, out: str, err: str) -> None:
    assert code == EXIT_CONFIG, (case.name, out, err)
    lines = err.splitlines()
    assert len(lines) == 1, (case.name, lines)
    assert lines[0].startswith(f"{path}: "), lines
    assert case.needle in lines[0], (case.name, lines[0])
    assert "Traceback" not in err
    for secret in (SECRET, LEAK, "987654321"):
        assert secret not in out + err, (case.name, err)


def test_the_base_configuration_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "good.yml"
    path.write_text(BASE.format(port=1502))
    assert main(["check", "-c", str(path)]) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.err == ""
    assert SECRET not in captured.out
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_check_and_run_refuse_with_one_line(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_case(case, tmp_path, 1502)
    results = []
    for command in ("check", "run"):
        code = main([command, "-c", str(path)])
        captured = capsys.readouterr()
        assert_refused(case, path, code, captured.out, captured.err)
        results.append(captured.err)
    assert results[0] == results[1]


async def watti(*args: str) -> tuple[int, str, str]:
    """The real CLI as a process; (exit code, stdout, stderr)."""
    env = {key: value for key, value in os.environ.items() if key != "WATTI_HTTP_HOST"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watti_watchman.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


SUBPROCESS_CASES = [
    "nan_target",
    "deep_nesting",
    "unknown_tag",
    "non_utf8",
    "soc_key_above_100",
    "missing_ca_file",
    "recursive_alias",
    "alias_bomb",
    "utf16",
    "duplicate_key",
    "numeric_password",
    "same_meter_grid_and_battery",
]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
async def test_real_cli_check_and_run_agree_and_run_connects_nowhere(
    name: str, tmp_path: Path, listener: socket.socket
) -> None:
    case = next(c for c in CASES if c.name == name)
    path = write_case(case, tmp_path, listener.getsockname()[1])
    checked = await watti("check", "-c", str(path))
    ran = await watti("run", "-c", str(path), "--log-level", "DEBUG")
    for code, out, err in (checked, ran):
        assert_refused(case, path, code, out, err)
    assert checked[2] == ran[2]
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected to the meter's or broker's port


def test_an_endless_file_is_refused_unread(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", "/dev/zero"]) == EXIT_CONFIG
    assert capsys.readouterr().err == "/dev/zero: larger than 1024 KiB: not a configuration\n"


def test_merge_keys_and_bounded_aliases_work() -> None:
    text = BASE.format(port=1502).replace(
        "meters:\n  - type: Janitza\n    name: grid\n    host: 127.0.0.1",
        "meters:\n  - &janitza\n    type: Janitza\n    name: grid\n    host: 127.0.0.1",
    )
    text = text.replace(
        "  - type: Janitza\n    name: battery_meter", "  - <<: *janitza\n    name: battery_meter"
    )
    resolved = parse_config(text, {})
    assert (
        resolved.meter("battery_meter").model_dump() | {"name": "grid", "unit": 1}
        == resolved.meter("grid").model_dump()
    )
    assert getattr(resolved.meter("battery_meter"), "unit", None) == 2


@pytest.mark.parametrize(
    ("value", "expected"), [("987654321", "987654321"), ("yes", "yes"), ("~", "~"), ("0123", "0123")]
)
def test_env_substitutions_into_text_stay_text(value: str, expected: str) -> None:
    text = (
        BASE.format(port="${PORT}").replace(f'"{SECRET}"', "${PASSWORD}").replace("port: 0", "port: ${PORT}")
    )
    resolved = parse_config(text, {"PASSWORD": value, "PORT": "1502"})
    connection = resolved.connection("venus")
    assert connection.password == expected
    assert connection.port == 1502
    assert resolved.config.http.port == 1502


def test_env_substitution_types_booleans_where_expected() -> None:
    text = BASE.format(port=1502).replace("keepalive: 30", "keepalive: ${KEEPALIVE}\n    tls: ${TLS}")
    connection = parse_config(text, {"KEEPALIVE": "45", "TLS": "yes"}).connection("venus")
    assert connection.keepalive == 45
    assert connection.tls is True


async def test_warnings_are_printed_by_check_and_logged_by_run(
    tmp_path: Path, listener: socket.socket
) -> None:
    path = tmp_path / "warn.yml"
    port = listener.getsockname()[1]
    path.write_text(
        BASE.format(port=port).replace("target_setpoint: 0", "target_setpoint: 0\n    max_age: 0.3")
    )
    code, out, err = await watti("check", "-c", str(path))
    assert code == EXIT_OK
    assert out.startswith(f"configuration OK: {path}")
    assert out.rstrip().endswith("http: 127.0.0.1:0 (this host only)")
    expected = "services[0].max_age: less than two meters[0].interval: one late reading stops regulation"
    assert err.splitlines() == [f"{path}: warning: {expected} (line 29)"]
    assert [str(w) for w in parse_config(path.read_text(), {}).warnings] == [f"{expected} (line 29)"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watti_watchman.cli", "run", "-c", str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        async with asyncio.timeout(20):
            first = (await process.stderr.readline()).decode()
    finally:
        process.terminate()
        await process.wait()
    assert f" WARNING watti_watchman: {path}: {expected} (line 29)" in first


def test_http_host_defaults_to_loopback_and_the_environment_opts_in() -> None:
    text = BASE.format(port=1502).replace("  host: 127.0.0.1\n  port: 0", "  port: 0")
    assert parse_config(text, {}).config.http.host == "127.0.0.1"
    assert parse_config(text, {"WATTI_HTTP_HOST": "0.0.0.0"}).config.http.host == "0.0.0.0"
    explicit = BASE.format(port=1502)
    assert parse_config(explicit, {"WATTI_HTTP_HOST": "0.0.0.0"}).config.http.host == "127.0.0.1"


def test_accepted_configurations_build_every_component() -> None:
    from watti_watchman.app import Application  # noqa: PLC0415
    from watti_watchman.sim.demo import demo_config_text  # noqa: PLC0415

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text().split("```yaml\n", 1)[1].split("```", 1)[0]
    demo_env = {
        "WATTI_DEMO_MQTT_PORT": "1883",
        "WATTI_DEMO_GRID_PORT": "1502",
        "WATTI_DEMO_BATTERY_PORT": "1503",
        "WATTI_DEMO_PORTAL_ID": "c0ffee000001",
    }
    accepted = [
        (BASE.format(port=1502), {}),
        ((root / "docs" / "examples" / "original.yml").read_text(), {}),
        (readme, {"VICTRON_PORTAL_ID": "c0ffee123456"}),
        (demo_config_text(), demo_env),
    ]
    for text, env in accepted:
        app = Application(parse_config(text, env), http_port=0)
        assert app.components
