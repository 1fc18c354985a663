"""H4: the WebSocket hub mounted in websockets, Starlette, FastAPI and aiohttp
servers on loopback, with real ws-spoke clients."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket
from websockets.asyncio.server import ServerConnection, serve

from alkpubsub import make_event
from alkpubsub.core.router import Peer
from alkpubsub.testing import Recorder, within
from alkpubsub.transports.ws import WebSocketHub, WebSocketSpoke

from .ws_helpers import aiohttp_serving, bound_socket, uvicorn_serving, ws_url


class Lifecycle:
    def __init__(self) -> None:
        self.connected: list[Peer] = []
        self.disconnected: list[Peer] = []
        self.changed = asyncio.Event()

    def on_connection(self, peer: Peer) -> None:
        self.connected.append(peer)
        self.changed.set()

    def on_disconnection(self, peer: Peer) -> None:
        self.disconnected.append(peer)
        self.changed.set()

    async def wait(self, condition: Callable[[], bool]) -> None:
        async def loop() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        await within(loop())


async def exercise(hub: WebSocketHub, url: str, lifecycle: Lifecycle) -> None:
    """Both directions through a mounted hub, then the disconnect callback."""
    async with WebSocketSpoke(url) as alice, WebSocketSpoke(url) as bob:
        heard_by_alice, heard_by_hub = Recorder("alice"), Recorder("hub")
        alice.add_event_listener("chat:room", heard_by_alice)
        hub.add_event_listener("chat:room", heard_by_hub)
        await within(alice.flush())
        bob.dispatch_event(make_event("chat", "room", "from bob"))
        hub.dispatch_event(make_event("chat", "room", "from hub"))
        await heard_by_alice.wait_for_count(2)
        await heard_by_hub.wait_for_count(2)
        assert sorted(heard_by_alice.payloads) == ["from bob", "from hub"]
        assert sorted(heard_by_hub.payloads) == ["from bob", "from hub"]  # H1
        assert len(lifecycle.connected) == 2
        assert all(peer.path == "/pubsub" for peer in lifecycle.connected)
    await lifecycle.wait(lambda: len(lifecycle.disconnected) == 2)


def new_hub(lifecycle: Lifecycle) -> WebSocketHub:
    return WebSocketHub(
        serve=False,
        on_connection=lifecycle.on_connection,
        on_disconnection=lifecycle.on_disconnection,
    )


async def test_h4_websockets_server_with_add_connection() -> None:
    lifecycle = Lifecycle()
    async with new_hub(lifecycle) as hub:

        async def handler(connection: ServerConnection) -> None:
            hub.add_connection(connection)
            hub.add_connection(connection)  # repeated: no-op
            await hub.wait_closed(connection)

        sock = bound_socket()
        async with serve(handler, sock=sock, compression=None):
            await exercise(hub, ws_url(sock, "/pubsub"), lifecycle)


async def test_h4_remove_connection_keeps_the_socket_open() -> None:
    lifecycle = Lifecycle()
    welcomed, removed = asyncio.Event(), asyncio.Event()
    async with new_hub(lifecycle) as hub:

        async def handler(connection: ServerConnection) -> None:
            hub.add_connection(connection)
            await within(welcomed.wait())  # the client got the hub's __welcome
            hub.remove_connection(connection)
            hub.remove_connection(connection)  # repeated: no-op
            removed.set()
            # The socket is still ours: it can carry our own message.
            await connection.send("still open")
            await connection.wait_closed()

        sock = bound_socket()
        async with serve(handler, sock=sock, compression=None):
            from websockets.asyncio.client import connect

            async with connect(ws_url(sock, "/pubsub")) as raw:
                await raw.send('{"type": "__hello", "id": "", "payload": {"protocol": 1}}')
                assert '"__welcome"' in await within(raw.recv())
                welcomed.set()
                await within(removed.wait())
                assert await within(raw.recv()) == "still open"
                await lifecycle.wait(lambda: len(lifecycle.disconnected) == 1)
        assert hub.peers == []


def starlette_app(hub: WebSocketHub) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    async def endpoint(websocket: WebSocket) -> None:
        await hub.serve_connection(websocket)

    return Starlette(routes=[WebSocketRoute("/pubsub", endpoint)])


def fastapi_app(hub: WebSocketHub) -> Any:
    app = FastAPI()

    @app.websocket("/pubsub")
    async def endpoint(websocket: WebSocket) -> None:
        await hub.serve_connection(websocket)

    return app


def aiohttp_app(hub: WebSocketHub) -> Any:
    from aiohttp import web

    async def endpoint(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await hub.serve_connection(ws, request=request)
        return ws

    app = web.Application()
    app.router.add_get("/pubsub", endpoint)
    return app


FRAMEWORKS: dict[
    str,
    tuple[Callable[[WebSocketHub], Any], Callable[[Any], AbstractAsyncContextManager[Any]]],
] = {
    "starlette": (starlette_app, uvicorn_serving),
    "fastapi": (fastapi_app, uvicorn_serving),
    "aiohttp": (aiohttp_app, aiohttp_serving),
}


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
async def test_h4_framework_integration(framework: str) -> None:
    make_app, serving = FRAMEWORKS[framework]
    lifecycle = Lifecycle()
    async with new_hub(lifecycle) as hub, serving(make_app(hub)) as sock:
        await exercise(hub, ws_url(sock, "/pubsub"), lifecycle)
        assert all(peer.remote_address for peer in lifecycle.connected)


async def test_hub_close_ends_mounted_connections_without_cancelling_them() -> None:
    """aclose() closes mounted sockets; the framework's handler sees
    serve_connection return normally, its own task is never cancelled."""
    lifecycle = Lifecycle()
    hub = new_hub(lifecycle)
    await hub.start()
    outcomes: list[str] = []

    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket as StarletteWebSocket

    async def endpoint(websocket: StarletteWebSocket) -> None:
        try:
            await hub.serve_connection(websocket)
            outcomes.append("returned")
        except asyncio.CancelledError:
            outcomes.append("cancelled")
            raise

    app = Starlette(routes=[WebSocketRoute("/pubsub", endpoint)])
    async with uvicorn_serving(app) as sock:
        spoke = WebSocketSpoke(ws_url(sock, "/pubsub"), backoff_initial=5, backoff_max=5)
        async with spoke:
            await within(spoke.flush())
            await within(hub.aclose())
            await within(spoke.wait_disconnected())
        assert len(lifecycle.disconnected) == 1
    assert outcomes == ["returned"]
