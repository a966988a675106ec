"""JanitzaMeter and read_meter against real pymodbus servers on loopback."""

import asyncio
import contextlib
import math
import re
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.modbus_fixtures import janitza_config
from tests.support.waiting import wait_until
from watti_watchman.clock import ManualClock, monotonic
from watti_watchman.domain.janitza import QUANTITIES_BY_KEY
from watti_watchman.domain.janitza_timing import FixedSchedule
from watti_watchman.domain.quantities import format_values
from watti_watchman.meters.base import PowerMeter
from watti_watchman.meters.janitza import JanitzaMeter, JanitzaReadError, read_meter
from watti_watchman.metrics import Exposition
from watti_watchman.registry import BuildContext, device_type
from watti_watchman.sim.janitza_server import JanitzaServer
from watti_watchman.sim.meter_clock import FIELD, WindowClock


@contextlib.asynccontextmanager
async def running(meter: JanitzaMeter) -> AsyncIterator[JanitzaMeter]:
    """Run the meter's poll loop for the duration of the block; surfaces its crashes."""
    task = asyncio.create_task(meter.run())
    try:
        yield meter
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def with_value(values: tuple[float, ...], key: str, value: float) -> tuple[float, ...]:
    changed = list(values)
    changed[QUANTITIES_BY_KEY[key].index] = value
    return tuple(changed)


