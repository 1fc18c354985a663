"""Scale-out benchmark: N alkpubsub hubs bridged through one Redis against raw
redis.asyncio pub/sub clients, measured in the same run.

    python benchmarks/scaleout.py [--hubs 2 4] [--events 100000] [--loop uvloop] [--json out.json]

Starts its own redis-server (free port, no persistence) and N hub processes
(``alkpubsub hub --port 0 --bridge redis://...``). The publisher and every
subscriber run in this process, for both systems. ``--layout split`` (the
default) pins this process to the first core and redis-server and the hubs to
the others (``os.sched_setaffinity``); ``--layout shared`` spreads the hubs over
all cores and leaves this process and redis-server unpinned. ``--loop`` is the
event loop of this process and of the hubs.

W1 fan-out   one publisher on hub 1, 10 subscribers on each other hub, one topic,
             ``--events`` envelopes of about 100 bytes back to back.
             Raw: one redis.asyncio publisher (pipelined PUBLISH) and one PubSub
             connection per subscriber, 10 * (N - 1) of them.
W3 routing   100 subscribers, each on its own topic, spread over the hubs (raw:
             100 PubSub connections); the publisher on hub 1 round robin.

Reported per workload and system: deliveries/s, lost, duplicates, Redis commands
per published event (INFO commandstats, reset after the subscriptions are made),
Redis messages per published event (PUBSUB NUMSUB of the channels: one per
subscribed connection), CPU per delivery of the hubs, of redis-server and of this
client process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from _benchutil import LOOPS, install_loop
from redis.asyncio import Redis

from alkpubsub import BackpressureError, make_event, transport_from_url
from alkpubsub.testing.redis import RedisServer
from alkpubsub.transports.base import SpokeTarget

PAD = "x" * 40  # an envelope of about 100 bytes
#: Events a publisher sends before it lets the loop run (raw: one pipeline),
#: so that subscribers in the same process read meanwhile, in both systems.
PUBLISH_BATCH = 500
QUIET_SECONDS = 3.0  # no progress for this long: the rest is lost
TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Counter:
    """Deliveries of one subscriber: counts, duplicates (by sequence number)."""

    events: int
    seen: bytearray = field(init=False)
    received: int = 0
    duplicates: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.seen = bytearray(self.events)

    def hit(self, seq: int) -> None:
        if self.seen[seq]:
            self.duplicates += 1
        else:
            self.seen[seq] = 1
        self.received += 1
        self.changed.set()


@dataclass
class Result:
    system: str
    workload: str
    hubs: int
    subscribers: int
    events: int
    expected: int
    delivered: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    redis_commands_per_event: float = 0.0
    redis_messages_per_event: float = 0.0
    hub_cpu_us_per_delivery: float = 0.0
    redis_cpu_us_per_delivery: float = 0.0
    client_cpu_us_per_delivery: float = 0.0
    worst_lost: int = 0  # of every run (the medians carry it)

    @property
    def lost(self) -> int:
        return max(self.worst_lost, self.expected - (self.delivered - self.duplicates))

    @property
    def deliveries_per_s(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0


async def wait_delivered(counters: list[Counter], expected: int) -> float:
    """Wait until every delivery arrived or nothing moved for QUIET_SECONDS;
    returns the time of the last delivery."""
    last_total, last_change = -1, time.perf_counter()
    while True:
        total = sum(c.received for c in counters)
        now = time.perf_counter()
        if total != last_total:
            last_total, last_change = total, now
        if total >= expected or now - last_change > QUIET_SECONDS:
            return last_change
        waiters = [asyncio.ensure_future(c.changed.wait()) for c in counters]
        for counter in counters:
            counter.changed.clear()
        await asyncio.wait(waiters, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()


class Hubs:
    """N ``alkpubsub hub --bridge`` processes on one Redis."""

    def __init__(
        self, redis_url: str, count: int, cores: list[int], transport: str, loop: str
    ) -> None:
        self.redis_url = redis_url
        self.loop = loop
        self.count = count
        self.cores = cores
        self.transport = transport
        self.processes: list[asyncio.subprocess.Process] = []
        self.urls: list[str] = []

    async def __aenter__(self) -> Hubs:
        for index in range(self.count):
            iroh = ["--iroh"] if self.transport == "iroh" else []
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "alkpubsub", "hub", "--port", "0",
                "--bridge", self.redis_url, "--loop", self.loop, *iroh,
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert process.stdout is not None
            url = (await process.stdout.readline()).decode().strip()
            if iroh:  # the second line is the hub's iroh:// URL
                url = (await process.stdout.readline()).decode().strip()
            self.urls.append(url)
            with contextlib.suppress(OSError):
                os.sched_setaffinity(process.pid, {self.cores[index % len(self.cores)]})
            self.processes.append(process)
        return self

    def cpu(self) -> float:
        return sum(process_cpu(p.pid) for p in self.processes)

    async def __aexit__(self, *exc: object) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            await process.wait()


async def redis_snapshot(spy: Redis, channels: list[str]) -> float:
    """Redis messages per published event: subscribed connections per channel."""
    counts = await spy.pubsub_numsub(*channels)
    return sum(int(n) for _, n in counts) / len(channels)


async def measure(
    result: Result,
    spy: Redis,
    server: RedisServer,
    hubs: Hubs | None,
    counters: list[Counter],
    channels: list[str],
    publish: Callable[[], Awaitable[None]],
) -> Result:
    result.redis_messages_per_event = await redis_snapshot(spy, channels)
    await spy.config_resetstat()
    assert server.pid is not None
    hub_cpu = hubs.cpu() if hubs else 0.0
    redis_cpu, client_cpu = process_cpu(server.pid), own_cpu()
    started = time.perf_counter()
    await publish()
    ended = await wait_delivered(counters, result.expected)
    result.seconds = ended - started
    result.delivered = sum(c.received for c in counters)
    result.duplicates = sum(c.duplicates for c in counters)
    delivered = max(result.delivered, 1)
    if hubs:
        result.hub_cpu_us_per_delivery = (hubs.cpu() - hub_cpu) * 1e6 / delivered
    result.redis_cpu_us_per_delivery = (process_cpu(server.pid) - redis_cpu) * 1e6 / delivered
    result.client_cpu_us_per_delivery = (own_cpu() - client_cpu) * 1e6 / delivered
    stats = await spy.info("commandstats")
    commands = sum(
        int(v["calls"])
        for k, v in stats.items()
        if k.startswith("cmdstat_") and k != "cmdstat_info"
    )
    result.redis_commands_per_event = commands / result.events
    return result


def subscriber_hubs(workload: str, hubs: int, subscribers: int) -> list[int]:
    """Which hub each subscriber connects to."""
    if workload == "W1":  # 10 on each hub but the publisher's
        return [1 + i // 10 for i in range(subscribers)]
    return [i % hubs for i in range(subscribers)]  # W3: spread over all


def topics_for(workload: str, subscribers: int) -> list[str]:
    return ["w1:all"] * subscribers if workload == "W1" else [f"w3:{i}" for i in range(subscribers)]


# -- alkpubsub --------------------------------------------------------------------------------


async def run_alkpubsub(
    workload: str,
    n_hubs: int,
    events: int,
    server: RedisServer,
    spy: Redis,
    cores: list[int],
    transport: str = "ws",
    loop: str = "asyncio",
) -> Result:
    subscribers = 10 * (n_hubs - 1) if workload == "W1" else 100
    topics = topics_for(workload, subscribers)
    async with Hubs(server.url, n_hubs, cores, transport, loop) as hubs:
        spokes: list[SpokeTarget] = []
        counters = [Counter(events) for _ in range(subscribers)]
        try:
            for index, hub_index in enumerate(subscriber_hubs(workload, n_hubs, subscribers)):
                spoke = transport_from_url(hubs.urls[hub_index])
                assert isinstance(spoke, SpokeTarget)
                await spoke.start()
                spokes.append(spoke)
                hit = counters[index].hit
                spoke.add_event_listener(
                    topics[index], lambda e, hit=hit: hit(e.detail.payload["seq"])
                )
            for spoke in spokes:
                await spoke.flush()
            publisher = transport_from_url(hubs.urls[0])
            assert isinstance(publisher, SpokeTarget)
            await publisher.start()
            spokes.append(publisher)
            distinct = sorted(set(topics))

            async def publish() -> None:
                for seq in range(events):
                    topic = distinct[seq % len(distinct)]
                    type_, id_ = topic.split(":")
                    event = make_event(type_, id_, {"seq": seq, "pad": PAD})
                    while True:
                        try:
                            publisher.dispatch_event(event)
                            break
                        except BackpressureError:
                            await publisher.drain()
                    if seq % PUBLISH_BATCH == PUBLISH_BATCH - 1:
                        await asyncio.sleep(0)  # as the raw publisher awaits each pipeline
                await publisher.flush()

            result = Result(
                f"alkpubsub ({transport})",
                workload,
                n_hubs,
                subscribers,
                events,
                events * subscribers // len(distinct),
            )
            channels = [f"alkpubsub:{t}" for t in distinct]
            return await measure(result, spy, server, hubs, counters, channels, publish)
        finally:
            for spoke in spokes:
                await spoke.aclose()


# -- raw redis.asyncio ------------------------------------------------------------------------


async def run_raw(
    workload: str, n_hubs: int, events: int, server: RedisServer, spy: Redis
) -> Result:
    subscribers = 10 * (n_hubs - 1) if workload == "W1" else 100
    topics = topics_for(workload, subscribers)
    counters = [Counter(events) for _ in range(subscribers)]
    clients: list[Redis] = []
    readers: list[asyncio.Task[None]] = []

    async def read(pubsub: Any, counter: Counter) -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                counter.hit(json.loads(message["data"])["payload"]["seq"])

    try:
        for index in range(subscribers):
            client = Redis.from_url(server.url)
            clients.append(client)
            pubsub = client.pubsub()
            await pubsub.subscribe(f"raw:{topics[index]}")
            # subscribe() only sends the command: read Redis's confirmation.
            confirmation = await pubsub.get_message(timeout=10.0)
            assert confirmation is not None
            assert confirmation["type"] == "subscribe"
            readers.append(asyncio.ensure_future(read(pubsub, counters[index])))
        publisher = Redis.from_url(server.url)
        clients.append(publisher)
        distinct = sorted(set(topics))
        channels = [f"raw:{t}" for t in distinct]

        async def publish() -> None:
            for start in range(0, events, PUBLISH_BATCH):
                async with publisher.pipeline(transaction=False) as pipe:
                    for seq in range(start, min(start + PUBLISH_BATCH, events)):
                        topic = distinct[seq % len(distinct)]
                        type_, id_ = topic.split(":")
                        envelope = {"type": type_, "id": id_, "payload": {"seq": seq, "pad": PAD}}
                        pipe.publish(f"raw:{topic}", json.dumps(envelope, separators=(",", ":")))
                    await pipe.execute()

        result = Result(
            "redis-py", workload, n_hubs, subscribers, events, events * subscribers // len(distinct)
        )
        return await measure(result, spy, server, None, counters, channels, publish)
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for client in clients:
            await client.aclose()


# -- report ------------------------------------------------------------------------------------


def median(runs: list[Result]) -> Result:
    """The run with the median deliveries/s (its other metrics come with it);
    loss and duplicates are the worst of all runs."""
    ordered = sorted(runs, key=lambda r: r.deliveries_per_s)
    chosen = ordered[len(ordered) // 2]
    chosen.worst_lost = max(r.lost for r in runs)
    chosen.duplicates = max(r.duplicates for r in runs)
    return chosen


def table(results: list[Result]) -> str:
    lines = [
        "| hubs | workload | system | subscribers | deliveries/s | lost | dup | "
        "Redis cmds/event | Redis msgs/event | hub CPU µs/delivery | redis CPU µs/delivery | "
        "client CPU µs/delivery |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.hubs} | {r.workload} | {r.system} | {r.subscribers} | "
            f"{r.deliveries_per_s:,.0f} | {r.lost} | {r.duplicates} | "
            f"{r.redis_commands_per_event:.2f} | {r.redis_messages_per_event:.1f} | "
            f"{r.hub_cpu_us_per_delivery:.1f} | {r.redis_cpu_us_per_delivery:.2f} | "
            f"{r.client_cpu_us_per_delivery:.1f} |"
        )
    return "\n".join(lines)


def ratios(results: list[Result]) -> str:
    lines = []
    by_key = {(r.hubs, r.workload, r.system): r for r in results}
    for (hubs, workload, system), r in sorted(by_key.items()):
        raw = by_key.get((hubs, workload, "redis-py"))
        if system.startswith("alkpubsub") and raw is not None and raw.deliveries_per_s:
            lines.append(
                f"- {hubs} hubs {workload}: alkpubsub/raw deliveries/s = "
                f"{r.deliveries_per_s / raw.deliveries_per_s:.2f}x"
            )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hubs", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--workloads", nargs="+", default=["W1", "W3"])
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per system, alternating; medians reported"
    )
    parser.add_argument(
        "--transport",
        choices=["ws", "iroh"],
        default="ws",
        help="how spokes reach the hubs (iroh: run under a loopback-only namespace)",
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        choices=["redis-py", "alkpubsub"],
        default=["redis-py", "alkpubsub"],
        help="which systems to run (one alone: e.g. to profile it)",
    )
    parser.add_argument(
        "--layout",
        choices=["split", "shared"],
        default="split",
        help="split: this process (publisher and subscribers) on the first core, redis-server"
        " and the hubs on the others; shared: the hubs round robin over all cores, this"
        " process and redis-server wherever the kernel puts them",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="asyncio",
        help="the event loop of this process (both systems' clients) and of the hubs",
    )
    parser.add_argument("--json", help="write the results to this file")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    cores = sorted(os.sched_getaffinity(0))
    client_cores = set(cores)
    if args.layout == "split" and len(cores) > 1:
        client_cores, cores = {cores[0]}, cores[1:]
        os.sched_setaffinity(0, client_cores)
    results: list[Result] = []
    async with RedisServer() as server:
        assert server.pid is not None
        os.sched_setaffinity(server.pid, set(cores) if args.layout == "split" else client_cores)
        spy = Redis.from_url(server.url)
        try:
            for n_hubs in args.hubs:
                for workload in args.workloads:
                    runs: dict[str, list[Result]] = {system: [] for system in args.systems}
                    for _ in range(args.repeat):
                        for system, system_runs in runs.items():
                            if system == "alkpubsub":
                                result = await run_alkpubsub(
                                    workload,
                                    n_hubs,
                                    args.events,
                                    server,
                                    spy,
                                    cores,
                                    args.transport,
                                    args.loop,
                                )
                            else:
                                result = await run_raw(workload, n_hubs, args.events, server, spy)
                            system_runs.append(result)
                            print(
                                f"{n_hubs} hubs {workload} {system}: "
                                f"{result.deliveries_per_s:,.0f}/s lost={result.lost} "
                                f"dup={result.duplicates}",
                                file=sys.stderr,
                                flush=True,
                            )
                    results.extend(median(system_runs) for system_runs in runs.values())
        finally:
            await spy.aclose()
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        f"; alkpubsub spokes over {args.transport}"
    )
    print(table(results))
    print(ratios(results))
    if args.json:
        write_json(args.json, results)


def write_json(path: str, results: list[Result]) -> None:
    rows = [asdict(r) | {"lost": r.lost, "deliveries_per_s": r.deliveries_per_s} for r in results]
    with open(path, "w") as out:
        json.dump(rows, out, indent=2)


if __name__ == "__main__":
    arguments = parse_args()
    install_loop(arguments.loop)
    asyncio.run(main(arguments))
