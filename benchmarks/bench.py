"""Benchmark: alkpubsub hub + spokes against a minimal hand-written hub.

    python benchmarks/bench.py --transport ws   [--repeat 5] [--json results.json]
    python benchmarks/bench.py --transport iroh [--repeat 5]   (under loopback-only)

For each system the hub runs in its own process; every client (publisher and
subscribers) runs in this process. Workloads (all on loopback):

W1 fan-out   1 publisher, 10 subscribers on one topic, 20,000 envelopes of
             about 100 bytes back to back: deliveries/s, lost.
W2 latency   10 subscribers, 1,000 msg/s for 5 s: p50/p99/max in microseconds
             (publish timestamp in the payload; same clock, same process).
W3 routing   100 subscribers each on its own topic, 20,000 envelopes round
             robin: deliveries/s, lost, leaks (frames of a topic a subscriber
             never subscribed).

The alkpubsub publisher follows SPEC B13: dispatch_event in a loop and
``await drain()`` on BackpressureError. Each workload runs ``--repeat`` times
per system, alternating systems; the median is reported with the ratio
alkpubsub/baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect

from alkpubsub import BackpressureError, make_event, transport_from_url
from alkpubsub.core.codec import FrameDecoder, pack_frames
from alkpubsub.transports.base import SpokeTarget

HERE = Path(__file__).resolve().parent
PAD = "x" * 40  # makes a W1 envelope about 100 bytes on the wire
QUIET_SECONDS = 3.0  # no progress for this long = the rest is lost

OnMessage = Callable[[str, Any], None]


class Subscriber(Protocol):
    def leaks(self) -> int: ...
    async def close(self) -> None: ...


class Publisher(Protocol):
    async def publish(self, type_: str, id_: str, payload: Any) -> None: ...
    async def flush(self) -> None: ...
    async def close(self) -> None: ...


# -- alkpubsub clients --------------------------------------------------------------


def alk_spoke(url: str) -> SpokeTarget:
    spoke = transport_from_url(url)  # ws-spoke or iroh-spoke, by URL only
    assert isinstance(spoke, SpokeTarget)
    return spoke


class AlkSubscriber:
    def __init__(self, spoke: SpokeTarget, delivered: list[int]) -> None:
        self.spoke = spoke
        self.delivered = delivered

    @classmethod
    async def open(cls, url: str, topic: str, on_message: OnMessage) -> AlkSubscriber:
        spoke = alk_spoke(url)
        await spoke.start()
        delivered = [0]

        def listener(event: Any) -> None:
            delivered[0] += 1
            on_message(event.type, event.detail.payload)

        spoke.add_event_listener(topic, listener)
        await spoke.flush()
        return cls(spoke, delivered)

    def leaks(self) -> int:
        # Data frames that reached this spoke but no listener wanted (B2).
        return int(self.spoke.stats.received_events) - self.delivered[0]

    async def close(self) -> None:
        await self.spoke.aclose()


class AlkPublisher:
    def __init__(self, spoke: SpokeTarget) -> None:
        self.spoke = spoke

    @classmethod
    async def open(cls, url: str) -> AlkPublisher:
        spoke = alk_spoke(url)
        await spoke.start()
        return cls(spoke)

    async def publish(self, type_: str, id_: str, payload: Any) -> None:
        event = make_event(type_, id_, payload)
        while True:
            try:
                self.spoke.dispatch_event(event)
                return
            except BackpressureError:
                await self.spoke.drain()

    async def flush(self) -> None:
        await self.spoke.flush(30)

    async def close(self) -> None:
        await self.spoke.aclose()


# -- baseline clients (raw websockets, same wire format) ----------------------------------


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
            if waiter is not None:
                waiter.set_result(None)
        elif not kind.startswith("__"):
            topic = f"{kind}:{envelope['id']}"
            if topic != self.topic:
                self.leaked += 1
            elif self.on_message is not None:
                self.on_message(topic, envelope["payload"])

    async def ping(self) -> None:
        self.nonce += 1
        nonce = str(self.nonce)
        waiter = asyncio.get_running_loop().create_future()
        self.pongs[nonce] = waiter
        await self.send_envelope({"type": "__ping", "id": nonce, "payload": {}})
        await asyncio.wait_for(waiter, 30)

    def leaks(self) -> int:
        return self.leaked


class RawClient(RawProtocol):
    def __init__(self, ws: ClientConnection, on_message: OnMessage | None, topic: str | None):
        super().__init__(on_message, topic)
        self.ws = ws
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            self.handle(message)

    async def send_envelope(self, envelope: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(envelope))

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


class RawSubscriber(RawClient):
    @classmethod
    async def open(cls, url: str, topic: str, on_message: OnMessage) -> RawSubscriber:
        ws = await connect(url, compression=None)
        client = cls(ws, on_message, topic)
        await ws.send(json.dumps({"type": "__subscribe", "id": "", "payload": {"topic": topic}}))
        await client.ping()
        return client


class RawPublisher(RawClient):
    @classmethod
    async def open(cls, url: str) -> RawPublisher:
        return cls(await connect(url, compression=None), None, None)

    async def publish(self, type_: str, id_: str, payload: Any) -> None:
        await self.send_envelope({"type": type_, "id": id_, "payload": payload})

    async def flush(self) -> None:
        await self.ping()


class RawIrohClient(RawProtocol):
    """A hand-written iroh client: coalesced writes, 64 KiB reads, manual framing."""

    def __init__(self, on_message: OnMessage | None, topic: str | None) -> None:
        super().__init__(on_message, topic)
        self.queue: list[bytes] = []
        self.wake = asyncio.Event()
        self.drained = asyncio.Event()

    async def connect(self, url: str) -> None:
        import iroh

        from alkpubsub.transports.iroh import ALPN, bind_endpoint

        self.endpoint = await bind_endpoint(
            secret_key=None, bind_addr="127.0.0.1:0", alpns=[], relay_mode=None, preset=None
        )
        ticket = iroh.EndpointTicket.from_string(url.removeprefix("iroh://"))
        self.connection = await self.endpoint.connect(ticket.endpoint_addr(), ALPN)
        stream = await self.connection.open_bi()
        self.send, self.recv = stream.send(), stream.recv()
        self.tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._write())]

    async def _write(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            frames, self.queue = self.queue, []
            await self.send.write_all(pack_frames(frames))
            if not self.queue:
                self.drained.set()

    def write(self, envelope: dict[str, Any]) -> None:
        self.queue.append(json.dumps(envelope).encode())
        self.drained.clear()
        self.wake.set()

    async def _read(self) -> None:
        decoder = FrameDecoder()
        while chunk := await self.recv.read(65536):
            for frame in decoder.feed(chunk):
                self.handle(frame)

    async def send_envelope(self, envelope: dict[str, Any]) -> None:
        self.write(envelope)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.connection.close(0, b"")
        await self.endpoint.close()


class RawIrohSubscriber(RawIrohClient):
    @classmethod
    async def open(cls, url: str, topic: str, on_message: OnMessage) -> RawIrohSubscriber:
        client = cls(on_message, topic)
        await client.connect(url)
        client.write({"type": "__subscribe", "id": "", "payload": {"topic": topic}})
        await client.ping()
        return client


class RawIrohPublisher(RawIrohClient):
    @classmethod
    async def open(cls, url: str) -> RawIrohPublisher:
        client = cls(None, None)
        await client.connect(url)
        return client

    async def publish(self, type_: str, id_: str, payload: Any) -> None:
        self.write({"type": type_, "id": id_, "payload": payload})
        if len(self.queue) > 1000:  # bounded, like alkpubsub's B13 queue
            await self.drained.wait()

    async def flush(self) -> None:
        await self.ping()


@dataclass
class System:
    name: str
    hub_command: list[str]
    subscriber: Callable[[str, str, OnMessage], Any]
    publisher: Callable[[str], Any]
    scheme: str


ALK_HUB = [sys.executable, "-m", "alkpubsub", "hub", "--port", "0"]
SYSTEMS = {
    "ws": [
        System(
            "baseline",
            [sys.executable, str(HERE / "baseline_ws_hub.py"), "0"],
            RawSubscriber.open,
            RawPublisher.open,
            "ws://",
        ),
        System("alkpubsub", ALK_HUB, AlkSubscriber.open, AlkPublisher.open, "ws://"),
    ],
    "iroh": [
        System(
            "baseline",
            [sys.executable, str(HERE / "baseline_iroh_hub.py")],
            RawIrohSubscriber.open,
            RawIrohPublisher.open,
            "iroh://",
        ),
        System("alkpubsub", [*ALK_HUB, "--iroh"], AlkSubscriber.open, AlkPublisher.open, "iroh://"),
    ],
}


# -- workloads ------------------------------------------------------------------------------


@dataclass
class Progress:
    expected: int
    count: int = 0
    last_change: float = field(default_factory=time.perf_counter)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finished_at: float = 0.0

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.finished_at = time.perf_counter()
            self.done.set()

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


async def w1_fanout(system: System, url: str) -> dict[str, float]:
    subscribers_n, messages = 10, 20_000
    progress = Progress(subscribers_n * messages)
    subscribers = [
        await system.subscriber(url, "bench:w1", lambda topic, payload: progress.hit())
        for _ in range(subscribers_n)
    ]
    publisher = await system.publisher(url)
    start = time.perf_counter()
    for seq in range(messages):
        await publisher.publish("bench", "w1", {"seq": seq, "pad": PAD})
    await progress.wait()
    elapsed = (progress.finished_at or time.perf_counter()) - start
    result = {
        "deliveries_per_s": progress.count / elapsed,
        "lost": progress.expected - progress.count,
        "_deliveries": progress.count,
    }
    for client in [publisher, *subscribers]:
        await client.close()
    return result


async def w2_latency(system: System, url: str) -> dict[str, float]:
    subscribers_n, rate, seconds = 10, 1000, 5
    messages = rate * seconds
    latencies: list[float] = []
    progress = Progress(subscribers_n * messages)

    def on_message(topic: str, payload: Any) -> None:
        latencies.append(time.perf_counter() - payload["t"])
        progress.hit()

    subscribers = [
        await system.subscriber(url, "bench:w2", on_message) for _ in range(subscribers_n)
    ]
    publisher = await system.publisher(url)
    start = time.perf_counter()
    for seq in range(messages):
        delay = start + seq / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the publisher, not waiting for a condition
        await publisher.publish("bench", "w2", {"seq": seq, "t": time.perf_counter()})
    await progress.wait()
    latencies.sort()
    micro = 1e6
    result = {
        "p50_us": latencies[len(latencies) // 2] * micro,
        "p99_us": latencies[int(len(latencies) * 0.99)] * micro,
        "max_us": latencies[-1] * micro,
        "lost": progress.expected - progress.count,
        "_deliveries": progress.count,
    }
    for client in [publisher, *subscribers]:
        await client.close()
    return result


async def w3_routing(system: System, url: str) -> dict[str, float]:
    subscribers_n, messages = 100, 20_000
    progress = Progress(messages)
    wrong_topic = [0]

    def for_topic(expected: str) -> OnMessage:
        def on_message(topic: str, payload: Any) -> None:
            if topic != expected:
                wrong_topic[0] += 1
            progress.hit()

        return on_message

    subscribers = [
        await system.subscriber(url, f"bench:w3-{i}", for_topic(f"bench:w3-{i}"))
        for i in range(subscribers_n)
    ]
    publisher = await system.publisher(url)
    start = time.perf_counter()
    for seq in range(messages):
        await publisher.publish("bench", f"w3-{seq % subscribers_n}", {"seq": seq, "pad": PAD})
    await progress.wait()
    elapsed = (progress.finished_at or time.perf_counter()) - start
    await publisher.flush()
    result = {
        "deliveries_per_s": progress.count / elapsed,
        "lost": progress.expected - progress.count,
        "leaks": sum(s.leaks() for s in subscribers) + wrong_topic[0],
        "_deliveries": progress.count,
    }
    for client in [publisher, *subscribers]:
        await client.close()
    return result


WORKLOADS = {"W1": w1_fanout, "W2": w2_latency, "W3": w3_routing}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def with_hub(system: System, workload: Callable[[System, str], Any]) -> dict[str, float]:
    process = await asyncio.create_subprocess_exec(
        *system.hub_command, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    url = ""
    while not url.startswith(system.scheme):  # `alkpubsub hub --iroh` prints ws:// first
        url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
    try:
        hub_before, clients_before = process_cpu_seconds(process.pid), time.process_time()
        result = dict(await workload(system, url))
        hub_cpu = process_cpu_seconds(process.pid) - hub_before
        clients_cpu = time.process_time() - clients_before
        deliveries = result.pop("_deliveries")
        # CPU per delivery is steadier than wall-clock rates on a shared machine.
        result["hub_cpu_us_per_delivery"] = hub_cpu / deliveries * 1e6
        result["total_cpu_us_per_delivery"] = (hub_cpu + clients_cpu) / deliveries * 1e6
        return result
    finally:
        process.terminate()
        await process.wait()


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"websockets {version('websockets')}, iroh {version('iroh')}, "
        f"{platform.system()} {platform.release()}"
    )


async def main(transport: str, repeat: int, only: list[str]) -> dict[str, Any]:
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for name, workload in WORKLOADS.items():
        if only and name not in only:
            continue
        for _ in range(repeat):
            for system in SYSTEMS[transport]:
                run = await with_hub(system, workload)
                results.setdefault(name, {}).setdefault(system.name, []).append(run)
                print(f"{name} {system.name}: {run}", file=sys.stderr, flush=True)
    return {
        name: {system: median_of(runs) for system, runs in by_system.items()}
        for name, by_system in results.items()
    }


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| workload | metric | baseline | alkpubsub | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for name, by_system in summary.items():
        base, ours = by_system["baseline"], by_system["alkpubsub"]
        for metric in base:
            ratio = ours[metric] / base[metric] if base[metric] else float("nan")
            shown = f"{ratio:.2f}x" if metric.endswith(("_per_s", "_us", "_delivery")) else ""
            digits = 1 if metric.endswith("_delivery") else 0
            lines.append(
                f"| {name} | {metric} | {base[metric]:,.{digits}f} | {ours[metric]:,.{digits}f}"
                f" | {shown} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=sorted(SYSTEMS), default="ws")
    parser.add_argument("--repeat", type=int, default=5, help="runs per workload and system")
    parser.add_argument("--only", nargs="*", default=[], help="workloads to run (W1 W2 W3)")
    parser.add_argument("--json", type=Path, help="also write the medians as JSON")
    args = parser.parse_args()
    summary = asyncio.run(main(args.transport, args.repeat, args.only))
    print(f"Transport: {args.transport}. Machine: {machine()}\n")
    print(table(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
