"""An MQTT session adapter: one owned aiomqtt client, rebuilt fresh on every reconnect."""

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.client import MQTTMessage, MQTTMessageInfo, error_string
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client.core import Metric

from watti_watchman.clock import Clock
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.failures import FailureLog
from watti_watchman.metrics import Families
from watti_watchman.supervisor import HEALTHY_AFTER_S, Backoff, reraise_swallowed_cancel, supervise


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


CONNECT_TIMEOUT_S = 5.0
"""Connect and CONNACK must complete within this (s)."""
AUTH_CODES = frozenset({4, 5, 134, 135})
"""CONNACK codes for bad credentials / not authorised (MQTT 3.1.1 and 5)."""


def diagnose(
    error: BaseException, connection: MqttConnectionConfig, *, connecting: bool
) -> tuple[str, str] | None:
    """(reason label, message naming host:port or the CA file) for a transient MQTT error.

    `connecting`: raised before the connection was up. None for programming errors. aiomqtt
    wraps socket errors in MqttError; the original is its `__context__`.
    """
    where = f"{connection.host}:{connection.port}"
    tls = connection.tls_config()
    ca = (tls.ca_file if tls is not None else None) or "the system CAs"
    cause = error.__context__ if type(error) is aiomqtt.MqttError and error.__context__ else error
    if isinstance(error, MqttConnectError):
        code = error.rc.value if isinstance(error.rc, ReasonCode) else error.rc
        if code in AUTH_CODES:
            return "auth", f"{where} refused the credentials ({error}): check username and password"
        return "connack_refused", f"{where} refused the connection: {error}"
    if isinstance(cause, socket.gaierror):
        return "dns", f"cannot resolve {connection.host} (port {connection.port}): {cause.strerror}"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return "tls", f"TLS certificate of {where} not trusted by {ca}: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return "tls", f"TLS handshake with {where} failed ({cause.reason}): is this a TLS port?"
    if connecting and tls is not None and isinstance(cause, ConnectionResetError | BrokenPipeError):
        return "tls", f"TLS handshake with {where} failed (connection reset): is this a TLS port?"
    if isinstance(cause, FileNotFoundError | PermissionError) and tls is not None:
        return "tls", f"cannot read the CA file {ca}: {cause.strerror}"
    if isinstance(cause, ConnectionRefusedError):
        return "connection_refused", f"{where} refused the connection: no broker listening on that port"
    if connecting and isinstance(error, aiomqtt.MqttError) and str(error) == "Operation timed out":
        hint = "" if tls is not None else " (a TLS port needs tls: true)"
        return "timeout", f"no MQTT answer from {where} within {CONNECT_TIMEOUT_S:g} s{hint}"
    if isinstance(cause, TimeoutError):
        return "timeout", f"no TCP connection to {where} within {CONNECT_TIMEOUT_S:g} s"
    if isinstance(error, aiomqtt.MqttError):
        return "connection_lost", f"{where}: {error}"
    if isinstance(cause, OSError):
        return "connect_failed", f"{where}: {cause.strerror or cause}"
    return None


def _retrieve(future: "asyncio.Future[None]") -> None:
    """Mark a future's exception as seen (asyncio logs unseen ones at ERROR)."""
    if not future.cancelled():
        future.exception()


