"""A spoke in a process of its own: a sequenced publisher or a subscriber.

Reports ``ready`` (with its spoke id, once ``start()`` returned and, for a
subscriber, its subscription is live), every ``session`` (``on_session``) and
``disconnect`` (``on_disconnect``, with the reason), then a summary.

Publisher (``--role pub``): on ``go`` {rate, count} dispatches events
``{"p": name, "s": 0, 1, ...}`` at ``rate`` per second (waiting in ``drain()``
when pushed back), then closes (``aclose`` delivers what it can) and reports
``done``: how many it published and the sequence numbers ``on_undelivered``
reported as possibly lost.

Subscriber (``--role sub``): records every ``(p, s)`` it receives; on
``expect`` {last: {p: count}} waits (bounded) until each publisher's last
event arrived and reports ``received``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

from common import commands, describe, report, setup_logging

from alkpubsub import make_event
from alkpubsub.core.envelope import Event, EventEnvelope
from alkpubsub.core.errors import BackpressureError
from alkpubsub.transports.spoke import SessionInfo, SpokeTarget

TICK = 0.01


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name: str = args.name
        self.type, self.id = args.topic.split(":", 1)
        self.undelivered: list[int] = []
        self.received: dict[str, list[int]] = {}
        self.progress = asyncio.Event()
        self.published = 0
        self.last_event_at = 0.0
        self.tasks: set[asyncio.Task[None]] = set()
        options: dict[str, Any] = json.loads(args.options)
        options.update(
            on_session=self.on_session,
            on_disconnect=self.on_disconnect,
            on_undelivered=self.on_undelivered,
        )
        self.spoke = make_spoke(args, options)

    def on_session(self, info: SessionInfo) -> None:
        report(
            "session",
            spoke_id=info.spoke_id,
            resumed=info.resumed,
            gap=info.gap,
            undelivered=info.undelivered,
        )
        if self.args.role == "sub":
            # Reported once the hub processed the (re)subscription.
            task = asyncio.ensure_future(self.subscribed())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def subscribed(self) -> None:
        with contextlib.suppress(TimeoutError, ConnectionError):
            await self.spoke.flush(5.0)
            report("subscribed", spoke_id=self.spoke.spoke_id)

    def on_disconnect(self, reason: BaseException | None) -> None:
        report("disconnect", reason=describe(reason), last_event_at=self.last_event_at)

    def on_undelivered(self, envelopes: list[EventEnvelope]) -> None:
        seqs = [e.payload["s"] for e in envelopes if isinstance(e.payload, dict)]
        self.undelivered.extend(seqs)
        report("undelivered", seqs=seqs)

    def on_event(self, event: Event) -> None:
        payload = event.detail.payload
        self.received.setdefault(payload["p"], []).append(payload["s"])
        self.last_event_at = time.monotonic()
        self.progress.set()

    async def publish(self, rate: float, count: int) -> None:
        spoke = self.spoke
        start = time.monotonic()
        while self.published < count:
            due = min(count, int((time.monotonic() - start) * rate) + 1)
            while self.published < due:
                event = make_event(self.type, self.id, {"p": self.name, "s": self.published})
                try:
                    spoke.dispatch_event(event)
                except BackpressureError:
                    await spoke.drain()
                    continue
                self.published += 1
            await asyncio.sleep(TICK)  # pacing, not a wait for a condition

    async def wait_for(self, last: dict[str, int], timeout: float) -> bool:
        def complete() -> bool:
            return all(
                count == 0 or (self.received.get(p) or [-1])[-1] >= count - 1
                for p, count in last.items()
            )

        try:
            async with asyncio.timeout(timeout):
                while not complete():
                    self.progress.clear()
                    await self.progress.wait()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        spoke = self.spoke
        await spoke.start()
        if self.args.role == "sub":
            spoke.add_event_listener(self.args.topic, self.on_event)
            if self.args.direct:
                spoke.add_event_listener(f"direct:{spoke.spoke_id}", self.on_event)
            await spoke.flush()
        report("ready", spoke_id=spoke.spoke_id, endpoint_id=getattr(spoke, "_endpoint_id", None))
        publishing: asyncio.Task[None] | None = None
        async for command in commands():
            name = command["cmd"]
            if name == "go":
                publishing = asyncio.ensure_future(self.publish(command["rate"], command["count"]))
                publishing.add_done_callback(lambda _: report("published", count=self.published))
            elif name == "finish":  # publisher: stop, close, report
                if publishing is not None:
                    await publishing
                await spoke.aclose()
                report(
                    "done",
                    published=self.published,
                    undelivered=sorted(self.undelivered),
                    stats=spoke.stats.__dict__,
                )
            elif name == "expect":  # subscriber
                complete = await self.wait_for(command["last"], command.get("within", 15.0))
                report(
                    "expect",
                    complete=complete,
                    received=self.received,
                    stats=spoke.stats.__dict__,
                    spoke_id=spoke.spoke_id,
                )
            elif name == "status":
                report(
                    "status",
                    spoke_id=spoke.spoke_id,
                    connected=spoke.connected,
                    published=self.published,
                    received={p: len(s) for p, s in self.received.items()},
                )
            elif name == "quit":
                break
        await spoke.aclose()


def make_spoke(args: argparse.Namespace, options: dict[str, Any]) -> SpokeTarget:
    if args.ws is not None:
        from alkpubsub.transports.ws import WebSocketSpoke

        return WebSocketSpoke(args.ws, **options)
    from alkpubsub.transports.iroh import IrohSpoke

    if args.iroh_address is not None:
        return IrohSpoke(args.iroh, hub_addresses=[args.iroh_address], **options)
    return IrohSpoke(args.iroh, **options)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ws", help="the hub's ws:// URL")
    parser.add_argument("--iroh", help="the hub's ticket, or endpoint id with --iroh-address")
    parser.add_argument("--iroh-address")
    parser.add_argument("--role", choices=["pub", "sub"], required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--topic", default="seq:all")
    parser.add_argument("--options", default="{}", help="JSON of spoke options")
    parser.add_argument("--direct", action="store_true", help="also listen to its direct: inbox")
    args = parser.parse_args()
    setup_logging()
    await Driver(args).run()


if __name__ == "__main__":
    asyncio.run(main())
