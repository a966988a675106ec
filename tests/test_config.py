"""Configuration: the original example, schema errors with paths and lines, resolution, env."""

import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from watti_watchman.cli import EXIT_CONFIG, EXIT_OK, main
from watti_watchman.config.loader import ConfigError, parse_config
from watti_watchman.config.schema import schema_text
from watti_watchman.config.services import ChargeControllerConfig, HassFeederConfig

ROOT = Path(__file__).resolve().parent.parent
ORIGINAL = ROOT / "docs" / "examples" / "original.yml"


def original_text() -> str:
    return ORIGINAL.read_text()


def issues_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env or {})
    return [str(issue) for issue in caught.value.issues]


def test_original_example_validates_unchanged() -> None:
    shared = ROOT.parent / "shared" / "examples" / "watti_watchman.original.yml"
    if shared.exists():  # the copy in docs/ must stay identical to the seed
        assert shared.read_text() == original_text()
    resolved = parse_config(original_text(), {})
    controller = resolved.config.services[2]
    assert isinstance(controller, ChargeControllerConfig)
    assert controller.charge_limits == {"0": 9000, "90": 2000, "97": 1000, "99": 500}
    assert controller.discharge_limits == {"100": 6000, "10": 1000, "5": 0}
    hass = resolved.config.services[0]
    assert isinstance(hass, HassFeederConfig)
    assert hass.update_interval == 5
    assert hass.discovery_prefix == "homeassistant"
    assert resolved.config.http.port == 9292


def test_check_command_exits_0_on_the_original(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(ORIGINAL)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "meter hak: Janitza at 10.100.6.27:502 unit 2" in out
    assert "ChargeController" in out


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'type: "Janitza"',
            'type: "Jantiza"',
            "meters[0].type: unknown meter type (known: Janitza, ModbusMeter, MqttBattery, MqttMeter, Seplos,"
            " Victron) (line 13)",
        ),
        (
            'grid_meter_name: "hak"\n    battery',
            'grid_meter_name: "hakk"\n    battery',
            "services[2].grid_meter_name: no meter named 'hakk' (line 40)",
        ),
        ("port: 502", 'port: "502"', "meters[0].port: expected an integer (line 16)"),
        ("unit: 2", "unit: 2\n    colour: red", "meters[0].colour: unknown key (line 18)"),
        (
            'type: "HassFeeder"',
            'type: "HassFeedr"',
            "services[0].type: unknown service type (known: ChargeController,",
        ),
        (
            'battery_controller_name: "battery_victron"',
            'battery_controller_name: "hak"',
            "services[2].battery_controller_name: meter 'hak' (Janitza) does not accept battery setpoints",
        ),
        ('name: "battery_janitza"', 'name: "hak"', "meters[1].name: duplicate name 'hak' (line 20)"),
        (
            'mqtt_connection_name: "mqtt_k8s"',
            'mqtt_connection_name: "mqtt_k9s"',
            "services[0].mqtt_connection_name: no mqtt connection named 'mqtt_k9s'",
        ),
        ('"90": 2000', '"190": 2000', "services[2].charge_limits.190: key must match"),
        (
            "update_interval: 5",
            "update_interval: -5",
            "services[0].update_interval: must be > 0 (line 33)",
        ),
    ],
)
def test_bad_items_are_named_with_path_and_line(old: str, new: str, expected: str) -> None:
    text = original_text()
    assert old in text
    found = issues_of(text.replace(old, new, 1))
    assert any(issue.startswith(expected) for issue in found), found


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ('type: "Janitza"', 'type: "Jantiza"', "meters[0].type"),
        (
            'grid_meter_name: "hak"\n    battery',
            'grid_meter_name: "hakk"\n    battery',
            "services[2].grid_meter_name",
        ),
        ("port: 502", 'port: "502"', "meters[0].port"),
        ("unit: 2", "unit: 2\n    colour: red", "meters[0].colour"),
    ],
)
def test_check_command_exits_2_naming_the_item(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, needle: str
) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(original_text().replace(old, new, 1))
    assert main(["check", "-c", str(bad)]) == EXIT_CONFIG
    assert needle in capsys.readouterr().err


