"""Deployment artefacts: manifests, systemd unit, Dockerfile, Prometheus rules, Grafana dashboard.

The key check: every metric the alert rules, the dashboard and the operator docs reference is one
a real running instance exports (scraped from /metrics of an Application wired to loopback peers).
"""

import asyncio
import configparser
import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.brokers import TestBroker
from tests.support.modbus_fixtures import load_janitza_sample
from tests.support.tools import require_tool
from tests.support.waiting import wait_until
from watti_watchman.app import Application
from watti_watchman.config.loader import parse_config
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.sim.janitza_server import JanitzaServer
from watti_watchman.sim.venus import VenusEmulator

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "watti-watchman.json"
UNIT = DEPLOY / "systemd" / "watti-watchman.service"
DOCKERFILE = ROOT / "Dockerfile"
OPERATOR_DOCS = ("INSTALL", "VICTRON", "COMMISSIONING", "TUNING", "TROUBLESHOOTING", "UPGRADING")
TROUBLESHOOTING = ROOT / "docs" / "TROUBLESHOOTING.md"

# Series Prometheus itself adds for every target or rule evaluation.
SYNTHETIC_SERIES = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
        "ALERTS",
        "ALERTS_FOR_STATE",
    }
)
SYNTHETIC_LABELS = frozenset({"job", "instance", "__name__", "le", "quantile"})
SERIES_SUFFIXES: Mapping[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


# -- helpers -----------------------------------------------------------------------------------


def yaml_documents(path: Path) -> list[Any]:
    """Every non-empty YAML document in `path`."""
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def k8s_objects() -> dict[str, dict[str, Any]]:
    """The Kubernetes objects in deploy/k8s by `Kind/name`."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml_documents(path):
            objects[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return objects


def rule_groups() -> list[dict[str, Any]]:
    """The groups of deploy/prometheus/rules.yml."""
    groups: list[dict[str, Any]] = yaml_documents(RULES)[0]["groups"]
    return groups


def rules() -> Iterator[dict[str, Any]]:
    """Every recording and alert rule."""
    for group in rule_groups():
        yield from group["rules"]


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard JSON."""
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def dashboard_panels() -> Iterator[dict[str, Any]]:
    """Every panel, including panels nested in collapsed rows."""
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> list[str]:
    """The PromQL expression of every panel target."""
    return [target["expr"] for panel in dashboard_panels() for target in panel.get("targets", [])]


def dashboard_variable_queries() -> list[str]:
    """The query of every Prometheus query variable."""
    queries: list[str] = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


GRAFANA_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def substitute_grafana_variables(expr: str) -> str:
    """Replace Grafana variables with values PromQL accepts (`$__rate_interval` → `1m`)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return "1m" if name in {"__rate_interval", "__interval", "__range"} else "x"

    return GRAFANA_VARIABLE.sub(replace, expr)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKEN = re.compile(
    r"(?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)(?:ms|[smhdwy])?)"
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\()?"
)
PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
    | {"offset", "inf", "nan", "start", "end"}
)


@dataclass(frozen=True)
class Reference:
    """A metric name used in a PromQL expression and the label names its selector matches on."""

    metric: str
    labels: frozenset[str]


def promql_references(expr: str) -> set[Reference]:
    """Metric names (with selector label names) an expression reads; functions and keywords skipped."""
    expr = substitute_grafana_variables(expr)
    labels_by_metric: dict[str, set[str]] = {}
    for metric, matchers in _SELECTOR.findall(expr):
        labels_by_metric.setdefault(metric, set()).update(_MATCHER.findall(matchers))
    bare = _STRING.sub('""', expr)
    bare = _BRACES.sub(" ", bare)
    bare = _BRACKETS.sub(" ", bare)
    bare = _GROUPING.sub(" ", bare)
    names = {
        match["ident"]
        for match in _TOKEN.finditer(bare)
        if match["ident"] and not match["call"] and match["ident"] not in PROMQL_KEYWORDS
    }
    return {Reference(name, frozenset(labels_by_metric.get(name, ()))) for name in names}


def grafana_variable_references(query: str) -> set[Reference]:
    """References of a variable query: `label_values(<selector>, <label>)` or plain PromQL."""
    match = re.fullmatch(r"\s*label_values\(\s*(?:(.+?)\s*,\s*)?\w+\s*\)\s*", query)
    if match is not None:
        return promql_references(match.group(1)) if match.group(1) else set()
    return promql_references(query)


def rule_references() -> set[Reference]:
    """Everything the rule expressions read."""
    return {ref for rule in rules() for ref in promql_references(rule["expr"])}


def dashboard_references() -> set[Reference]:
    """Everything the dashboard's panels and variables read."""
    refs = {ref for expr in dashboard_exprs() for ref in promql_references(expr)}
    return refs | {
        ref for query in dashboard_variable_queries() for ref in grafana_variable_references(query)
    }


def doc_references() -> set[Reference]:
    """`watti_…` metric names mentioned in the operator docs (recording rules `watti:` too)."""
    refs: set[Reference] = set()
    for doc in OPERATOR_DOCS:
        path = ROOT / "docs" / f"{doc}.md"
        text = path.read_text(encoding="utf-8")
        for name in re.findall(r"\bwatti[_:][a-z0-9_:]*[a-z0-9]\b(?!\.\w)", text):
            if not name.startswith("watti_watchman"):  # the package, its config file, client ids
                refs.add(Reference(name, frozenset()))
    return refs


def recorded_names() -> set[str]:
    """Series produced by the recording rules."""
    return {rule["record"] for rule in rules() if "record" in rule}


@dataclass(frozen=True)
class Exported:
    """What a running instance exports: series names and each series' label names."""

    families: Mapping[str, str]
    labels: Mapping[str, frozenset[str]]

    @classmethod
    def parse(cls, text: str) -> "Exported":
        families: dict[str, str] = {}
        labels: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(text):
            families[family.name] = family.type
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
        return cls(families, {name: frozenset(names) for name, names in labels.items()})

    def series_names(self) -> set[str]:
        """Names of the series Prometheus stores: counters end in `_total`, histograms are split."""
        names: set[str] = set()
        for family, kind in self.families.items():
            names.update(family + suffix for suffix in SERIES_SUFFIXES.get(kind, ("",)))
        return names


def problems(
    refs: Iterable[Reference], exported: Exported, recorded: set[str], *, prose: bool = False
) -> list[str]:
    """Unknown metric names, and selector labels an exported series never carries.

    `prose`: text may also name a histogram as a whole (`…_seconds` for its `_bucket` series).
    """
    series = exported.series_names()
    if prose:
        series |= {name for name, kind in exported.families.items() if kind == "histogram"}
    found: list[str] = []
    for ref in sorted(refs, key=lambda r: r.metric):
        if ref.metric in SYNTHETIC_SERIES or ref.metric in recorded:
            continue
        if ref.metric not in series:
            found.append(f"{ref.metric}: not exported")
            continue
        carried = exported.labels.get(ref.metric)
        if carried is not None and not ref.labels <= carried | SYNTHETIC_LABELS:
            found.append(f"{ref.metric}: no label {sorted(ref.labels - carried - SYNTHETIC_LABELS)}")
    return found


# -- the running instance ----------------------------------------------------------------------

POPULATED = (
    "watti_janitza_real_power_watts",
    "watti_victron_hub4_mode",
    "watti_victron_soc_ratio",
    "watti_controller_reason",
    "watti_controller_setpoint_watts",
    "watti_controller_decision_latency_seconds_bucket",
)
"""Series that exist only once meters have fresh readings and the controller has decided."""


def instance_config(grid: JanitzaServer, battery: JanitzaServer, broker: TestBroker, portal: str) -> str:
    """A configuration using every meter and service type against the loopback peers."""
    grid_feeder = (
        f"""
  - type: VictronGridFeeder
    mqtt_connection_name: venus
    grid_meter_name: hak
    client_id: {portal}_grid
"""
        if importlib.util.find_spec("watti_watchman.services.victron_grid") is not None
        else ""
    )
    return f"""
mqtt_connections:
  - {{name: venus, host: 127.0.0.1, port: {broker.port}, client_id: {portal}w}}
meters:
  - {{type: Janitza, name: hak, host: 127.0.0.1, port: {grid.port}, timeout: 0.3}}
  - {{type: Janitza, name: battery_janitza, host: 127.0.0.1, port: {battery.port}, timeout: 0.3}}
  - {{type: Victron, name: battery_victron, mqtt_connection_name: venus, id: {portal}}}
services:
  - type: ChargeController
    grid_meter_name: hak
    battery_meter_name: battery_janitza
    battery_controller_name: battery_victron
  - {{type: HassFeeder, mqtt_connection_name: venus, update_interval: 0.2, base_topic: {portal}}}
  - {{type: HassDynamicConfig, mqtt_connection_name: venus, base_topic: {portal}}}{grid_feeder}
http: {{host: 127.0.0.1, port: 0}}
"""


async def _refresh_windows(servers: Iterable[JanitzaServer]) -> None:
    """Emulate the meters' 200 ms measuring windows: change the frequency value each window."""
    tick = 0
    while True:
        tick += 1
        for server in servers:
            values = list(server.values)
            values[25] = 50.0 + (tick % 7) * 0.01
            server.set_values(values)
        await asyncio.sleep(0.2)


@pytest.fixture
async def exported(broker: TestBroker, unique_id: str) -> AsyncIterator[Exported]:
    """/metrics of a running Application (every meter and service type), once fully populated."""
    sample = load_janitza_sample()
    async with JanitzaServer(sample) as grid, JanitzaServer(sample) as battery:
        venus_connection = MqttConnectionConfig(
            name="gx", host=broker.host, port=broker.port, client_id=f"{unique_id}gx"
        )
        venus = VenusEmulator(venus_connection, unique_id)
        app = Application(parse_config(instance_config(grid, battery, broker, unique_id), env={}))
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(venus.run()),
            asyncio.create_task(_refresh_windows([grid, battery])),
        ]
        running = asyncio.create_task(app.run(stop))
        text = ""
        try:
            await wait_until(lambda: app.http is not None and app.http.port != 0, 5.0, "HTTP server")
            assert app.http is not None
            url = f"http://127.0.0.1:{app.http.port}/metrics"
            async with aiohttp.ClientSession() as http:

                async def populated() -> bool:
                    nonlocal text
                    async with http.get(url) as response:
                        text = await response.text()
                    return all(re.search(rf"^{name}\{{", text, re.MULTILINE) for name in POPULATED)

                deadline = asyncio.get_running_loop().time() + 8.0
                while not await populated():
                    missing = [n for n in POPULATED if not re.search(rf"^{n}\{{", text, re.MULTILINE)]
                    assert asyncio.get_running_loop().time() < deadline, f"never populated: {missing}"
                    await asyncio.sleep(0.05)
            yield Exported.parse(text)
        finally:
            stop.set()
            await asyncio.wait_for(running, 10.0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_rules_dashboard_and_docs_reference_only_exported_metrics(exported: Exported) -> None:
    recorded = recorded_names()
    sources = {
        "deploy/prometheus/rules.yml": rule_references(),
        "deploy/grafana/watti-watchman.json": dashboard_references(),
        "docs (operator guides)": doc_references(),
    }
    report = {
        source: problems(refs, exported, recorded, prose=source.startswith("docs"))
        for source, refs in sources.items()
    }
    assert report == {source: [] for source in sources}
    # The checks above must actually see the references (guards against a broken extractor).
    assert {"watti_controller_failsafe", "watti_victron_hub4_mode", "watti_janitza_up"} <= {
        ref.metric for ref in sources["deploy/prometheus/rules.yml"]
    }
    assert "watti_controller_decision_latency_seconds_bucket" in {
        ref.metric for ref in sources["deploy/grafana/watti-watchman.json"]
    }


def test_promql_reference_extraction() -> None:
    refs = promql_references(
        "histogram_quantile(0.99, sum by (name, le) ("
        'rate(watti_x_seconds_bucket{name="$c"}[$__rate_interval]))) > 0.1'
        ' and on (name) watti_y{phase=~"l1|l2"} * -1e3 or vector(0) unless watti:rec:avg_1m offset 5m'
    )
    assert refs == {
        Reference("watti_x_seconds_bucket", frozenset({"name"})),
        Reference("watti_y", frozenset({"phase"})),
        Reference("watti:rec:avg_1m", frozenset()),
    }
    assert grafana_variable_references("label_values(watti_up, name)") == {Reference("watti_up", frozenset())}
    assert grafana_variable_references("label_values(name)") == set()
    exported = Exported.parse(
        '# TYPE watti_c_total counter\nwatti_c_total{name="a"} 1\n'
        '# TYPE watti_h_seconds histogram\nwatti_h_seconds_bucket{le="+Inf",name="a"} 1\n'
        'watti_h_seconds_sum{name="a"} 1\nwatti_h_seconds_count{name="a"} 1\n'
        '# TYPE watti_g gauge\nwatti_g{name="a"} 1\n'
    )
    good = {Reference(n, frozenset({"name"})) for n in ("watti_c_total", "watti_h_seconds_bucket", "watti_g")}
    assert problems(good, exported, set()) == []
    bad = {
        Reference("watti_c", frozenset()),
        Reference("watti_g_total", frozenset()),
        Reference("watti_h_seconds", frozenset()),
        Reference("watti_g", frozenset({"phase"})),
    }
    assert problems(bad, exported, set()) == [
        "watti_c: not exported",
        "watti_g: no label ['phase']",
        "watti_g_total: not exported",
        "watti_h_seconds: not exported",
    ]


# -- Prometheus --------------------------------------------------------------------------------


def test_promtool_check_rules_is_clean() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", str(PROMETHEUS / "rules_test.yml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_scrapes_every_200_ms() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml_documents(PROMETHEUS / "prometheus.yml")[0]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "watti-watchman"]
    assert job["scrape_interval"] == "200ms"
    assert _duration_s(job["scrape_timeout"]) <= _duration_s(job["scrape_interval"])


