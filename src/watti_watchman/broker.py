"""An embedded pure-Python MQTT broker (amqtt) for the demo and for tests without Mosquitto."""

import logging
import socket
from typing import Any

from amqtt.broker import Broker

from watti_watchman.lifecycle import StartStop


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedBroker(StartStop):
    """An anonymous MQTT 3.1.1 broker listening on loopback; use as an async context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        for noisy in ("amqtt", "transitions"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self._broker = Broker(config)

    async def start(self) -> None:
        """Start listening."""
        await self._broker.start()

    async def stop(self) -> None:
        """Stop and drop every client."""
        await self._broker.shutdown()
