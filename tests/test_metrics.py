"""The exposition renderer against prometheus_client's own `generate_latest` (the reference)."""

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from watti_watchman.clock import ManualClock
from watti_watchman.domain.quantities import Quantity, QuantityValues
from watti_watchman.http import HttpServer, build_http_app
from watti_watchman.latest import Latest
from watti_watchman.metrics import (
    PROCESS_MAX_AGE_S,
    PROCESS_STALE_S,
    Exposition,
    Families,
    Histogram,
    format_value,
)

TABLE: tuple[Quantity, ...] = (
    Quantity(
        "p1", "P1", "W", metric="watti_t_power_watts", metric_help="Power", metric_labels=(("phase", "l1"),)
    ),
    Quantity(
        "p2", "P2", "W", metric="watti_t_power_watts", metric_help="Power", metric_labels=(("phase", "l2"),)
    ),
    Quantity(
        "e",
        "E",
        "Wh",
        metric="watti_t_energy_joules",
        metric_type="counter",
        metric_help="E",
        metric_scale=3600.0,
    ),
    Quantity("hidden", "Not exported", None),
)


class TableMeter:
    """A meter with a table and nothing else, fed by the test."""

    def __init__(self, name: str, clock: ManualClock) -> None:
        self.name = name
        self.quantities = TABLE
        self.values: Latest[QuantityValues] = Latest(clock)
        self.fresh = True

    def is_fresh(self) -> bool:
        return self.fresh

    async def run(self) -> None:  # pragma: no cover - not run here
        return None

    def collect_metrics(self) -> Iterable[Metric]:
        return ()

    def status(self) -> Mapping[str, Any]:  # pragma: no cover - not used here
        return {}