def test_every_required_alert_exists_and_has_a_runbook_section() -> None:
    alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    required = {
        "WattiMeterDown",
        "WattiControllerFailsafe",
        "WattiHub4ModeNotExternalControl",
        "WattiPassthruWhileCommanding",
        "WattiFeedInHigh",
    }
    assert required <= set(alerts)
    headings = set(re.findall(r"^##+ (\w+)\s*$", TROUBLESHOOTING.read_text(encoding="utf-8"), re.MULTILINE))
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
        assert rule["annotations"]["runbook_url"] == f"docs/TROUBLESHOOTING.md#{name.lower()}"
        assert name in headings, f"docs/TROUBLESHOOTING.md has no section '## {name}'"


def test_prometheus_operator_rule_carries_the_same_groups() -> None:
    rule = k8s_objects()["PrometheusRule/watti-watchman"]
    assert rule["spec"]["groups"] == rule_groups()


# -- Kubernetes --------------------------------------------------------------------------------


def _duration_s(text: str) -> float:
    """`200ms`, `1m`, `30s` → seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert match is not None, text
    return float(match.group(1)) * units[match.group(2)]


def test_manifests_parse_and_are_kubernetes_objects() -> None:
    paths = sorted([*K8S.glob("*.yaml"), *PROMETHEUS.glob("*.yml")])
    assert len(paths) >= 8
    for path in paths:
        assert yaml_documents(path), path
    objects = k8s_objects()
    assert set(objects) >= {
        "Deployment/watti-watchman",
        "Service/watti-watchman",
        "ServiceMonitor/watti-watchman",
        "PrometheusRule/watti-watchman",
        "Secret/watti-watchman-config",
        "Secret/watti-watchman-env",
    }
    for obj in objects.values():
        assert {"apiVersion", "kind", "metadata"} <= set(obj)


def test_deployment_runs_one_non_root_replica_with_probes_and_secret_config() -> None:
    objects = k8s_objects()
    deployment = objects["Deployment/watti-watchman"]["spec"]
    assert deployment["replicas"] == 1
    assert deployment["strategy"] == {"type": "Recreate"}
    pod = deployment["template"]["spec"]
    pod_labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"requests", "limits"} <= set(container["resources"])
    assert container["args"] == ["run", "-c", "/config/watti_watchman.yml"]
    assert [p["containerPort"] for p in container["ports"]] == [9292]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_volume = next(name for name, m in mounts.items() if m["mountPath"] == "/config")
    secret_name = volumes[config_volume]["secret"]["secretName"]
    assert f"Secret/{secret_name}" in objects
    assert "watti_watchman.yml" in objects[f"Secret/{secret_name}"]["stringData"]
    env_secret = container["envFrom"][0]["secretRef"]["name"]
    assert f"Secret/{env_secret}" in objects
    assert {"name": "WATTI_HTTP_HOST", "value": "0.0.0.0"} in container["env"]  # probes reach the pod


def test_service_and_servicemonitor_scrape_the_pod_every_200_ms() -> None:
    objects = k8s_objects()
    pod_labels = objects["Deployment/watti-watchman"]["spec"]["template"]["metadata"]["labels"]
    service = objects["Service/watti-watchman"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {port["name"] for port in service["spec"]["ports"]}
    monitor = objects["ServiceMonitor/watti-watchman"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "200ms"
    assert _duration_s(endpoint["scrapeTimeout"]) <= _duration_s(endpoint["interval"])


def test_secret_example_holds_a_valid_configuration() -> None:
    objects = k8s_objects()
    text = objects["Secret/watti-watchman-config"]["stringData"]["watti_watchman.yml"]
    env = objects["Secret/watti-watchman-env"]["stringData"]
    resolved = parse_config(text, env=env)
    assert resolved.config.http.port == 9292


# -- systemd -----------------------------------------------------------------------------------


def _unit() -> dict[str, dict[str, list[str]]]:
    """The unit file as section → key → values (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_runs_as_own_user_restarts_on_failure_and_is_hardened() -> None:
    unit = _unit()
    assert set(unit) == {"Unit", "Service", "Install"}
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert "network-online.target" in unit["Unit"]["After"][-1]
    assert re.fullmatch(r"\S+/watti-watchman run -c \S+/watti_watchman\.yml", service["ExecStart"])
    assert service["User"] == service["Group"] == "watti-watchman"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"
    assert int(service["LimitNOFILE"]) >= 512  # room above the HTTP server's descriptor reserve
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == value, key
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    # configparser agrees on the structure (no stray keys outside sections)
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    assert parser.sections() == ["Unit", "Service", "Install"]


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The virtualenv does not exist here: point ExecStart at an existing binary.
    copy = tmp_path / UNIT.name
    copy.write_text(re.sub(r"ExecStart=\S+", "ExecStart=/bin/true", UNIT.read_text(encoding="utf-8")))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not result.stderr.strip(), result.stderr


# -- container ---------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_with_healthcheck() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    instructions = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    froms = [line for line in instructions if line.startswith("FROM ")]
    assert len(froms) >= 2
    assert re.search(r"uv sync --locked --no-dev", text)
    user = [line for line in instructions if line.startswith("USER ")][-1]
    assert re.fullmatch(r"USER [1-9]\d*(:[1-9]\d*)?", user), user
    assert "EXPOSE 9292" in instructions
    assert re.search(r"^HEALTHCHECK .*\\$", text, re.MULTILINE)
    assert "WATTI_HEALTHCHECK_URL=http://127.0.0.1:9292/healthz" in text
    assert "WATTI_HTTP_HOST=0.0.0.0" in text  # the published port reaches the server
    assert 'ENTRYPOINT ["watti-watchman"]' in instructions
    assert 'CMD ["run", "-c", "/config/watti_watchman.yml"]' in instructions
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for source in copied.split():
            assert (ROOT / source).exists(), source


def test_dockerignore_lets_the_build_inputs_through() -> None:
    text = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!uv.lock", "!README.md", "!src/"} <= set(lines)


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = require_tool("hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- Grafana -----------------------------------------------------------------------------------


def test_dashboard_is_importable_and_covers_the_required_views() -> None:
    board = dashboard()
    assert board["uid"] == "watti-watchman"
    panels = list(dashboard_panels())
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    names = {variable["name"] for variable in board["templating"]["list"]}
    assert {"datasource", "controller", "grid_meter", "battery_meter", "victron"} <= names
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            assert panel["gridPos"]["x"] >= 0, panel["title"]
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    exprs = " ".join(dashboard_exprs())
    for needed in (
        "watti_janitza_real_power_watts",  # grid per phase
        "watti_controller_target_watts",  # vs target
        "watti_controller_setpoint_watts",  # battery setpoints
        "watti_victron_soc_ratio",  # SOC
        "watti_controller_limit_watts",  # limits
        "watti_controller_reason",  # reason over time
        "watti_janitza_up",  # meter health
        "watti_janitza_sample_age_seconds_bucket",  # sample age
        "watti_controller_decision_latency_seconds_bucket",  # decision latency
    ):
        assert needed in exprs, needed


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    exprs = [substitute_grafana_variables(expr) for expr in dashboard_exprs()]
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "dashboard",
                        "rules": [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)],
                    }
                ]
            }
        )
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
