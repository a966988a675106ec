"""Reconnects and diagnostics: backoff after flapping peers, reasons told apart, quiet repeats."""

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Literal

import aiomqtt
import pytest

from tests.support.brokers import TestBroker
from tests.support.tools import require_tool
from tests.support.waiting import wait_until
from watti_watchman.broker import free_port
from watti_watchman.clock import ManualClock, monotonic
from watti_watchman.config.mqtt import MqttConnectionConfig, TlsConfig
from watti_watchman.failures import FailureLog
from watti_watchman.mqtt import MqttSession, diagnose
from watti_watchman.supervisor import Backoff, supervise


def test_backoff_is_equal_jitter_capped() -> None:
    backoff = Backoff(initial_s=0.2, cap_s=10.0, rng=random.Random(1))
    for attempt in range(12):
        ceiling = min(10.0, 0.2 * 2**attempt)
        assert ceiling / 2 <= backoff.next_delay_s() <= ceiling
    backoff.reset()
    assert backoff.next_delay_s() <= 0.2


async def test_supervise_resets_the_backoff_only_after_a_session_that_held() -> None:
    clock = ManualClock()
    ceilings: list[float] = []

    class Recording(Backoff):
        def next_delay_s(self) -> float:
            ceilings.append(min(self.cap_s, self.initial_s * 2**self._attempt))
            return super().next_delay_s()

    durations_s = iter([0.0, 0.0, 0.0, 29.0, 31.0, 0.0])
    done = asyncio.Event()

    async def session() -> None:
        try:
            clock.advance(next(durations_s))
        except StopIteration:
            done.set()
            await asyncio.Event().wait()
        raise ConnectionResetError("dropped")

    task = asyncio.create_task(
        supervise(
            session,
            failures=FailureLog(logging.getLogger("test"), clock),
            backoff=Recording(initial_s=0.001, cap_s=1.0),
            classify=lambda _: "dropped",
            clock=clock,
            healthy_after_s=30.0,
        )
    )
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # 29 s was not long enough to count as healthy; 31 s was.
    assert ceilings == [0.001, 0.002, 0.004, 0.008, 0.001, 0.002]


Drop = Literal["never", "at_connack", "after_50_ms"]


async def serve_mqtt(connack_code: int, *, drop: Drop) -> tuple[asyncio.Server, int, list[int]]:
    """A minimal MQTT peer on loopback: CONNACK with `connack_code`, then close as `drop` says."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            length = (await reader.readexactly(2))[1]  # CONNECT: type byte, one length byte (< 128)
            await reader.readexactly(length)
            writer.write(bytes([0x20, 0x02, 0x00, connack_code]))
            await writer.drain()
            if drop == "after_50_ms":  # once the client has settled into its session
                await asyncio.sleep(0.05)
            elif drop == "never":
                await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], accepted


async def run_session(connection: MqttConnectionConfig, seconds: float) -> MqttSession:
    """A session running for `seconds` (real time), then cancelled."""
    session = MqttSession(connection, "diag", clock=monotonic)
    task = asyncio.create_task(session.run())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return session


@pytest.mark.parametrize("drop", ["at_connack", "after_50_ms"])
async def test_a_broker_that_accepts_and_drops_is_not_hammered(
    drop: Drop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server, port, accepted = await serve_mqtt(0, drop=drop)
    try:
        session = await run_session(MqttConnectionConfig(name="flap", host="127.0.0.1", port=port), 3.0)
    finally:
        server.close()
    # Backoff 0.2 s doubling (equal jitter) gives at most 6 attempts in 3 s; resetting on every
    # CONNACK gave one every 0.1-0.2 s (15-30).
    assert 3 <= len(accepted) <= 6
    assert sum(session.failures.by_reason.values()) >= len(accepted) - 1
    # One outage: one WARNING, no "recovered" line per flap.
    assert [r.levelname for r in caplog.records if r.name.startswith("watti_watchman")] == ["WARNING"]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed server certificate for 127.0.0.1 and an unrelated CA (openssl)."""
    openssl = require_tool("openssl")
    folder = tmp_path_factory.mktemp("tls")
    for name in ("server", "other"):
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.pem"),
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
    return {"cert": folder / "server.pem", "key": folder / "server.key", "other_ca": folder / "other.pem"}


