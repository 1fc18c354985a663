"""WebSocket transport: ``ws-hub`` and ``ws-spoke`` on the ``websockets`` library.

Framing is SPEC F1: one text message = one JSON envelope. Everything about
subscriptions, relaying, reconnects and backpressure lives in the shared shells
(``_hub.HubTarget``, ``_spoke.SpokeTarget``) and the sans-I/O core; this module
only moves messages. Adapters let the hub serve connections accepted by
Starlette/FastAPI or aiohttp as well (H4).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response
from websockets.protocol import State

from ..core.errors import ConnectionRefusedByHubError, LinkClosedError, TargetClosedError
from ._hub import HubLink, HubTarget
from ._spoke import SpokeLink, SpokeTarget

__all__ = ["HttpRequestInfo", "WebSocketHub", "WebSocketSpoke"]

logger = logging.getLogger("alkpubsub")

NORMAL_CLOSE_CODES = frozenset({1000, 1001})
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


@dataclass(frozen=True)
class HttpRequestInfo:
    """What ``authenticate`` sees of the upgrade request."""

    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    remote_address: str | None = None


Authenticate = Callable[[HttpRequestInfo], bool | int | Awaitable[bool | int]]


def _address(value: Any) -> str | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return f"{value[0]}:{value[1]}"
    return None if value is None else str(value)


class WebsocketsLink:
    """A ``websockets`` (asyncio) connection, client or server side."""

    def __init__(self, ws: ServerConnection | ClientConnection, close_timeout: float = 2.0) -> None:
        self.ws = ws
        self.close_timeout = close_timeout

    def writable_now(self) -> bool:
        ws = self.ws
        return ws.protocol.state is State.OPEN and not ws.paused

    def write_nowait(self, frames: list[bytes]) -> None:
        # Like websockets.broadcast(): queue every frame on the protocol and
        # hand the bytes to the transport in one go, without awaiting.
        ws = self.ws
        if ws.protocol.state is not State.OPEN:
            raise ConnectionError("websocket is not open")
        send_text = ws.protocol.send_text
        for frame in frames:
            send_text(frame)
        ws.send_data()

    async def send(self, frames: list[bytes]) -> None:
        self.write_nowait(frames)
        await self.ws.drain()  # the connection's flow control (write_limit)

    async def messages(self) -> AsyncIterator[bytes | str]:
        recv = self.ws.recv
        try:
            while True:
                yield await recv(decode=False)
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code not in NORMAL_CLOSE_CODES:
                raise LinkClosedError(exc.rcvd.code, exc.rcvd.reason) from None

    def transport_buffered(self) -> int:
        transport = self.ws.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        # A peer that stopped reading never lets the close frame out (websockets
        # waits for the write buffer to drain first): bound the handshake, then
        # drop the TCP connection.
        try:
            await asyncio.wait_for(self.ws.close(code, reason), self.close_timeout)
        except Exception:
            transport = self.ws.transport
            if transport is not None:
                transport.abort()


class StarletteLink:
    """A Starlette/FastAPI ``WebSocket`` (any ASGI server)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, frames: list[bytes]) -> None:
        send_text = self.ws.send_text
        for frame in frames:
            await send_text(frame.decode())

    async def messages(self) -> AsyncIterator[bytes | str]:
        receive = self.ws.receive
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes")
            if data is not None:
                yield data

    def transport_buffered(self) -> int:
        return 0  # the ASGI server applies flow control inside send()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)


