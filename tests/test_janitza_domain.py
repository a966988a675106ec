"""The Janitza register table, decoding, validation, invert and energy regression (pure)."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watti_watchman.domain.janitza import (
    JANITZA_QUANTITIES,
    JANITZA_VALUE_COUNT,
    MONOTONIC_ENERGY_KEYS,
    QUANTITIES_BY_KEY,
    decode_registers,
    encode_values,
    reading_from_values,
    regressed_energy_keys,
    rejection_reason,
)
from watti_watchman.domain.readings import PowerSample

# PROTOCOLS.md §5: allowed Home Assistant device_class → units and state classes.
HA_UNITS = {
    "voltage": {"V"},
    "current": {"A"},
    "power": {"W"},
    "apparent_power": {"VA"},
    "reactive_power": {"var"},
    "power_factor": {""},
    "frequency": {"Hz"},
    "energy": {"Wh"},
}


def test_table_has_one_row_per_register_pair_in_order() -> None:
    assert len(JANITZA_QUANTITIES) == JANITZA_VALUE_COUNT
    assert [q.index for q in JANITZA_QUANTITIES] == list(range(JANITZA_VALUE_COUNT))
    assert [q.address for q in JANITZA_QUANTITIES] == list(range(19000, 19078, 2))
    assert len(QUANTITIES_BY_KEY) == JANITZA_VALUE_COUNT


def test_table_home_assistant_classes_follow_the_allowed_combinations() -> None:
    for quantity in JANITZA_QUANTITIES:
        if quantity.device_class is not None:
            assert quantity.unit in HA_UNITS[quantity.device_class], quantity.key
        if quantity.device_class == "energy":
            assert quantity.state_class in {"total", "total_increasing"}, quantity.key
        else:
            assert quantity.state_class == "measurement", quantity.key
    assert QUANTITIES_BY_KEY["energy_net_sum"].state_class == "total"
    assert {
        f"energy_{d}_{p}" for d in ("import", "export") for p in ("l1", "l2", "l3", "sum")
    } == MONOTONIC_ENERGY_KEYS


def test_table_metric_names_follow_the_conventions() -> None:
    for quantity in JANITZA_QUANTITIES:
        assert quantity.metric.startswith("watti_janitza_")
        assert not quantity.metric.endswith("_total"), "counters are named without _total"
        assert (quantity.metric_type == "counter") == quantity.exposed_metric_name.endswith("_total")
    families = {q.metric: q.phase is None for q in JANITZA_QUANTITIES}
    for quantity in JANITZA_QUANTITIES:
        assert families[quantity.metric] == (quantity.phase is None), "sums never share a family with phases"


def test_table_venus_paths() -> None:
    paths = {q.venus_path: q for q in JANITZA_QUANTITIES if q.venus_path}
    assert paths["Ac/Power"].key == "real_power_sum"
    assert paths["Ac/L2/Current"].key == "current_l2"
    assert paths["Ac/Frequency"].key == "frequency"
    assert paths["Ac/Energy/Forward"].key == "energy_import_sum"
    assert paths["Ac/L3/Energy/Reverse"].key == "energy_export_l3"
    assert paths["Ac/Energy/Forward"].venus_scale == 0.001
    assert "Ac/Voltage" not in paths


def test_every_quantity_decodes_from_the_sample_registers(janitza_sample: tuple[float, ...]) -> None:
    values = decode_registers(encode_values(janitza_sample))
    assert rejection_reason(values) is None
    reading = reading_from_values(values, invert=False)
    expected = {
        "voltage_ln_v": (233.8685760498047, 236.64195251464844, 234.98904418945312),
        "voltage_ll_v": (407.46051025390625, 407.853515625, 406.6347961425781),
        "current_a": (3.5721144676208496, 2.1518187522888184, 4.613165378570557),
        "current_vector_sum_a": 3.554508924484253,
        "power_w": (614.0399780273438, 319.261962890625, 1000.9397583007812),
        "power_total_w": 1934.24169921875,
        "apparent_power_va": (835.4053344726562, 509.2106018066406, 1084.0433349609375),
        "apparent_power_total_va": 2428.6591796875,
        "reactive_power_var": (-324.7113342285156, -363.46734619140625, -376.793701171875),
        "reactive_power_total_var": -1064.972412109375,
        "power_factor": (0.8861088156700134, 0.6615726947784424, 0.9361423850059509),
        "frequency_hz": 50.01308059692383,
        "rotation_field": 1,
        "energy_net_wh": (12910043.0, 10726793.0, 10862500.0),
        "energy_net_total_wh": 34515072.0,
        "energy_import_wh": (12987790.0, 10813795.0, 10952704.0),
        "energy_import_total_wh": 34739176.0,
        "energy_export_wh": (61593.81640625, 81384.3828125, 86986.359375),
        "energy_export_total_wh": 193044.84375,
    }
    for field_name, value in expected.items():
        assert getattr(reading, field_name) == value, field_name
    assert reading.values == janitza_sample
    assert [reading.value(q) for q in JANITZA_QUANTITIES] == list(janitza_sample)
    assert reading.power_sample() == PowerSample(
        614.0399780273438, 319.261962890625, 1000.9397583007812, 1934.24169921875
    )
    assert reading.energy_regressed == frozenset()


def test_decode_is_big_endian_high_word_first() -> None:
    assert decode_registers([0x4348, 0x0000]) == (200.0,)
    with pytest.raises(ValueError, match="odd"):
        decode_registers([0x4348])


@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=50))
def test_encode_decode_round_trip(values: list[float]) -> None:
    assert decode_registers(encode_values(values)) == tuple(values)


def _with(values: tuple[float, ...], key: str, value: float) -> tuple[float, ...]:
    changed = list(values)
    changed[QUANTITIES_BY_KEY[key].index] = value
    return tuple(changed)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("real_power_l1", math.nan, "non_finite"),
        ("energy_import_sum", math.inf, "non_finite"),
        ("frequency", -math.inf, "non_finite"),
        ("voltage_l2_n", 1200.0, "implausible"),
        ("voltage_l1_l2", -1001.0, "implausible"),
        ("real_power_sum", 2e6, "implausible"),
        ("reactive_power_l3", -1.5e6, "implausible"),
        ("power_factor_l2", 1.2, "implausible"),
        ("frequency", 30.0, "implausible"),
        ("frequency", 75.0, "implausible"),
        ("rotation_field", 3.0, "implausible"),
        ("energy_export_l1", -5.0, "implausible"),
        ("energy_net_sum", -5.0, None),
        ("power_factor_l1", -1.0, None),
    ],
)
def test_rejection_reasons(
    janitza_sample: tuple[float, ...], key: str, value: float, reason: str | None
) -> None:
    assert rejection_reason(_with(janitza_sample, key, value)) == reason


def test_wrong_length_is_rejected(janitza_sample: tuple[float, ...]) -> None:
    assert rejection_reason((*janitza_sample, 1.0, 2.0, 3.0, 4.0)) == "wrong_length"
    assert rejection_reason(janitza_sample[:38]) == "wrong_length"


def test_zero_frequency_is_plausible_without_voltage() -> None:
    dead = [0.0] * JANITZA_VALUE_COUNT
    assert rejection_reason(dead) is None
    assert rejection_reason(_with(tuple(dead), "voltage_l1_n", 230.0)) == "implausible"


def test_invert_negates_powers_and_swaps_energies(janitza_sample: tuple[float, ...]) -> None:
    plain = reading_from_values(janitza_sample, invert=False)
    inverted = reading_from_values(janitza_sample, invert=True)
    assert inverted.power_w == tuple(-p for p in plain.power_w)
    assert inverted.power_total_w == -1934.24169921875
    assert inverted.reactive_power_total_var == -plain.reactive_power_total_var
    assert inverted.apparent_power_va == plain.apparent_power_va
    assert inverted.power_factor == tuple(-c for c in plain.power_factor)
    assert inverted.energy_import_wh == plain.energy_export_wh
    assert inverted.energy_export_total_wh == plain.energy_import_total_wh
    assert inverted.energy_net_total_wh == -plain.energy_net_total_wh
    assert inverted.voltage_ln_v == plain.voltage_ln_v
    assert inverted.frequency_hz == plain.frequency_hz
    assert inverted.values == plain.values, "values stay as read"
    assert inverted.power_sample().total_w == -1934.24169921875
    assert inverted.inverted


def test_energy_regression_is_flagged_per_counter(janitza_sample: tuple[float, ...]) -> None:
    before = reading_from_values(janitza_sample, invert=False)
    lost = _with(_with(janitza_sample, "energy_import_sum", 34_700_000.0), "energy_net_sum", 1.0)
    after = reading_from_values(lost, invert=False, previous=before)
    assert after.energy_regressed == {"energy_import_sum"}, "net energy may go down"
    assert regressed_energy_keys(before, after) == {"energy_import_sum"}
    assert regressed_energy_keys(None, after) == frozenset()
    grown = reading_from_values(
        _with(janitza_sample, "energy_import_sum", 34_739_200.0), False, previous=before
    )
    assert grown.energy_regressed == frozenset()


def test_energy_regression_follows_the_invert_option(janitza_sample: tuple[float, ...]) -> None:
    before = reading_from_values(janitza_sample, invert=True)
    after = reading_from_values(
        _with(janitza_sample, "energy_export_l2", 100.0), invert=True, previous=before
    )
    assert after.energy_regressed == {"energy_import_l2"}
