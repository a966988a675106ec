"""Latency: a grid register change → the setpoint message on the broker, on moving meter clocks.

Real broker (Mosquitto when installed), real pymodbus servers, the Venus OS emulator and
`watti-watchman run` as its own process on the demo configuration (all services on). Both
simulated meters close their windows on their own clocks (`sim/meter_clock.py`): one grid
frequency wandering within 49.8–50.2 Hz, ±2 ms update jitter, and each meter's phase jumping by
up to ±190 ms every 2–4 s. The grid load steps between two values at random times (so at random
window phases); every window's values also carry a little noise, as a real meter's do.

The true register change times are what the servers recorded when the values changed; setpoint
arrival is timestamped in the same process on the same monotonic clock. A step's latency runs
from the change of the window that triggered the first setpoint moved by the step (the window
containing the step, or the next one) to that message. Reads/s and the re-lock time after each
phase jump come from the servers' own request logs. The plant is not closed: only the path.

Run: `uv run python -m benchmarks.bench_latency [--seconds 180] [--no-tradeoff] [--no-jumps]`.
"""

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import json
import random
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Sequence

from benchmarks.support import percentile, print_table, running_broker
from tests.support.service import service_process
from watti_watchman.clock import ManualClock
from watti_watchman.domain.janitza_timing import PhaseLockedSchedule, ReadTiming, TimingTuning
from watti_watchman.domain.readings import PowerSample
from watti_watchman.sim.demo import PORTAL_ID, simulated_site
from watti_watchman.sim.janitza_server import JanitzaServer
from watti_watchman.sim.meter_clock import MeterTiming, WindowClock, wander
from watti_watchman.sim.plant import constant
from watti_watchman.sim.world import EnergyCounters, janitza_values

LOADS_W = (1500.0, 300.0)
STEP_EVERY_S = (0.5, 1.2)
WARMUP_S = 8.0
MOVED_W = 100.0
"""A setpoint on L1 this far from the one before the step counts as the answer to it (W)."""
LOCKED_S = 0.015
"""A window first read more than this after its change (the p99 target) counts as not re-locked."""
PROBE_SPACINGS = ((2, 5), (1, 5), (1, 1), (2, 2), (2, 3), (3, 5), (5, 5))
"""Probe every n-th window after a jump / once quiet: the rows of the trade-off table."""
TIMING = MeterTiming(frequency=wander(11), jitter_s=0.002, jump_every_s=(2.0, 4.0), jump_max_s=0.19, seed=5)


@dataclasses.dataclass
class Meter:
    """One simulated meter driven on its own window clock."""

    server: JanitzaServer
    clock: WindowClock
    energy: EnergyCounters
    changes_s: list[float] = dataclasses.field(default_factory=list)
    """True time each window's values appeared (index = window)."""


def average_load_w(steps: Sequence[tuple[float, float]], start_s: float, end_s: float) -> float:
    """Mean of the piecewise-constant load (W) over [start, end]."""
    times = [t for t, _ in steps]
    first = max(0, bisect.bisect_right(times, start_s) - 1)
    total, t = 0.0, start_s
    for index in range(first, len(steps)):
        segment_end = steps[index + 1][0] if index + 1 < len(steps) else end_s
        segment_end = min(segment_end, end_s)
        if segment_end > t:
            total += steps[index][1] * (segment_end - t)
            t = segment_end
        if t >= end_s:
            break
    return total / (end_s - start_s)


async def drive(meter: Meter, power_w: "PowerOf", rng: random.Random) -> None:
    """Serve each window's values at its true close time; record when they appeared."""
    meter.changes_s.append(meter.clock.close_s(0))
    index = 1
    while True:
        close_s = meter.clock.close_s(index)
        await asyncio.sleep(max(0.0, close_s - time.monotonic()))
        total_w = power_w(meter.clock.close_s(index - 1), close_s) + rng.uniform(-0.5, 0.5)
        sample = PowerSample(total_w / 3, total_w / 3, total_w / 3, total_w)
        meter.energy.add(sample, close_s - meter.clock.close_s(index - 1))
        meter.server.set_values(janitza_values(sample, meter.energy, meter.clock.timing.frequency(close_s)))
        meter.changes_s.append(meter.server.changed_at_s[-1])
        index += 1


