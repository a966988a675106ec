"""MqttSession against a real broker: subscribe/publish, drops while down, reconnect after restart."""

import asyncio
import contextlib
import socket

import pytest

from tests.support.brokers import TestBroker
from tests.support.proxy import LoopbackProxy
from tests.support.running import running
from tests.support.waiting import wait_until
from watti_watchman.clock import monotonic
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.mqtt import LastWill, MessageHandler, MqttSession, NotConnectedError


def listening(
    connection: MqttConnectionConfig,
    unique_id: str,
    received: list[tuple[str, bytes]] | None = None,
    *,
    on_message: MessageHandler | None = None,
    read_coalesce_s: float = 0.0,
) -> MqttSession:
    """A session that subscribes to `unique_id/#` on every connect and collects what arrives in
    `received` (or hands it to `on_message`)."""

    async def subscribe(session: MqttSession) -> None:
        await session.subscribe(f"{unique_id}/#")

    def collect(topic: str, payload: bytes, _retained: bool) -> None:
        assert received is not None
        received.append((topic, payload))

    return MqttSession(
        connection,
        "listener",
        clock=monotonic,
        on_connect=subscribe,
        on_message=on_message or collect,
        read_coalesce_s=read_coalesce_s,
    )


async def test_publish_subscribe_reconnect_and_will(
    broker: TestBroker, mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    received: list[tuple[str, bytes]] = []
    listener = listening(mqtt_connection, unique_id, received)
    talker = MqttSession(
        mqtt_connection, "talker", clock=monotonic, will=LastWill(f"{unique_id}/status", b"offline")
    )
    with pytest.raises(NotConnectedError):
        await talker.publish(f"{unique_id}/x", b"1")
    assert talker.publish_drops_total == 1
    async with running(listener, talker):
        await wait_until(
            lambda: listener.is_connected and talker.is_connected and listener.messages_total >= 0
        )
        await wait_until(lambda: listener.connects_total == 1)

        async def publish_until_received(payload: bytes) -> None:
            async def keep_publishing() -> None:
                while (f"{unique_id}/x", payload) not in received:
                    with contextlib.suppress(NotConnectedError):
                        await talker.publish(f"{unique_id}/x", payload)
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(keep_publishing(), 10)

        await publish_until_received(b"before")
        await broker.stop()
        await wait_until(lambda: not listener.is_connected and not talker.is_connected)
        with pytest.raises(NotConnectedError):
            await talker.publish(f"{unique_id}/x", b"lost")
        await broker.start()
        await wait_until(lambda: listener.connects_total == 2 and talker.connects_total == 2, timeout_s=15)
        await publish_until_received(b"after")
        assert sum(listener.failures.by_reason.values()) >= 1
        metrics = {f.name: f for f in talker.collect_metrics()}
        assert metrics["watti_mqtt_connected"].samples[0].value == 1.0
        assert metrics["watti_mqtt_connects"].samples[0].value == 2


async def test_the_connection_sends_without_nagle_delay(mqtt_connection: MqttConnectionConfig) -> None:
    """A decision's per-phase writes must not wait for the ACK of the first (Nagle + delayed ACK)."""
    session = MqttSession(mqtt_connection, "control", clock=monotonic)
    async with running(session):
        await wait_until(lambda: session.is_connected)
        client = session._client
        assert client is not None
        sock = client._client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_publish_many_sends_in_order_and_waits_for_a_stalled_broker(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    """Batches leave without a wait per message, in order; a broker that stops reading holds them back."""
    messages: list[tuple[str, bytes]] = []
    listener = listening(mqtt_connection, unique_id, messages)
    proxy = LoopbackProxy(mqtt_connection.host, mqtt_connection.port)
    await proxy.start()
    talker = MqttSession(mqtt_connection.model_copy(update={"port": proxy.port}), "talker", clock=monotonic)
    with pytest.raises(NotConnectedError):
        await talker.publish_many([(f"{unique_id}/x", b"0")] * 3)
    assert talker.publish_drops_total == 3
    try:
        async with running(listener, talker):
            await wait_until(
                lambda: listener.is_connected and talker.is_connected and listener.connects_total == 1
            )
            await asyncio.sleep(0.1)  # the listener's SUBACK
            sent = [str(n).encode() for n in range(19 * 40)]
            for start in range(0, len(sent), 19):
                await talker.publish_many(
                    [(f"{unique_id}/{n % 19}", p) for n, p in enumerate(sent[start : start + 19])]
                )
            await wait_until(lambda: len(messages) >= len(sent), 5.0, "all received")
            assert [payload for _, payload in messages] == sent
            assert talker.publishes_total == len(sent)

            proxy.stall()
            big = b"x" * 65536
            for _ in range(2000):  # ≤ 128 MB: socket buffers hold far less
                try:
                    await asyncio.wait_for(talker.publish_many([(f"{unique_id}/big", big)] * 2), 0.5)
                except TimeoutError:
                    break
            else:
                pytest.fail("publish_many kept queueing while the broker read nothing")
            proxy.resume()
            await talker.publish_many([(f"{unique_id}/x", b"after")])
            await wait_until(lambda: messages[-1][1] == b"after", 10.0, "flowing again")
    finally:
        proxy.close()


async def test_publish_together_sends_the_messages_in_one_segment_at_once(
    mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    """A decision's per-phase writes leave in one TCP segment during the call: nothing (the event
    loop, a garbage collection, Nagle) can come between L1 and L2/L3."""
    heard: list[tuple[str, bytes]] = []
    listener = listening(mqtt_connection, unique_id, heard)
    proxy = LoopbackProxy(mqtt_connection.host, mqtt_connection.port)
    await proxy.start()
    talker = MqttSession(mqtt_connection.model_copy(update={"port": proxy.port}), "control", clock=monotonic)
    topics = [f"{unique_id}/L{n}/AcPowerSetpoint" for n in (1, 2, 3)]
    with pytest.raises(NotConnectedError):
        talker.publish_together([(topic, b"{}") for topic in topics])
    assert talker.publish_drops_total == 3
    try:
        async with running(listener, talker):
            await wait_until(lambda: listener.is_connected and talker.is_connected)

            async def until_subscribed() -> None:
                while f"{unique_id}/ready" not in [topic for topic, _ in heard]:
                    talker.publish_together([(f"{unique_id}/ready", b"")])
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(until_subscribed(), 10)
            heard.clear()
            before, published = len(proxy.upstream_reads), talker.publishes_total
            talker.publish_together([(topic, b'{"value": 1}') for topic in topics])
            client = talker._client
            assert client is not None
            assert not client._client._out_packet, "written during the call, not queued for the event loop"
            await wait_until(lambda: len(heard) == 3, 5, "all three delivered")
            assert [topic for topic, _ in heard] == topics
            [segment] = [data for data in proxy.upstream_reads[before:] if topics[0].encode() in data]
            assert all(topic.encode() in segment for topic in topics), "one read holds all three"
            assert talker.publishes_total == published + 3
    finally:
        proxy.close()


async def test_a_failing_handler_is_counted_and_the_session_goes_on(
    mqtt_connection: MqttConnectionConfig, unique_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Messages are handled as paho reads them: a handler's exception must not drop the connection."""
    handled: list[bytes] = []

    def handler(_topic: str, payload: bytes, _retained: bool) -> None:
        if payload == b"bad":
            raise ValueError("handler bug")
        handled.append(payload)

    listener = listening(mqtt_connection, unique_id, on_message=handler)
    talker = MqttSession(mqtt_connection, "talker", clock=monotonic)
    async with running(listener, talker):
        await wait_until(lambda: listener.is_connected and talker.is_connected)

        async def publish_until_handled(payload: bytes) -> None:
            while payload not in handled:
                await talker.publish(f"{unique_id}/x", payload)
                await asyncio.sleep(0.02)

        await asyncio.wait_for(publish_until_handled(b"first"), 10)
        topic = f"{unique_id}/x"
        talker.publish_together([(topic, b"bad"), (topic, b"bad"), (topic, b"after")])
        await wait_until(lambda: b"after" in handled)
        assert listener.connects_total == 1
        errors = {f.name: f for f in listener.collect_metrics()}["watti_mqtt_errors"]
        assert [(s.labels["reason"], s.value) for s in errors.samples] == [("handler", 2.0)]
        logged = [r for r in caplog.records if r.getMessage() == "message handler failed"]
        assert logged[0].levelname == "ERROR" and logged[0].exc_info is not None
        assert all(r.levelname == "DEBUG" for r in logged[1:])


async def test_coalesced_reads_wait_then_take_every_waiting_message_and_survive_a_broker_restart(
    broker: TestBroker, mqtt_connection: MqttConnectionConfig, unique_id: str
) -> None:
    """`read_coalesce_s`: a message waits up to that long, then everything waiting is read at once."""
    delay_s = 0.5
    handled: list[tuple[float, bytes]] = []
    flood = 3000  # more than one read takes (MAX_PACKETS_PER_READ)
    listener = listening(
        mqtt_connection,
        unique_id,
        on_message=lambda _topic, payload, _retained: handled.append((monotonic(), payload)),
        read_coalesce_s=delay_s,
    )
    talker = MqttSession(mqtt_connection, "talker", clock=monotonic)
    topic = f"{unique_id}/x"
    async with running(listener, talker):
        for connection in (1, 2):
            await wait_until(lambda n=connection: listener.connects_total == n and talker.is_connected, 15)  # type: ignore[misc]
            while not any(payload == b"ready" for _, payload in handled):  # subscribed
                await talker.publish(topic, b"ready")
                await asyncio.sleep(0.05)
            await asyncio.sleep(delay_s * 2)  # the last "ready" read: the next message waits anew
            handled.clear()
            first_sent_s = monotonic()
            for n in range(5):  # spread over 0.1 s: one read takes them all, 0.5 s after the first
                await talker.publish(topic, b"%d" % n)
                await asyncio.sleep(0.02)
            talker.publish_together([(topic, b"flood")] * flood)
            await wait_until(lambda: len(handled) == 5 + flood, 10)
            assert [payload for _, payload in handled[:5]] == [b"0", b"1", b"2", b"3", b"4"]
            assert min(at_s for at_s, _ in handled) >= first_sent_s + delay_s * 0.9
            if connection == 1:
                await broker.stop()
                await wait_until(lambda: not listener.is_connected)
                await broker.start()
