"""Worker functions for tests/test_worker.py: each runs in a real child process,
started by ``WorkerHost("tests.worker_children:<name>")`` or by
``python -m alkpubsub.transports.worker tests.worker_children:<name>``."""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import signal
import sys
import time
from collections import deque
from typing import Any

from alkpubsub import make_event
from alkpubsub.core.envelope import Event
from alkpubsub.core.errors import BackpressureError
from alkpubsub.transports.worker import WorkerTarget


class Relay:
    """Dispatches from a listener, which cannot await ``drain()``: on
    ``BackpressureError`` (B13) the event waits, in order behind those already
    waiting, for a task that drains and sends them."""

    def __init__(self, target: WorkerTarget) -> None:
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


async def _ready(target: WorkerTarget, payload: Any = None) -> None:
    """Announce that this worker's listeners are in effect (B4 on the host's side:
    its own subscriptions reached the host before this event)."""
    target.dispatch_event(make_event("ready", "", payload))


async def echo(target: WorkerTarget, prefix: str = "echo") -> None:
    """Answers ``ping:<id>`` with ``pong:<id>`` until ``stop:``."""
    stop = asyncio.Event()

    def on_ping(event: Event) -> None:
        envelope = event.detail
        target.dispatch_event(make_event("pong", envelope.id, [prefix, envelope.payload]))

    target.add_event_listener("ping:1", on_ping)
    target.add_event_listener("stop:", lambda event: stop.set())
    await _ready(target, os.getpid())
    await stop.wait()


async def chatty(target: WorkerTarget) -> None:
    """Prints to stdout and to fd 1 while it talks on the channel (stdio mode)."""
    print("print() from the worker", flush=True)
    os.write(1, b"os.write(1) from the worker\n")
    await _ready(target, "after printing")
    await target.flush()


async def mirror(target: WorkerTarget) -> None:
    """Driven by ``ctl:`` events: listens to topics and reports what it hears as
    ``heard:<topic>``, publishes, removes listeners; ``ack:`` after each command
    once the host processed everything it sent (flush)."""
    listeners: dict[str, Any] = {}
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    send = Relay(target)

    def relay(event: Event) -> None:
        send(make_event("heard", event.type, event.detail.payload))

    target.add_event_listener("ctl:", lambda event: commands.put_nowait(event.detail.payload))
    await _ready(target)
    while True:
        command = await commands.get()
        op = command["op"]
        if op == "listen":
            listeners[command["topic"]] = relay
            target.add_event_listener(command["topic"], relay)
        elif op == "unlisten":
            target.remove_event_listener(command["topic"], listeners.pop(command["topic"]))
        elif op == "publish":
            for i in range(command["count"]):
                event = make_event(command["type"], command["id"], {"i": i, "pad": command["pad"]})
                while True:
                    try:
                        target.dispatch_event(event)
                        break
                    except BackpressureError:
                        await target.drain()
        elif op == "stop":
            return
        await target.flush()
        stats = target.stats
        target.dispatch_event(
            make_event(
                "ack",
                command["seq"],
                {
                    "received": stats.received_events,
                    "filtered": stats.filtered_events,
                    "sent": stats.sent_events,
                },
            )
        )


async def returns(target: WorkerTarget) -> None:
    target.dispatch_event(make_event("bye", "", "last words"))


async def raises(target: WorkerTarget) -> None:
    await _ready(target)
    await target.flush()
    raise ValueError("boom")


async def exits(target: WorkerTarget, code: int) -> None:
    await _ready(target)
    await target.flush()
    sys.exit(code)


async def closes(target: WorkerTarget, code: int, reason: str) -> None:
    """Closes the channel itself, with its own code, then returns."""
    await _ready(target)
    await target.aclose(code, reason)


async def crashes(target: WorkerTarget) -> None:
    """A real segmentation fault (no core file)."""
    await _ready(target)
    await target.flush()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    ctypes.string_at(0)


async def waits(target: WorkerTarget, record: str | None = None) -> None:
    """Waits until cancelled (the channel closed); writes why to ``record``."""
    await _ready(target, os.getpid())
    try:
        await asyncio.Event().wait()
    finally:
        if record is not None:
            reason = target.disconnect_reason
            with open(record, "w") as file:  # noqa: ASYNC230 (the loop is ending)
                file.write(f"{target.closed} {type(reason).__name__} {reason}")


async def blocks(target: WorkerTarget, ignore_sigterm: bool) -> None:
    """Stops serving the channel (a blocking loop), optionally deaf to SIGTERM."""
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    await _ready(target, os.getpid())
    await target.flush()
    while True:
        time.sleep(0.05)  # noqa: ASYNC251 (a worker that blocks its loop, on purpose)


async def floods(target: WorkerTarget, count: int) -> None:
    """Dispatches ``count`` events back to back (B13) and returns."""
    for i in range(count):
        event = make_event("flood", "", {"i": i, "pad": "x" * 200})
        while True:
            try:
                target.dispatch_event(event)
                break
            except BackpressureError:
                await target.drain()


def not_async(target: WorkerTarget) -> None:
    """Not a coroutine function: the worker refuses it."""