class PowerOf:
    """Window-average power (W) of one meter between two times."""

    def __init__(self, steps: Sequence[tuple[float, float]] | None) -> None:
        self.steps = steps

    def __call__(self, start_s: float, end_s: float) -> float:
        return 0.0 if self.steps is None else average_load_w(self.steps, start_s, end_s)


SETPOINT_TOPICS = f"W/{PORTAL_ID}/vebus/+/Hub4/+/AcPowerSetpoint"


SO_TIMESTAMPNS = 35
"""Linux: each received segment carries its kernel arrival time (CLOCK_REALTIME)."""


def _receive(sock: socket.socket, count: int) -> tuple[bytes, float | None]:
    """Exactly `count` bytes; the kernel arrival time (realtime s) of the segment holding the first."""
    data, stamp = b"", None
    while len(data) < count:
        chunk, ancillary, _flags, _address = sock.recvmsg(count - len(data), 64)
        if not chunk:
            raise ConnectionError("broker closed the connection")
        for level, kind, value in ancillary:
            if stamp is None and level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = struct.unpack("qq", value[:16])
                stamp = seconds + nanoseconds / 1e9
        data += chunk
    return data, stamp


def _packet(kind: int, body: bytes) -> bytes:
    """One MQTT 3.1.1 packet (fixed header + remaining length + body)."""
    length, encoded = len(body), b""
    while True:
        length, digit = divmod(length, 128)
        encoded += bytes([digit | (0x80 if length else 0)])
        if not length:
            return bytes([kind]) + encoded + body


def _string(text: str) -> bytes:
    return struct.pack("!H", len(text)) + text.encode()


def listen(port: int) -> None:
    """The subscriber process: one line `<kernel arrival s> <read s> <phase> <W>` per setpoint
    (monotonic s). A minimal MQTT 3.1.1 client on a plain socket, so that each message's kernel
    arrival time is known: a gap in those is on the wire, not this process being scheduled late."""
    offset_s = time.time() - time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    connect = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 600) + _string("bench_latency")
    sock.sendall(_packet(0x10, connect))
    _receive(sock, 4)  # CONNACK
    sock.sendall(_packet(0x82, struct.pack("!H", 1) + _string(SETPOINT_TOPICS) + b"\x00"))
    _receive(sock, 5)  # SUBACK
    print("ready", flush=True)
    while True:
        (kind,), stamp = _receive(sock, 1)
        length, shift = 0, 0
        while True:
            (digit,), _ = _receive(sock, 1)
            length += (digit & 0x7F) << shift
            shift += 7
            if not digit & 0x80:
                break
        body, _ = _receive(sock, length)
        read_s = time.monotonic()
        if kind >> 4 != 3:
            continue
        (topic_length,) = struct.unpack("!H", body[:2])
        topic = body[2 : 2 + topic_length].decode()
        value = int(json.loads(body[2 + topic_length :])["value"])
        arrived_s = read_s if stamp is None else stamp - offset_s
        print(f"{arrived_s:.6f} {read_s:.6f} {topic.split('/')[-2]} {value}", flush=True)


@contextlib.asynccontextmanager
async def listener(port: int) -> AsyncIterator[list[tuple[float, float, str, int]]]:
    """Setpoints as heard by a subscriber in its own process (`listen`; CLOCK_MONOTONIC is shared):
    (kernel arrival s, read s, phase, W)."""
    heard: list[tuple[float, float, str, int]] = []
    ready = asyncio.Event()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.bench_latency",
        "--listen",
        str(port),
        stdout=asyncio.subprocess.PIPE,
    )

    async def drain(stdout: asyncio.StreamReader) -> None:
        async for line in stdout:
            if line.strip() == b"ready":
                ready.set()
                continue
            at_s, read_s, phase, value = line.split()
            heard.append((float(at_s), float(read_s), phase.decode(), int(value)))

    assert process.stdout is not None
    reader = asyncio.create_task(drain(process.stdout))
    try:
        async with asyncio.timeout(10.0):
            await ready.wait()
        yield heard
    finally:
        process.terminate()
        await process.wait()
        await reader


