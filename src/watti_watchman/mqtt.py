"""An MQTT session adapter: one owned aiomqtt client, rebuilt fresh on every reconnect."""

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import aiomqtt
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from watti_watchman.clock import Clock
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.failures import FailureLog
from watti_watchman.supervisor import Backoff, reraise_swallowed_cancel, supervise


@dataclass(frozen=True)
class LastWill:
    """The message the broker publishes for us when our connection dies."""

    topic: str
    payload: bytes
    retain: bool = False


MessageHandler = Callable[[str, bytes, bool], None]
"""Called with (topic, payload, retained) for every message; must only parse and store."""


class NotConnectedError(ConnectionError):
    """A publish was attempted while the session has no live connection."""


def _classify(error: BaseException) -> str | None:
    """Reason label for transient MQTT errors; None for programming errors."""
    if isinstance(error, aiomqtt.MqttError):
        return "mqtt_error"
    if isinstance(error, (OSError, TimeoutError)):
        return "connect_failed"
    return None


class MqttSession:
    """Owns one MQTT client: connects, subscribes via `on_connect`, dispatches messages.

    `run()` never returns (reconnects with backoff); `publish()` raises NotConnectedError
    while disconnected so callers can count the drop instead of queueing stale data.
    """

    def __init__(
        self,
        connection: MqttConnectionConfig,
        component: str,
        *,
        clock: Clock,
        on_message: MessageHandler | None = None,
        on_connect: Callable[["MqttSession"], Awaitable[None]] | None = None,
        will: LastWill | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.connection = connection
        self.component = component
        self.client_id = f"{connection.client_id or 'watti_watchman'}_{component}"
        self._clock = clock
        self._on_message = on_message
        self._on_connect = on_connect
        self._will = will
        self.logger = logger or logging.getLogger(f"watti_watchman.mqtt.{component}")
        self.failures = FailureLog(self.logger, clock)
        self.backoff = Backoff(initial_s=0.2, cap_s=10.0)
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.connects_total = 0
        self.messages_total = 0
        self.publishes_total = 0
        self.publish_drops_total = 0

    def _make_client(self) -> aiomqtt.Client:
        tls = self.connection.tls_config()
        tls_context = None
        if tls is not None:
            tls_context = ssl.create_default_context(cafile=tls.ca_file)
            if tls.insecure:
                tls_context.check_hostname = False
        will = (
            aiomqtt.Will(self._will.topic, self._will.payload, retain=self._will.retain)
            if self._will is not None
            else None
        )
        return aiomqtt.Client(
            self.connection.host,
            self.connection.port,
            username=self.connection.username,
            password=self.connection.password,
            identifier=self.client_id,
            will=will,
            keepalive=self.connection.keepalive,
            timeout=5.0,
            tls_context=tls_context,
            logger=logging.getLogger(f"watti_watchman.mqtt.paho.{self.component}"),
        )

    async def _session(self) -> None:
        async with self._make_client() as client:
            self._client = client
            _no_delay(client)
            try:
                self.connects_total += 1
                self.backoff.reset()
                self.failures.success(f"connected to {self.connection.host}:{self.connection.port}")
                self.logger.debug("connected as %s", self.client_id)
                self.connected.set()
                if self._on_connect is not None:
                    await self._on_connect(self)
                    reraise_swallowed_cancel()
                async for message in client.messages:
                    self.messages_total += 1
                    if self._on_message is not None:
                        payload = message.payload
                        data = payload if isinstance(payload, bytes) else str(payload or "").encode()
                        self._on_message(message.topic.value, data, message.retain)
            finally:
                self.connected.clear()
                self._client = None

    async def run(self) -> None:
        """Keep the session connected forever (cancel to stop)."""
        await supervise(self._session, failures=self.failures, backoff=self.backoff, classify=_classify)

    @property
    def is_connected(self) -> bool:
        """True while a connection is established."""
        return self._client is not None and self.connected.is_set()

    async def subscribe(self, *topics: str) -> None:
        """Subscribe (QoS 0) on the live connection."""
        client = self._require_client()
        for topic in topics:
            await client.subscribe(topic)

    async def publish(self, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
        """Publish QoS 0 now; raises NotConnectedError while disconnected (counted as a drop)."""
        try:
            client = self._require_client()
            await client.publish(topic, payload, qos=0, retain=retain)
        except (NotConnectedError, aiomqtt.MqttError) as error:
            self.publish_drops_total += 1
            raise NotConnectedError(str(error)) from error
        self.publishes_total += 1

    async def close_gracefully(self, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
        """Best-effort final publish (e.g. `connected: 0`) before shutdown; never raises."""
        try:
            async with asyncio.timeout(1.0):
                await self.publish(topic, payload, retain=retain)
        except (NotConnectedError, TimeoutError):
            self.logger.debug("final publish to %s skipped: not connected", topic)

    def _require_client(self) -> aiomqtt.Client:
        if self._client is None or not self.connected.is_set():
            raise NotConnectedError(f"{self.component}: not connected")
        return self._client

    def collect_metrics(self) -> Iterable[Metric]:
        """Connection state and counters, labelled by component."""
        labels = ["component", "broker"]
        values = [self.component, f"{self.connection.host}:{self.connection.port}"]
        up = GaugeMetricFamily("watti_mqtt_connected", "1 while the MQTT session is connected", labels=labels)
        up.add_metric(values, 1.0 if self.is_connected else 0.0)
        yield up
        for name, doc, value in (
            ("watti_mqtt_connects", "MQTT connections established", self.connects_total),
            ("watti_mqtt_messages_received", "MQTT messages received", self.messages_total),
            ("watti_mqtt_publishes", "MQTT messages published", self.publishes_total),
            ("watti_mqtt_publish_drops", "publishes dropped while disconnected", self.publish_drops_total),
        ):
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            yield family
        errors = CounterMetricFamily(
            "watti_mqtt_errors", "MQTT connection failures by reason", labels=[*labels, "reason"]
        )
        for reason, count in sorted(self.failures.by_reason.items()):
            errors.add_metric([*values, reason], count)
        yield errors


def _no_delay(client: aiomqtt.Client) -> None:
    """Disable Nagle on the connection: a setpoint must not wait for the ACK of the one before."""
    sock = client._client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
