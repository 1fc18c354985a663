"""Staggered dials (``dial_stagger``): a dial whose handshake fell into a brief
outage waits on QUIC's or TCP's exponential retransmit timers (1, 3, 7 s ...);
the spoke starts a fresh dial alongside instead of waiting for it, and closes
whatever link a losing dial still opened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from alkpubsub import make_event
from alkpubsub.core.close import CloseCode
from alkpubsub.testing import Recorder, within
from alkpubsub.transports.iroh import IrohSpoke
from alkpubsub.transports.link import Link
from alkpubsub.transports.spoke import MAX_PARALLEL_DIALS, SpokeTarget
from alkpubsub.transports.ws import WebSocketHub, WebSocketSpoke


@pytest.fixture
async def hub() -> AsyncIterator[WebSocketHub]:
    async with WebSocketHub(port=0) as h:
        yield h


class FirstDialLost(WebSocketSpoke):
    """Its first dial never completes, as one whose packets were blackholed;
    with ``late_link`` it opens its link just as it is cancelled."""

    def __init__(self, url: str, *, late_link: bool = False, **options: Any) -> None:
        super().__init__(url, **options)
        self.dials = 0
        self.late_link = late_link
        self.lost_dial_cancelled = asyncio.Event()
        self.closed_unused: list[int] = []
        self.unused_closed = asyncio.Event()

    async def open_link(self) -> Link:
        self.dials += 1
        if self.dials > 1:
            return await super().open_link()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.lost_dial_cancelled.set()
            if not self.late_link:
                raise
        link = await super().open_link()
        close = link.close

        async def recorded_close(code: int = CloseCode.NORMAL, reason: str = "") -> None:
            self.closed_unused.append(code)
            await close(code, reason)
            self.unused_closed.set()

        link.close = recorded_close  # type: ignore[method-assign]
        return link


def test_network_spokes_stagger_their_dials_by_default() -> None:
    assert WebSocketSpoke("ws://127.0.0.1:1/").dial_stagger == 1.0
    assert IrohSpoke("0" * 64, hub_addresses=["127.0.0.1:1"]).dial_stagger == 1.0
    assert SpokeTarget.default_dial_stagger == 0.0  # others (Redis) dial one at a time
    assert WebSocketSpoke("ws://127.0.0.1:1/", dial_stagger=0).dial_stagger == 0
    with pytest.raises(ValueError, match="dial_stagger"):
        WebSocketSpoke("ws://127.0.0.1:1/", dial_stagger=-1)
    assert MAX_PARALLEL_DIALS >= 2


async def test_a_lost_dial_gets_a_fresh_one_after_dial_stagger(hub: WebSocketHub) -> None:
    spoke = FirstDialLost(hub.url, connect_timeout=30, dial_stagger=0.2)
    began = time.monotonic()
    async with spoke:  # start() waits for the first connection
        connected_after = time.monotonic() - began
        assert spoke.dials == 2
        assert spoke.connect_attempts == 1  # one attempt of the supervisor, two dials
        await within(spoke.lost_dial_cancelled.wait())
        heard = Recorder()
        spoke.add_event_listener("dial:t", heard)
        await within(spoke.flush())
        spoke.dispatch_event(make_event("dial", "t", "over the second dial"))
        await heard.wait_for_count(1)
    assert heard.payloads == ["over the second dial"]
    assert connected_after < 10  # not the lost dial's connect_timeout (30 s)


async def test_without_stagger_a_lost_dial_holds_the_spoke_for_connect_timeout(
    hub: WebSocketHub,
) -> None:
    spoke = FirstDialLost(hub.url, connect_timeout=0.5, dial_stagger=0, wait_connected=False)
    began = time.monotonic()
    async with spoke:
        await within(spoke.wait_connected())
        assert time.monotonic() - began >= 0.5
        assert spoke.dials == 2
        assert spoke.connect_attempts == 2


async def test_a_link_opened_by_a_losing_dial_is_closed_unused(hub: WebSocketHub) -> None:
    spoke = FirstDialLost(hub.url, connect_timeout=30, dial_stagger=0.2, late_link=True)
    async with spoke:
        await within(spoke.lost_dial_cancelled.wait())
        await within(spoke.unused_closed.wait())
        assert spoke.closed_unused == [CloseCode.NORMAL]
        assert spoke.connected
