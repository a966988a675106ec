"""The virtual-time loop with modelled Janitza pollers on moving meter clocks (closed loop)."""

import asyncio
import dataclasses
import itertools

import pytest

from watti_watchman.sim.meter_clock import DISTURBED, MeterTiming, sinusoidal, steady
from watti_watchman.sim.plant import PRESETS, PlantConfig
from watti_watchman.sim.scenario import Scenario, load_scenario, scenario_from_dict
from watti_watchman.sim.score import score
from watti_watchman.sim.virtual import (
    Latencies,
    RunOptions,
    default_controller_config,
    run_loop,
    simulate_run,
)

CONSTANT = scenario_from_dict(
    {
        "name": "constant",
        "description": "constant load and PV on every phase",
        "duration_s": 30,
        "base_load_w": [600, 500, 400],
        "pv_w": [1500, 1500, 1500],
        "initial_soc_percent": 60,
    }
)
TIMINGS = {
    "50.2 Hz": MeterTiming(frequency=steady(50.2)),
    "49.8 Hz": MeterTiming(frequency=steady(49.8)),
    "sinusoidal wander": MeterTiming(frequency=sinusoidal(50.0, 0.2, 20.0)),
    "phase jumps every 2-4 s": DISTURBED,
}


def alternating_corrections(times_s: list[float], setpoints_w: list[float], after_s: float) -> list[float]:
    """Times of a setpoint change > 150 W reversing the previous one within 450 ms."""
    changes = [
        (t, b - a) for t, a, b in zip(times_s[1:], setpoints_w, setpoints_w[1:], strict=False) if b != a
    ]
    changes = [(t, d) for t, d in changes if t >= after_s]
    return [
        t2
        for (t1, d1), (t2, d2) in itertools.pairwise(changes)
        if abs(d1) > 150 and abs(d2) > 150 and d1 * d2 < 0 and t2 - t1 < 0.45
    ]


def run(scenario: Scenario, plant: str, timing: MeterTiming) -> tuple[list[float], list[float]]:
    trace = asyncio.run(
        run_loop(
            scenario,
            PlantConfig(inverter=PRESETS[plant]),
            "watti",
            default_controller_config(),
            RunOptions(timing=timing),
        )
    )
    return trace.times_s, trace.setpoint_w


@pytest.mark.parametrize("timing", list(TIMINGS), ids=list(TIMINGS))
@pytest.mark.parametrize("plant", ["fast", "medium", "slow"])
def test_constant_load_on_drifting_windows_gives_no_alternating_corrections(timing: str, plant: str) -> None:
    times_s, setpoints_w = run(CONSTANT, plant, TIMINGS[timing])
    assert not alternating_corrections(times_s, setpoints_w, after_s=1.0)
    settled = [s for t, s in zip(times_s, setpoints_w, strict=True) if t >= 1.0]
    assert max(settled) - min(settled) < 60, "the command holds within the trim"


def test_the_detector_sees_a_limit_cycle() -> None:
    times_s = [0.2 * i for i in range(20)]
    swing = [-1080.0 if i % 2 else -250.0 for i in range(20)]
    assert len(alternating_corrections(times_s, swing, after_s=0.0)) >= 15


def test_slow_reads_show_in_the_regulation_figures() -> None:
    """The poller is modelled, not assumed: 60 ms Modbus round trips cost regulation quality."""
    scenario = scenario_from_dict(
        {
            "name": "steps",
            "description": "a 2 kW load switching on and off twice",
            "duration_s": 20,
            "base_load_w": [200, 200, 200],
            "pv_w": [1200, 1200, 1200],
            "steps": [
                {"at_s": 3.07, "duration_s": 4, "load_w": 2000, "phases": "L1"},
                {"at_s": 11.13, "duration_s": 4, "load_w": 2000, "phases": "L1"},
            ],
            "initial_soc_percent": 60,
        }
    )
    fast = simulate_run(scenario, "fast", "watti")
    slow = simulate_run(scenario, "fast", "watti", options=RunOptions(latencies=Latencies(read_s=0.06)))
    assert slow.trace.export_wh > 1.05 * fast.trace.export_wh


@pytest.mark.parametrize("plant", ["medium", "slow"])
def test_a_short_pulse_on_jumping_meter_clocks_rings_no_more_than_the_oracle(plant: str) -> None:
    """A 0.4 s fridge inrush: the battery starts to answer inside a window, whose mean lags it.
    Whether a phase jump lands in the pulse decides a second reversal: on 2–3 of 8 meter-clock
    seeds there is one (before and after the probe fix of the Janitza schedule alike), so the
    pulse is scored over 8 seeds: never more than one reversal beyond the oracle's, mostly none."""
    extra = []
    for seed in range(1, 9):
        options = RunOptions(timing=dataclasses.replace(DISTURBED, seed=seed), seed=seed)
        ours = score(simulate_run(load_scenario("fridge"), plant, "watti", options=options))
        oracle = score(simulate_run(load_scenario("fridge"), plant, "meter_oracle", options=options))
        extra.append(ours.reversals - oracle.reversals)
    assert max(extra) <= 1
    assert sum(e > 0 for e in extra) <= 3


@pytest.mark.parametrize("plant", ["fast", "medium", "slow"])
def test_a_battery_without_bms_exports_nothing_where_the_oracle_exports_nothing(plant: str) -> None:
    """The Multi's offset shows on the battery meter while 0 W is commanded (the BMS wait): the
    2 kW that follow land on the import side, and the error at 2 kW is read off the settled battery."""
    options = RunOptions(timing=DISTURBED)
    ours = simulate_run(load_scenario("no_bms"), plant, "watti", options=options).trace
    oracle = simulate_run(load_scenario("no_bms"), plant, "meter_oracle", options=options).trace
    assert oracle.export_wh < 0.001
    assert ours.export_wh < 0.002  # was 0.022–0.024 Wh: 13–15 W until the integrator caught up


def test_an_unbalanced_house_with_actuator_error_exports_at_most_1_25_times_the_oracle() -> None:
    """The issue's target on its worst pair: each kettle step's 3 % gain error is read off the
    settled battery instead of being integrated away from the grid for seconds."""
    options = RunOptions(timing=DISTURBED)
    ours = simulate_run(load_scenario("unbalanced"), "fast", "watti", options=options).trace
    oracle = simulate_run(load_scenario("unbalanced"), "fast", "meter_oracle", options=options).trace
    assert ours.export_wh <= 1.25 * oracle.export_wh