async def measure(seconds: float, seed: int, timing: MeterTiming = TIMING) -> dict[str, object]:
    """Run the service against drifting (and by default jumping) meters; raw records for the report."""
    rng = random.Random(seed)
    async with (
        running_broker() as broker,
        simulated_site(constant(0.0), constant(0.0), mqtt_port=broker.port, run_plant=False) as site,
    ):
        start_s = time.monotonic() + 0.5
        steps: list[tuple[float, float]] = [(start_s - 1.0, LOADS_W[0])]
        t = start_s + WARMUP_S
        while t < start_s + seconds:
            steps.append((t, LOADS_W[len(steps) % 2]))
            t += rng.uniform(*STEP_EVERY_S)
        meters = {
            "grid": Meter(
                site.grid_server, WindowClock(timing, start_s, 0.031), EnergyCounters.starting_at(1e6, 1e5)
            ),
            "battery": Meter(
                site.battery_server,
                WindowClock(dataclasses.replace(timing, seed=timing.seed + 1), start_s, 0.121),
                EnergyCounters.starting_at(1e5, 1e5),
            ),
        }
        async with service_process(site), listener(broker.port) as heard:
            tasks = [
                asyncio.create_task(drive(meters["grid"], PowerOf(steps), random.Random(seed + 1))),
                asyncio.create_task(drive(meters["battery"], PowerOf(None), random.Random(seed + 2))),
            ]
            await asyncio.sleep(max(0.0, start_s + seconds - time.monotonic()))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        writes = [(at_s, read_s, phase) for at_s, read_s, phase, _ in heard]
        setpoints = [(at_s, value) for at_s, _, phase, value in heard if phase == "L1"]
        return {
            "steps": steps[1:],
            "meters": meters,
            "setpoints": setpoints,
            "writes": writes,
            "broker": broker.kind,
            "start_s": start_s,
        }


def step_latencies(
    steps: Sequence[tuple[float, float]], grid: Meter, setpoints: Sequence[tuple[float, int]]
) -> tuple[list[float], list[int], int]:
    """Per answered step: latency (s) and the window that triggered it; and the unanswered count."""
    times = [t for t, _ in setpoints]
    latencies: list[float] = []
    windows: list[int] = []
    unanswered = 0
    for step_s, _ in steps:
        window = grid.clock.index_after(step_s)
        if window + 2 >= len(grid.changes_s):
            continue
        first = bisect.bisect_right(times, grid.changes_s[window])
        before = setpoints[first - 1][1] if first > 0 else None
        answer = next(
            (
                (at_s, value)
                for at_s, value in setpoints[first:]
                if before is None or abs(value - before) >= MOVED_W
            ),
            None,
        )
        if answer is None or answer[0] > grid.changes_s[window + 2]:
            unanswered += 1
            continue
        trigger = window if answer[0] < grid.changes_s[window + 1] else window + 1
        latencies.append(answer[0] - grid.changes_s[trigger])
        windows.append(trigger)
    return latencies, windows, unanswered


def read_delays(requests: Sequence[float], changes: Sequence[float]) -> list[float]:
    """Per window: time from its change to the first read request after it (s; 1.0: never read)."""
    delays = []
    for index, change_s in enumerate(changes[:-1]):
        first = bisect.bisect_left(requests, change_s)
        until_s = changes[index + 1]
        delays.append(
            requests[first] - change_s if first < len(requests) and requests[first] < until_s else 1.0
        )
    return delays


def calm_reads_per_s(meter: Meter, first_window: int) -> float:
    """Reads/s over the windows at least 3 windows after any phase jump (steady state)."""
    jumps = [index for index, _ in meter.clock.jumps]
    requests = list(meter.server.requested_at_s)
    reads, span_s = 0, 0.0
    for window in range(first_window, len(meter.changes_s) - 1):
        if any(0 <= window - jumped < 3 for jumped in jumps):
            continue
        start_s, end_s = meter.changes_s[window], meter.changes_s[window + 1]
        reads += bisect.bisect_left(requests, end_s) - bisect.bisect_left(requests, start_s)
        span_s += end_s - start_s
    return reads / span_s if span_s else 0.0


