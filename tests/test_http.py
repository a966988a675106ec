"""HTTP endpoints: /metrics exposition format, /healthz freshness, /api/status."""

import asyncio
import subprocess
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.support.tools import require_tool
from watti_watchman.clock import ManualClock
from watti_watchman.domain.readings import PowerSample
from watti_watchman.http import HttpServer, build_http_app
from watti_watchman.latest import Latest
from watti_watchman.metrics import Exposition


class FakeMeter:
    """A meter stand-in that owns a `Latest` (no network: the HTTP layer is under test)."""

    def __init__(self, name: str, clock: ManualClock) -> None:
        self.name = name
        self.power: Latest[PowerSample] = Latest(clock)

    def is_fresh(self) -> bool:
        return self.power.is_fresh(1.0)

    async def run(self) -> None:  # pragma: no cover - not run here
        return None

    def status(self) -> Mapping[str, Any]:
        return {"fresh": self.is_fresh()}

    def collect_metrics(self) -> Iterable[Metric]:
        power = GaugeMetricFamily("watti_test_power_watts", "power", labels=["name", "phase"])
        sample = self.power.get(1.0)
        if sample is not None:
            power.add_metric([self.name, "l1"], sample.l1_w)
        yield power
        reads = CounterMetricFamily("watti_test_reads", "reads", labels=["name"])
        reads.add_metric([self.name], 3)
        yield reads


async def test_metrics_healthz_and_status(clock: ManualClock) -> None:
    meters = [FakeMeter("hak", clock), FakeMeter("battery", clock)]
    exposition = Exposition()
    for meter in meters:
        exposition.add(meter)
    server = HttpServer(
        build_http_app(exposition, meters, lambda: {"meters": {m.name: m.status() for m in meters}}),
        "127.0.0.1",
        0,
    )
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 503
                assert (await response.json())["stale_meters"] == ["hak", "battery"]
            for meter in meters:
                meter.power.publish(PowerSample(100.0, 0.0, 0.0, 100.0))
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
            clock.advance(1.5)
            meters[1].power.publish(PowerSample(5.0, 0.0, 0.0, 5.0))
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 503
                assert (await response.json())["stale_meters"] == ["hak"]
            async with http.get(f"{base}/metrics") as response:
                assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
                text = await response.text()
            async with http.get(f"{base}/api/status") as response:
                assert (await response.json())["meters"]["hak"] == {"fresh": False}
            async with http.get(f"{base}/") as response:
                assert response.status == 200
                assert "WattiWatchman" in await response.text()
    finally:
        await server.stop()
    # One family per name (merged across meters), typed, and the stale meter's value dropped.
    assert text.count("# TYPE watti_test_power_watts gauge") == 1
    assert text.count("# HELP watti_test_reads_total") == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    power = families["watti_test_power_watts"]
    assert [(s.labels["name"], s.value) for s in power.samples] == [("battery", 5.0)]
    assert families["watti_test_reads"].type == "counter"
    promtool = require_tool("promtool")
    checked = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == ""
    assert checked.stderr.strip() == ""
