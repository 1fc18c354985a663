"""WebSocket transport: ``ws-hub`` and ``ws-spoke`` on the ``websockets`` library.

Framing is SPEC F1: one text message = one JSON envelope. Everything about
subscriptions, relaying, reconnects and backpressure lives in the shared
shells (``HubTarget``, ``SpokeTarget``) and the sans-I/O core; this module only
moves messages. The standalone server is an acceptor like Iroh's; connections
accepted by Starlette/FastAPI or aiohttp are served through the same links (H4).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import ipaddress
import logging
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    NegotiationError,
)
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from ..core.close import NORMAL_CLOSE_CODES, CloseCode
from ..core.codec import DEFAULT_MAX_FRAME_BYTES
from ..core.errors import (
    ConnectionLostError,
    ConnectionRefusedByHubError,
    FramingError,
    LinkClosedError,
    TargetClosedError,
)
from ..core.headers import Headers
from .hub import Authenticate, ConnectRequest, HubTarget
from .link import Link
from .spoke import SpokeTarget
from .ws_backends import WsBackend, resolve_ws_backend

if TYPE_CHECKING:
    from .picows import PicowsAcceptor

__all__ = [
    "Authenticate",
    "ConnectRequest",
    "HttpRequestInfo",
    "TextFrameLink",
    "WebSocketAcceptor",
    "WebSocketHub",
    "WebSocketSpoke",
    "WebsocketsLink",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
#: The WebSocket subprotocol of protocol.md, negotiated when a client offers it.
SUBPROTOCOL: Final = "alkpubsub.v1"
#: Incoming frames websockets buffers per connection before it stops reading
#: the socket (each up to max_frame_bytes): part of the memory bound per peer.
RECEIVE_QUEUE_FRAMES = 4

#: The name ``authenticate`` hooks of earlier versions were typed with.
HttpRequestInfo = ConnectRequest


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
        protocol = ws.protocol
        send_text = protocol.send_text
        for frame in frames:
            send_text(frame)
        # One write (one system call) for the whole batch: websockets' own
        # send_data() writes each frame separately.
        chunks = protocol.data_to_send()
        if all(chunks):
            ws.transport.write(b"".join(chunks))
        else:  # an end of stream among them (not from send_text): its own path
            for chunk in chunks:
                if chunk:
                    ws.transport.write(chunk)
                elif ws.transport.can_write_eof():
                    ws.transport.write_eof()

    async def send(self, frames: list[bytes]) -> None:
        self.write_nowait(frames)
        try:
            await self.ws.drain()  # the connection's flow control (write_limit)
        except ConnectionClosed as exc:
            raise ConnectionError(f"websocket closed while sending: {exc}") from None

    async def messages(self) -> AsyncIterator[bytes | str]:
        # Text frames are decoded by websockets, which fails a frame of invalid
        # UTF-8 with 1007 (RFC 6455), as every ASGI server and aiohttp do for
        # mounted hubs; binary frames (F1) come as bytes.
        recv = self.ws.recv
        try:
            while True:
                yield await recv()
        except ConnectionClosed as exc:
            received, sent = exc.rcvd, exc.sent
            if received is None:
                if sent is not None and sent.code in NORMAL_CLOSE_CODES:
                    return  # we closed it ourselves
                if sent is not None:  # websockets failed it: 1007, 1009, 1002
                    raise FramingError(
                        f"{sent.reason or sent.code}", close_code=sent.code
                    ) from None
                raise ConnectionLostError(
                    f"WebSocket connection lost without a close ({exc})"
                ) from None
            if received.code not in NORMAL_CLOSE_CODES:
                raise LinkClosedError(received.code, received.reason) from None

    def transport_buffered(self) -> int:
        transport = self.ws.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    async def finish(self) -> None:
        """Return once everything sent left our buffers for the socket's (the
        hub uses this before cutting a slow consumer off: what reached the
        kernel still reaches a peer that reads again after the close timed out;
        what stayed here would be dropped with the connection)."""
        self.ws.transport.set_write_buffer_limits(high=0)  # drain() waits until empty
        await self.ws.drain()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        # A peer that stopped reading never lets the close frame out (websockets
        # waits for the write buffer to drain first): bound the handshake, then
        # drop the TCP connection.
        try:
            await asyncio.wait_for(self.ws.close(code, reason), self.close_timeout)
        except Exception:
            transport = self.ws.transport
            if transport is not None:
                transport.abort()


class TextFrameLink:
    """A framework's server-side WebSocket (Starlette/FastAPI, aiohttp) that
    sends text frames one at a time. The framework applies flow control inside
    its send call, so nothing stays buffered below us."""

    def __init__(
        self,
        ws: Any,
        send_text: Callable[[str], Awaitable[None]],
        receive: Callable[[], Awaitable[bytes | str | int | None]],
        close: Callable[[int, str], Awaitable[None]],
        max_frame_bytes: int,
    ) -> None:
        self.ws = ws
        self._send_text = send_text
        self._receive = receive
        self._close = close
        self.max_frame_bytes = max_frame_bytes

    async def send(self, frames: list[bytes]) -> None:
        send_text = self._send_text
        try:
            for frame in frames:
                await send_text(frame.decode())
        except Exception as exc:  # each framework has its own "closed" errors
            raise ConnectionError(f"websocket send failed: {exc!r}") from exc

    async def messages(self) -> AsyncIterator[bytes | str]:
        """Messages, checked against E6 as the standalone server does. A
        framework that ended the connection because of the client's bytes
        (it decodes text frames itself: invalid UTF-8 is its 1007) yields the
        close code as an int: a framing violation here too."""
        receive, limit = self._receive, self.max_frame_bytes
        while (message := await receive()) is not None:
            if isinstance(message, int):
                raise FramingError(f"the server closed the connection with {message}", message)
            if len(message) > limit // 4 and _size(message) > limit:
                raise FramingError(
                    f"frame of {_size(message)} bytes above max_frame_bytes={limit}",
                    CloseCode.MESSAGE_TOO_BIG,
                )
            yield message

    def transport_buffered(self) -> int:
        return 0

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        with contextlib.suppress(Exception):
            await self._close(code, reason)


def _size(message: bytes | str) -> int:
    return len(message) if isinstance(message, bytes) else len(message.encode("utf-8", "replace"))


#: Codes a framework closes with when the client's bytes are at fault.
_CLIENT_FAULT_CODES = frozenset(
    {CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_DATA, CloseCode.MESSAGE_TOO_BIG}
)


def _starlette_link(ws: Any, max_frame_bytes: int) -> TextFrameLink:
    async def receive() -> bytes | str | int | None:
        while True:
            message = await ws.receive()
            if message["type"] != "websocket.receive":
                code = message.get("code")
                return code if code in _CLIENT_FAULT_CODES else None
            data = message.get("text")
            if data is None:
                data = message.get("bytes")
            if data is not None:
                return data  # type: ignore[no-any-return]

    async def close(code: int, reason: str) -> None:
        await ws.close(code, reason)

    return TextFrameLink(ws, ws.send_text, receive, close, max_frame_bytes)


def _aiohttp_link(ws: Any, max_frame_bytes: int) -> TextFrameLink:
    from aiohttp import WSMsgType

    async def receive() -> bytes | str | int | None:
        message = await ws.receive()
        if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            return message.data  # type: ignore[no-any-return]
        code = ws.close_code
        if message.type is WSMsgType.ERROR or code in _CLIENT_FAULT_CODES:
            return int(code or CloseCode.PROTOCOL_ERROR)
        return None  # CLOSE, CLOSING, CLOSED

    async def close(code: int, reason: str) -> None:
        await ws.close(code=code, message=reason.encode())

    return TextFrameLink(ws, ws.send_str, receive, close, max_frame_bytes)


def _starlette_headers(connection: Any) -> Headers:
    return Headers(
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in connection.headers.raw
    )


def adapt_connection(
    connection: Any, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, **peer: Any
) -> tuple[Link, dict[str, Any]]:
    """Wrap a server-side WebSocket of a supported framework as a ``Link``."""
    link: Link
    if isinstance(connection, ServerConnection | ClientConnection):
        request = getattr(connection, "request", None)
        info = {
            "remote_address": _address(connection.remote_address),
            "path": request.path if request is not None else None,
            "headers": Headers(request.headers.raw_items()) if request is not None else Headers(),
        }
        link = WebsocketsLink(connection)
    elif hasattr(connection, "application_state") and hasattr(connection, "send_text"):
        client = getattr(connection, "client", None)
        info = {
            "remote_address": None if client is None else f"{client.host}:{client.port}",
            "path": connection.url.path,
            "headers": _starlette_headers(connection),
        }
        link = _starlette_link(connection, max_frame_bytes)
    elif hasattr(connection, "send_str") and hasattr(connection, "prepare"):
        request = peer.pop("request", None)
        info = {
            "remote_address": None if request is None else request.remote,
            "path": None if request is None else request.path,
            "headers": Headers() if request is None else Headers(request.headers.items()),
        }
        link = _aiohttp_link(connection, max_frame_bytes)
    else:
        raise TypeError(
            f"unsupported connection type {type(connection).__qualname__}: expected a "
            "websockets, Starlette/FastAPI or aiohttp WebSocket"
        )
    info.update({k: v for k, v in peer.items() if v is not None})
    return link, info


def _offered_subprotocols(lines: list[str]) -> tuple[str, ...]:
    return tuple(p.strip() for line in lines for p in line.split(",") if p.strip())


def _offers(request: Request, subprotocol: str) -> bool:
    return subprotocol in _offered_subprotocols(request.headers.get_all("Sec-WebSocket-Protocol"))


def _select_subprotocol(
    connection: ServerConnection, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    """``alkpubsub.v1`` when offered (other offered values, such as a token
    riding in a second subprotocol, are for ``authenticate``); none when the
    client offered none. A client that offers only others gets HTTP 400."""
    if SUBPROTOCOL in subprotocols:
        return Subprotocol(SUBPROTOCOL)
    if not subprotocols:
        return None
    raise NegotiationError(f"offer the {SUBPROTOCOL!r} subprotocol (got {list(subprotocols)})")


def _refusal(status: int) -> tuple[int, str]:
    if status == 401:
        return CloseCode.UNAUTHORIZED, "unauthorized"
    return CloseCode.FORBIDDEN, "forbidden"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class OriginPolicy:
    """Which web pages may open a WebSocket to the hub (cross-site WebSocket
    hijacking: a browser sends the cookies of the hub's site with a page of any
    site). ``None`` allows every origin; otherwise exact origins
    (``"https://app.example.com"``) and shell-style patterns
    (``"https://*.example.com"``), compared case-insensitively. Requests without
    an ``Origin`` header (non-browser clients, which could forge it anyway) are
    allowed."""

    def __init__(self, allowed_origins: Iterable[str] | None) -> None:
        self.patterns = (
            None if allowed_origins is None else [o.lower().rstrip("/") for o in allowed_origins]
        )

    def allows(self, origin: str | None) -> bool:
        if self.patterns is None or origin is None:
            return True
        origin = origin.lower().rstrip("/")
        return any(fnmatch.fnmatchcase(origin, pattern) for pattern in self.patterns)


class WebSocketAcceptor:
    """The standalone WebSocket server of a hub (``websockets.serve``).

    Refuses other paths with HTTP 404, pages of origins the hub does not allow
    with 403, and runs the hub's ``authenticate`` policy before the upgrade: a
    refused browser (a request with an ``Origin``) gets its WebSocket and then
    close code 4401/4403, which it can tell from an outage (it never sees an
    HTTP status); any other client gets HTTP 401/403.
    """

    def __init__(
        self,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        path: str = "/",
        ssl: ssl_module.SSLContext | None = None,
        close_timeout: float = 2.0,
        ping_interval: float | None = 20.0,
        allowed_origins: Iterable[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self._ssl = ssl
        self._close_timeout = close_timeout
        self._ping_interval = ping_interval
        self.origins = OriginPolicy(allowed_origins)
        self._server: Server | None = None
        self._hub: HubTarget | None = None
        self.url: str | None = None
        # Browsers refused by authenticate: closed in band once upgraded.
        self._refused: dict[ServerConnection, int] = {}
        #: Answers plain HTTP requests (health, metrics: ``alkpubsub.metrics``)
        #: before any upgrade; returns None to let a request through.
        self.http_handler: Callable[[ServerConnection, Request], Response | None] | None = None

    async def start(self, hub: HubTarget) -> None:
        self._hub = hub
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=hub.max_frame_bytes,
            compression=None,  # per-connection deflate would defeat encode-once (H3)
            ssl=self._ssl,
            close_timeout=self._close_timeout,
            ping_interval=self._ping_interval,
            max_queue=RECEIVE_QUEUE_FRAMES,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            select_subprotocol=_select_subprotocol,
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        if hub.authenticate is None and self.origins.patterns is None and not _loopback(host):
            logger.warning(
                "WebSocket hub listens on %s with neither authenticate nor allowed_origins: "
                "any client, and any web page a browser on the network opens, can connect",
                host,
            )
        host = f"[{host}]" if ":" in host else host
        scheme = "wss" if self._ssl is not None else "ws"
        self.url = f"{scheme}://{host}:{port}{self.path}"

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        if self.http_handler is not None and (response := self.http_handler(connection, request)):
            return response
        path = urlsplit(request.path).path
        if self.path not in ("", "*") and path != self.path:
            return connection.respond(404, "Not Found\n")
        origin = request.headers.get("Origin")
        if not self.origins.allows(origin):
            logger.warning("refused a WebSocket from origin %r", origin)
            return connection.respond(403, "Origin not allowed\n")
        assert self._hub is not None
        status = await self._hub.admit(
            ConnectRequest(
                path=request.path,
                headers=Headers(request.headers.raw_items()),
                remote_address=_address(connection.remote_address),
                transport="ws",
                subprotocols=_offered_subprotocols(
                    request.headers.get_all("Sec-WebSocket-Protocol")
                ),
            )
        )
        if status is None:
            return None
        if origin is not None and _offers(request, SUBPROTOCOL):
            self._refused[connection] = status  # a browser: refuse in band
            return None
        return connection.respond(status, "Unauthorized\n" if status == 401 else "Forbidden\n")

    async def _handle(self, connection: ServerConnection) -> None:
        assert self._hub is not None
        status = self._refused.pop(connection, None)
        if status is not None:
            await connection.close(*_refusal(status))
            return
        link, info = adapt_connection(connection, self._hub.max_frame_bytes)
        with contextlib.suppress(TargetClosedError):
            # process_request ran the hub's authenticate policy already.
            await self._hub.serve_link(link, {"transport": "ws", **info}, authenticated=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=False)

    async def release(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()


def _acceptor_class(
    backend: str,
) -> type[WebSocketAcceptor] | type[PicowsAcceptor]:
    """Backend hook: the standalone server of a hub on ``backend``."""
    if backend == "picows":
        from .picows import PicowsAcceptor

        return PicowsAcceptor
    return WebSocketAcceptor


class WebSocketHub(HubTarget):
    """A WebSocket hub: a standalone server (``serve=True``) and/or
    framework-mounted connections (``serve_connection`` / ``add_connection``)."""

    transport_name = "ws-hub"

    def __init__(
        self,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        path: str = "/",
        ssl: ssl_module.SSLContext | None = None,
        authenticate: Authenticate | None = None,
        allowed_origins: Iterable[str] | None = None,
        serve: bool = True,
        close_timeout: float = 2.0,
        ping_interval: float | None = 20.0,
        health_path: str | None = None,
        metrics_path: str | None = None,
        backend: WsBackend = "auto",
        **hub_options: Any,
    ) -> None:
        super().__init__(close_timeout=close_timeout, authenticate=authenticate, **hub_options)
        self.path = path
        self.origins = OriginPolicy(allowed_origins)
        self.server: WebSocketAcceptor | PicowsAcceptor | None = None
        # Backend hook (docs/websocket.md, "Backends"): the library of the own server.
        self.backend = resolve_ws_backend(backend)
        if serve:
            self.server = _acceptor_class(self.backend)(
                host=host,
                port=port,
                path=path,
                ssl=ssl,
                close_timeout=close_timeout,
                ping_interval=ping_interval,
                allowed_origins=allowed_origins,
            )
            self.add_acceptor(self.server)
            if health_path is not None or metrics_path is not None:
                from ..metrics import websockets_http_handler

                self.server.http_handler = websockets_http_handler(
                    self, health_path=health_path, metrics_path=metrics_path
                )
        self._mounted: dict[Any, asyncio.Task[None]] = {}

    @property
    def url(self) -> str:
        """The ``ws://`` (or ``wss://``) URL actually bound, once started."""
        if self.server is None or self.server.url is None:
            raise RuntimeError("hub is not serving: call start() (or use async with)")
        return self.server.url

    async def serve_connection(self, connection: Any, **peer: Any) -> None:
        """Serve an accepted WebSocket until it closes (for a framework's handler).

        The hub's policies apply as on its own server: allowed origins,
        ``authenticate`` (a refused browser gets 4401/4403 in band), and the
        ``alkpubsub.v1`` subprotocol. Starlette sockets not yet accepted are
        accepted here (with that subprotocol when offered); an aiohttp
        ``WebSocketResponse`` is prepared by the caller (give it
        ``protocols=["alkpubsub.v1"]``). The caller keeps ownership of the
        socket: it is closed only on backpressure (B8), on a protocol
        violation, on a refusal, on hub close, or by its own peer.
        """
        link, info = adapt_connection(connection, self.max_frame_bytes, **peer)
        info = {"transport": "ws", **info}
        request = ConnectRequest(**info)
        origin = request.headers.get("Origin")
        allowed = self.origins.allows(origin)
        status = await self.admit(request) if allowed else 403
        if hasattr(connection, "application_state"):
            from starlette.websockets import WebSocketState

            if connection.application_state == WebSocketState.CONNECTING:
                offered = tuple(connection.scope.get("subprotocols", ()))
                if status is not None and (not allowed or origin is None):
                    await connection.close(_refusal(status)[0])  # before accepting: HTTP 403
                    return
                await connection.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        if status is not None:
            await link.close(*_refusal(status))
            return
        await self.serve_link(link, info, authenticated=True)

    def add_connection(self, connection: Any, **peer: Any) -> None:
        """Start serving ``connection`` in the background (H4)."""
        if self._closed:
            raise TargetClosedError("hub is closed")
        if connection in self._mounted:
            return
        task = self.spawn(self.serve_connection(connection, **peer))
        self._mounted[connection] = task
        task.add_done_callback(lambda _: self._mounted.pop(connection, None))

    def remove_connection(self, connection: Any) -> None:
        """Stop serving ``connection`` without closing it; repeated calls are no-ops (H4)."""
        for conn, served in list(self._served.items()):
            if getattr(served.link, "ws", None) is connection:
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


