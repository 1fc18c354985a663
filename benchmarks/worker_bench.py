"""Benchmark: the worker transport against a bare ``multiprocessing.Pipe``
sending pickled dicts (what one would write by hand), in the same run.

    python benchmarks/worker_bench.py [--repeat 3] [--events 100000] [--json out.json]

Both systems use a ``spawn`` child started before the measurements. Envelopes
are ``{"type": "bench", "id": "1", "payload": {"i": i, "pad": 80 x "x"}}``,
about 120 bytes as JSON; each is built inside the timed loop on both sides.

one-way h->c   the host sends N events, the child counts them and answers
               "done" after the last: events/s from the first send to "done".
one-way c->h   the child sends N events (told to by one command), the host
               counts them: events/s from the command to the last event.
round trip     the host sends N events and the child echoes each back; the
(pipelined)    host counts N echoes. The bare pipe's host sends from a thread
               while its main thread receives (blocking pipes would deadlock).
round trip     one event, wait for its echo, next: round trips/s (latency).
(sequential)

alkpubsub: ``dispatch_all`` (``dispatch_event`` in a loop, ``await drain()`` on
``BackpressureError``: SPEC B13), listeners on both ends, the default limits;
the child's echo listener holds events back on ``BackpressureError`` and
drains in a task (a listener cannot await). Bare pipe: ``conn.send(dict)`` /
``conn.recv()`` in blocking loops, no asyncio.

A second baseline runs the same pipe and child with the host written as an
asyncio program must be (it cannot block its loop in ``recv()``): it reads
when the loop reports the pipe readable (``add_reader``, then ``recv()`` while
``poll()``), and sends with ``conn.send``.

Each workload runs ``--repeat`` times per system, rotating which goes first;
the tables show medians and the ratio alkpubsub/baseline: events/s (wall
clock) and CPU microseconds per event, host and child together (CPU time is
steadier than wall-clock rates on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

from alkpubsub import BackpressureError, make_event
from alkpubsub.core.envelope import Event
from alkpubsub.target import TypedEventTarget, dispatch_all
from alkpubsub.transports.worker import WorkerHost

PAD = "x" * 80


# -- the alkpubsub child ------------------------------------------------------------------


class Relay:
    """Dispatches from a listener, which cannot await ``drain()``: on
    ``BackpressureError`` the event waits, in order, for a task that drains."""

    def __init__(self, target: TypedEventTarget) -> None:
        self.target = target
        self.backlog: deque[Event] = deque()
        self.task: asyncio.Task[None] | None = None

    def __call__(self, event: Event) -> None:
        if not self.backlog:
            try:
                self.target.dispatch_event(event)
                return
            except BackpressureError:
                pass
        self.backlog.append(event)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._send_backlog())

    async def _send_backlog(self) -> None:
        while self.backlog:
            await self.target.drain()
            while self.backlog:
                try:
                    self.target.dispatch_event(self.backlog[0])
                except BackpressureError:
                    break
                self.backlog.popleft()
        self.task = None


async def alkpubsub_child(target: TypedEventTarget) -> None:
    """Counts ``bench:1``, echoes ``echo:1`` as ``echoed:1``, sends on command."""
    expected = 0
    received = 0
    stop = asyncio.Event()
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    send = Relay(target)

    def on_bench(event: Event) -> None:
        nonlocal received
        received += 1
        if received == expected:
            target.dispatch_event(make_event("done", "", received))

    def on_echo(event: Event) -> None:
        send(make_event("echoed", "1", event.detail.payload))

    def on_control(event: Event) -> None:
        nonlocal expected, received
        command = event.detail.payload
        if command["op"] == "expect":
            expected, received = command["n"], 0
        elif command["op"] == "stop":
            stop.set()
        else:
            commands.put_nowait(command)

    target.add_event_listener("bench:1", on_bench)
    target.add_event_listener("echo:1", on_echo)
    target.add_event_listener("ctl:", on_control)
    target.dispatch_event(make_event("ready", ""))
    while not stop.is_set():
        getting = asyncio.ensure_future(commands.get())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not getting.done():
            getting.cancel()
            break
        command = getting.result()
        if command["op"] == "send":
            n = command["n"]
            await dispatch_all(
                target, (make_event("back", "1", {"i": i, "pad": PAD}) for i in range(n))
            )


class AlkpubsubSystem:
    name = "alkpubsub"

    async def start(self) -> None:
        self.host = WorkerHost(alkpubsub_child)
        self.done: asyncio.Future[int] | None = None
        self.count = 0
        self.target_count = 0
        self.counted: asyncio.Future[None] | None = None
        ready = asyncio.get_running_loop().create_future()
        self.host.add_event_listener("ready:", lambda event: ready.done() or ready.set_result(1))
        self.host.add_event_listener("done:", self._on_done)
        self.host.add_event_listener("back:1", self._on_counted)
        self.host.add_event_listener("echoed:1", self._on_counted)
        await self.host.start()
        await asyncio.wait_for(ready, 60)

    def _on_done(self, event: Event) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(event.detail.payload)

    def _on_counted(self, event: Event) -> None:
        self.count += 1
        if self.count == self.target_count and self.counted is not None:
            self.counted.set_result(None)

    def _expect(self, n: int) -> asyncio.Future[None]:
        self.count, self.target_count = 0, n
        self.counted = asyncio.get_running_loop().create_future()
        return self.counted

    @property
    def pid(self) -> int:
        pid = self.host.pid
        assert pid is not None
        return pid

    async def one_way_to_child(self, n: int) -> float:
        host = self.host
        self.done = asyncio.get_running_loop().create_future()
        host.dispatch_event(make_event("ctl", "", {"op": "expect", "n": n}))
        await host.flush()
        started = time.perf_counter()
        await dispatch_all(host, (make_event("bench", "1", {"i": i, "pad": PAD}) for i in range(n)))
        assert await asyncio.wait_for(self.done, 120) == n
        return n / (time.perf_counter() - started)

    async def one_way_to_host(self, n: int) -> float:
        counted = self._expect(n)
        started = time.perf_counter()
        self.host.dispatch_event(make_event("ctl", "", {"op": "send", "n": n}))
        await asyncio.wait_for(counted, 120)
        return n / (time.perf_counter() - started)

    async def round_trip_pipelined(self, n: int) -> float:
        counted = self._expect(n)
        started = time.perf_counter()
        events = (make_event("echo", "1", {"i": i, "pad": PAD}) for i in range(n))
        await dispatch_all(self.host, events)
        await asyncio.wait_for(counted, 120)
        return n / (time.perf_counter() - started)

    async def round_trip_sequential(self, n: int) -> float:
        started = time.perf_counter()
        for i in range(n):
            counted = self._expect(1)
            self.host.dispatch_event(make_event("echo", "1", {"i": i, "pad": PAD}))
            await counted
        return n / (time.perf_counter() - started)

    async def stop(self) -> None:
        self.host.dispatch_event(make_event("ctl", "", {"op": "stop"}))
        await self.host.wait_closed()
        await self.host.aclose()


# -- the bare pipe ------------------------------------------------------------------------


def baseline_child(conn: Connection) -> None:
    while True:
        command = conn.recv()
        op, n = command["op"], command.get("n", 0)
        if op == "expect":
            for _ in range(n):
                conn.recv()
            conn.send("done")
        elif op == "send":
            for i in range(n):
                conn.send({"type": "back", "id": "1", "payload": {"i": i, "pad": PAD}})
        elif op == "echo":
            for _ in range(n):
                message = conn.recv()
                conn.send({"type": "echoed", "id": "1", "payload": message["payload"]})
        elif op == "stop":
            return


class PipeSystem:
    name = "multiprocessing.Pipe"

    async def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=baseline_child, args=(child_conn,))
        self.process.start()
        child_conn.close()

    @property
    def pid(self) -> int:
        pid = self.process.pid
        assert pid is not None
        return pid

    async def one_way_to_child(self, n: int) -> float:
        conn = self.conn
        conn.send({"op": "expect", "n": n})
        started = time.perf_counter()
        for i in range(n):
            conn.send({"type": "bench", "id": "1", "payload": {"i": i, "pad": PAD}})
        assert conn.recv() == "done"
        return n / (time.perf_counter() - started)

    async def one_way_to_host(self, n: int) -> float:
        conn = self.conn
        started = time.perf_counter()
        conn.send({"op": "send", "n": n})
        for _ in range(n):
            conn.recv()
        return n / (time.perf_counter() - started)

    async def round_trip_pipelined(self, n: int) -> float:
        conn = self.conn
        conn.send({"op": "echo", "n": n})

        def send_all() -> None:
            for i in range(n):
                conn.send({"type": "echo", "id": "1", "payload": {"i": i, "pad": PAD}})

        started = time.perf_counter()
        sender = threading.Thread(target=send_all)
        sender.start()
        for _ in range(n):
            conn.recv()
        sender.join()
        return n / (time.perf_counter() - started)

    async def round_trip_sequential(self, n: int) -> float:
        conn = self.conn
        conn.send({"op": "echo", "n": n})
        started = time.perf_counter()
        for i in range(n):
            conn.send({"type": "echo", "id": "1", "payload": {"i": i, "pad": PAD}})
            conn.recv()
        return n / (time.perf_counter() - started)

    async def stop(self) -> None:
        self.conn.send({"op": "stop"})
        self.process.join(10)
        self.process.close()
        self.conn.close()


class AsyncioPipeSystem(PipeSystem):
    """The same pipe and child, with the host written as an asyncio program
    must be: it cannot block its loop in ``recv()``, so it reads when the loop
    says the pipe is readable (``add_reader``, then ``recv()`` while ``poll()``);
    it sends with ``conn.send`` as the blocking baseline does."""

    name = "Pipe, asyncio host"

    async def start(self) -> None:
        await super().start()
        self.count = 0
        self.target_count = 0
        self.counted: asyncio.Future[None] | None = None
        asyncio.get_running_loop().add_reader(self.conn.fileno(), self._readable)

    def _readable(self) -> None:
        conn = self.conn
        while conn.poll():
            conn.recv()
            self.count += 1
            if self.count == self.target_count and self.counted is not None:
                self.counted.set_result(None)

    def _expect(self, n: int) -> asyncio.Future[None]:
        self.count, self.target_count = 0, n
        self.counted = asyncio.get_running_loop().create_future()
        return self.counted

    async def one_way_to_child(self, n: int) -> float:
        conn = self.conn
        done = self._expect(1)
        conn.send({"op": "expect", "n": n})
        started = time.perf_counter()
        for i in range(n):
            conn.send({"type": "bench", "id": "1", "payload": {"i": i, "pad": PAD}})
        await done
        return n / (time.perf_counter() - started)

    async def one_way_to_host(self, n: int) -> float:
        counted = self._expect(n)
        started = time.perf_counter()
        self.conn.send({"op": "send", "n": n})
        await counted
        return n / (time.perf_counter() - started)

    async def round_trip_pipelined(self, n: int) -> float:
        conn = self.conn
        counted = self._expect(n)
        conn.send({"op": "echo", "n": n})
        started = time.perf_counter()
        for i in range(n):
            conn.send({"type": "echo", "id": "1", "payload": {"i": i, "pad": PAD}})
            if i % 100 == 99:
                await asyncio.sleep(0)  # let the reader run: both pipes would fill up
        await counted
        return n / (time.perf_counter() - started)

    async def round_trip_sequential(self, n: int) -> float:
        conn = self.conn
        conn.send({"op": "echo", "n": n})
        started = time.perf_counter()
        for i in range(n):
            counted = self._expect(1)
            conn.send({"type": "echo", "id": "1", "payload": {"i": i, "pad": PAD}})
            await counted
        return n / (time.perf_counter() - started)

    async def stop(self) -> None:
        asyncio.get_running_loop().remove_reader(self.conn.fileno())
        await super().stop()


# -- driver ----------------------------------------------------------------------------------


WORKLOADS: list[tuple[str, str, Callable[[int], int]]] = [
    ("one-way h->c", "one_way_to_child", lambda n: n),
    ("one-way c->h", "one_way_to_host", lambda n: n),
    ("round trip (pipelined)", "round_trip_pipelined", lambda n: n // 2),
    ("round trip (sequential)", "round_trip_sequential", lambda n: max(n // 20, 100)),
]


def child_cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` (schedstat: nanoseconds)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as file:
            total += int(file.read().split()[0])
    return total / 1e9


Results = dict[str, dict[str, dict[str, list[float]]]]  # workload -> system -> metric -> runs


async def run(repeat: int, events: int) -> Results:
    systems: list[Any] = [PipeSystem(), AsyncioPipeSystem(), AlkpubsubSystem()]
    for system in systems:
        await system.start()
    results: Results = {
        w: {s.name: {"events_per_s": [], "cpu_us_per_event": []} for s in systems}
        for w, *_ in WORKLOADS
    }
    try:
        for round_ in range(repeat):
            order = systems[round_ % len(systems) :] + systems[: round_ % len(systems)]
            for workload, method, size in WORKLOADS:
                for system in order:
                    measure: Callable[[int], Awaitable[float]] = getattr(system, method)
                    n = size(events)
                    cpu_before = time.process_time() + child_cpu_seconds(system.pid)
                    rate = await measure(n)
                    cpu = time.process_time() + child_cpu_seconds(system.pid) - cpu_before
                    runs = results[workload][system.name]
                    runs["events_per_s"].append(rate)
                    runs["cpu_us_per_event"].append(cpu / n * 1e6)
                    print(
                        f"  {workload:26} {system.name:22} {rate:12,.0f}/s "
                        f"{cpu / n * 1e6:8.1f} us CPU/event",
                        file=sys.stderr,
                    )
    finally:
        for system in systems:
            await system.stop()
    return results


def table(results: Results) -> str:
    lines = [
        "| workload | metric | Pipe, blocking loops | Pipe, asyncio host | alkpubsub worker "
        "| ratio vs blocking | ratio vs asyncio host |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for workload, by_system in results.items():
        for metric, unit in (("events_per_s", ",.0f"), ("cpu_us_per_event", ",.1f")):
            blocking = statistics.median(by_system["multiprocessing.Pipe"][metric])
            asyncio_host = statistics.median(by_system["Pipe, asyncio host"][metric])
            ours = statistics.median(by_system["alkpubsub"][metric])
            lines.append(
                f"| {workload} | {metric} | {blocking:{unit}} | {asyncio_host:{unit}} "
                f"| {ours:{unit}} | {ours / blocking:.2f}x | {ours / asyncio_host:.2f}x |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--json", help="write the raw results here")
    options = parser.parse_args()
    results = asyncio.run(run(options.repeat, options.events))
    print(
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{options.events:,} events, median of {options.repeat}"
    )
    print(table(results))
    if options.json:
        with open(options.json, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