def relock_windows(
    jumps: Sequence[tuple[int, float]], delays: Sequence[float], first_window: int
) -> list[tuple[int, bool]]:
    """Per phase jump after warm-up: windows until two in a row are read within LOCKED_S, and
    whether the jump was to an earlier phase."""
    result = []
    for jumped, shift_s in jumps:
        window = jumped
        if window < first_window or window + 6 >= len(delays):
            continue
        count = 0
        while window + count + 1 < len(delays) and not (
            delays[window + count] <= LOCKED_S and delays[window + count + 1] <= LOCKED_S
        ):
            count += 1
        result.append((count, shift_s < 0))
    return result


def unobservable_windows(clock: WindowClock, changes: Sequence[float]) -> dict[int, float]:
    """Windows that are the first after a jump to an earlier phase by more than LOCKED_S, with
    that effective shift (s): the change came that much before the one predicted from the window
    before it (true period), so no poller reading about once per window sees it in time."""
    result = {}
    for jumped, _ in clock.jumps:
        if 0 < jumped < len(changes):
            early_s = changes[jumped - 1] + clock.period_s(changes[jumped - 1]) - changes[jumped]
            if early_s > LOCKED_S:
                result[jumped] = early_s
    return result


def phase_gaps(writes: Sequence[tuple[float, float, str]]) -> tuple[list[float], list[float]]:
    """Per decision (an L1 write followed by L2 and L3): the spread of its three kernel arrivals and
    of their reads by the subscriber (s)."""
    arrived, read = [], []
    for index in range(len(writes) - 2):
        triple = writes[index : index + 3]
        if [phase for _, _, phase in triple] == ["L1", "L2", "L3"]:
            arrived.append(max(t for t, _, _ in triple) - min(t for t, _, _ in triple))
            read.append(triple[-1][1] - triple[0][1])
    return arrived, read


SEND_SPREAD_S = (-0.0005, 0.001)
"""A read goes out this much (uniform, s) before/after its planned time: the service's reads went
out p1 −0.8, p50 +0.2, p99 +1.5 ms around their plan, a third of them early (uvloop's timers have
millisecond resolution against the loop's cached time; traced in a real-time run)."""


def poll_virtually(
    timing: MeterTiming, tuning: TimingTuning, seconds: float, rtt_s: float = 0.0008
) -> tuple[list[float], list[float], WindowClock]:
    """The production schedule against `timing` on a manual clock: (times the meter answered each
    read (s), true change times (s), the meter's clock). A read goes out within SEND_SPREAD_S of its
    plan (never before the previous reply); a reply takes `rtt_s` and shows the values of its midpoint."""
    clock = ManualClock(0.0)
    meter = WindowClock(timing, 0.0, 0.031)
    schedule = PhaseLockedSchedule(0.2, tuning)
    spread = random.Random(timing.seed)
    requests: list[float] = []
    previous: int | None = None
    while clock() < seconds:
        clock.advance(max(0.0, schedule.next_read_at() + spread.uniform(*SEND_SPREAD_S) - clock()))
        sent_s = clock()
        window = meter.shown_at(sent_s + rtt_s / 2)
        requests.append(sent_s + rtt_s / 2)
        clock.advance(rtt_s)
        schedule.observe(ReadTiming(sent_s, clock(), previous is not None and window != previous))
        previous = window
    changes = [meter.close_s(index) for index in range(meter.index_after(clock()))]
    return requests, changes, meter