class _DemoteToDebug(logging.Filter):
    """paho's own lines repeat on every attempt: they go to DEBUG; FailureLog says it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _library_logger(component: str) -> logging.Logger:
    library = logging.getLogger(f"watti_watchman.mqtt.paho.{component}")
    if not any(isinstance(f, _DemoteToDebug) for f in library.filters):
        library.addFilter(_DemoteToDebug())
    return library


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
        read_coalesce_s: float = 0.0,
    ) -> None:
        """`read_coalesce_s` > 0: read the socket at most that often (s), every message waiting
        then at once, instead of waking for each (for sessions whose messages are not urgent)."""
        self.connection = connection
        self.read_coalesce_s = read_coalesce_s
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
        self._connecting = False
        self.connected = asyncio.Event()
        self.connects_total = 0
        self.messages_total = 0
        self.publishes_total = 0
        self.publish_drops_total = 0
        self._labels = (component, f"{connection.host}:{connection.port}")
        self._families = Families()

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
            timeout=CONNECT_TIMEOUT_S,
            tls_context=tls_context,
            logger=_library_logger(self.component),
        )

    async def _session(self) -> None:
        self._connecting = True
        client = self._make_client()
        # aiomqtt 2.5 forgets a disconnect that arrives between CONNACK and the end of
        # connecting (its future is replaced unread): retrieve it, and check paho's state.
        client._disconnected.add_done_callback(_retrieve)
        async with client:
            if not client._client.is_connected():
                raise aiomqtt.MqttError("connection closed right after CONNACK")
            # Each message is handled as paho reads it: aiomqtt's iterator would cost a task and an
            # asyncio.wait per message (≈0.16 ms of CPU each at 70 messages/s, bench_mqtt_receive).
            client._client.on_message = self._dispatch
            self._connecting = False
            self._client = client
            _no_delay(client)
            if self.read_coalesce_s > 0:
                _coalesce_reads(client, self.read_coalesce_s)
            # The outage ends once the connection has held: a flapping broker is one outage.
            connected_at_s = self._clock()
            stable = asyncio.get_running_loop().call_later(
                HEALTHY_AFTER_S,
                self.failures.success,
                f"connected to {self.connection.host}:{self.connection.port} (stable)",
                connected_at_s,
            )
            try:
                self.connects_total += 1
                self.logger.debug("connected as %s", self.client_id)
                self.connected.set()
                if self._on_connect is not None:
                    await self._on_connect(self)
                    reraise_swallowed_cancel()
                async for _ in client.messages:  # fed by nothing (see `_dispatch`): raises when disconnected
                    pass
            finally:
                stable.cancel()
                self.connected.clear()
                self._client = None

    def _dispatch(self, _client: object, _userdata: object, message: MQTTMessage) -> None:
        """paho's `on_message`: count the message and hand it to the handler, in arrival order."""
        self.messages_total += 1
        if self._on_message is None:
            return
        try:
            self._on_message(message.topic, bytes(message.payload), message.retain)
        except Exception:  # a handler's bug: counted, its first traceback logged; the session goes on
            self.failures.by_reason["handler"] += 1
            first = self.failures.by_reason["handler"] == 1
            self.logger.log(
                logging.ERROR if first else logging.DEBUG, "message handler failed", exc_info=True
            )

    async def run(self) -> None:
        """Keep the session connected forever (cancel to stop)."""
        await supervise(
            self._session,
            failures=self.failures,
            backoff=self.backoff,
            classify=lambda error: (self._diagnose(error) or (None, ""))[0],
            describe=lambda error: (self._diagnose(error) or ("", str(error)))[1],
            clock=self._clock,
        )

    def _diagnose(self, error: BaseException) -> tuple[str, str] | None:
        return diagnose(error, self.connection, connecting=self._connecting)

    @property
    def is_connected(self) -> bool:
        """True while a connection is established."""
        return self._client is not None and self.connected.is_set()

    async def subscribe(self, *topics: str) -> None:
        """Subscribe (QoS 0) on the live connection, all `topics` in one SUBSCRIBE."""
        client = self._require_client()
        await client.subscribe([(topic, 0) for topic in topics])

    async def publish(self, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
        """Publish QoS 0 now; raises NotConnectedError while disconnected (counted as a drop)."""
        try:
            client = self._require_client()
            await client.publish(topic, payload, qos=0, retain=retain)
        except (NotConnectedError, aiomqtt.MqttError) as error:
            self.publish_drops_total += 1
            raise NotConnectedError(str(error)) from error
        self.publishes_total += 1

    def publish_together(self, messages: Sequence[tuple[str, bytes | str]]) -> None:
        """Publish QoS 0 messages as one TCP segment, now: nothing can come between them (not the
        event loop, not a garbage collection, not Nagle); NotConnectedError while disconnected.

        Also the cheap path for frequent messages: `publish` costs ≈0.26 ms of CPU per message
        (a loop round trip and a confirmation each), this ≈0.035 ms (BENCHMARKS § CPU). With
        nothing queued before them, paho builds no per-message confirmations (nobody awaits them).
        """
        try:
            client = self._require_client()
            paho_client = client._client
            sock = paho_client.socket()
            corked = sock if isinstance(sock, socket.socket) and hasattr(socket, "TCP_CORK") else None
            if corked is not None:
                corked.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            # Written below, not by the event loop's writer: no writer registration (which would
            # race with a close of the socket) unless something is left to write afterwards.
            registered = paho_client._registered_write
            paho_client._registered_write = True
            confirm = paho_client.on_publish
            if not paho_client.want_write():  # else a `publish` queued before awaits its confirmation
                paho_client.on_publish = None
            try:
                for topic, payload in messages:
                    _queued(paho_client.publish(topic, payload, qos=0))
                paho_client.loop_write()
            finally:
                paho_client.on_publish = confirm
                if corked is not None:
                    corked.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)  # sends the segment
                if not registered and paho_client._registered_write and paho_client.want_write():
                    paho_client._registered_write = False
                    paho_client._call_socket_register_write()  # the rest when the socket allows
        except (NotConnectedError, aiomqtt.MqttError, OSError) as error:
            self.publish_drops_total += len(messages)
            raise NotConnectedError(str(error)) from error
        self.publishes_total += len(messages)

    async def publish_many(self, messages: Sequence[tuple[str, bytes | str]]) -> None:
        """`publish_together` for a stream of rounds (the grid feed), with back-pressure.

        While earlier messages are still unsent (the broker does not read), the round is queued
        behind them and this waits until it is written, as `publish` does: a stalled broker slows
        the caller down instead of growing a queue.
        """
        client = self._client
        if client is None or not self.connected.is_set() or not client._client.want_write():
            self.publish_together(messages)  # (NotConnectedError, counted, while disconnected)
            return
        try:
            paho_client = client._client
            for topic, payload in messages[:-1]:
                _queued(paho_client.publish(topic, payload, qos=0))
            last_topic, last_payload = messages[-1]
            await client.publish(last_topic, last_payload, qos=0)  # written: so are those before
        except (NotConnectedError, aiomqtt.MqttError) as error:
            self.publish_drops_total += len(messages)
            raise NotConnectedError(str(error)) from error
        self.publishes_total += len(messages)

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
        labels = self._labels
        names = ("component", "broker")
        families = self._families
        connected = families.gauge("watti_mqtt_connected", "1 while the MQTT session is connected", names)
        yield connected.one(1.0 if self.is_connected else 0.0, *labels)
        for name, doc, value in (
            ("watti_mqtt_connects", "MQTT connections established", self.connects_total),
            ("watti_mqtt_messages_received", "MQTT messages received", self.messages_total),
            ("watti_mqtt_publishes", "MQTT messages published", self.publishes_total),
            ("watti_mqtt_publish_drops", "publishes dropped while disconnected", self.publish_drops_total),
        ):
            yield families.counter(name, doc, names).one(value, *labels)
        errors = families.counter(
            "watti_mqtt_errors", "MQTT connection failures by reason", (*names, "reason")
        )
        yield errors.set(
            ([*labels, reason], count) for reason, count in sorted(self.failures.by_reason.items())
        )


