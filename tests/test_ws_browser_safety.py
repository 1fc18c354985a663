"""Browser-safe hubs: allowed origins, the alkpubsub.v1 subprotocol, refusals a
browser can tell from an outage (4401/4403), the non-loopback warning, and
mounted hubs that keep the standalone hub's rules (docs/websocket.md)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from alkpubsub import ConnectionRefusedByHubError, make_event
from alkpubsub.testing import Recorder, within
from alkpubsub.transports.hub import ConnectRequest
from alkpubsub.transports.ws import WebSocketHub, WebSocketSpoke

from .test_ws import BAD_MESSAGES, frames_until_pong
from .test_ws_integrations import aiohttp_app, starlette_app
from .ws_helpers import aiohttp_serving, uvicorn_serving, ws_url

HELLO = json.dumps({"type": "__hello", "id": "", "payload": {"protocol": 1}})


async def hello(ws: ClientConnection) -> dict[str, Any]:
    await ws.send(HELLO)
    welcome: dict[str, Any] = json.loads(await within(ws.recv()))
    assert welcome["type"] == "__welcome"
    return welcome


async def close_code(ws: ClientConnection) -> int | None:
    """Read until the hub closes the connection; its close code."""
    try:
        while True:
            await within(ws.recv())
    except ConnectionClosed:
        return ws.close_code


# -- origins ------------------------------------------------------------------------


async def test_allowed_origins_refuse_other_pages_before_the_upgrade() -> None:
    origins = ["https://app.example.com", "https://*.example.org"]
    async with WebSocketHub(port=0, allowed_origins=origins) as hub:
        for allowed in (
            "https://app.example.com",
            "https://a.b.example.org",
            "HTTPS://APP.EXAMPLE.COM",
        ):
            async with connect(hub.url, origin=allowed) as ws:  # type: ignore[arg-type]
                await hello(ws)
        for refused in ("https://evil.example.net", "http://app.example.com", "null"):
            with pytest.raises(InvalidStatus) as info:
                await within(connect(hub.url, origin=refused))  # type: ignore[arg-type]
            assert info.value.response.status_code == 403
        async with connect(hub.url) as ws:  # no Origin: not a browser
            await hello(ws)


# -- subprotocols --------------------------------------------------------------------


async def test_subprotocol_is_negotiated_and_a_token_can_ride_along() -> None:
    seen: list[ConnectRequest] = []

    def authenticate(request: ConnectRequest) -> bool:
        seen.append(request)
        return "token.s3cret" in request.subprotocols

    async with WebSocketHub(port=0, authenticate=authenticate) as hub:
        async with connect(hub.url, subprotocols=["alkpubsub.v1", "token.s3cret"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "alkpubsub.v1"
            await hello(ws)
        assert seen[0].subprotocols == ("alkpubsub.v1", "token.s3cret")
        # The secret never shows in a repr or a log line.
        assert "s3cret" not in repr(seen[0].headers)
    async with WebSocketHub(port=0) as hub:
        with pytest.raises(InvalidStatus) as info:
            await within(connect(hub.url, subprotocols=["other"]))  # type: ignore[list-item]
        assert info.value.response.status_code == 400


async def test_python_spoke_offers_the_subprotocol() -> None:
    async with WebSocketHub(port=0) as hub, WebSocketSpoke(hub.url) as spoke:
        await within(spoke.flush())
        assert spoke.spoke_id


# -- refusals a browser can tell from an outage ------------------------------------------


async def test_refused_browser_gets_4401_in_band_others_get_http() -> None:
    async with WebSocketHub(port=0, authenticate=lambda request: 401) as hub:
        browser = await within(
            connect(hub.url, origin="https://app.example.com", subprotocols=["alkpubsub.v1"])  # type: ignore[arg-type, list-item]
        )
        with pytest.raises(ConnectionClosed):
            await within(browser.recv())
        assert browser.close_code == 4401
        with pytest.raises(InvalidStatus) as info:
            await within(connect(hub.url))
        assert info.value.response.status_code == 401


async def test_python_spoke_treats_4403_as_final() -> None:
    errors: list[BaseException] = []
    refusing = WebSocketHub(port=0, authenticate=lambda request: False, serve=False)
    await refusing.start()

    async def endpoint(websocket: Any) -> None:
        await refusing.serve_connection(websocket)

    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    app = Starlette(routes=[WebSocketRoute("/pubsub", endpoint)])
    async with uvicorn_serving(app) as sock:
        # An aiohttp or Iroh peer is refused in band; a Starlette mount before
        # accepting (HTTP 403): the spoke then backs off, but 4403 ends it.
        spoke = WebSocketSpoke(ws_url(sock, "/pubsub"), on_error=errors.append, connect_timeout=1)
        with pytest.raises(ConnectionRefusedByHubError):
            await within(spoke.start())
    await refusing.aclose()

    async with WebSocketHub(port=0) as hub:
        final = WebSocketSpoke(hub.url, on_error=errors.append, backoff_initial=0.05)
        await final.start()
        closed = asyncio.Event()
        final.add_close_callback(closed.set)
        spoke_id = final.spoke_id
        assert spoke_id is not None
        await hub.disconnect_peer(spoke_id, 4403, "go away")
        # No reconnect: the spoke closed itself and reported a refusal.
        await within(closed.wait())
        assert final.connect_attempts == 1
        assert any(isinstance(error, ConnectionRefusedByHubError) for error in errors)


# -- the non-loopback warning --------------------------------------------------------


async def test_warning_for_an_open_hub_on_a_non_loopback_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="alkpubsub.transports.ws"):
        async with WebSocketHub(host="0.0.0.0", port=0):
            pass
        async with WebSocketHub(host="0.0.0.0", port=0, allowed_origins=["https://a.example"]):
            pass
        async with WebSocketHub(port=0):
            pass
    warnings = [
        r for r in caplog.records if "neither authenticate nor allowed_origins" in r.message
    ]
    assert len(warnings) == 1


# -- mounted hubs keep the standalone hub's rules -------------------------------------------

MOUNTS: dict[
    str, tuple[Callable[[WebSocketHub], Any], Callable[[Any], AbstractAsyncContextManager[Any]]]
] = {
    "starlette": (starlette_app, uvicorn_serving),
    "aiohttp": (aiohttp_app, aiohttp_serving),
}


@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
@pytest.mark.parametrize("mount", sorted(MOUNTS))
async def test_mounted_hub_runs_the_same_bad_input_table(mount: str, case: str) -> None:
    make_app, serving = MOUNTS[mount]
    message, counter = BAD_MESSAGES[case]
    async with (
        WebSocketHub(serve=False, max_frame_bytes=64 * 1024) as hub,
        serving(make_app(hub)) as sock,
    ):
        url = ws_url(sock, "/pubsub")
        async with WebSocketSpoke(url) as good:
            heard = Recorder()
            good.add_event_listener("t:1", heard)
            await within(good.flush())
            async with connect(url) as bad:
                await hello(bad)
                before = getattr(hub.stats, counter)
                await bad.send(message)
                complaints = {
                    "invalid_frames": ["invalid_frame"],
                    "invalid_control": ["invalid_control"],
                }
                frames = await frames_until_pong(bad)
                assert [f["payload"]["code"] for f in frames] == complaints.get(counter, [])
                assert getattr(hub.stats, counter) == before + 1
            hub.dispatch_event(make_event("t", "1", "still flowing"))
            await heard.wait_for_count(1)


@pytest.mark.parametrize("mount", sorted(MOUNTS))
async def test_mounted_hub_closes_oversized_and_invalid_utf8_like_the_standalone(
    mount: str,
) -> None:
    make_app, serving = MOUNTS[mount]
    async with (
        WebSocketHub(serve=False, max_frame_bytes=64 * 1024) as hub,
        serving(make_app(hub)) as sock,
    ):
        url = ws_url(sock, "/pubsub")
        cases = [
            (json.dumps({"type": "t", "id": "1", "payload": "x" * 100_000}), None, 1009),
            (b'{"type":"t","id":"\xff\xfe"}', True, 1007),
            # Under the limit as sent, above it as re-encoded: 1E2 is 100.0.
            ('{"type":"t","id":"1","payload":[' + ",".join(["1E2"] * 12_000) + "]}", None, 1009),
        ]
        for number, (data, text, code) in enumerate(cases, start=1):
            async with connect(url, max_size=None) as bad:
                await hello(bad)
                await bad.send(data, text=text)
                assert await close_code(bad) == code
            assert hub.stats.invalid_frames == number


async def test_standalone_hub_refuses_a_frame_that_grows_when_re_encoded() -> None:
    async with WebSocketHub(port=0, max_frame_bytes=64 * 1024) as hub:
        async with connect(hub.url) as bad:
            await hello(bad)
            await bad.send('{"type":"t","id":"1","payload":[' + ",".join(["1E2"] * 12_000) + "]}")
            assert await close_code(bad) == 1009
        assert hub.stats.invalid_frames == 1