def tradeoff_row(alert: int, quiet: int) -> list[object]:
    """Probe spacing after a jump / once quiet → reads/s and re-lock, in virtual time."""
    tuning = TimingTuning(probe_every=alert, quiet_probe_every=quiet)
    cells: list[object] = [f"{alert} / {quiet}" + (" (default)" if tuning == TimingTuning() else "")]
    cases = (
        ("none", dataclasses.replace(TIMING, jump_every_s=None), 300.0),
        ("2–4 s", TIMING, 600.0),
        ("15–25 s", dataclasses.replace(TIMING, jump_every_s=(15.0, 25.0)), 2400.0),
    )
    relocks: dict[str, list[tuple[int, bool]]] = {}
    late = ""
    for label, timing, seconds in cases:
        requests, changes, meter = poll_virtually(timing, tuning, seconds)
        first = bisect.bisect_left(changes, WARMUP_S)
        counted = [t for t in requests if t >= WARMUP_S]
        cells.append(f"{len(counted) / (counted[-1] - WARMUP_S):.2f}")
        delays = read_delays(requests, changes)
        relocks[label] = relock_windows(meter.jumps, delays, first)
        if label == "2–4 s":
            hidden = unobservable_windows(meter, changes)
            seen = [d for w, d in enumerate(delays) if w >= first and w not in hidden]
            late = f"{100 * sum(d > LOCKED_S for d in seen) / len(seen):.2f} %"
    for label in ("2–4 s", "15–25 s"):
        for early in (True, False):
            counts = sorted(c for c, e in relocks[label] if e == early)
            cells.append(f"{percentile(counts, 0.9):.0f} / {counts[-1]}" if counts else "–")
    cells.append(late)
    return cells


