"""Iroh-specific faults, with the hub in the test process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from alkpubsub import make_event
from alkpubsub.core.codec import prefix_frame
from alkpubsub.core.router import ConnectionState
from alkpubsub.testing import Recorder, within
from alkpubsub.transports.iroh import IrohHub, IrohSpoke

from .procs import HubProcess
from .raw import HELLO_SESSION, RawIroh, envelope
from .support import Children, LinkWatch, UdpFaultProxy

pytestmark = pytest.mark.usefixtures("loopback_only")


@pytest.fixture
async def hub() -> AsyncIterator[IrohHub]:
    async with IrohHub() as h:
        yield h


async def test_a_link_broken_inside_a_frame_keeps_its_session(hub: IrohHub) -> None:
    """A publisher's link can break between two halves of a frame (a stateless
    reset after a frozen hub thawed, seen in the SIGSTOP test): the hub took
    that for a framing violation, closed with 1002 and ended the session."""
    links = LinkWatch(hub)
    raw = await RawIroh.open(hub.ticket)
    try:
        await raw.write_frames(HELLO_SESSION)
        welcome = await raw.read_until("__welcome")
        spoke_id = welcome["payload"]["spoke_id"]
        await raw.write(prefix_frame(envelope("t", "x" * 1000, "1"))[:500])
        await within(raw.send.reset(0))  # the stream breaks inside the frame
        kept = await links.lost(spoke_id)
    finally:
        await raw.aclose()
    assert kept
    session = hub.router.connections[spoke_id]
    assert session.state is ConnectionState.DETACHED
    assert session.close_code is None


async def test_a_path_change_through_the_proxy_keeps_the_connection(children: Children) -> None:
    """A NAT rebinding: the spoke's address as the hub sees it changes (the
    proxy sends from a new socket) while events flow; QUIC migrates the path,
    the link stays up, nothing is lost. (A proxy in the hub's own namespace
    would be bypassed: iroh finds the direct path, see docs/limits.md.)"""
    hub = await HubProcess("iroh", own_netns=True).start(children)
    proxy = await UdpFaultProxy(hub.relay).start()
    disconnects: list[BaseException | None] = []
    spoke = IrohSpoke(
        hub.endpoint_id,
        hub_addresses=[proxy.address],
        heartbeat_interval=0.2,
        heartbeat_timeout=0.6,
        on_disconnect=disconnects.append,
    )
    try:
        await spoke.start()
        heard = Recorder()
        spoke.add_event_listener("x:1", heard)
        await within(spoke.flush())
        for n in range(3):
            proxy.rebind()
            spoke.dispatch_event(make_event("x", "1", n))
            await heard.wait_for_count(n + 1)
            await within(spoke.flush())  # a round trip on the new path
    finally:
        await spoke.aclose()
        await proxy.aclose()
    assert heard.payloads == [0, 1, 2]
    assert disconnects == []
    assert spoke.connections_made == 1
