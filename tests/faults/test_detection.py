"""Issue 9: a dead or frozen hub, and a dead or frozen spoke, are noticed
within 5 s with the default heartbeats, on both transports, and the reason
reaches the application at once."""

from __future__ import annotations

import asyncio
import time

from alkpubsub.core.errors import ConnectionLostError
from alkpubsub.testing import within
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
