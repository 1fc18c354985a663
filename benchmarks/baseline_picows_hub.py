"""Baseline: a minimal hand-written topic-routing hub on ``picows``.

picows parses frames in Cython and calls ``on_ws_frame`` synchronously for each
one; ``WSTransport.send`` frames a message and tries a ``send()`` system call
right away (it queues on the asyncio transport only when the socket is full).
So fan-out is: ``json.loads`` once, then one ``send`` per subscriber, no task,
no await. Same wire format as alkpubsub (``__subscribe``/``__unsubscribe``/
``__ping``). No validation, no backpressure limits (the transport buffers
whatever a slow reader leaves), no authorization: a lower bound on the work a
hub must do. Clients never fragment messages, so continuation frames are not
reassembled.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import defaultdict

from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

subscribers: defaultdict[str, set[WSTransport]] = defaultdict(set)


class Connection(WSListener):
    def __init__(self) -> None:
        self.topics: set[str] = set()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            message = frame.get_payload_as_bytes()
            envelope = json.loads(message)
            kind = envelope["type"]
            if kind == "__subscribe":
                topic = envelope["payload"]["topic"]
                subscribers[topic].add(transport)
                self.topics.add(topic)
            elif kind == "__unsubscribe":
                topic = envelope["payload"]["topic"]
                subscribers[topic].discard(transport)
                self.topics.discard(topic)
            elif kind == "__ping":
                pong = {"type": "__pong", "id": envelope["id"], "payload": {}}
                transport.send(WSMsgType.TEXT, json.dumps(pong).encode())
            elif not kind.startswith("__"):
                for target in subscribers.get(f"{kind}:{envelope['id']}", ()):
                    target.send(WSMsgType.TEXT, message)
        elif frame.msg_type == WSMsgType.CLOSE:
            # picows does not answer a close frame by itself.
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for topic in self.topics:
            subscribers[topic].discard(transport)

    # Without these picows logs a warning at each crossing of the write buffer's
    # watermarks; this hub has no limits, like the websockets baseline.
    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


def accept(request: WSUpgradeRequest) -> Connection:
    return Connection()


async def main(port: int) -> None:
    server = await ws_create_server(accept, "127.0.0.1", port, max_frame_size=2**20)
    host, bound = server.sockets[0].getsockname()[:2]
    print(f"ws://{host}:{bound}/", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
