"""Issue 9: the hub's input path, fuzzed on both transports (hypothesis).

A raw client sends random frames: envelopes with odd types and payloads,
control frames with odd payloads, JSON that is not an envelope, random bytes,
and over Iroh random length prefixes. After each example the hub must still
serve an honest spoke (which gets exactly its own events, in order), must not
have reported a bug of its own (``on_error``), and its counters must add up.

``ALKPUBSUB_FUZZ_EXAMPLES`` sets the number of examples per transport
(default 100, bounded for CI; e.g. 5000 for a longer run).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alkpubsub import make_event
from alkpubsub.core.codec import prefix_frame
from alkpubsub.testing import Recorder

from .raw import RawIroh, RawWs

EXAMPLES = int(os.environ.get("ALKPUBSUB_FUZZ_EXAMPLES", "100"))
MAX_FRAME_BYTES = 16 * 1024

# -- what a hostile or broken client sends ---------------------------------------------------

TYPES = [
    "__subscribe", "__unsubscribe", "__ping", "__pong", "__ack", "__hello", "__welcome",
    "__error", "__close", "__junk", "__", "t", "direct", "a:b", "a b", "", "x" * 300, "\ud800",
]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
odd_numbers = st.sampled_from([-1, 0, 1, 2**31, 2**64, 10**30, 1.5, True, "3", None])
odd_topics = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["t:1", "direct:x", "direct:", ":", "a:", " :x", "t:\x00", "x" * 2000 + ":1"]),
    json_values,
)
control_payloads = st.one_of(
    st.fixed_dictionaries({"topic": odd_topics}),
    st.fixed_dictionaries({"received": odd_numbers}),
    st.fixed_dictionaries(
        {},
        optional={
            "protocol": odd_numbers,
            "session": st.sampled_from([True, False, 1, "yes", None]),
            "resume": st.text(max_size=40) | odd_numbers,
            "received": odd_numbers,
            "heartbeat": st.sampled_from([0, -1, 0.001, 1e308, 3600, 3601, "1", None, True]),
        },
    ),
    st.fixed_dictionaries({"code": odd_numbers, "reason": json_values}),
    json_values,
)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    frame: dict[str, Any] = {
        "type": draw(st.sampled_from(TYPES) | st.text(max_size=10) | json_values),
        "id": draw(st.text(max_size=10) | json_values),
        "payload": draw(control_payloads),
    }
    for key in draw(st.lists(st.sampled_from(["type", "id", "payload"]), max_size=2)):
        frame.pop(key, None)  # missing fields
    if draw(st.booleans()):
        frame["extra"] = draw(json_values)  # unknown fields (E7)
    return json.dumps(frame, allow_nan=True).encode("utf-8", "surrogatepass")


frames = st.one_of(
    envelopes(),
    st.binary(max_size=64),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.text(max_size=64).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.just(b"{" * 200),
    st.just(b'{"type":"t","id":"1","payload":"' + b"x" * (MAX_FRAME_BYTES + 10) + b'"}'),
)
# Iroh only: what follows the valid frames on the stream (an empty or oversized
# length prefix, a truncated frame, or nothing).
stream_tails = st.sampled_from(
    [b"", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x00\x00\x10\x00{", b"\x00\x00"]
)


# -- one hub for every example of a transport ---------------------------------------------------


@dataclass
class Arena:
    loop: asyncio.AbstractEventLoop
    transport: str
    hub: Any
    honest: Any
    heard: Recorder
    bugs: list[BaseException] = field(default_factory=list)
    published: int = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    async def attacker(self) -> Any:
        if self.transport == "ws":
            return await RawWs.open(self.hub.url, max_size=None)
        return await RawIroh.open(self.hub.ticket)


@pytest.fixture
def arena(transport: str) -> Iterator[Arena]:
    """A hub and an honest spoke on an event loop of their own, shared by the
    examples (hypothesis drives a plain function; each example runs on it)."""
    loop = asyncio.new_event_loop()
    bugs: list[BaseException] = []
    options = {"max_frame_bytes": MAX_FRAME_BYTES, "on_error": bugs.append}
    # The honest spoke sends nothing but its events (no heartbeat, no acks):
    # the hub's counters then tell what the attacker's frames did.
    quiet: dict[str, Any] = {"heartbeat_interval": None, "session": False}

    async def start() -> Arena:
        if transport == "ws":
            from alkpubsub.transports.ws import WebSocketHub, WebSocketSpoke

            hub: Any = WebSocketHub(port=0, **options)
            await hub.start()
            honest: Any = WebSocketSpoke(hub.url, **quiet)
        else:
            from alkpubsub.transports.iroh import IrohHub, IrohSpoke

            hub = IrohHub(**options)
            await hub.start()
            honest = IrohSpoke(hub.ticket, **quiet)
        await honest.start()
        heard = Recorder("honest")
        honest.add_event_listener("honest:1", heard)
        await honest.flush()
        return Arena(loop, transport, hub, honest, heard, bugs)

    try:
        arena = loop.run_until_complete(asyncio.wait_for(start(), 30))
        try:
            yield arena
        finally:
            loop.run_until_complete(asyncio.wait_for(arena.honest.aclose(), 30))
            loop.run_until_complete(asyncio.wait_for(arena.hub.aclose(), 30))
    finally:
        loop.close()


async def attack(arena: Arena, sent: list[bytes], tail: bytes) -> None:
    attacker = await arena.attacker()
    try:
        if arena.transport == "ws":
            for frame in sent:
                await attacker.ws.send(frame)  # binary frames may hold JSON (F1)
        else:
            data = b"".join(prefix_frame(frame) for frame in sent if frame)
            await attacker.write(data + tail)
        # Wait until the hub dealt with it: a pong, or the hub closed the link.
        with_ping = prefix_frame(b'{"type":"__ping","id":"end","payload":{}}')
        if arena.transport == "ws":
            await attacker.ws.send(with_ping[4:].decode())
        elif not tail:
            await attacker.write(with_ping)
        else:
            await attacker.send.finish()  # the tail is all the hub gets
        await attacker.read_until("__pong", timeout=10)
    except (ConnectionError, OSError, ValueError, KeyError, TypeError):
        pass  # closed by the hub (1002, 1008, 1009), or it answered oddly: checked below
    except Exception as exc:  # websockets' ConnectionClosed, IrohError
        if type(exc).__name__ not in ("ConnectionClosedError", "ConnectionClosedOK", "IrohError"):
            raise
    finally:
        await attacker.aclose()


@pytest.mark.timeout(60 + 0.1 * EXAMPLES)  # about 30 ms (WebSocket) to 50 ms (Iroh) each
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the source tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sent=st.lists(frames, max_size=20), tail=stream_tails)
def test_hub_input_path_survives_anything(arena: Arena, sent: list[bytes], tail: bytes) -> None:
    stats = arena.hub.stats
    received_before = stats.received_frames
    arena.run(attack(arena, sent, tail))
    # The hub still serves an honest spoke: exactly its events, in order.
    arena.honest.dispatch_event(make_event("honest", "1", arena.published))
    arena.published += 1
    arena.run(arena.heard.wait_for_count(arena.published))
    assert arena.heard.payloads == list(range(arena.published))
    assert arena.bugs == []
    # Counters add up: every frame the hub read is counted once.
    assert stats.received_frames - received_before <= len(sent) + 2  # + ping, + honest
    assert stats.invalid_frames + stats.invalid_control <= stats.received_frames
    assert stats.relayed_events <= stats.received_frames
