"""BMS limits as a real GX reports them (Venus emulator, real broker, VictronMeter) under each policy."""

from tests.support.running import running
from tests.support.waiting import wait_until
from tests.test_victron_meter import MAX_AGE_S, gx, make_meter
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.domain.limits import NO_BMS_SEEN, BmsUse, track_bms
from watti_watchman.domain.readings import BatteryStatus
from watti_watchman.meters.victron import VictronMeter


def status(meter: VictronMeter) -> BatteryStatus | None:
    """The battery status the controller would use now."""
    return meter.battery.get(MAX_AGE_S)


async def test_a_gx_without_a_managed_bms_lets_auto_govern_by_the_tables(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    venus = gx(mqtt_connection, unique_id, bms_limits=False)
    meter = make_meter(mqtt_connection, unique_id)
    async with running(venus, meter):
        venus.set_soc(55.0)
        await wait_until(lambda: (s := status(meter)) is not None and s.soc_percent == 55.0, 3.0, "SOC")
        reported = status(meter)
        assert reported is not None and reported.voltage_v is not None
        assert (reported.max_charge_current_a, reported.max_discharge_current_a) == (None, None)
        use, tracking = track_bms("auto", reported, NO_BMS_SEEN, 10.0, 10.0)
        assert use is BmsUse.ABSENT and not tracking.seen
        assert track_bms("required", reported, NO_BMS_SEEN, 10.0, 10.0)[0] is BmsUse.MISSING


async def test_bms_limits_that_vanish_on_the_gx_degrade_auto_safely(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    venus = gx(mqtt_connection, unique_id)
    meter = make_meter(mqtt_connection, unique_id)
    async with running(venus, meter):
        venus.set_bms_limits(80.0, 120.0)
        # The two limits arrive as separate messages: wait for both, not just the first.
        await wait_until(
            lambda: (
                (s := status(meter)) is not None
                and (s.max_charge_current_a, s.max_discharge_current_a) == (80.0, 120.0)
            ),
            3.0,
        )
        use, tracking = track_bms("auto", status(meter), NO_BMS_SEEN, 0.2, 10.0)
        assert use is BmsUse.ENFORCED and tracking.seen
        venus.set_bms_limits(None, None)  # the BMS dropped off the CAN bus: null on the GX
        await wait_until(
            lambda: (
                (s := status(meter)) is not None
                and (s.max_charge_current_a, s.max_discharge_current_a) == (None, None)
            ),
            3.0,
        )
        use, tracking = track_bms("auto", status(meter), tracking, 60.0, 10.0)
        assert use is BmsUse.MISSING and tracking.seen
