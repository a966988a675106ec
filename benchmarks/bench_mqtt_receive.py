"""CPU per received MQTT notification: aiomqtt's message iterator, MqttSession's dispatch, and
MqttSession reading at most every 50 ms (the Victron meter), side by side in one run.

A publisher in its own process (mosquitto_pub fed by a pacing script) sends GX-like
notifications one by one at a steady rate, as a GX does, to Mosquitto on a free loopback port;
each receiver runs on uvloop in this process, alone, and its CPU time (this process's) is read
over the whole stream. Run: `uv run python -m benchmarks.bench_mqtt_receive [--rate 70]`.
"""

import argparse
import asyncio
import shlex
import sys
import time
from collections.abc import Callable, Coroutine

import aiomqtt
import uvloop

from benchmarks.support import print_table, running_broker
from tests.support.brokers import TestBroker
from watti_watchman.clock import monotonic
from watti_watchman.config.mqtt import MqttConnectionConfig
from watti_watchman.mqtt import MqttSession

TOPIC = "N/c0ffee/vebus/276/Ac/ActiveIn/L1/P"
PAYLOAD = '{"value": 1234.5}'
COALESCE_S = 0.05


async def publish_paced(port: int, count: int, rate: float) -> None:
    """`count` messages at `rate`/s from a pipeline of other processes (nothing passes through
    this one, whose CPU time is the receiver's)."""
    pacer = (
        "import sys, time\n"
        f"for _ in range({count}):\n"
        f"    sys.stdout.write({PAYLOAD!r} + '\\n'); sys.stdout.flush(); time.sleep({1 / rate})\n"
    )
    pipeline = (
        f"{shlex.quote(sys.executable)} -c {shlex.quote(pacer)}"
        f" | mosquitto_pub -h 127.0.0.1 -p {port} -t {shlex.quote(TOPIC)} -l"
    )
    publisher = await asyncio.create_subprocess_shell(pipeline)
    await publisher.wait()


Receiver = Callable[[TestBroker, Callable[[], None], asyncio.Event], Coroutine[object, object, None]]


async def aiomqtt_iterator(
    broker: TestBroker, on_message: Callable[[], None], subscribed: asyncio.Event
) -> None:
    """aiomqtt's own way: `async for message in client.messages`."""
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe("N/#")
        subscribed.set()
        async for _ in client.messages:
            on_message()


def session_receiver(coalesce_s: float) -> Receiver:
    """MqttSession with `read_coalesce_s`."""

    async def receive(broker: TestBroker, on_message: Callable[[], None], subscribed: asyncio.Event) -> None:
        async def subscribe(session: MqttSession) -> None:
            await session.subscribe("N/#")
            subscribed.set()

        connection = MqttConnectionConfig.model_validate(
            {"name": "bench", "host": "127.0.0.1", "port": broker.port}
        )
        session = MqttSession(
            connection,
            "bench",
            clock=monotonic,
            on_connect=subscribe,
            on_message=lambda _topic, _payload, _retained: on_message(),
            read_coalesce_s=coalesce_s,
        )
        await session.run()

    return receive


async def measure(receiver: Receiver, count: int, rate: float) -> tuple[float, float]:
    """(CPU µs per message, wall seconds) of one receiver over `count` paced messages."""
    async with running_broker() as broker:
        received = 0
        done = asyncio.Event()
        subscribed = asyncio.Event()

        def on_message() -> None:
            nonlocal received
            received += 1
            if received == count:
                done.set()

        task = asyncio.create_task(receiver(broker, on_message, subscribed))
        await asyncio.wait_for(subscribed.wait(), 10)
        cpu_start, wall_start = time.process_time(), time.monotonic()
        publishing = asyncio.create_task(publish_paced(broker.port, count, rate))
        await asyncio.wait_for(done.wait(), count / rate * 3 + 10)
        cpu_s, wall_s = time.process_time() - cpu_start, time.monotonic() - wall_start
        await publishing
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return 1e6 * cpu_s / count, wall_s


async def run(count: int, rate: float) -> list[list[object]]:
    rows: list[list[object]] = []
    for label, receiver in (
        ("aiomqtt `async for client.messages`", aiomqtt_iterator),
        ("MqttSession (handled as paho reads it)", session_receiver(0.0)),
        (f"MqttSession, read at most every {COALESCE_S * 1000:g} ms", session_receiver(COALESCE_S)),
    ):
        per_message_us, wall_s = await measure(receiver, count, rate)
        share = per_message_us * rate / 1e4
        rows.append([label, count, f"{count / wall_s:.0f}", f"{per_message_us:.0f}", f"{share:.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=70.0, help="notifications/s (the demo GX: ≈70)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each receiver's stream")
    args = parser.parse_args()
    count = round(args.rate * args.seconds)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        rows = runner.run(run(count, args.rate))
    print(f"\nreceiving {args.rate:g} notifications/s one by one, uvloop, Mosquitto on loopback\n")
    print_table(["receiver", "messages", "msg/s", "CPU µs per message", "% of a core at this rate"], rows)


if __name__ == "__main__":
    main()
