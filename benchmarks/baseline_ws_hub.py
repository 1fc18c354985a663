"""Baseline: a minimal hand-written topic-routing hub on raw ``websockets``.

The pattern the websockets docs recommend for fan-out (``broadcast()``: encode
once, write to every subscriber without awaiting). Same wire format as
alkpubsub (``__subscribe``/``__unsubscribe``/``__ping``), so the benchmark
drives both hubs with the same workloads. No validation, no backpressure
limits, no authorization: a lower bound on the work a hub must do.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import defaultdict

from websockets.asyncio.server import ServerConnection, broadcast, serve

subscribers: defaultdict[str, set[ServerConnection]] = defaultdict(set)


async def handler(ws: ServerConnection) -> None:
    topics: set[str] = set()
    try:
        async for message in ws:
            envelope = json.loads(message)
            kind = envelope["type"]
            if kind == "__subscribe":
                topic = envelope["payload"]["topic"]
                subscribers[topic].add(ws)
                topics.add(topic)
            elif kind == "__unsubscribe":
                topic = envelope["payload"]["topic"]
                subscribers[topic].discard(ws)
                topics.discard(topic)
            elif kind == "__ping":
                await ws.send(json.dumps({"type": "__pong", "id": envelope["id"], "payload": {}}))
            elif not kind.startswith("__"):
                broadcast(subscribers.get(f"{kind}:{envelope['id']}", ()), message)
    finally:
        for topic in topics:
            subscribers[topic].discard(ws)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=2**20) as server:
        host, bound = server.sockets[0].getsockname()[:2]
        print(f"ws://{host}:{bound}/", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