def test_env_substitution_and_missing_variable() -> None:
    text = (
        original_text()
        .replace("id: abcdef012345", "id: ${PORTAL_ID}")
        .replace(
            'port: 1883\n\n  - name: "mqtt_venus"',
            'port: 1883\n    password: "${MQTT_PASSWORD}"\n\n  - name: "mqtt_venus"',
        )
    )
    resolved = parse_config(text, {"PORTAL_ID": "c0ffee123456", "MQTT_PASSWORD": "s3cret"})
    assert resolved.connection("mqtt_k8s").password == "s3cret"
    victron = resolved.meter("battery_victron")
    assert getattr(victron, "id", None) == "c0ffee123456"
    found = issues_of(text, {"PORTAL_ID": "c0ffee123456"})
    assert found == ["mqtt_connections[0].password: environment variable MQTT_PASSWORD is not set (line 7)"]


def test_yaml_syntax_error_names_the_line() -> None:
    found = issues_of("meters:\n  - type: Janitza\n    name: [unclosed\n")
    assert len(found) == 1
    assert "not valid YAML" in found[0]
    assert "(line 4)" in found[0] or "(line 3)" in found[0]


def test_unreadable_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(tmp_path / "missing.yml")]) == EXIT_CONFIG
    assert "cannot read" in capsys.readouterr().err


def test_unquoted_numeric_soc_keys_are_accepted() -> None:
    text = original_text().replace('"0": 9000', "0: 9000").replace('"5": 0', "5: 0")
    controller = parse_config(text, {}).config.services[2]
    assert isinstance(controller, ChargeControllerConfig)
    assert controller.charge_limits["0"] == 9000


def test_committed_schema_is_up_to_date() -> None:
    committed = (ROOT / "dist" / "schema.json").read_text()
    assert committed == schema_text(), "run: uv run watti-watchman schema > dist/schema.json"


def test_schema_command_prints_the_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == EXIT_OK
    schema = json.loads(capsys.readouterr().out)
    Draft202012Validator.check_schema(schema)
    original = yaml.safe_load(original_text())
    assert list(Draft202012Validator(schema).iter_errors(original)) == []
    bad = yaml.safe_load(original_text().replace('type: "Janitza"', 'type: "Nope"', 1))
    assert list(Draft202012Validator(schema).iter_errors(bad)) != []


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("watti-watchman ")


def test_configuration_reference_is_up_to_date() -> None:
    from watti_watchman.config.reference import render_reference  # noqa: PLC0415

    committed = (ROOT / "docs" / "CONFIGURATION.md").read_text()
    assert committed == render_reference(), "regenerate docs/CONFIGURATION.md (see its header)"


def test_env_substituted_plain_scalars_are_typed_quoted_stay_text() -> None:
    text = original_text().replace("port: 502\n    unit: 2", "port: ${GRID_PORT}\n    unit: 2", 1)
    meter = parse_config(text, {"GRID_PORT": "1502"}).meter("hak")
    assert getattr(meter, "port", None) == 1502
    quoted = original_text().replace("port: 502\n    unit: 2", 'port: "${GRID_PORT}"\n    unit: 2', 1)
    assert issues_of(quoted, {"GRID_PORT": "1502"}) == ["meters[0].port: expected an integer (line 16)"]


def test_readme_configuration_example_validates() -> None:
    readme = (ROOT / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    resolved = parse_config(example, {"VICTRON_PORTAL_ID": "c0ffee123456"})
    assert [m.name for m in resolved.config.meters] == ["hak", "battery_janitza", "battery_victron"]
    assert [s.type for s in resolved.config.services] == [
        "ChargeController",
        "VictronGridFeeder",
        "HassFeeder",
    ]


@pytest.mark.parametrize("page", ["ModbusMeter", "MqttMeter", "MqttBattery", "Seplos"])
def test_device_page_examples_validate(page: str) -> None:
    """Every YAML example of a device page that is a configuration (has `meters:`) validates."""
    text = (ROOT / "docs" / "devices" / f"{page}.md").read_text()
    examples = [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]
    configs = [example for example in examples if "meters:" in example]
    assert configs, f"{page}.md has no complete example"
    for example in configs:
        resolved = parse_config(example, {})
        assert page in {meter.type for meter in resolved.config.meters}
    assert f"docs/devices/{page}.md" in (ROOT / "README.md").read_text()
