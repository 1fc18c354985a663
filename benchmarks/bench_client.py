"""The client process of ``benchmarks/bench.py``: every client of one system, in one process.

    python benchmarks/bench_client.py --loop asyncio

The driver starts one per system (pinned to its own core) and sends one JSON
command per stdin line; this process runs the workload against that system's
hub and answers one JSON line on stdout. The publisher and every subscriber are
clients of this process, one connection each, so the publish timestamp in a W2
payload and its arrival are read from the same clock. CPU is measured over the
workload's measured interval: this process with ``time.process_time()``, the
hub (or nats-server) with its process CPU-time clock; both count every thread.

alkpubsub clients use only the public API: ``transport_from_url`` spokes (with
``backend=`` for the WebSocket systems),
``start``/``add_event_listener``/``dispatch_event``/``flush``/``drain``/
``aclose``, ``stats.received_events``, ``make_event`` and ``BackpressureError``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from _benchutil import loop_factory, require_loopback_only

from alkpubsub import BackpressureError, make_event, transport_from_url

PAD = "x" * 40  # makes a W1/W3 envelope about 100 bytes on the wire
QUIET_SECONDS = 3.0  # no progress for this long = the rest is lost
COMMAND_TIMEOUT = 600.0
OPEN_BATCH = 20  # clients connected concurrently while setting up a workload

OnMessage = Callable[[str, Any], None]


class Subscriber(Protocol):
    def leaks(self) -> int: ...
    async def close(self) -> None: ...


class Publisher(Protocol):
    async def publish(self, type_: str, id_: str, payload: Any) -> None: ...
    async def flush(self) -> None: ...
    async def close(self) -> None: ...


# -- alkpubsub: transport_from_url spokes (ws-spoke or iroh-spoke, by URL) ---------------


class AlkSubscriber:
    def __init__(self, spoke: Any, delivered: list[int]) -> None:
        self.spoke = spoke
        self.delivered = delivered

    @classmethod
    async def open(
        cls, url: str, topic: str, on_message: OnMessage, options: dict[str, Any]
    ) -> AlkSubscriber:
        spoke: Any = transport_from_url(url, **options)
        await spoke.start()
        delivered = [0]

        def listener(event: Any) -> None:
            delivered[0] += 1
            on_message(event.type, event.detail.payload)

        spoke.add_event_listener(topic, listener)
        await spoke.flush(30)
        return cls(spoke, delivered)

    def leaks(self) -> int:
        # Data frames that reached this spoke but no listener wanted (B2).
        return int(self.spoke.stats.received_events) - self.delivered[0]

    async def close(self) -> None:
        await self.spoke.aclose()


class AlkPublisher:
    def __init__(self, spoke: Any) -> None:
        self.spoke = spoke

    @classmethod
    async def open(cls, url: str, options: dict[str, Any]) -> AlkPublisher:
        spoke: Any = transport_from_url(url, **options)
        await spoke.start()
        return cls(spoke)

    async def publish(self, type_: str, id_: str, payload: Any) -> None:
        event = make_event(type_, id_, payload)
        while True:  # SPEC B13: dispatch, and drain on backpressure
            try:
                self.spoke.dispatch_event(event)
                return
            except BackpressureError:
                await self.spoke.drain()

    async def flush(self) -> None:
        await self.spoke.flush(30)

    async def close(self) -> None:
        await self.spoke.aclose()


# -- hand-written clients of the baseline hubs (same JSON envelopes) -----------------------


class RawProtocol:
    """What every baseline client does with received envelopes and pings."""

    def __init__(self, on_message: OnMessage | None, topic: str | None) -> None:
        self.on_message = on_message
        self.topic = topic
        self.leaked = 0
        self.pongs: dict[str, asyncio.Future[None]] = {}
        self.nonce = 0

    async def send_envelope(self, envelope: dict[str, Any]) -> None:
        raise NotImplementedError

    def handle(self, message: bytes | str) -> None:
        envelope = json.loads(message)
        kind = envelope["type"]
        if kind == "__pong":
            waiter = self.pongs.pop(envelope["id"], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif not kind.startswith("__"):
            topic = f"{kind}:{envelope['id']}"
            if topic != self.topic:
                self.leaked += 1
            elif self.on_message is not None:
                self.on_message(topic, envelope["payload"])

    async def ping(self) -> None:
        """Round trip through the hub: everything sent before was processed."""
        self.nonce += 1
        nonce = str(self.nonce)
        waiter = asyncio.get_running_loop().create_future()
        self.pongs[nonce] = waiter
        await self.send_envelope({"type": "__ping", "id": nonce, "payload": {}})
        await asyncio.wait_for(waiter, 30)

    async def subscribe(self, topic: str) -> None:
        await self.send_envelope({"type": "__subscribe", "id": "", "payload": {"topic": topic}})
        await self.ping()

    async def publish(self, type_: str, id_: str, payload: Any) -> None:
        await self.send_envelope({"type": type_, "id": id_, "payload": payload})

    async def flush(self) -> None:
        await self.ping()

    def leaks(self) -> int:
        return self.leaked


class WebsocketsClient(RawProtocol):
    """Raw ``websockets`` connection; ``await send()`` waits when the buffer is full."""

    async def connect(self, url: str) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(url, compression=None)
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            self.handle(message)

    async def send_envelope(self, envelope: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(envelope))

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


class PicowsClient(RawProtocol):
    """Raw ``picows`` connection: a listener called per frame, sends without awaiting.

    The publisher waits only while the socket's write buffer is over its high
    watermark (picows reports it through ``pause_writing``/``resume_writing``).
    """

    async def connect(self, url: str) -> None:
        from picows import WSListener, WSMsgType, ws_connect

        client = self
        self.writable = asyncio.Event()
        self.writable.set()
        self.text = WSMsgType.TEXT

        class Listener(WSListener):
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type == WSMsgType.TEXT:
                    client.handle(frame.get_payload_as_bytes())
                elif frame.msg_type == WSMsgType.CLOSE:
                    transport.disconnect()  # the hub sent or answered a close frame

            def pause_writing(self) -> None:
                client.writable.clear()

            def resume_writing(self) -> None:
                client.writable.set()

        self.transport, _ = await ws_connect(Listener, url, max_frame_size=2**20)

    async def send_envelope(self, envelope: dict[str, Any]) -> None:
        if not self.writable.is_set():
            await self.writable.wait()
        self.transport.send(self.text, json.dumps(envelope).encode())

    async def close(self) -> None:
        from picows import WSCloseCode

        self.transport.send_close(WSCloseCode.OK)
        try:
            await asyncio.wait_for(self.transport.wait_disconnected(), 5)
        except TimeoutError:
            self.transport.disconnect(graceful=False)


IROH_ALPN = b"alkpubsub/1"


class IrohClient(RawProtocol):
    """A hand-written iroh client: coalesced writes, 64 KiB reads, framing by hand.

    Frames are a 4-byte big-endian length and the JSON envelope, as the baseline
    iroh hub expects; the bindings' write copy is the same one-memcpy path.
    """

    def __init__(self, on_message: OnMessage | None, topic: str | None) -> None:
        super().__init__(on_message, topic)
        self.queue: list[bytes] = []
        self.wake = asyncio.Event()
        self.drained = asyncio.Event()

    async def connect(self, url: str) -> None:
        require_loopback_only()
        import iroh
        from _iroh_fast_write import install

        install()
        options = iroh.EndpointOptions(
            preset=iroh.preset_minimal(),
            bind_addr="127.0.0.1:0",
            alpns=[],
            relay_mode=iroh.RelayMode.disabled(),
        )
        self.endpoint = await iroh.Endpoint.bind(options)
        ticket = iroh.EndpointTicket.from_string(url.removeprefix("iroh://"))
        self.connection = await self.endpoint.connect(ticket.endpoint_addr(), IROH_ALPN)
        stream = await self.connection.open_bi()
        self.send, self.recv = stream.send(), stream.recv()
        self.tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._write())]

    async def _write(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            frames, self.queue = self.queue, []
            await self.send.write_all(b"".join(frames))
            if not self.queue:
                self.drained.set()

    async def _read(self) -> None:
        buffer = b""
        while chunk := await self.recv.read(65536):
            buffer += chunk
            start = 0
            while len(buffer) - start >= 4:
                end = start + 4 + int.from_bytes(buffer[start : start + 4])
                if end > len(buffer):
                    break
                self.handle(buffer[start + 4 : end])
                start = end
            buffer = buffer[start:]

    async def send_envelope(self, envelope: dict[str, Any]) -> None:
        data = json.dumps(envelope).encode()
        self.queue.append(len(data).to_bytes(4) + data)
        self.drained.clear()
        self.wake.set()
        if len(self.queue) > 1000:  # bounded, like alkpubsub's B13 queue
            await self.drained.wait()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.connection.close(0, b"")
        await self.endpoint.close()


class NatsClient:
    """nats-py: one connection per client; topic ``type:id`` is subject ``type.id``.

    The same JSON envelope is the message body, so every system moves the same
    bytes and every subscriber decodes them the same way. nats-py calls a
    subscription's (coroutine) callback from one task per subscription.
    """

    def __init__(self, on_message: OnMessage | None, topic: str | None) -> None:
        self.on_message = on_message
        self.topic = topic
        self.leaked = 0

    async def connect(self, url: str) -> None:
        import nats

        self.nc = await nats.connect(url, allow_reconnect=False, connect_timeout=10)

    async def subscribe(self, topic: str) -> None:
        subject = topic.replace(":", ".")

        async def on_msg(msg: Any) -> None:
            envelope = json.loads(msg.data)
            if msg.subject != subject:
                self.leaked += 1
            elif self.on_message is not None:
                self.on_message(f"{envelope['type']}:{envelope['id']}", envelope["payload"])

        await self.nc.subscribe(subject, cb=on_msg)
        await self.nc.flush(30)  # the server has the subscription

    async def publish(self, type_: str, id_: str, payload: Any) -> None:
        body = json.dumps({"type": type_, "id": id_, "payload": payload}).encode()
        await self.nc.publish(f"{type_}.{id_}", body)

    async def flush(self) -> None:
        await self.nc.flush(30)

    def leaks(self) -> int:
        return self.leaked

    async def close(self) -> None:
        await self.nc.close()


RAW_CLIENTS: dict[str, type[WebsocketsClient | PicowsClient | IrohClient | NatsClient]] = {
    "websockets": WebsocketsClient,
    "picows": PicowsClient,
    "iroh": IrohClient,
    "nats": NatsClient,
}


#: Options of the alkpubsub spokes of this run (the WebSocket backend), set per command.
SPOKE_OPTIONS: dict[str, Any] = {}
#: alkpubsub client kinds and their own spoke options: "alkpubsub-plain" measures
#: what sessions (acknowledgements) and the heartbeat cost.
ALK_CLIENTS: dict[str, dict[str, Any]] = {
    "alkpubsub": {},
    "alkpubsub-plain": {"session": False, "heartbeat_interval": None},
}


async def open_subscriber(kind: str, url: str, topic: str, on_message: OnMessage) -> Subscriber:
    if kind in ALK_CLIENTS:
        options = {**SPOKE_OPTIONS, **ALK_CLIENTS[kind]}
        return await AlkSubscriber.open(url, topic, on_message, options)
    client = RAW_CLIENTS[kind](on_message, topic)
    await client.connect(url)
    await client.subscribe(topic)
    return client


async def open_publisher(kind: str, url: str) -> Publisher:
    if kind in ALK_CLIENTS:
        return await AlkPublisher.open(url, {**SPOKE_OPTIONS, **ALK_CLIENTS[kind]})
    client = RAW_CLIENTS[kind](None, None)
    await client.connect(url)
    return client


# -- measuring -------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """CPU time of a live process, all its threads, in nanosecond resolution.

    Reads the process's CPU-time clock (what ``clock_getcpuclockid(3)`` returns:
    ``(~pid << 3) | CPUCLOCK_SCHED``); falls back to ``/proc/PID/stat`` in clock
    ticks (10 ms) where that clock cannot be read.
    """
    with contextlib.suppress(OSError, OverflowError):
        return time.clock_gettime((~pid << 3) | 2)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int | str, key: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise LookupError(key)


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy (or stolen by the hypervisor) since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Meter:
    """CPU of the hub, of this process and of everything else over a measured interval.

    ``other_cpu_pct`` is what the rest of the machine (other people's processes,
    the hypervisor's steal) took meanwhile, in % of one core: on a shared
    machine it tells which rows were measured under load.
    """

    hub_pid: int
    started: float = 0.0
    hub_cpu: float = 0.0
    client_cpu: float = 0.0
    machine_busy: float = 0.0

    def start(self) -> None:
        self.machine_busy = machine_busy_seconds()
        self.hub_cpu = process_cpu_seconds(self.hub_pid)
        self.client_cpu = time.process_time()
        self.started = time.perf_counter()

    def stop(self, deliveries: int, finished_at: float) -> dict[str, float]:
        hub_cpu = process_cpu_seconds(self.hub_pid) - self.hub_cpu
        client_cpu = time.process_time() - self.client_cpu
        window = time.perf_counter() - self.started
        other_cpu = machine_busy_seconds() - self.machine_busy - hub_cpu - client_cpu
        elapsed = max(finished_at - self.started, 1e-9)
        per = max(deliveries, 1)
        return {
            "elapsed_s": elapsed,
            "hub_cpu_pct": hub_cpu / elapsed * 100,
            "client_cpu_pct": client_cpu / elapsed * 100,
            "other_cpu_pct": max(other_cpu, 0.0) / max(window, 1e-9) * 100,
            "hub_cpu_us_per_delivery": hub_cpu / per * 1e6,
            "client_cpu_us_per_delivery": client_cpu / per * 1e6,
        }


@dataclass
class Tally:
    """Deliveries counted once per (subscriber, seq); repeats are duplicates."""

    expected: int
    count: int = 0
    duplicates: int = 0
    wrong_topic: int = 0
    last_change: float = field(default_factory=time.perf_counter)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finished_at: float = 0.0

    def tracker(self, messages: int, topic: str | None = None) -> Callable[[str, Any], None]:
        """An ``on_message`` for one subscriber, given how many seqs it can see."""
        seen = bytearray(messages)

        def on_message(received_topic: str, payload: Any) -> None:
            if topic is not None and received_topic != topic:
                self.wrong_topic += 1
                return
            seq = payload["seq"]
            if seen[seq]:
                self.duplicates += 1
                return
            seen[seq] = 1
            self.count += 1
            if self.count >= self.expected:
                self.finished_at = time.perf_counter()
                self.done.set()

        return on_message

    async def wait(self) -> None:
        """Until everything arrived, or nothing moved for QUIET_SECONDS."""
        seen = -1
        while not self.done.is_set():
            if self.count != seen:
                seen, self.last_change = self.count, time.perf_counter()
            elif time.perf_counter() - self.last_change > QUIET_SECONDS:
                self.finished_at = self.last_change
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 0.2)

    def lost(self) -> int:
        return self.expected - self.count


async def open_all(factories: list[Callable[[], Awaitable[Subscriber]]]) -> list[Subscriber]:
    opened: list[Subscriber] = []
    for start in range(0, len(factories), OPEN_BATCH):
        batch = factories[start : start + OPEN_BATCH]
        opened.extend(await asyncio.gather(*(factory() for factory in batch)))
    return opened


async def close_all(clients: list[Any]) -> None:
    results = await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            print(f"bench_client: close failed: {result!r}", file=sys.stderr)


# -- workloads ---------------------------------------------------------------------------------


async def w1_fanout(kind: str, url: str, meter: Meter, scale: dict[str, Any]) -> dict[str, float]:
    """1 publisher, N subscribers on one topic, messages back to back."""
    subscribers_n, messages = scale["w1_subscribers"], scale["w1_messages"]
    tally = Tally(subscribers_n * messages)
    subscribers = await open_all(
        [
            lambda: open_subscriber(kind, url, "bench:w1", tally.tracker(messages))
            for _ in range(subscribers_n)
        ]
    )
    publisher = await open_publisher(kind, url)
    meter.start()
    for seq in range(messages):
        await publisher.publish("bench", "w1", {"seq": seq, "pad": PAD})
    await tally.wait()
    result = meter.stop(tally.count, tally.finished_at or time.perf_counter())
    result["deliveries_per_s"] = tally.count / result["elapsed_s"]
    result.update(lost=tally.lost(), duplicates=tally.duplicates)
    await close_all([publisher, *subscribers])
    return result


async def w2_latency(kind: str, url: str, meter: Meter, scale: dict[str, Any]) -> dict[str, float]:
    """N subscribers, a paced publisher; latency from a send timestamp in the payload."""
    subscribers_n, rate = scale["w2_subscribers"], scale["w2_rate"]
    messages = int(rate * scale["w2_seconds"])
    tally = Tally(subscribers_n * messages)
    latencies: list[float] = []

    def timed(on_message: OnMessage) -> OnMessage:
        def on_timed(topic: str, payload: Any) -> None:
            latencies.append(time.perf_counter() - payload["t"])
            on_message(topic, payload)

        return on_timed

    subscribers = await open_all(
        [
            lambda: open_subscriber(kind, url, "bench:w2", timed(tally.tracker(messages)))
            for _ in range(subscribers_n)
        ]
    )
    publisher = await open_publisher(kind, url)
    meter.start()
    start = meter.started
    for seq in range(messages):
        delay = start + seq / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the publisher, not waiting for a condition
        await publisher.publish("bench", "w2", {"seq": seq, "t": time.perf_counter()})
    await tally.wait()
    result = meter.stop(tally.count, tally.finished_at or time.perf_counter())
    latencies.sort()
    if latencies:
        result.update(
            p50_us=latencies[len(latencies) // 2] * 1e6,
            p99_us=latencies[min(int(len(latencies) * 0.99), len(latencies) - 1)] * 1e6,
            max_us=latencies[-1] * 1e6,
        )
    result.update(lost=tally.lost(), duplicates=tally.duplicates)
    await close_all([publisher, *subscribers])
    return result


async def w3_routing(kind: str, url: str, meter: Meter, scale: dict[str, Any]) -> dict[str, float]:
    """N subscribers each on its own topic, messages round robin over the topics."""
    subscribers_n, messages = scale["w3_subscribers"], scale["w3_messages"]
    tally = Tally(messages)
    seen_by_all = tally.tracker(messages)  # each seq has exactly one subscriber

    def for_topic(expected: str) -> OnMessage:
        def on_message(topic: str, payload: Any) -> None:
            if topic != expected:
                tally.wrong_topic += 1
            else:
                seen_by_all(topic, payload)

        return on_message

    def factory(i: int) -> Callable[[], Awaitable[Subscriber]]:
        topic = f"bench:w3-{i}"
        return lambda: open_subscriber(kind, url, topic, for_topic(topic))

    subscribers = await open_all([factory(i) for i in range(subscribers_n)])
    publisher = await open_publisher(kind, url)
    meter.start()
    for seq in range(messages):
        await publisher.publish("bench", f"w3-{seq % subscribers_n}", {"seq": seq, "pad": PAD})
    await tally.wait()
    result = meter.stop(tally.count, tally.finished_at or time.perf_counter())
    await publisher.flush()
    result["deliveries_per_s"] = tally.count / result["elapsed_s"]
    result.update(
        lost=tally.lost(),
        duplicates=tally.duplicates,
        leaks=sum(s.leaks() for s in subscribers) + tally.wrong_topic,
    )
    await close_all([publisher, *subscribers])
    return result


async def idle_connections(
    kind: str, url: str, meter: Meter, scale: dict[str, Any]
) -> dict[str, float]:
    """Resident memory the hub (and this process) holds per idle subscribed connection."""
    connections = scale["idle_connections"]
    warm_up = [await open_subscriber(kind, url, "bench:idle-warm-up", lambda t, p: None)]
    hub_before, client_before = memory_kib(meter.hub_pid, "VmRSS"), memory_kib("self", "VmRSS")

    def factory(i: int) -> Callable[[], Awaitable[Subscriber]]:
        return lambda: open_subscriber(kind, url, f"bench:idle-{i}", lambda t, p: None)

    idle = await open_all([factory(i) for i in range(connections)])
    hub_after, client_after = memory_kib(meter.hub_pid, "VmRSS"), memory_kib("self", "VmRSS")
    await close_all([*idle, *warm_up])
    return {
        "hub_kib_per_idle_connection": (hub_after - hub_before) / connections,
        "client_kib_per_idle_connection": (client_after - client_before) / connections,
    }


WORKLOADS = {"IDLE": idle_connections, "W1": w1_fanout, "W2": w2_latency, "W3": w3_routing}


async def run_command(command: dict[str, Any]) -> dict[str, Any]:
    workload = WORKLOADS[command["workload"]]
    SPOKE_OPTIONS.clear()
    if command.get("ws_backend"):
        SPOKE_OPTIONS["backend"] = command["ws_backend"]
    meter = Meter(command["hub_pid"])
    async with asyncio.timeout(COMMAND_TIMEOUT):
        return await workload(command["client"], command["url"], meter, command["scale"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    # Answers go to the real stdout; anything a library prints goes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        for line in sys.stdin:
            command = json.loads(line)
            if command["workload"] == "EXIT":
                break
            try:
                answer = runner.run(run_command(command))
            except Exception:
                answer = {"error": traceback.format_exc()}
            answers.write(json.dumps(answer) + "\n")
            answers.flush()


if __name__ == "__main__":
    main()