@contextlib.asynccontextmanager
async def tls_port(certificates: dict[str, Path]) -> AsyncIterator[int]:
    """A TLS listener on loopback that never speaks MQTT (handshake only)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates["cert"], certificates["key"])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context, ssl_handshake_timeout=2)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


Check = Callable[[str, str], None]


def expect(reason: str, *parts: str) -> Check:
    def check(found_reason: str, message: str) -> None:
        assert found_reason == reason, (found_reason, message)
        for part in parts:
            assert part in message, message

    return check


async def diagnosis_of(connection: MqttConnectionConfig, seconds: float = 1.5) -> tuple[str, str]:
    """The first failure's (reason, message) of a real session against `connection`."""
    session = MqttSession(connection, "diag", clock=monotonic)
    task = asyncio.create_task(session.run())
    try:
        await wait_until(lambda: session.failures.by_reason, timeout_s=8, what="a failure")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    (reason,) = session.failures.by_reason
    return reason, session.failures.last_detail


async def test_refused_auth_and_tls_failures_are_told_apart(
    broker: TestBroker, certificates: dict[str, Path]
) -> None:
    port = free_port()
    reason, message = await diagnosis_of(MqttConnectionConfig(name="c", host="127.0.0.1", port=port))
    expect("connection_refused", f"127.0.0.1:{port}", "refused")(reason, message)

    server, auth_port, _ = await serve_mqtt(5, drop="never")
    try:
        reason, message = await diagnosis_of(MqttConnectionConfig(name="c", host="127.0.0.1", port=auth_port))
    finally:
        server.close()
    expect("auth", f"127.0.0.1:{auth_port}", "credentials")(reason, message)

    plain = MqttConnectionConfig(name="c", host=broker.host, port=broker.port, tls=True)
    reason, message = await diagnosis_of(plain)
    expect("tls", f"{broker.host}:{broker.port}", "TLS port")(reason, message)

    async with tls_port(certificates) as port:
        untrusted = TlsConfig(ca_file=str(certificates["other_ca"]))
        connection = MqttConnectionConfig(name="c", host="127.0.0.1", port=port, tls=untrusted)
        reason, message = await diagnosis_of(connection)
        expect("tls", f"127.0.0.1:{port}", "not trusted", str(certificates["other_ca"]))(reason, message)

        connection = MqttConnectionConfig(name="c", host="127.0.0.1", port=port)
        reason, message = await diagnosis_of(connection, 8)
        expect("timeout", f"127.0.0.1:{port}", "tls: true")(reason, message)

    missing = TlsConfig(ca_file="/nonexistent/ca.pem")
    reason, message = await diagnosis_of(
        MqttConnectionConfig(name="c", host="127.0.0.1", port=port, tls=missing)
    )
    expect("tls", "/nonexistent/ca.pem")(reason, message)


def test_a_dns_failure_names_the_host() -> None:
    # The system resolver cannot be pointed at a loopback peer here: aiomqtt's wrapping of the
    # resolver's error is reproduced as it raises it (MqttError from None, context kept).
    connection = MqttConnectionConfig(name="c", host="broker.example", port=1883)
    try:
        try:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        except OSError as error:
            raise aiomqtt.MqttError(str(error)) from None
    except aiomqtt.MqttError as wrapped:
        found = diagnose(wrapped, connection, connecting=True)
    assert found is not None
    expect("dns", "broker.example", "1883", "Name or service not known")(*found)


async def test_repeated_failures_log_one_warning_and_paho_stays_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    session = await run_session(MqttConnectionConfig(name="c", host="127.0.0.1", port=port), 1.5)
    assert session.failures.by_reason["connection_refused"] >= 3
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in loud] == ["connection_refused"]
    server, auth_port, _ = await serve_mqtt(5, drop="never")
    caplog.clear()
    try:
        caplog.set_level(logging.INFO)
        await run_session(MqttConnectionConfig(name="c", host="127.0.0.1", port=auth_port), 1.5)
    finally:
        server.close()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1, [r.getMessage() for r in loud]
    assert not [r for r in caplog.records if "paho" in r.name and r.levelno > logging.DEBUG]