class WebSocketSpoke(SpokeTarget):
    """A spoke connected to a WebSocket hub, reconnecting by itself (B7)."""

    transport_name = "ws-spoke"
    url_schemes: ClassVar[tuple[str, ...]] = ("ws", "wss")

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        ssl: ssl_module.SSLContext | None = None,
        ping_interval: float | None = 20.0,
        backend: WsBackend = "auto",
        **spoke_options: Any,
    ) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in self.url_schemes:
            raise ValueError(f"ws-spoke needs a ws:// or wss:// URL, not {url!r}")
        super().__init__(**spoke_options)
        self.url = url
        self._headers = dict(headers or {})
        self._ssl = ssl
        self._ping_interval = ping_interval
        self.backend = resolve_ws_backend(backend)  # backend hook (docs/websocket.md)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> WebSocketSpoke:
        return cls(url, **options)

    async def open_link(self) -> Link:
        if self.backend == "picows":  # backend hook (docs/websocket.md, "Backends")
            from .picows import open_picows_link

            return await open_picows_link(
                self.url,
                max_frame_bytes=self.max_frame_bytes,
                headers=self._headers,
                ssl=self._ssl,
                ping_interval=self._ping_interval,
                handshake_timeout=self.connect_timeout,
            )
        tls: dict[str, Any] = {} if self._ssl is None else {"ssl": self._ssl}
        try:
            ws = await connect(
                self.url,
                additional_headers=self._headers,
                max_size=self.max_frame_bytes,
                compression=None,
                open_timeout=None,  # bounded by connect_timeout in the supervisor
                ping_interval=self._ping_interval,
                close_timeout=2.0,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                **tls,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise ConnectionRefusedByHubError(
                    f"hub at {self.url} refused the connection: HTTP {status}"
                ) from exc
            raise ConnectionError(f"hub at {self.url} answered HTTP {status}") from exc
        except InvalidHandshake as exc:
            raise ConnectionError(f"WebSocket handshake with {self.url} failed: {exc}") from exc
        return WebsocketsLink(ws)
