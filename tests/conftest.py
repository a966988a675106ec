"""Shared fixtures: real MQTT brokers on loopback, unique topic namespaces, a manual clock."""

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.support.brokers import TestBroker, make_broker
from watti_watchman.clock import ManualClock
from watti_watchman.config.mqtt import MqttConnectionConfig

pytest_plugins = ["tests.support.modbus_fixtures"]


@pytest.fixture
async def broker() -> AsyncIterator[TestBroker]:
    """A private broker for this test (stop/start it to simulate an outage)."""
    instance = make_broker()
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


@pytest.fixture
def mqtt_connection(broker: TestBroker, unique_id: str) -> MqttConnectionConfig:
    """Connection settings for the test's broker."""
    return MqttConnectionConfig(name="test", host=broker.host, port=broker.port, client_id=unique_id)


@pytest.fixture
def unique_id() -> str:
    """A per-test token usable as portal id, client id or topic prefix (letters and digits)."""
    return "t" + uuid.uuid4().hex[:11]


@pytest.fixture
def clock() -> ManualClock:
    """A manual monotonic clock."""
    return ManualClock()
