"""Real MQTT brokers for tests: Mosquitto on a free loopback port, or the embedded amqtt broker."""

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Protocol

from watti_watchman.broker import EmbeddedBroker, free_port

HOST = "127.0.0.1"


class TestBroker(Protocol):
    """A broker a test can stop and start again on the same port."""

    __test__: bool = False  # a Protocol named Test*, not a test class
    host: str
    port: int
    kind: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


async def wait_port(host: str, port: int, *, open_: bool, timeout_s: float = 10.0) -> None:
    """Poll until `host:port` accepts (open_=True) or refuses (False) connections."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                is_open = True
        except OSError:
            is_open = False
        if is_open == open_:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{host}:{port} did not become {'open' if open_ else 'closed'}")
        await asyncio.sleep(0.01)


class MosquittoBroker:
    """A private Mosquitto process on loopback (persistence off, anonymous)."""

    __test__ = False
    kind = "mosquitto"

    def __init__(self, executable: str) -> None:
        self.host = HOST
        self.port = free_port(HOST)
        self._executable = executable
        self._dir = Path(tempfile.mkdtemp(prefix="watti-mosquitto-"))
        self._config = self._dir / "mosquitto.conf"
        self._config.write_text(
            f"listener {self.port} {HOST}\nallow_anonymous true\npersistence false\n"
            "log_dest none\nmax_keepalive 600\n"
        )
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self._process = subprocess.Popen(  # noqa: ASYNC220 - short-lived spawn
            [self._executable, "-c", str(self._config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await wait_port(self.host, self.port, open_=True)

    async def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            await asyncio.to_thread(self._process.wait, 10)
            self._process = None
        await wait_port(self.host, self.port, open_=False)


class EmbeddedTestBroker:
    """The embedded amqtt broker, restartable on the same port."""

    __test__ = False
    kind = "embedded"

    def __init__(self) -> None:
        self.host = HOST
        self.port = free_port(HOST)
        self._broker: EmbeddedBroker | None = None

    async def start(self) -> None:
        self._broker = EmbeddedBroker(self.host, self.port)
        await self._broker.start()
        await wait_port(self.host, self.port, open_=True)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.stop()
            self._broker = None
        await wait_port(self.host, self.port, open_=False)


def make_broker() -> TestBroker:
    """Mosquitto when installed (mandatory with WATTI_TEST_BROKER=mosquitto), else embedded."""
    wanted = os.environ.get("WATTI_TEST_BROKER", "auto")
    executable = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if wanted == "embedded":
        return EmbeddedTestBroker()
    if executable is None:
        if wanted == "mosquitto":
            raise RuntimeError("WATTI_TEST_BROKER=mosquitto but mosquitto is not installed")
        return EmbeddedTestBroker()
    return MosquittoBroker(executable)
