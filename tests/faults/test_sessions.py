"""Issue 10: resume tokens (a stolen or duplicated one is refused, a spent one
is worthless) and the end of a session (grace period, ``disconnect_peer``,
hub shutdown) as the application sees it, on both transports, against a hub
in the test process. Raw clients speak the protocol by hand."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from alkpubsub import make_event
from alkpubsub.core.close import CloseCode
from alkpubsub.core.router import ConnectionState
from alkpubsub.testing import Recorder, within
from alkpubsub.transports.hub import HubTarget

from .raw import RawIroh, RawWs, envelope, hello
from .support import LinkWatch


class Hub:
    """A hub of either transport, with what its callbacks reported."""

    def __init__(self, transport: str, **options: Any) -> None:
        self.transport = transport
        self.connected: list[str] = []
        self.disconnected: asyncio.Queue[str] = asyncio.Queue()
        options.update(
            on_connection=lambda peer: self.connected.append(peer.spoke_id),
            on_disconnection=lambda peer: self.disconnected.put_nowait(peer.spoke_id),
        )
        self.hub: HubTarget
        if transport == "ws":
            from alkpubsub.transports.ws import WebSocketHub

            self.hub = WebSocketHub(port=0, **options)
        else:
            from alkpubsub.transports.iroh import IrohHub

            self.hub = IrohHub(**options)

    async def raw(self, key: bytes | None = None) -> Any:
        """A raw client; over Iroh ``key`` is its endpoint's secret key (its id)."""
        if self.transport == "ws":
            return await RawWs.open(self.hub.url)  # type: ignore[attr-defined]
        return await RawIroh.open(self.hub.ticket, key)  # type: ignore[attr-defined]

    def spoke(self, **options: Any) -> Any:
        if self.transport == "ws":
            from alkpubsub.transports.ws import WebSocketSpoke

            return WebSocketSpoke(self.hub.url, **options)  # type: ignore[attr-defined]
        from alkpubsub.transports.iroh import IrohSpoke

        return IrohSpoke(self.hub.ticket, **options)  # type: ignore[attr-defined]


@pytest.fixture
async def hub(transport: str) -> AsyncIterator[Hub]:
    wrapper = Hub(transport, session_grace=2.0)
    async with wrapper.hub:
        yield wrapper


async def greet(raw: Any, resume: str | None = None, received: int = 0) -> dict[str, Any]:
    await raw.write_frames(hello(resume, received))
    welcome: dict[str, Any] = (await raw.read_until("__welcome"))["payload"]
    return welcome


async def test_a_token_presented_while_its_session_is_live_is_refused(hub: Hub) -> None:
    heard = Recorder()
    async with hub.spoke() as spoke:
        spoke.add_event_listener("t:1", heard)
        await within(spoke.flush())
        token = spoke._forwarder.token
        assert token is not None
        thief = await hub.raw()
        try:
            await thief.write_frames(hello(token))
            assert await thief.close_code() == CloseCode.SESSION_IN_USE
        finally:
            await thief.aclose()
        # The spoke did not notice.
        hub.hub.dispatch_event(make_event("t", "1", "still mine"))
        await heard.wait_for_count(1)
        assert spoke.stats.welcomes == 1
        assert spoke.spoke_id == hub.connected[0]


async def test_a_spent_token_is_worthless_and_only_its_endpoint_resumes(hub: Hub) -> None:
    links = LinkWatch(hub.hub)
    key = os.urandom(32)
    first = await hub.raw(key)
    welcome = await greet(first)
    spoke_id, spent = welcome["spoke_id"], welcome["token"]
    await first.drop()
    assert await links.lost(spoke_id)
    await first.aclose()
    second = await hub.raw(key)
    welcome = await greet(second, spent)
    assert welcome["resumed"]
    assert welcome["spoke_id"] == spoke_id
    await second.write_frames(envelope("__ping", {}, "n"))  # it holds the new token
    await second.read_until("__pong")
    await second.drop()
    await second.aclose()
    # The spent token, even from the same endpoint, starts a new session.
    third = await hub.raw(key)
    try:
        welcome = await greet(third, spent)
        assert not welcome["resumed"]
        assert welcome["gap"]
        assert welcome["spoke_id"] != spoke_id
    finally:
        await third.aclose()
    assert hub.hub.router.connections[spoke_id].state is ConnectionState.DETACHED


@pytest.mark.usefixtures("loopback_only")
async def test_over_iroh_a_token_resumes_only_from_its_own_endpoint() -> None:
    """(Over WebSocket a client has no verified identity: the token is the credential.)"""
    hub = Hub("iroh")
    async with hub.hub:
        await token_from_another_endpoint(hub)


async def token_from_another_endpoint(hub: Hub) -> None:
    links = LinkWatch(hub.hub)
    owner = await hub.raw()
    welcome = await greet(owner)
    await owner.drop()
    assert await links.lost(welcome["spoke_id"])
    await owner.aclose()
    thief = await hub.raw()  # another endpoint id, with the right token
    try:
        stolen = await greet(thief, welcome["token"])
    finally:
        await thief.aclose()
    assert not stolen["resumed"]
    assert stolen["spoke_id"] != welcome["spoke_id"]


async def test_every_session_end_is_reported_once(transport: str) -> None:
    """``on_disconnection`` was never called for a session whose grace period
    ran out, nor for a detached one ended by ``disconnect_peer`` or by the hub
    closing: the application saw spokes connect and never leave."""
    wrapper = Hub(transport, session_grace=1.0, tick_interval=0.2)
    links = LinkWatch(wrapper.hub)
    async with wrapper.hub:
        ids = []
        for _ in range(3):
            raw = await wrapper.raw()
            ids.append((await greet(raw))["spoke_id"])
            await raw.drop()
            assert await links.lost(ids[-1])
            await raw.aclose()
            if len(ids) == 3:  # this one outlives the hub
                wrapper.hub.router.connections[ids[-1]].expires_in = 1_000
        expiring, dropped, remaining = ids
        assert await wrapper.hub.disconnect_peer(dropped)
        # ... and the grace period of the first runs out.
        ended = {await within(wrapper.disconnected.get()) for _ in range(2)}
        assert ended == {dropped, expiring}
        assert wrapper.hub.stats.sessions_expired == 1
        assert remaining in wrapper.hub.router.connections
    assert await within(wrapper.disconnected.get()) == remaining  # the hub closed
    assert sorted(wrapper.connected) == sorted(ids)
    assert wrapper.disconnected.empty()


async def test_the_spoke_id_is_known_when_start_returns_and_kept_on_resume(hub: Hub) -> None:
    """Defect 6: ``spoke_id`` was None when ``start()`` returned."""
    links = LinkWatch(hub.hub)
    heard = Recorder()
    resumed = asyncio.Event()
    on_session = lambda info: info.resumed and resumed.set()  # noqa: E731
    async with hub.spoke(on_session=on_session) as spoke:
        assert spoke.spoke_id is not None
        assert spoke.spoke_id in hub.connected
        first = spoke.spoke_id
        spoke.add_event_listener(f"direct:{first}", heard)
        await within(spoke.flush())
        # The hub cuts the link the way a lost network would end it (4408): the
        # spoke resumes its session, same id, and its direct: inbox still works.
        conn = hub.hub.router.connections[first]
        hub.hub.router._cut(conn, CloseCode.HEARTBEAT_TIMEOUT, "test")
        hub.hub._service()
        assert await links.lost(first)
        await within(resumed.wait())
        assert spoke.spoke_id == first
        hub.hub.dispatch_event(make_event("direct", first, "after the resume"))
        await heard.wait_for_count(1)
