"""Issue 9, defects 3 and 4: one ``authenticate`` policy covers every way into
a hub (an Iroh acceptor added to a WebSocket hub too), and repeated headers
reach it intact instead of breaking the handshake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from alkpubsub import make_event
from alkpubsub.core.close import CloseCode
from alkpubsub.core.errors import ConnectionRefusedByHubError
from alkpubsub.testing import Recorder, within
from alkpubsub.transports.hub import ConnectRequest
from alkpubsub.transports.ws import WebSocketHub, WebSocketSpoke

from .raw import RawIroh, envelope

TOKEN = "Bearer s3cret"


# -- the mixed hub: WebSocket with authenticate, plus an Iroh acceptor ---------------------


@pytest.fixture
async def mixed_hub() -> AsyncIterator[tuple[WebSocketHub, object, list[ConnectRequest]]]:
    from alkpubsub.transports.iroh import IrohAcceptor

    seen: list[ConnectRequest] = []
    allowed_endpoints: set[str] = set()

    def authenticate(request: ConnectRequest) -> bool | int:
        seen.append(request)
        if request.transport == "iroh":
            return request.endpoint_id in allowed_endpoints
        return request.headers.get("authorization") == TOKEN or 401

    hub = WebSocketHub(port=0, authenticate=authenticate)
    acceptor = IrohAcceptor()
    hub.add_acceptor(acceptor)
    hub.allowed_endpoints = allowed_endpoints  # type: ignore[attr-defined]
    async with hub:
        yield hub, acceptor, seen


@pytest.mark.usefixtures("loopback_only")
async def test_an_anonymous_iroh_spoke_of_a_mixed_hub_is_refused_and_hears_nothing(
    mixed_hub: tuple[WebSocketHub, object, list[ConnectRequest]],
) -> None:
    """Defect 3: ``authenticate`` on a WebSocket hub did not cover an Iroh
    acceptor added to it; anonymous Iroh spokes heard private events."""
    from alkpubsub.transports.iroh import IrohAcceptor, IrohSpoke, bind_endpoint

    hub, acceptor, seen = mixed_hub
    assert isinstance(acceptor, IrohAcceptor)
    publishing = asyncio.ensure_future(publish_private(hub))
    try:
        # A raw client that subscribes at once and reads everything it gets.
        raw = await RawIroh.open(acceptor.ticket)
        try:
            await raw.write_frames(
                envelope("__hello", {"protocol": 1}),
                envelope("__subscribe", {"topic": "private:1"}),
                envelope("__ping", {}, "n"),
            )
            assert await raw.close_code() == CloseCode.FORBIDDEN
        finally:
            await raw.aclose()
        assert [f for f in raw.frames if not f["type"].startswith("__")] == []
        # The Python spoke takes 4403 as final: start() raises, no retry.
        heard = Recorder()
        spoke = IrohSpoke(acceptor.ticket, backoff_initial=0.05)
        spoke.add_event_listener("private:1", heard)
        with pytest.raises(ConnectionRefusedByHubError):
            await within(spoke.start())
        assert spoke.connect_attempts == 1
        assert heard.events == []
        # The WebSocket door asks for the token.
        async with WebSocketSpoke(hub.url, headers={"Authorization": TOKEN}) as member:
            member_heard = Recorder()
            member.add_event_listener("private:1", member_heard)
            await within(member.flush())
            await member_heard.wait_for_count(1)
        # ... and an Iroh endpoint the policy knows gets in.
        endpoint = await bind_endpoint(
            secret_key=None, bind_addr="127.0.0.1:0", alpns=[], relay_mode=None, preset=None
        )
        try:
            hub.allowed_endpoints.add(str(endpoint.id()))  # type: ignore[attr-defined]
            async with IrohSpoke(acceptor.ticket, endpoint=endpoint) as known:
                known_heard = Recorder()
                known.add_event_listener("private:1", known_heard)
                await within(known.flush())
                await known_heard.wait_for_count(1)
        finally:
            await endpoint.close()
    finally:
        publishing.cancel()
        await asyncio.gather(publishing, return_exceptions=True)
    iroh_requests = [r for r in seen if r.transport == "iroh"]
    assert iroh_requests
    assert all(r.endpoint_id for r in iroh_requests)


async def publish_private(hub: WebSocketHub) -> None:
    sequence = 0
    while True:
        hub.dispatch_event(make_event("private", "1", {"secret": sequence}))
        sequence += 1
        await asyncio.sleep(0.01)  # a steady stream of private events


# -- repeated headers -----------------------------------------------------------------------


async def raw_upgrade(url: str, extra: list[tuple[str, str]]) -> tuple[int, bytes]:
    """Send a WebSocket upgrade by hand (repeated header lines as given);
    returns the HTTP status and the response head."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    reader, writer = await within(asyncio.open_connection(host, int(port)))
    try:
        lines = [
            "GET / HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in extra),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await within(reader.readuntil(b"\r\n\r\n"))
        return int(head.split(b" ", 2)[1]), head
    finally:
        writer.transport.abort()


REPEATED = [
    ("X-Forwarded-For", "203.0.113.7"),
    ("X-Forwarded-For", "198.51.100.2, 10.0.0.1"),
    ("Authorization", TOKEN),
]


@pytest.mark.parametrize("policy", ["none", "accepts", "refuses", "raises"])
async def test_repeated_headers_reach_authenticate_and_never_break_the_handshake(
    policy: str,
) -> None:
    """Defect 4: two X-Forwarded-For lines made the handshake fail (1011, or
    HTTP 500 with a traceback when authenticate was set)."""
    seen: list[list[str]] = []

    def authenticate(request: ConnectRequest) -> bool | int:
        seen.append(request.headers.get_all("x-forwarded-for"))
        if policy == "raises":
            raise RuntimeError("a buggy policy refuses, it does not crash the hub")
        return policy == "accepts" or 401

    options = {} if policy == "none" else {"authenticate": authenticate}
    async with WebSocketHub(port=0, **options) as hub:
        status, head = await raw_upgrade(hub.url, REPEATED)
        if policy in ("none", "accepts"):  # and it goes on serving spokes
            async with WebSocketSpoke(hub.url, headers={"Authorization": TOKEN}) as spoke:
                await within(spoke.flush())
    expected = {"none": 101, "accepts": 101, "refuses": 401, "raises": 403}[policy]
    assert status == expected, head
    if policy != "none":
        assert seen[0] == ["203.0.113.7", "198.51.100.2, 10.0.0.1"]
