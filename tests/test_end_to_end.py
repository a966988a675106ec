"""End to end: `watti-watchman run` as a real process against simulated Janitza servers and a
Venus OS emulator on a real broker, closing the loop through the simulated plant."""

import asyncio
import json
import subprocess
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.brokers import TestBroker
from tests.support.service import service_process
from tests.support.tools import require_tool
from tests.support.waiting import wait_until
from watti_watchman.sim.demo import SimulatedSite, simulated_site
from watti_watchman.sim.plant import constant

BASE_LOAD_W = (300.0, 200.0, 250.0)
STEP_W = 2000.0
REGULATED_W = 80.0


def grid_total_w(site: SimulatedSite) -> float | None:
    """Total grid power of the newest completed grid-meter window (W), None before the first."""
    window = site.world.last_windows.get("grid")
    return None if window is None else window.sample.total_w


async def wait_regulated(site: SimulatedSite, timeout_s: float) -> float:
    """Wait until 5 consecutive grid windows are within ±REGULATED_W; returns the time taken (s)."""
    started = time.monotonic()
    good = 0
    last_seen = -1.0
    while good < 5:
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not regulated within {timeout_s} s: grid {grid_total_w(site)} W")
        window = site.world.last_windows.get("grid")
        if window is not None and window.end_s != last_seen:
            last_seen = window.end_s
            good = good + 1 if abs(window.sample.total_w) <= REGULATED_W else 0
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def fetch_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return str(response.read().decode())


def check_exposition(text: str) -> None:
    """The full /metrics of a running instance parses and `promtool check metrics` is silent."""
    families = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "watti_janitza_up",
        "watti_victron_up",
        "watti_controller_reason",
        "watti_hass_connected",
    } <= families
    assert "watti_controller_decision_latency_seconds" in families
    promtool = require_tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (checked.stdout + checked.stderr).strip() == ""


def fetch_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=2) as response:
        result: dict[str, object] = json.load(response)
        return result


async def test_run_regulates_out_a_2kw_step_and_writes_0w_on_sigterm(
    broker: TestBroker, tmp_path: Path
) -> None:
    extra_w = [0.0]

    def load(t_s: float) -> tuple[float, float, float]:
        return (BASE_LOAD_W[0] + extra_w[0], BASE_LOAD_W[1], BASE_LOAD_W[2])

    async with (
        simulated_site(load, constant(0.0), mqtt_port=broker.port) as site,
        service_process(site) as service,
    ):
        base = f"http://127.0.0.1:{service.http_port}"
        # Before the step the battery covers the base load (~750 W discharge).
        await wait_regulated(site, timeout_s=20)
        assert sum(site.world.plant.battery_w) < -600
        extra_w[0] = STEP_W
        await wait_until(lambda: (grid_total_w(site) or 0) > 1000, timeout_s=2, what="the step to show")
        settle_s = await wait_regulated(site, timeout_s=5)
        assert settle_s < 3.0
        assert sum(site.world.plant.battery_w) < -2500
        live = await asyncio.to_thread(fetch_json, f"{base}/api/live")
        assert live["reason"] == "regulating"
        health = await asyncio.to_thread(fetch_json, f"{base}/healthz")
        assert health["status"] == "ok"
        metrics_text = await asyncio.to_thread(fetch_text, f"{base}/metrics")
        writes_before = len(site.venus.writes)
        returncode = await service.stop()
        log = service.log()
        assert returncode == 0, log
        setpoint_writes = [w for w in site.venus.writes[writes_before:] if w.path.endswith("AcPowerSetpoint")]
        last_by_path = {w.path: w.value for w in setpoint_writes}
        assert sorted(last_by_path) == [f"vebus/276/Hub4/L{n}/AcPowerSetpoint" for n in (1, 2, 3)]
        assert set(last_by_path.values()) == {0}
        assert "wrote 0 W" in log
    check_exposition(metrics_text)