def _queued(info: MQTTMessageInfo) -> None:
    """Raise NotConnectedError unless paho queued the message (it refuses while disconnected)."""
    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
        raise NotConnectedError(f"publish refused: {error_string(info.rc)}")


MAX_PACKETS_PER_READ = 1000
"""A coalesced read hands the event loop back after this many packets (a flooding broker)."""


def _coalesce_reads(client: aiomqtt.Client, delay_s: float) -> None:
    """Replace aiomqtt's reader (one packet per wake-up) by one that waits `delay_s` after the
    socket becomes readable and then reads every packet waiting (plain TCP; TLS keeps aiomqtt's).

    paho's socket-close callback removes the reader by descriptor, whichever it is; a read
    scheduled for a socket that is gone since does nothing.
    """
    paho_client = client._client
    sock = paho_client.socket()
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return
    plain: socket.socket = sock
    loop = asyncio.get_running_loop()
    fileno = plain.fileno()

    def readable() -> None:
        loop.remove_reader(fileno)
        loop.call_later(delay_s, read_waiting)

    def read_waiting() -> None:
        if paho_client.socket() is not plain:
            return
        try:
            for _ in range(MAX_PACKETS_PER_READ):
                if not _has_data(plain) or paho_client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        except Exception as error:  # as aiomqtt's own reader: the connection is broken
            if not client._disconnected.done():
                client._disconnected.set_exception(error)
            return
        if paho_client.socket() is plain:
            loop.add_reader(fileno, readable)

    loop.remove_reader(fileno)
    loop.add_reader(fileno, readable)


def _has_data(sock: socket.socket) -> bool:
    """True when a read would not block (data, or the peer's close)."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    return True


def _no_delay(client: aiomqtt.Client) -> None:
    """Disable Nagle on the connection: a setpoint must not wait for the ACK of the one before."""
    sock = client._client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