class AiohttpLink:
    """An aiohttp ``web.WebSocketResponse`` that the caller has prepared."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, frames: list[bytes]) -> None:
        send_str = self.ws.send_str
        for frame in frames:
            await send_str(frame.decode())

    async def messages(self) -> AsyncIterator[bytes | str]:
        from aiohttp import WSMsgType

        while True:
            message = await self.ws.receive()
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                yield message.data
            elif (
                message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)
                or message.type == WSMsgType.ERROR
            ):
                return

    def transport_buffered(self) -> int:
        return 0  # aiohttp drains inside send_str()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=reason.encode())


def adapt_connection(connection: Any, **peer: Any) -> tuple[HubLink, dict[str, Any]]:
    """Wrap a server-side WebSocket of a supported framework as a ``HubLink``."""
    if isinstance(connection, ServerConnection | ClientConnection):
        request = getattr(connection, "request", None)
        info = {
            "remote_address": _address(connection.remote_address),
            "path": request.path if request is not None else None,
            "headers": dict(request.headers) if request is not None else {},
        }
        link: HubLink = WebsocketsLink(connection)
    elif hasattr(connection, "application_state") and hasattr(connection, "send_text"):
        client = getattr(connection, "client", None)
        info = {
            "remote_address": None if client is None else f"{client.host}:{client.port}",
            "path": connection.url.path,
            "headers": dict(connection.headers),
        }
        link = StarletteLink(connection)
    elif hasattr(connection, "send_str") and hasattr(connection, "prepare"):
        request = peer.pop("request", None)
        info = {
            "remote_address": None if request is None else request.remote,
            "path": None if request is None else request.path,
            "headers": {} if request is None else dict(request.headers),
        }
        link = AiohttpLink(connection)
    else:
        raise TypeError(
            f"unsupported connection type {type(connection).__qualname__}: expected a "
            "websockets, Starlette/FastAPI or aiohttp WebSocket"
        )
    info.update({k: v for k, v in peer.items() if v is not None})
    return link, info


class WebSocketHub(HubTarget):
    """A WebSocket hub: standalone server (``start()``) and/or framework-mounted
    connections (``serve_connection`` / ``add_connection``)."""

    transport_name = "ws-hub"

    def __init__(
        self,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        path: str = "/",
        ssl: ssl_module.SSLContext | None = None,
        authenticate: Authenticate | None = None,
        serve: bool = True,
        close_timeout: float = 2.0,
        ping_interval: float | None = 20.0,
        **hub_options: Any,
    ) -> None:
        super().__init__(**hub_options)
        self.host = host
        self.port = port
        self.path = path
        self._ssl = ssl
        self._authenticate = authenticate
        self._serve = serve
        self._close_timeout = close_timeout
        self._ping_interval = ping_interval
        self._server: Server | None = None
        self._url: str | None = None
        self._mounted: dict[Any, asyncio.Task[None]] = {}

    @property
    def url(self) -> str:
        """The ``ws://`` (or ``wss://``) URL actually bound, once started."""
        if self._url is None:
            raise RuntimeError("hub is not serving: call start() (or use async with)")
        return self._url

    async def _start_transport(self) -> None:
        if self._serve:
            self._server = await serve(
                self._handle,
                self.host,
                self.port,
                process_request=self._process_request,
                max_size=self.max_frame_bytes,
                compression=None,  # per-connection deflate would defeat encode-once (H3)
                ssl=self._ssl,
                close_timeout=self._close_timeout,
                ping_interval=self._ping_interval,
            )
            host, port = self._server.sockets[0].getsockname()[:2]
            host = f"[{host}]" if ":" in host else host
            scheme = "wss" if self._ssl is not None else "ws"
            self._url = f"{scheme}://{host}:{port}{self.path}"

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path = urlsplit(request.path).path
        if self.path not in ("", "*") and path != self.path:
            return connection.respond(404, "Not Found\n")
        if self._authenticate is None:
            return None
        info = HttpRequestInfo(
            path=request.path,
            headers=dict(request.headers),
            remote_address=_address(connection.remote_address),
        )
        try:
            verdict = self._authenticate(info)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception:
            logger.exception("authenticate raised; refusing the connection")
            verdict = False
        if verdict is True:
            return None
        status = verdict if isinstance(verdict, int) and verdict not in (0, 1) else 403
        return connection.respond(status, "Unauthorized\n" if status == 401 else "Forbidden\n")

    async def _handle(self, connection: ServerConnection) -> None:
        await self.serve_connection(connection)

    async def serve_connection(self, connection: Any, **peer: Any) -> None:
        """Serve an accepted WebSocket until it closes (for a framework's handler).

        Starlette sockets not yet accepted are accepted here. The caller keeps
        ownership of the socket: it is closed only on backpressure (B8), on
        hub close, or by its own peer.
        """
        if hasattr(connection, "application_state"):
            from starlette.websockets import WebSocketState

            if connection.application_state == WebSocketState.CONNECTING:
                await connection.accept()
        link, info = adapt_connection(connection, **peer)
        await self.serve_link(link, {"transport": "ws", **info})

    def add_connection(self, connection: Any, **peer: Any) -> None:
        """Start serving ``connection`` in the background (H4)."""
        if self._closed:
            raise TargetClosedError("hub is closed")
        if connection in self._mounted:
            return
        task = asyncio.get_running_loop().create_task(self.serve_connection(connection, **peer))
        self._mounted[connection] = task
        task.add_done_callback(lambda _: self._mounted.pop(connection, None))

    def remove_connection(self, connection: Any) -> None:
        """Stop serving ``connection`` without closing it; repeated calls are no-ops (H4)."""
        for conn, link in list(self._links.items()):
            if getattr(link, "ws", None) is connection:
                self._forget(conn)
        task = self._mounted.pop(connection, None)
        if task is not None:
            task.cancel()

    async def wait_closed(self, connection: Any) -> None:
        """Wait until a connection given to ``add_connection`` stops being served."""
        task = self._mounted.get(connection)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=False)
        await super()._stop_accepting()

    async def _finish_close(self) -> None:
        await super()._finish_close()
        for task in list(self._mounted.values()):
            task.cancel()
        await asyncio.gather(*self._mounted.values(), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


class WebSocketSpoke(SpokeTarget):
    """A spoke connected to a WebSocket hub, reconnecting by itself (B7)."""

    transport_name = "ws-spoke"

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        ssl: ssl_module.SSLContext | None = None,
        ping_interval: float | None = 20.0,
        **spoke_options: Any,
    ) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in ("ws", "wss"):
            raise ValueError(f"ws-spoke needs a ws:// or wss:// URL, not {url!r}")
        super().__init__(**spoke_options)
        self.url = url
        self._headers = dict(headers or {})
        self._ssl = ssl
        self._ping_interval = ping_interval

    async def _open_link(self) -> SpokeLink:
        try:
            ws = await connect(
                self.url,
                additional_headers=self._headers,
                max_size=self._forwarder.max_frame_bytes,
                compression=None,
                open_timeout=None,  # bounded by connect_timeout in the supervisor
                ssl=self._ssl,
                ping_interval=self._ping_interval,
                close_timeout=2.0,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise ConnectionRefusedByHubError(
                    f"hub at {self.url} refused the connection: HTTP {status}"
                ) from exc
            raise
        return WebsocketsLink(ws)
