"""Staggered dials (``dial_stagger``): a dial whose handshake fell into a brief
outage waits on QUIC's or TCP's exponential retransmit timers (1, 3, 7 s ...);
the spoke starts a fresh dial alongside instead of waiting for it, and closes
whatever link a losing dial still opened. Also: a dial given up on never
leaves a connection open (picows finishes an upgrade under way when cancelled)."""

from __future__ import annotations

import asyncio
import contextlib
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
from alkpubsub.transports.ws import HttpRequestInfo, WebSocketHub, WebSocketSpoke


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


def test_iroh_spokes_stagger_their_dials_by_default() -> None:
    assert IrohSpoke("0" * 64, hub_addresses=["127.0.0.1:1"]).dial_stagger == 1.0
    # Others dial one at a time: a WebSocket dial runs the hub's authenticate.
    assert SpokeTarget.default_dial_stagger == 0.0
    assert WebSocketSpoke("ws://127.0.0.1:1/").dial_stagger == 0.0
    assert WebSocketSpoke("ws://127.0.0.1:1/", dial_stagger=1).dial_stagger == 1
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


class LateLinks(WebSocketSpoke):
    """Every dial hangs until cancelled and then still opens its link (as a
    handshake already under way does)."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.dials = 0
        self.all_pending = asyncio.Event()
        self.closed_links: list[int] = []

    async def open_link(self) -> Link:
        self.dials += 1
        if self.dials == MAX_PARALLEL_DIALS:
            self.all_pending.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        link = await super().open_link()
        close = link.close

        async def recorded_close(code: int = CloseCode.NORMAL, reason: str = "") -> None:
            await close(code, reason)
            self.closed_links.append(code)

        link.close = recorded_close  # type: ignore[method-assign]
        return link


async def test_aclose_closes_the_links_of_dials_still_pending(hub: WebSocketHub) -> None:
    spoke = LateLinks(hub.url, dial_stagger=0.05, wait_connected=False)
    await spoke.start()
    await within(spoke.all_pending.wait())
    await within(spoke.aclose())
    assert spoke.closed_links == [CloseCode.NORMAL] * MAX_PARALLEL_DIALS


async def test_an_answer_ends_the_dials_at_once_with_its_reason(hub: WebSocketHub) -> None:
    errors: list[BaseException] = []
    failed = asyncio.Event()

    def on_error(error: BaseException) -> None:
        errors.append(error)
        failed.set()

    url = hub.url.rstrip("/") + "/elsewhere"
    spoke = FirstDialLost(
        url, connect_timeout=30, dial_stagger=0.1, wait_connected=False, on_error=on_error
    )
    async with spoke:
        await within(failed.wait())  # not after connect_timeout (30 s)
    assert "HTTP 404" in str(errors[0])
    assert getattr(errors[0].__cause__, "response", None) is not None  # the CLI reads it


class ServedLinks(WebSocketHub):
    """Tells when a link it served ended."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.ended = asyncio.Event()

    async def serve_link(self, link: Link, peer_info: dict[str, Any], **options: Any) -> None:
        try:
            await super().serve_link(link, peer_info, **options)
        finally:
            self.ended.set()


@pytest.mark.usefixtures("picows_backend")
async def test_a_picows_upgrade_given_up_on_is_disconnected_when_it_completes() -> None:
    """The first dial is still waiting for the hub's slow authenticate when a
    staggered one wins; the hub then completes the first upgrade, and the spoke
    disconnects it instead of leaving it open for good (picows finishes an
    upgrade under way when cancelled)."""
    calls = 0

    async def authenticate(request: HttpRequestInfo) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(1.0)  # a slow token check
        return True

    hub = ServedLinks(port=0, authenticate=authenticate, backend="picows")
    async with hub, WebSocketSpoke(hub.url, backend="picows", dial_stagger=0.3) as spoke:
        await within(hub.ended.wait())  # the abandoned link, while the spoke lives
        assert spoke.connected
        assert calls == 2
