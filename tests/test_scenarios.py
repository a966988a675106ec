"""Bundled load/PV scenarios parse and describe what their descriptions say."""

import math

import pytest

from watti_watchman.sim.scenario import bundled_scenarios, load_scenario, scenario_from_dict


def test_all_required_scenarios_are_bundled() -> None:
    assert {"kettle_l1", "oven_all", "pv_clouds", "fridge", "noise", "soc_full", "soc_empty", "demo"} <= set(
        bundled_scenarios()
    )


@pytest.mark.parametrize("name", bundled_scenarios())
def test_scenario_values_are_finite_and_non_negative(name: str) -> None:
    scenario = load_scenario(name)
    for tenth in range(int(scenario.duration_s * 10)):
        for value in (*scenario.load_w(tenth / 10), *scenario.pv_w(tenth / 10)):
            assert value >= 0.0
            assert math.isfinite(value)


def test_kettle_step_on_one_phase() -> None:
    kettle = load_scenario("kettle_l1")
    assert kettle.load_w(4.9) == (250, 180, 220)
    assert kettle.load_w(5.0) == (2250, 180, 220)
    assert kettle.load_w(15.0) == (250, 180, 220)


def test_pv_ramp_interpolates_and_loop_wraps() -> None:
    clouds = load_scenario("pv_clouds")
    assert clouds.pv_w(7.0) == pytest.approx((900, 900, 900))
    demo = load_scenario("demo")
    assert demo.load_w(6.0) == demo.load_w(66.0)


def test_bad_phase_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown phase"):
        scenario_from_dict(
            {"name": "x", "duration_s": 1, "steps": [{"at_s": 0, "load_w": 1, "phases": "L4"}]}
        )
    with pytest.raises(ValueError, match="unknown scenario"):
        load_scenario("no_such_scenario")


def test_installation_of_a_scenario() -> None:
    single = load_scenario("single_phase").installation
    assert single.phases == ("L1",)
    assert (single.actuator_gain, single.actuator_offset_w) == ((0.97,) * 3, (-25.0,) * 3)
    assert load_scenario("no_bms").installation.bms is False
    assert load_scenario("kettle_l1").installation.bms is True
    base = {"name": "x", "duration_s": 1}
    with pytest.raises(ValueError, match="unknown installation keys"):
        scenario_from_dict({**base, "installation": {"gain": 1}})
    with pytest.raises(ValueError, match="gains"):
        scenario_from_dict({**base, "installation": {"actuator_gain": [1, 0, 1]}})
