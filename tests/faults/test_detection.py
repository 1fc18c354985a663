"""Issue 9: how spokes notice a frozen hub and a slow network, through the
TCP fault proxy (stall, delay, bandwidth cap). Hubs and spokes killed or
frozen in processes of their own: test_hub_faults.py, test_spoke_faults.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from alkpubsub import make_event
from alkpubsub.core.close import CloseCode
from alkpubsub.core.errors import ConnectionLostError, LinkClosedError
from alkpubsub.testing import Recorder, within
from alkpubsub.transports.link import Link
from alkpubsub.transports.spoke import SessionInfo, SpokeTarget
from alkpubsub.transports.ws import WebSocketHub, WebSocketSpoke

from .support import TcpFaultProxy


async def test_a_frozen_hub_is_reported_without_waiting_for_the_closing_handshake() -> None:
    """The spoke declared the link lost after its heartbeat timeout, then
    waited for a WebSocket closing handshake that a frozen hub never answers
    (2 s) before telling ``on_disconnect`` and reconnecting."""
    reasons: asyncio.Queue[tuple[float, BaseException | None]] = asyncio.Queue()
    async with WebSocketHub(port=0) as hub:
        proxy = await TcpFaultProxy(int(hub.url.rsplit(":", 1)[1].strip("/"))).start()
        spoke = WebSocketSpoke(
            proxy.url,
            heartbeat_interval=0.2,
            heartbeat_timeout=0.6,
            on_disconnect=lambda reason: reasons.put_nowait((time.monotonic(), reason)),
        )
        try:
            await spoke.start()
            stalled_at = time.monotonic()
            proxy.stall()  # nothing moves either way: a frozen hub
            at, reason = await within(reasons.get())
        finally:
            proxy.resume()
            await spoke.aclose()
            await proxy.aclose()
    assert isinstance(reason, ConnectionLostError)
    # The heartbeat's own bound (timeout + one interval), far below the 2 s close timeout.
    assert at - stalled_at < 0.6 + 0.2 + 0.5


async def test_a_slow_network_is_not_taken_for_a_dead_hub() -> None:
    """400 ms each way (the default heartbeat gives up after 3 s of silence):
    the link stays up and every event arrives, in order."""
    disconnects: list[BaseException | None] = []
    async with WebSocketHub(port=0) as hub:
        proxy = await TcpFaultProxy(int(hub.url.rsplit(":", 1)[1].strip("/"))).start()
        spoke = WebSocketSpoke(proxy.url, on_disconnect=disconnects.append)
        heard = Recorder()
        try:
            await spoke.start()
            spoke.add_event_listener("t:1", heard)
            await within(spoke.flush())
            proxy.delay = 0.4
            for n in range(10):  # 4 s: longer than the heartbeat timeout
                hub.dispatch_event(make_event("t", "1", n))
                await asyncio.sleep(0.4)  # pacing the publisher
            await heard.wait_for_count(10)
        finally:
            proxy.delay = 0
            await spoke.aclose()
            await proxy.aclose()
    assert heard.payloads == list(range(10))
    assert disconnects == []
    assert spoke.connections_made == 1


async def test_a_subscriber_behind_a_slow_link_is_cut_with_1013_and_resumes_with_a_gap() -> None:
    reasons: asyncio.Queue[BaseException | None] = asyncio.Queue()
    sessions: list[SessionInfo] = []
    cut = asyncio.Event()
    async with WebSocketHub(port=0, on_backpressure=lambda peer, n: cut.set()) as hub:
        proxy = await TcpFaultProxy(int(hub.url.rsplit(":", 1)[1].strip("/"))).start()
        spoke = WebSocketSpoke(
            proxy.url, on_disconnect=reasons.put_nowait, on_session=sessions.append
        )
        try:
            await spoke.start()
            spoke.add_event_listener("t:1", Recorder())
            await within(spoke.flush())
            proxy.bytes_per_second = 100_000  # far less than what is published
            sent = 0
            while not cut.is_set() and sent < 2_000:
                hub.dispatch_event(make_event("t", "1", {"n": sent, "pad": "x" * 60_000}))
                sent += 1
                await asyncio.sleep(0)  # the hub writes; it never blocks a publisher
            assert cut.is_set()
            proxy.bytes_per_second = None  # the link recovers
            reason = await within(reasons.get(), 30)
            await within(spoke.wait_connected())
            await within(spoke.flush())
        finally:
            await spoke.aclose()
            await proxy.aclose()
    assert isinstance(reason, LinkClosedError)
    assert reason.code == CloseCode.TRY_AGAIN_LATER
    assert sessions[-1].resumed
    assert sessions[-1].gap


class _BrokenLink:
    """A link whose write fails ("not open") a moment before its reader
    learns why the connection ended, as a killed WebSocket hub's does."""

    def __init__(self, why: BaseException) -> None:
        self.why = why
        self.written = asyncio.Event()

    async def send(self, frames: list[bytes]) -> None:
        self.written.set()
        raise ConnectionError("websocket is not open")

    async def messages(self) -> AsyncIterator[bytes]:
        await self.written.wait()
        await asyncio.sleep(0.01)  # the loss reaches the reader a moment later
        raise self.why
        yield b""  # an async generator

    def transport_buffered(self) -> int:
        return 0

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


class _OneLinkSpoke(SpokeTarget):
    def __init__(self, link: _BrokenLink, **options: Any) -> None:
        super().__init__(wait_connected=False, **options)
        self.link = link

    async def open_link(self) -> Link:
        if self.connect_attempts > 1:
            await asyncio.Event().wait()  # one link only
        return self.link


@pytest.mark.parametrize(
    "why", [ConnectionLostError("lost without a close"), LinkClosedError(1013, "slow")]
)
async def test_the_reader_tells_why_a_link_ended_when_a_write_failed_first(
    why: BaseException,
) -> None:
    """After a WebSocket hub's kill -9 a spoke sometimes reported the writer's
    ConnectionError("websocket is not open") instead of ConnectionLostError."""
    reasons: asyncio.Queue[BaseException | None] = asyncio.Queue()
    spoke = _OneLinkSpoke(_BrokenLink(why), on_disconnect=reasons.put_nowait)
    await spoke.start()
    try:
        assert await within(reasons.get()) is why
    finally:
        await spoke.aclose()