def ms_row(label: str, values: Sequence[float], target: str) -> list[object]:
    """One latency row: n, p50/p90/p99/max in ms."""
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return [label, 0, "–", "–", "–", "–", target]
    return (
        [label, len(ms)] + [f"{percentile(ms, q):.1f}" for q in (0.5, 0.9, 0.99)] + [f"{ms[-1]:.1f}", target]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="run time (s) after an 8 s warm-up")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-tradeoff", action="store_true", help="skip the probe-spacing table (virtual time, ≈1 min)"
    )
    parser.add_argument(
        "--no-jumps", action="store_true", help="meters without phase jumps (a quiet meter's reads/s)"
    )
    parser.add_argument("--listen", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.listen is not None:
        listen(args.listen)
        return
    timing = dataclasses.replace(TIMING, jump_every_s=None) if args.no_jumps else TIMING
    record = asyncio.run(measure(args.seconds + WARMUP_S, args.seed, timing))
    meters: dict[str, Meter] = record["meters"]  # type: ignore[assignment]
    steps: list[tuple[float, float]] = record["steps"]  # type: ignore[assignment]
    start_s: float = record["start_s"]  # type: ignore[assignment]
    grid = meters["grid"]
    latencies, windows, unanswered = step_latencies(steps, grid, record["setpoints"])  # type: ignore[arg-type]
    first_s = start_s + WARMUP_S
    hidden = unobservable_windows(grid.clock, grid.changes_s)
    seen = [lat for lat, w in zip(latencies, windows, strict=True) if w not in hidden]
    unseen = [lat for lat, w in zip(latencies, windows, strict=True) if w in hidden]
    second = [lat for lat, w in zip(latencies, windows, strict=True) if w - 1 in hidden]
    print(
        f"\nregister change → setpoint on the broker ({record['broker']} broker, {len(steps)} steps, "
        f"{unanswered} unanswered within 2 windows)\n"
    )
    print_table(
        ["steps", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "target"],
        [
            ms_row("all steps", latencies, "p50 ≤ 5, p99 ≤ 15"),
            ms_row("all but the physically unobservable", seen, "p50 ≤ 5, p99 ≤ 15"),
            ms_row("unobservable: first window after an early jump > 15 ms", unseen, "–"),
            ms_row("of the others: the second window after such a jump", second, "–"),
        ],
    )
    grid_delays = read_delays(list(grid.server.requested_at_s), grid.changes_s)
    slow = [
        (lat, w, grid_delays[w])
        for lat, w in zip(latencies, windows, strict=True)
        if w not in hidden and lat > LOCKED_S and w < len(grid_delays)
    ]
    if slow:
        print("\nobservable steps over 15 ms: read late (the poller) or decided late (pairing, the law)?\n")
        print_table(
            ["latency ms", "trigger window's true read delay ms", "second window after an early jump"],
            [
                [f"{1000 * lat:.1f}", f"{1000 * delay:.1f}", "yes" if w - 1 in hidden else "no"]
                for lat, w, delay in slow
            ],
        )
    grid_first = grid.clock.index_after(first_s)
    counted = {w: d for w, d in hidden.items() if w >= grid_first and w < len(grid.changes_s)}
    # A step triggers window w when it falls in it, or so late in the window before that this
    # one's average moves the setpoint less than MOVED_W.
    lead = MOVED_W / abs(LOADS_W[0] - LOADS_W[1])
    hidden_s = sum(
        grid.changes_s[w] - grid.changes_s[w - 1] + lead * (grid.changes_s[w - 1] - grid.changes_s[w - 2])
        for w in counted
    )
    span_s = grid.changes_s[-1] - grid.changes_s[grid_first]
    early = sum(1 for w, shift in grid.clock.jumps if w >= grid_first and shift < 0)
    share = 100 * len(unseen) / max(1, len(latencies))
    print(
        f"\nunobservable steps: {len(unseen)} of {len(latencies)} ({share:.1f} %); expected "
        f"{100 * hidden_s / span_s:.1f} % (the grid meter's {len(counted)} windows that open an early "
        f"jump > 15 ms, of {early} early jumps in {span_s:.0f} s, with the last {100 * lead:.0f} % of the "
        f"window before each, are {hidden_s:.1f} s of the run: a step triggers one that often; an early "
        "jump of d ms shortens its window to 200 − d ms)"
    )
    print()
    meter_rows = []
    for name, meter in meters.items():
        requests = [t for t in meter.server.requested_at_s if t >= first_s]
        span_s = requests[-1] - first_s if requests else 1.0
        first_window = meter.clock.index_after(first_s)
        delays = read_delays(list(meter.server.requested_at_s), meter.changes_s)
        measured = sorted(d * 1000 for d in delays[first_window:])
        relocks = relock_windows(meter.clock.jumps, delays, first_window)
        cells = []
        for early_jump in (True, False):
            counts = sorted(c for c, e in relocks if e == early_jump)
            cells.append(f"{percentile(counts, 0.9):.0f} / {counts[-1]}" if counts else "–")
        meter_rows.append(
            [
                name,
                f"{len(requests) / span_s:.1f} / {calm_reads_per_s(meter, first_window):.1f}",
                f"{percentile(measured, 0.5):.1f} / {percentile(measured, 0.99):.1f}",
                len(relocks),
                *cells,
                "≤ 7 reads/s, re-lock ≤ 2",
            ]
        )
    print_table(
        [
            "meter",
            "reads/s all / steady",
            "read delay p50 / p99 ms",
            "jumps",
            "re-lock after early jumps p90 / max",
            "after late jumps p90 / max",
            "target",
        ],
        meter_rows,
    )
    arrived, read = phase_gaps(record["writes"])  # type: ignore[arg-type]
    print(f"\nthree-phase decisions: {len(arrived)}; spread of the L1, L2, L3 writes of one decision:\n")
    gap_rows = []
    for label, values in (("kernel arrival at the subscriber", arrived), ("read by the subscriber", read)):
        ms = sorted(v * 1000 for v in values)
        if ms:
            gap_rows.append(
                [label]
                + [f"{percentile(ms, q):.2f}" for q in (0.5, 0.99)]
                + [f"{ms[-1]:.2f}", sum(v > 10 for v in ms)]
            )
    print_table(["spread", "p50 ms", "p99 ms", "max ms", "> 10 ms"], gap_rows)
    if args.no_tradeoff:
        return
    print(
        "\nprobe spacing trade-off (the production schedule in virtual time, same meter clock; "
        "re-lock = windows until two in a row are read within 15 ms)\n"
    )
    print_table(
        [
            "probe every (after a jump / quiet)",
            "reads/s no jumps",
            "reads/s jumps 2–4 s",
            "reads/s jumps 15–25 s",
            "re-lock early / jumps 2–4 s",
            "late / 2–4 s",
            "early / 15–25 s",
            "late / 15–25 s",
            "observable windows > 15 ms (2–4 s)",
        ],
        [tradeoff_row(alert, quiet) for alert, quiet in PROBE_SPACINGS],
    )


if __name__ == "__main__":
    main()