def reference(*sources: Iterable[Metric]) -> bytes:
    """What prometheus_client writes for the same families merged by name, `_created` lines dropped."""
    merged: dict[str, Metric] = {}
    for families in sources:
        for family in families:
            if family.name in merged:
                merged[family.name].samples.extend(family.samples)
            else:
                merged[family.name] = family

    class Collector:
        def collect(self) -> Iterable[Metric]:
            return list(merged.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    lines = generate_latest(registry).decode().splitlines(keepends=True)
    created = {
        n for line in lines if line.startswith("# TYPE ") and (n := line.split()[2]).endswith("_created")
    }
    return "".join(line for line in lines if not any(c in line for c in created)).encode()


def own_families(value: float) -> list[Metric]:
    gauge = GaugeMetricFamily("watti_t_gauge", 'Odd "help" \\ with\nnewline', labels=["name", "reason"])
    gauge.add_metric(["a", 'quote " back \\ nl \n'], value)
    gauge.add_metric(["b", "x"], -value)
    counter = CounterMetricFamily("watti_t_events", "Events", labels=["name"])
    counter.add_metric(["a"], 3.0)
    plain = GaugeMetricFamily("watti_t_plain", "No labels")
    plain.add_metric([], value)
    return [gauge, counter, plain]


def test_render_matches_generate_latest_for_component_families() -> None:
    histogram = Histogram("watti_t_latency_seconds", "Latency (s)", "a", (0.001, 0.5, 1.0))
    for observed in (0.0005, 0.2, 3.0):
        histogram.observe(observed)
    for value in (0.0, 1.5, 1234567.0, 1.5e-07, math.inf, -math.inf, math.nan, 299792458.0):
        exposition = Exposition(process=False)
        exposition.add(lambda v=value: own_families(v))  # type: ignore[misc]
        exposition.add(histogram.collect)
        exposition.add(lambda v=value: own_families(v + 1)[:1])  # type: ignore[misc]
        expected = reference(own_families(value), histogram.family.collect(), own_families(value + 1)[:1])
        assert exposition.render() == expected
    assert b"_created" not in expected
    assert b'le="1.0"' in expected


def test_prepared_families_render_anew_exactly_when_a_sample_changes() -> None:
    """Lines are reused while samples are unchanged; any change (value, series, observation) shows."""
    families = Families()
    histogram = Histogram("watti_t_latency_seconds", "Latency (s)", "a", (0.001, 0.5))
    state: dict[str, list[tuple[list[str], float]]] = {"samples": [(["a"], 1.0), (["b"], 2.0)]}

    def collect() -> list[Metric]:
        gauge = families.gauge("watti_t_gauge", "Gauge").set(state["samples"])
        return [gauge, histogram]

    def expected() -> bytes:
        gauge = GaugeMetricFamily("watti_t_gauge", "Gauge", labels=["name"])
        for labels, value in state["samples"]:
            gauge.add_metric(labels, value)
        return reference([gauge], histogram.family.collect())

    exposition = Exposition(process=False)
    exposition.add(collect)
    changes: list[Callable[[], object]] = [
        lambda: None,
        lambda: histogram.observe(0.2),
        lambda: state.update(samples=[(["a"], 1.0), (["b"], 3.0)]),
        lambda: None,
        lambda: state.update(samples=[(["a"], 1.0)]),
        lambda: state.update(samples=[(["a"], 1.0), (["c"], 1.0)]),
        lambda: histogram.observe(7.0),
    ]
    for change in changes:
        change()
        assert exposition.render() == expected()


def test_tables_render_like_the_families_they_describe() -> None:
    clock = ManualClock()
    meters = [TableMeter("hak", clock), TableMeter("bat", clock)]
    exposition = Exposition(process=False)
    for meter in meters:
        exposition.add(meter)
    assert exposition.render() == b"", "nothing before the first values"
    for step in range(3):
        meters[0].values.publish({"p1": 10.0 + step, "p2": -2.5, "e": 1000.0})
        meters[1].values.publish({"p1": 0.1 * step, "e": 5.0 + step})  # p2 absent: no sample

        def families(name: str, values: QuantityValues) -> list[Metric]:
            power = GaugeMetricFamily("watti_t_power_watts", "Power", labels=["name", "phase"])
            for key, phase in (("p1", "l1"), ("p2", "l2")):
                if key in values:
                    power.add_metric([name, phase], values[key])
            energy = CounterMetricFamily("watti_t_energy_joules", "E", labels=["name"])
            energy.add_metric([name], values["e"] * 3600.0)
            return [power, energy]

        values = [m.values.snapshot() for m in meters]
        assert all(v is not None for v in values)
        expected = reference(*(families(m.name, v.value) for m, v in zip(meters, values, strict=True) if v))
        assert exposition.render() == expected
        assert exposition.render() == expected, "unchanged values: same body from the prepared lines"
    meters[1].fresh = False
    assert b'name="bat"' not in exposition.render(), "a stale meter exports no values"


def test_format_value_is_prometheus_clients() -> None:
    from prometheus_client.utils import floatToGoString  # noqa: PLC0415

    for value in (0, 1, -1, 0.1, 1e-9, 999999.9, 1e6, 1.5e6, -2e7, 12345678.9, math.inf, math.nan, 2**53):
        assert format_value(value) == floatToGoString(value)  # type: ignore[no-untyped-call]


def _cpu_line(body: bytes) -> bytes:
    return next(line for line in body.splitlines() if line.startswith(b"process_cpu_seconds_total "))


def _burn(cpu_s: float) -> None:
    started = time.process_time()
    while time.process_time() - started < cpu_s:
        pass


def test_process_families_are_read_at_most_once_per_max_age() -> None:
    """A scrape every 200 ms must not read /proc every time, nor wait for it: process_* stay as
    read for PROCESS_MAX_AGE_S, and `refresh` (after a scrape is answered) reads them again; a
    render reads them itself only when they are older than PROCESS_STALE_S (rare scrapes)."""
    clock = ManualClock()
    exposition = Exposition(clock=clock)
    first = _cpu_line(exposition.render())
    _burn(0.05)
    clock.now_s += PROCESS_MAX_AGE_S * 0.9
    exposition.refresh()
    assert _cpu_line(exposition.render()) == first, "read again within the max age"
    clock.now_s += PROCESS_MAX_AGE_S * 0.1
    assert _cpu_line(exposition.render()) == first, "the render read /proc"
    exposition.refresh()
    second = _cpu_line(exposition.render())
    assert second != first, "not read again after the max age"
    _burn(0.05)
    clock.now_s += PROCESS_STALE_S
    assert _cpu_line(exposition.render()) == second, "read before they were stale"
    clock.now_s += 0.001
    assert _cpu_line(exposition.render()) != second, "a rare scrape showed stale values"


async def test_a_scrape_reads_proc_after_its_reply(clock: ManualClock) -> None:
    """/metrics answers with process_* as read before and re-reads them once answered."""
    exposition = Exposition(clock=clock)
    server = HttpServer(build_http_app(exposition, [], dict), "127.0.0.1", 0)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:

            async def scrape() -> bytes:
                async with http.get(f"http://127.0.0.1:{server.port}/metrics") as response:
                    return _cpu_line(await response.read())

            first = await scrape()
            _burn(0.05)
            clock.now_s += PROCESS_MAX_AGE_S
            assert await scrape() == first, "the reply waited for /proc"
            assert await scrape() != first, "not read again after the reply"
    finally:
        await server.stop()
