"""Iroh-specific faults, with the hub in the test process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from alkpubsub.core.codec import prefix_frame
from alkpubsub.core.router import ConnectionState
from alkpubsub.testing import within
from alkpubsub.transports.iroh import IrohHub

from .raw import HELLO_SESSION, RawIroh, envelope
from .support import LinkWatch

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