def samples(meter: JanitzaMeter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every exposed sample of the meter, parsed back from the text format."""
    exposition = Exposition()
    exposition.add(meter)
    parsed = text_string_to_metric_families(exposition.render().decode())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in parsed for s in family.samples}


async def test_meter_publishes_every_quantity_with_both_framings(
    janitza_server_each_framing: JanitzaServer, janitza_sample: tuple[float, ...]
) -> None:
    meter = JanitzaMeter(janitza_config(janitza_server_each_framing))
    power_meter: PowerMeter = meter
    async with running(meter):
        await wait_until(meter.is_fresh, 2.0, "a reading")
    reading, power = meter.reading.snapshot(), meter.power.snapshot()
    assert reading is not None
    assert power is not None
    assert reading.value.values == janitza_sample
    assert reading.at_s == power.at_s
    assert power.value.total_w == 1934.24169921875
    assert power_meter.is_fresh()
    assert meter.status()["fresh"] is True


async def test_read_meter_prints_the_real_power_sum(janitza_server: JanitzaServer) -> None:
    read_once = device_type("Janitza").read_once
    assert read_once is not None
    reading = await read_once(janitza_config(janitza_server), BuildContext(monotonic, {}))
    table = format_values(reading.quantities, reading.values)
    shown = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in table.splitlines())
    assert len(shown) == 39
    assert [shown[f"Real power {p}"] for p in ("L1", "L2", "L3", "sum")] == [
        "614.0 W",
        "319.3 W",
        "1000.9 W",
        "1934.2 W",
    ]
    assert shown["Frequency"] == "50.01 Hz"
    assert shown["Rotation field"] == "1"


async def test_read_meter_explains_failures(
    janitza_server: JanitzaServer, janitza_sample: tuple[float, ...]
) -> None:
    config = janitza_config(janitza_server, timeout=0.1)
    janitza_server.fail_requests(0x02)
    with pytest.raises(JanitzaReadError, match=r"exception response 0x02: illegal data address") as error:
        await read_meter(config)
    assert error.value.reason == "exception_02"
    janitza_server.oversize_replies([0.0] * 4)
    with pytest.raises(JanitzaReadError, match=r"86 registers \(43 floats\), expected 78") as error:
        await read_meter(config)
    assert error.value.reason == "wrong_length"
    janitza_server.clear_faults()
    janitza_server.set_values(with_value(janitza_sample, "real_power_l1", math.nan))
    with pytest.raises(JanitzaReadError, match="NaN") as error:
        await read_meter(config)
    assert error.value.reason == "non_finite"
    janitza_server.set_values(janitza_sample)
    with pytest.raises(JanitzaReadError, match="check the unit id") as error:
        await read_meter(janitza_config(janitza_server, timeout=0.1, unit=99))
    assert error.value.reason == "exception_0b"
    with pytest.raises(JanitzaReadError, match=r"no reply within 0.1 s") as error:
        await read_meter(janitza_config(janitza_server, timeout=0.1, framing="rtu_over_tcp"))
    assert error.value.reason == "read_timeout"
    await janitza_server.stop()
    with pytest.raises(JanitzaReadError, match="refused") as error:
        await read_meter(config)
    assert error.value.reason == "connection_refused"


async def test_timeout_drops_the_connection_and_a_late_reply_is_never_used(
    janitza_sample: tuple[float, ...],
) -> None:
    async with JanitzaServer(janitza_sample, framing="rtu_over_tcp") as server:
        meter = JanitzaMeter(janitza_config(server, timeout=0.15))
        late = with_value(janitza_sample, "real_power_sum", 5000.0)
        server.set_values(late)
        async with running(meter):
            await wait_until(meter.is_fresh, 2.0, "a reading")
            requests = server.requests
            server.delay_responses(0.4)
            await wait_until(lambda: server.requests > requests, 2.0, "the delayed request")
            server.set_values(janitza_sample)
            seq = meter.reading.seq
            await wait_until(lambda: server.answers == server.requests, 2.0, "the late reply")
            await wait_until(lambda: meter.reading.seq > seq + 3, 2.0, "readings after the timeout")
        newer = [stamped.value.values for stamped in meter.reading.history() if stamped.seq > seq]
        assert newer
        assert all(values == janitza_sample for values in newer)
        assert meter.errors_by_reason["read_timeout"] == 1
        assert server.connections == 2
        assert meter.reconnects == 1


@pytest.mark.parametrize("code", [0x02, 0x04, 0x06, 0x0A, 0x0B])
async def test_exception_responses_are_counted_by_code(janitza_server: JanitzaServer, code: int) -> None:
    meter = JanitzaMeter(janitza_config(janitza_server))
    async with running(meter):
        await wait_until(meter.is_fresh, 2.0, "a reading")
        janitza_server.fail_requests(code, count=2)
        reason = f"exception_{code:02x}"
        await wait_until(lambda: meter.errors_by_reason[reason] == 2, 3.0, "two exception responses")
        seq = meter.reading.seq
        await wait_until(lambda: meter.reading.seq > seq, 3.0, "readings again")
    assert meter.reconnects == 2
    assert samples(meter)[("watti_janitza_errors_total", (("name", "hak"), ("reason", reason)))] == 2.0


async def test_oversized_reply_is_rejected_and_counted(
    janitza_server: JanitzaServer, janitza_sample: tuple[float, ...]
) -> None:
    meter = JanitzaMeter(janitza_config(janitza_server))
    async with running(meter):
        await wait_until(meter.is_fresh, 2.0, "a reading")
        janitza_server.oversize_replies([1.0, 2.0, 3.0, 4.0])
        await wait_until(lambda: meter.errors_by_reason["wrong_length"] >= 1, 2.0, "a rejected reply")
        seq = meter.reading.seq
        await wait_until(lambda: meter.errors_by_reason["wrong_length"] >= 3, 2.0, "more rejected replies")
        assert meter.reading.seq == seq, "nothing published from oversized replies"
        assert meter.reconnects == 0
        janitza_server.clear_faults()
        await wait_until(lambda: meter.reading.seq > seq, 2.0, "readings again")
    newest = meter.reading.snapshot()
    assert newest is not None
    assert newest.value.values == janitza_sample


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
async def test_non_finite_values_are_rejected(
    janitza_server: JanitzaServer, janitza_sample: tuple[float, ...], bad: float
) -> None:
    janitza_server.set_values(with_value(janitza_sample, "energy_import_l2", bad))
    meter = JanitzaMeter(janitza_config(janitza_server))
    async with running(meter):
        await wait_until(lambda: meter.errors_by_reason["non_finite"] >= 2, 2.0, "rejected replies")
        assert meter.reading.snapshot() is None
        janitza_server.set_values(janitza_sample)
        await wait_until(meter.is_fresh, 2.0, "a reading")


async def test_implausible_values_are_rejected(
    janitza_server: JanitzaServer, janitza_sample: tuple[float, ...]
) -> None:
    janitza_server.set_values(with_value(janitza_sample, "voltage_l1_n", 23000.0))
    meter = JanitzaMeter(janitza_config(janitza_server))
    async with running(meter):
        await wait_until(lambda: meter.errors_by_reason["implausible"] >= 1, 2.0, "a rejected reply")
    assert meter.reading.snapshot() is None


async def test_reconnects_after_a_server_restart(
    janitza_server: JanitzaServer, janitza_sample: tuple[float, ...]
) -> None:
    meter = JanitzaMeter(janitza_config(janitza_server))
    async with running(meter):
        await wait_until(meter.is_fresh, 2.0, "a reading")
        await janitza_server.stop()
        await wait_until(lambda: not meter.connected, 2.0, "the connection to drop")
        await wait_until(
            lambda: meter.errors_by_reason["connection_refused"] >= 1, 2.0, "a refused reconnect"
        )
        janitza_server.set_values(with_value(janitza_sample, "real_power_sum", 100.0))
        await janitza_server.start()
        await wait_until(
            lambda: (sample := meter.power.get(1.0)) is not None and sample.total_w == 100.0,
            3.0,
            "new readings",
        )
    assert meter.reconnects >= 2
    assert janitza_server.connections >= 2
    assert samples(meter)[("watti_janitza_reconnects_total", (("name", "hak"),))] == meter.reconnects


async def test_invert_negates_power(janitza_server: JanitzaServer) -> None:
    meter = JanitzaMeter(janitza_config(janitza_server, invert=True))
    async with running(meter):
        await wait_until(meter.is_fresh, 2.0, "a reading")
    power = meter.power.get(10.0)
    assert power is not None
    assert power.total_w == -1934.24169921875
    exposed = samples(meter)
    assert exposed[("watti_janitza_real_power_sum_watts", (("name", "hak"),))] == -1934.24169921875
    assert (
        exposed[("watti_janitza_energy_import_sum_joules_total", (("name", "hak"),))] == 193044.84375 * 3600
    )


async def test_energy_regression_is_flagged_and_counted(
    janitza_server: JanitzaServer, janitza_sample: tuple[float, ...]
) -> None:
    meter = JanitzaMeter(janitza_config(janitza_server))
    async with running(meter):
        await wait_until(meter.is_fresh, 2.0, "a reading")
        janitza_server.set_values(with_value(janitza_sample, "energy_export_sum", 193000.0))
        await wait_until(lambda: meter.energy_regressions == 1, 2.0, "a regressed reading")
    flagged = [s.value for s in meter.reading.history() if s.value.energy_regressed]
    assert [r.energy_regressed for r in flagged] == [{"energy_export_sum"}]
    assert samples(meter)[("watti_janitza_energy_regressions_total", (("name", "hak"),))] == 1.0


async def test_metrics_expose_all_values_and_counters(janitza_server: JanitzaServer) -> None:
    meter = JanitzaMeter(janitza_config(janitza_server))
    async with running(meter):
        await wait_until(lambda: meter.reads >= 3, 2.0, "a few reads")
    exposed = samples(meter)
    hak = (("name", "hak"),)
    assert exposed[("watti_janitza_up", hak)] == 1.0
    assert (
        exposed[("watti_janitza_voltage_volts", (("name", "hak"), ("phase", "l3_l1")))] == 406.6347961425781
    )
    assert exposed[("watti_janitza_real_power_watts", (("name", "hak"), ("phase", "l2")))] == 319.261962890625
    assert exposed[("watti_janitza_real_power_sum_watts", hak)] == 1934.24169921875
    assert (
        exposed[("watti_janitza_power_factor_ratio", (("name", "hak"), ("phase", "l1")))]
        == 0.8861088156700134
    )
    assert exposed[("watti_janitza_frequency_hertz", hak)] == 50.01308059692383
    assert exposed[("watti_janitza_energy_net_sum_joules", hak)] == 34515072.0 * 3600
    assert (
        exposed[("watti_janitza_energy_export_joules_total", (("name", "hak"), ("phase", "l1")))]
        == 61593.81640625 * 3600
    )
    value_series = [
        key for key in exposed if key[0].startswith("watti_janitza_") and ("phase", "l1") in key[1]
    ]
    assert len(value_series) == 9
    assert exposed[("watti_janitza_reads_total", hak)] >= 3
    assert exposed[("watti_janitza_errors_total", (("name", "hak"), ("reason", "read_timeout")))] == 0.0
    modes = [value for (name, _), value in exposed.items() if name == "watti_janitza_poll_mode"]
    assert sorted(modes) == [0.0, 0.0, 0.0, 1.0]
    assert ("watti_janitza_sample_age_seconds_count", hak) in exposed
    assert 0.198 <= exposed[("watti_janitza_refresh_period_seconds", hak)] <= 0.202
    assert 49.5 <= exposed[("watti_janitza_refresh_implied_frequency_hertz", hak)] <= 50.5
    assert ("watti_janitza_refresh_slips_total", hak) in exposed
    assert ("watti_janitza_refresh_reacquisitions_total", hak) in exposed
    assert ("watti_janitza_cycle_overruns_total", hak) in exposed


async def test_stale_meter_reports_down_and_drops_value_series(
    janitza_server: JanitzaServer, clock: ManualClock
) -> None:
    meter = JanitzaMeter(janitza_config(janitza_server, max_age=1.0), clock=clock)
    async with running(meter):
        await wait_until(meter.is_fresh, 2.0, "a reading")
        await janitza_server.stop()
        await wait_until(lambda: not meter.connected, 2.0, "the connection to drop")
        clock.advance(1.5)
        assert not meter.is_fresh()
        exposed = samples(meter)
    assert exposed[("watti_janitza_up", (("name", "hak"),))] == 0.0
    assert not [key for key in exposed if key[0] == "watti_janitza_real_power_sum_watts"]
    assert meter.status()["fresh"] is False
    assert meter.status()["power_w"] is None


async def refresh_on(server: JanitzaServer, clock: WindowClock, truth: dict[int, float]) -> None:
    """Serve a new window at each close of `clock` (window number in energy_export_l1); record when."""
    base = server.values
    index = QUANTITIES_BY_KEY["energy_export_l1"].index
    window = 0
    while True:
        window += 1
        await asyncio.sleep(max(0.0, clock.close_s(window) - time.monotonic()))
        server.set_values(with_value(base, "energy_export_l1", base[index] + window))
        truth[window] = server.changed_at_s[-1]


async def published_windows(
    meter: JanitzaMeter, base: tuple[float, ...], seen: list[tuple[int, float, float]]
) -> None:
    """(window number, time stamp s, arrival s) of every published reading."""
    index = QUANTITIES_BY_KEY["energy_export_l1"].index
    seq = 0
    while True:
        stamped = await meter.reading.wait_newer(seq, None)
        if stamped is None:
            continue
        seq = stamped.seq
        seen.append((round(stamped.value.values[index] - base[index]), stamped.at_s, time.monotonic()))


async def test_readings_are_stamped_with_the_true_window_close_on_a_moving_meter_clock(
    janitza_server: JanitzaServer,
) -> None:
    clock = WindowClock(FIELD, time.monotonic(), 0.0731)
    truth: dict[int, float] = {}
    seen: list[tuple[int, float, float]] = []
    meter = JanitzaMeter(janitza_config(janitza_server))
    async with running(meter):
        tasks = [
            asyncio.create_task(refresh_on(janitza_server, clock, truth)),
            asyncio.create_task(published_windows(meter, janitza_server.values, seen)),
        ]
        await asyncio.sleep(4.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    settled = [entry for entry in seen if entry[2] > seen[0][2] + 1.5]
    errors_ms = sorted(abs(at_s - truth[w]) * 1000 for w, at_s, _ in settled if w in truth)
    ages_ms = sorted((arrived_s - truth[w]) * 1000 for w, _, arrived_s in settled if w in truth)
    assert meter.schedule.mode == "phase_locked"
    assert len(errors_ms) >= 10
    assert errors_ms[len(errors_ms) // 2] < 4.0, "time stamps at the true close, not at arrival"
    assert ages_ms[len(ages_ms) // 2] < 10.0, "each window read within a few ms of its close"


async def test_sample_age_shows_late_reads_as_late(janitza_server: JanitzaServer) -> None:
    clock = WindowClock(FIELD, time.monotonic(), 0.0731)
    meter = JanitzaMeter(janitza_config(janitza_server))
    meter.schedule = FixedSchedule(0.2)  # blind polling: reads 0–200 ms after each change
    async with running(meter):
        task = asyncio.create_task(refresh_on(janitza_server, clock, {}))
        await wait_until(lambda: meter.new_windows >= 12, 5.0, "a dozen windows")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    ages_ms = sorted(age * 1000 for age in meter.sample_ages_s)
    assert ages_ms[len(ages_ms) // 2] > 30.0
