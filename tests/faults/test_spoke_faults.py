"""Issues 9 and 10: spokes killed (SIGKILL) or frozen (SIGSTOP) in processes
of their own, seen from a hub in the test process.

The hub notices both within 5 s with the default heartbeat (``hub.peers`` no
longer lists them; their sessions wait for a resume); the frozen spoke, thawed,
resumes its session with the same spoke id and gets what was sent to its
``direct:`` inbox meanwhile; the killed spoke's session ends when its grace
period runs out, and the hub forgets everything it held for it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from alkpubsub import make_event
from alkpubsub.core.router import ConnectionState
from alkpubsub.testing import within
from alkpubsub.transports.hub import HubTarget

from .procs import start_spoke
from .support import Children, LinkWatch

DETECTION_BOUND = 5.0
GRACE = 6.0  # longer than detecting the frozen spoke


@pytest.fixture
async def hub_and_address(transport: str) -> AsyncIterator[tuple[HubTarget, list[str], Any]]:
    disconnected: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    options: dict[str, Any] = {
        "session_grace": GRACE,
        "on_disconnection": lambda peer: disconnected.put_nowait((peer.spoke_id, time.monotonic())),
    }
    hub: HubTarget
    if transport == "ws":
        from alkpubsub.transports.ws import WebSocketHub

        hub = WebSocketHub(port=0, **options)
        await hub.start()
        address = ["--ws", hub.url]
    else:
        from alkpubsub.transports.iroh import IrohHub

        hub = IrohHub(**options)
        await hub.start()
        address = ["--iroh", hub.ticket]
    try:
        yield hub, address, disconnected
    finally:
        await hub.aclose()


async def test_killed_and_frozen_spokes(
    transport: str,
    children: Children,
    hub_and_address: tuple[HubTarget, list[str], asyncio.Queue[tuple[str, float]]],
) -> None:
    hub, address, disconnected = hub_and_address
    links = LinkWatch(hub)
    frozen = await start_spoke(children, "sub", "frozen", address, direct=True)
    killed = await start_spoke(children, "sub", "killed", address)
    frozen_id = (await frozen.next("ready"))["spoke_id"]
    await frozen.next("session")  # its first
    killed_id = (await killed.next("ready"))["spoke_id"]
    # Defect 6: the id is there when start() returns.
    assert frozen_id is not None
    assert killed_id is not None
    assert {p.spoke_id for p in hub.peers} == {frozen_id, killed_id}
    stopped_at = frozen.signal(signal.SIGSTOP)
    killed_at = killed.kill()
    assert await links.lost(killed_id, timeout=10)  # the session waits for a resume
    assert await links.lost(frozen_id, timeout=10)
    killed_detected = links.ended[killed_id][1] - killed_at
    frozen_detected = links.ended[frozen_id][1] - stopped_at
    assert killed_detected <= DETECTION_BOUND
    assert frozen_detected <= DETECTION_BOUND
    assert hub.peers == []
    sessions = {conn.spoke_id: conn for conn in hub.router.connections.values()}
    assert {s.state for s in sessions.values()} == {ConnectionState.DETACHED}

    # While they are away, the inbox and the topic get events: kept for a resume.
    hub.dispatch_event(make_event("seq", "all", {"p": "hub", "s": 0, "pad": "x" * 100_000}))
    for seq in range(5):
        hub.dispatch_event(make_event("direct", frozen_id, {"p": "direct", "s": seq}))
        hub.dispatch_event(make_event("seq", "all", {"p": "hub", "s": seq + 1}))
    assert sessions[killed_id].buffered_bytes > 100_000
    frozen.signal(signal.SIGCONT)
    session = await frozen.next("session", timeout=10)
    assert session["resumed"]
    assert not session["gap"]
    assert session["spoke_id"] == frozen_id
    result = await frozen.ask("expect", last={"direct": 5, "hub": 6})
    assert result["received"] == {"hub": list(range(6)), "direct": list(range(5))}
    assert result["spoke_id"] == frozen_id

    # The killed spoke's grace period runs out: the hub forgets its session.
    spoke_id, expired_at = await within(disconnected.get(), GRACE + 5)
    assert spoke_id == killed_id
    assert expired_at - links.ended[killed_id][1] >= GRACE - hub.tick_interval
    gone = sessions[killed_id]
    assert gone.state is ConnectionState.GONE
    assert gone.buffered_bytes == 0
    assert gone.topics == set()
    assert killed_id not in hub.router.connections
    assert gone not in hub.router.subscriptions.get("seq:all", {})
    assert all(conn is not gone for conn in hub.router.sessions.values())
    assert hub.stats.sessions_expired == 1
    print(
        f"{transport}: killed spoke detected in {killed_detected:.2f}s, frozen one in "
        f"{frozen_detected:.2f}s; the session expired {expired_at - killed_at:.2f}s after the kill"
    )
