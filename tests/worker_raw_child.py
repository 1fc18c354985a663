"""A worker that is not alkpubsub: a program speaking the channel's framing by
hand on stdin/stdout (json and a 4-byte big-endian length, nothing else).

    python tests/worker_raw_child.py MODE

It answers ``__ping`` with ``__pong``. MODE ``echo`` subscribes to ``job:1``
and answers each ``job:1`` with ``done:1``; it exits at end of input. The other
modes, after the first pong, write in ONE write two valid ``bad:1`` events
around an undecodable frame, followed by bad bytes: ``zero`` (a zero length),
``oversized`` (a length above any limit), ``garbage`` (text that is not a
frame at all), ``truncated`` (a frame cut short, then exit at once). It reports
every frame type it received on stderr, one JSON line each.
"""

from __future__ import annotations

import json
import os
import sys


def frame(message: object) -> bytes:
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    return len(data).to_bytes(4, "big") + data


def event(type_: str, id_: str, payload: object) -> bytes:
    return frame({"type": type_, "id": id_, "payload": payload})


BAD_BYTES = {
    "zero": b"\x00\x00\x00\x00",
    "oversized": (2**31).to_bytes(4, "big") + b"xyz",
    "garbage": b"this is not a frame\n",
    "truncated": (100).to_bytes(4, "big") + b'{"type": "cut',
}


def main() -> None:
    mode = sys.argv[1]
    out = sys.stdout.buffer
    if mode == "echo":
        out.write(event("__subscribe", "", {"topic": "job:1"}))
        out.flush()
    buffer = b""
    sent_bad = False
    while chunk := os.read(0, 65536):
        buffer += chunk
        while len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[:4], "big"):
            size = int.from_bytes(buffer[:4], "big")
            message = json.loads(buffer[4 : 4 + size])
            buffer = buffer[4 + size :]
            print(
                json.dumps({"received": message["type"], "payload": message["payload"]}),
                file=sys.stderr,
                flush=True,
            )
            if message["type"] == "__ping":
                out.write(event("__pong", message["id"], {}))
                if mode != "echo" and not sent_bad:
                    sent_bad = True
                    out.write(
                        event("bad", "1", 1)
                        + frame(b"{not json")
                        + event("bad", "1", 2)
                        + BAD_BYTES[mode]
                    )
                    if mode == "truncated":
                        out.flush()
                        os._exit(0)
            elif message["type"] == "job" and mode == "echo":
                out.write(event("done", "1", {"double": message["payload"] * 2}))
            out.flush()


if __name__ == "__main__":
    main()
