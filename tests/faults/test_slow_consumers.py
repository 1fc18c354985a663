"""Issue 9, defect 5: a subscriber that stops reading is cut off with 1013
(B8) and learns why when it reads again, on both transports: a raw client
(the close code, or the ``__close`` frame that precedes it) and a Python
spoke frozen with SIGSTOP in a process of its own (``on_disconnect`` gets
``LinkClosedError(1013)``)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from alkpubsub import make_event
from alkpubsub.core.close import CloseCode
from alkpubsub.testing import IrohBus, WebSocketBus, within
from alkpubsub.transports.hub import HubTarget

from .procs import start_spoke
from .support import Children

PAD = "x" * 60_000
CLOSE_TIMEOUT = 0.5
#: How long the subscribers stay stalled after the cut.
STALLED = 3 * CLOSE_TIMEOUT + 1


@pytest.fixture
async def hub(transport: str) -> AsyncIterator[Any]:
    cut: asyncio.Queue[str] = asyncio.Queue()
    options = {
        "on_backpressure": lambda peer, buffered: cut.put_nowait(peer.spoke_id),
        # A subscriber reads again well after the closing handshake would have
        # timed out; it still learns why it was cut off (``slow_consumer_linger``).
        "close_timeout": CLOSE_TIMEOUT,
    }
    hub: HubTarget
    if transport == "ws":
        from alkpubsub.transports.ws import WebSocketHub

        hub = WebSocketHub(port=0, **options)
    else:
        from alkpubsub.transports.iroh import IrohHub

        hub = IrohHub(**options)
    async with hub:
        hub.cut = cut  # type: ignore[attr-defined]
        yield hub


async def flood(hub: Any, until: asyncio.Future[Any] | asyncio.Task[Any]) -> int:
    """Publish big events on ``t:1`` until ``until`` is done (the cut)."""
    sent = 0
    while not until.done():
        hub.dispatch_event(make_event("t", "1", {"n": sent, "pad": PAD}))
        sent += 1
        if sent % 8 == 0:
            await asyncio.sleep(0)  # let the hub write (it never blocks a publisher)
    return sent


async def test_a_stalled_raw_subscriber_learns_1013(transport: str, hub: Any) -> None:
    harness = WebSocketBus() if transport == "ws" else IrohBus()
    stalled = await harness.stalled_subscriber(hub, "t:1")
    try:
        cut = asyncio.ensure_future(hub.cut.get())
        await within(flood(hub, cut))
        await within(cut)
        await asyncio.sleep(STALLED)  # still not reading
        code = await within(close_code(transport, stalled), 15)
    finally:
        await stalled.aclose()
    assert code == CloseCode.TRY_AGAIN_LATER


async def close_code(transport: str, stalled: Any) -> int | None:
    """Read everything the hub sent: its close code, or the ``__close``
    frame's when the link ended without one."""
    announced: int | None = None
    if transport == "ws":
        from websockets.exceptions import ConnectionClosed

        stalled.ws.transport.resume_reading()
        try:
            while True:
                frame = json.loads(await stalled.ws.recv())
                if frame["type"] == "__close":
                    announced = frame["payload"]["code"]
        except ConnectionClosed as exc:
            return announced if exc.rcvd is None else int(exc.rcvd.code)
    code: int | None = await stalled.close_code()
    return code


async def test_a_frozen_spoke_cut_off_for_slowness_is_told_1013(
    transport: str, hub: Any, children: Children
) -> None:
    address = ["--ws", hub.url] if transport == "ws" else ["--iroh", hub.ticket]
    # A heartbeat long enough that slowness (1013), not silence (4408), cuts it.
    spoke = await start_spoke(
        children,
        "sub",
        "slow",
        address,
        {"heartbeat_interval": 5.0, "heartbeat_timeout": 15.0},
        topic="t:1",
    )
    await spoke.next("ready")
    spoke.signal(signal.SIGSTOP)
    cut = asyncio.ensure_future(hub.cut.get())
    await within(flood(hub, cut), 30)
    await within(cut)
    await asyncio.sleep(STALLED)  # still frozen
    spoke.signal(signal.SIGCONT)
    report = await spoke.next("disconnect")
    assert report["reason"]["type"] == "LinkClosedError", report
    assert report["reason"]["code"] == CloseCode.TRY_AGAIN_LATER
    session = (await spoke.next("session"), await spoke.next("session"))[1]
    assert session["resumed"]
    assert session["gap"]  # what it missed is reported too
