"""Baseline: a minimal hand-written topic-routing hub on raw ``iroh`` streams.

Built the fast way the bindings allow: one writer task per spoke that coalesces
every queued frame into one ``write_all``, and reads of up to 64 KiB split into
length-prefixed frames by hand. Same wire format as alkpubsub, no validation,
no limits. ``--stock-write`` keeps the bindings' byte-by-byte copy; by default
it uses the same one-memcpy write path as alkpubsub (``_iroh_fast_write.py``),
so the comparison is about the hub, not the FFI copy. Binds only inside a
loopback-only network namespace.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import defaultdict

from _benchutil import require_loopback_only
from _iroh_fast_write import install as install_fast_write
from iroh import Endpoint, EndpointOptions, EndpointTicket, RelayMode, preset_minimal

ALPN = b"alkpubsub/1"


class Spoke:
    def __init__(self, send: object) -> None:
        self.send = send
        self.queue: list[bytes] = []
        self.wake = asyncio.Event()

    async def write_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            data, self.queue = b"".join(self.queue), []
            await self.send.write_all(data)  # type: ignore[attr-defined]


subscribers: defaultdict[str, set[Spoke]] = defaultdict(set)


def queue(spoke: Spoke, frame: bytes) -> None:
    spoke.queue.append(frame)
    spoke.wake.set()


async def serve(incoming: object) -> None:
    connection = await (await incoming.accept()).connect()  # type: ignore[attr-defined]
    stream = await connection.accept_bi()
    spoke = Spoke(stream.send())
    writer = asyncio.ensure_future(spoke.write_loop())
    recv, buffer, topics = stream.recv(), b"", set()
    try:
        while chunk := await recv.read(65536):
            buffer += chunk
            while len(buffer) >= 4 and len(buffer) >= 4 + (size := int.from_bytes(buffer[:4])):
                frame, buffer = buffer[: 4 + size], buffer[4 + size :]
                envelope = json.loads(frame[4:])
                kind = envelope["type"]
                if kind == "__subscribe":
                    topics.add(topic := envelope["payload"]["topic"])
                    subscribers[topic].add(spoke)
                elif kind == "__unsubscribe":
                    subscribers[envelope["payload"]["topic"]].discard(spoke)
                elif kind == "__ping":
                    pong = json.dumps({"type": "__pong", "id": envelope["id"], "payload": {}})
                    queue(spoke, len(pong).to_bytes(4) + pong.encode())
                elif not kind.startswith("__"):
                    for target in subscribers.get(f"{kind}:{envelope['id']}", ()):
                        queue(target, frame)
    except Exception:
        pass
    finally:
        writer.cancel()
        for topic in topics:
            subscribers[topic].discard(spoke)


async def main() -> None:
    require_loopback_only()
    if "--stock-write" not in sys.argv:
        install_fast_write()
    options = EndpointOptions(
        preset=preset_minimal(), bind_addr="127.0.0.1:0", alpns=[ALPN],
        relay_mode=RelayMode.disabled(),
    )  # fmt: skip
    endpoint = await Endpoint.bind(options)
    print(f"iroh://{EndpointTicket.from_addr(endpoint.addr())}", flush=True)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: tasks.add(loop.create_task(endpoint.close())))
    tasks: set[asyncio.Task[None]] = set()
    while (incoming := await endpoint.accept_next()) is not None:
        tasks.add(asyncio.ensure_future(serve(incoming)))


if __name__ == "__main__":
    asyncio.run(main())
