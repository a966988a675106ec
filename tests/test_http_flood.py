"""A connection flood on the HTTP port of the real service must not starve the control loop."""

import asyncio
import contextlib
import re
import time
import urllib.request

from tests.support.brokers import TestBroker
from tests.support.service import service_process
from tests.support.waiting import wait_until
from tests.test_end_to_end import BASE_LOAD_W, wait_regulated
from watti_watchman.sim.demo import simulated_site
from watti_watchman.sim.plant import constant

NOFILE = 128
"""The service's descriptor limit: small, so the flood reaches it."""
FLOOD = 1000
"""Connection attempts on loopback (more than NOFILE)."""
BURST = 100
"""Connection attempts in flight at once (asyncio's own accept loop took this many at a time)."""


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        text: str = response.read().decode()
        return text


async def test_a_connection_flood_leaves_the_meters_and_setpoints_alone(broker: TestBroker) -> None:
    extra_w = [0.0]

    def load(_: float) -> tuple[float, float, float]:
        return (BASE_LOAD_W[0] + extra_w[0], BASE_LOAD_W[1], BASE_LOAD_W[2])

    async with (
        simulated_site(load, constant(0.0), mqtt_port=broker.port) as site,
        service_process(site, nofile=NOFILE) as service,
    ):
        await wait_regulated(site, timeout_s=20)
        held: list[asyncio.StreamWriter] = []
        failed = 0
        writes_before = len(site.venus.writes)
        flood_started_s = time.monotonic()
        for _ in range(FLOOD // BURST):  # bursts: many connections pending at once
            opened = await asyncio.gather(
                *(asyncio.open_connection("127.0.0.1", service.http_port) for _ in range(BURST)),
                return_exceptions=True,
            )
            held += [result[1] for result in opened if not isinstance(result, BaseException)]
            failed += sum(isinstance(result, BaseException) for result in opened)
        # A hiccup of the grid meter while the flood holds every HTTP slot: the meter reconnects.
        connections_before = site.grid_server.connections
        await site.grid_server.stop()
        await site.grid_server.start()
        await wait_until(
            lambda: site.grid_server.connections > connections_before,
            timeout_s=5,
            what="the meter to reconnect",
        )
        extra_w[0] = 1500.0
        await wait_regulated(site, timeout_s=8)
        flood_s = time.monotonic() - flood_started_s
        setpoint_writes = [w for w in site.venus.writes[writes_before:] if w.path.endswith("AcPowerSetpoint")]
        last_by_path = {w.path: float(w.value or 0.0) for w in setpoint_writes}
        assert sum(last_by_path.values()) < -1500  # discharging for the new load
        for writer in held:
            writer.close()
        for writer in held:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        metrics = await asyncio.to_thread(fetch, f"http://127.0.0.1:{service.http_port}/metrics")
        refused = sum(
            float(value)
            for value in re.findall(
                r'^watti_http_connections_refused_total\{reason="\w+"\} (\S+)$', metrics, re.M
            )
        )
        assert refused > FLOOD / 2
        assert re.search(rf"^process_max_fds {NOFILE}\.0$", metrics, re.M), "process metrics exported"
        assert re.search(r"^process_open_fds \d", metrics, re.M)
        print(
            f"flood: {FLOOD} connections ({failed} failed to connect), {refused:.0f} refused by the service,"
            f" {len(setpoint_writes)} setpoint writes in the {flood_s:.1f} s of the flood"
        )
        log = service.log()
    assert " ERROR " not in log, log
    assert "out of system resource" not in log
