"""Pytest fixtures for real pymodbus servers serving Janitza register images."""

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from watti_watchman.config.meters import JanitzaConfig
from watti_watchman.meters.modbus_link import Framing
from watti_watchman.sim.janitza_server import JanitzaServer

SAMPLE_PATH = Path(__file__).resolve().parent.parent / "fixtures" / "janitza_grid_sample.json"


def load_janitza_sample() -> tuple[float, ...]:
    """The 39 values of the real grid meter dump, register order."""
    values: list[float] = json.loads(SAMPLE_PATH.read_text())["values"]
    return tuple(values)


def janitza_config(server: JanitzaServer, **overrides: Any) -> JanitzaConfig:
    """Meter settings pointing at `server` (fast timeout for tests), with `overrides`."""
    settings: dict[str, Any] = {
        "type": "Janitza",
        "name": "hak",
        "host": server.host,
        "port": server.port,
        "unit": server.unit,
        "framing": server.framing,
        "timeout": 0.2,
    }
    return JanitzaConfig(**(settings | overrides))


@pytest.fixture
def janitza_sample() -> tuple[float, ...]:
    """The sample values of `tests/fixtures/janitza_grid_sample.json`."""
    return load_janitza_sample()


@pytest.fixture
async def janitza_server(janitza_sample: tuple[float, ...]) -> AsyncIterator[JanitzaServer]:
    """A Modbus TCP server (unit 1) serving the sample."""
    async with JanitzaServer(janitza_sample) as server:
        yield server


@pytest.fixture(params=["tcp", "rtu_over_tcp"])
async def janitza_server_each_framing(
    request: pytest.FixtureRequest, janitza_sample: tuple[float, ...]
) -> AsyncIterator[JanitzaServer]:
    """The sample served once with Modbus TCP and once with RTU frames over TCP (unit 7)."""
    framing: Framing = request.param
    async with JanitzaServer(janitza_sample, framing=framing, unit=7) as server:
        yield server
