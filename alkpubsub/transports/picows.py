"""The picows backend of ``ws-hub`` and ``ws-spoke`` (``alkpubsub[fast]``).

picows parses WebSocket frames in Cython and calls a listener synchronously
for each one; its ``send`` tries the system call at once. This module turns
that into the same ``Link`` as ``WebsocketsLink`` (same close codes, same
errors, same flow control), so the hub and spoke shells and everything above
them are unchanged. ``WebSocketHub(backend=...)`` and
``WebSocketSpoke(backend=...)`` choose it (``alkpubsub.transports.ws_backends``).

- Receiving: frames are copied out of picows's buffer into a queue that
  ``messages()`` drains; past ``RECEIVE_QUEUE_BYTES`` the socket is not read
  until the application caught up, so memory per connection stays bounded.
  A spoke's reader takes them straight from ``on_ws_frame`` instead
  (``push_to``, a ``PushLink``): no queue and no task switch per message.
  Fragmented messages are reassembled (picows hands continuation frames over
  raw) and held to ``max_frame_bytes`` as a whole (E6, close code 1009).
- Writing: every frame queued for a connection goes out in one transport
  write, framed here (a client's frames masked with websockets' C helper)
  rather than one picows ``send`` system call per frame. Buffering below is
  asyncio's: the hub
  counts it (``transport_buffered``, B8) and stops writing at the transport's
  high-water mark (``writable_now``).
- Closing: picows does not answer a close frame by itself; the link does.
- The upgrade: the hub's ``authenticate`` policy may be a coroutine, but
  picows decides an upgrade synchronously. So a small protocol reads the HTTP
  request head first (health and metrics paths, path check: 404, allowed
  origins: 403, ``hub.admit``: 401/403, all before any WebSocket frame) and
  then hands the connection, and the bytes it read, to picows's own protocol,
  which answers 101 (with the ``alkpubsub.v1`` subprotocol when offered). A
  refused browser that speaks that subprotocol is refused in band (4401/4403).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import logging
import os
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, ClassVar, Final, cast
from urllib.parse import urlsplit

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSHandshakeError,
    WSListener,
    WSMsgType,
    WSProtocolError,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_connect,
)
from picows.picows import WSProtocol  # type: ignore[attr-defined]  # not re-exported
from websockets.datastructures import Headers as HttpHeaders
from websockets.http11 import Request, Response

try:  # websockets' C helper; its pure Python twin where it was not built
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

from ..core.close import NORMAL_CLOSE_CODES, CloseCode
from ..core.errors import (
    ConnectionLostError,
    ConnectionRefusedByHubError,
    FramingError,
    LinkClosedError,
    TargetClosedError,
)
from ..core.headers import Headers
from ..metrics import HttpHandler
from .hub import ConnectRequest, HubTarget
from .ws import SUBPROTOCOL, OriginPolicy, _address, _offered_subprotocols

__all__ = [
    "RECEIVE_QUEUE_BYTES",
    "SUBPROTOCOL",
    "OriginPolicy",
    "PicowsAcceptor",
    "PicowsLink",
    "open_picows_link",
]

logger = logging.getLogger(__name__)

#: Received bytes queued per connection before it stops reading the socket:
#: with the frame being read (up to max_frame_bytes), the memory bound per peer.
RECEIVE_QUEUE_BYTES: Final = 256 * 1024
_RESUME_READING_BYTES: Final = RECEIVE_QUEUE_BYTES // 4
#: picows's read buffer per connection to start with: it doubles whenever a read
#: nearly fills it, so busy connections read in large chunks and idle ones stay small.
READ_BUFFER_BYTES: Final = 4096
#: The largest HTTP request head the hub reads before an upgrade.
MAX_REQUEST_HEAD_BYTES: Final = 16 * 1024
#: Time a client has to send its whole upgrade request (websockets' open_timeout).
DEFAULT_OPEN_TIMEOUT: Final = 10.0

_TEXT: Final = WSMsgType.TEXT
_BINARY: Final = WSMsgType.BINARY
_CONTINUATION: Final = WSMsgType.CONTINUATION
_CLOSE: Final = WSMsgType.CLOSE
#: Close codes picows sends itself when the peer broke the protocol.
_VIOLATION_CODES: Final = frozenset(
    {
        CloseCode.PROTOCOL_ERROR,
        CloseCode.UNSUPPORTED_DATA,
        CloseCode.INVALID_DATA,
        CloseCode.MESSAGE_TOO_BIG,
    }
)
#: RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code.
_MAX_CLOSE_REASON_BYTES: Final = 123
#: Text frame headers for payloads under 126 bytes: unmasked (server to
#: client) and masked (client to server, the 4-byte key follows).
_SHORT_TEXT_HEADERS: Final = tuple(bytes((0x81, size)) for size in range(126))
_SHORT_MASKED_TEXT_HEADERS: Final = tuple(bytes((0x81, 0x80 | size)) for size in range(126))
_PICOWS_SERVER_LOGGER: Final = logging.getLogger("picows.server")


def _text_frame_header(size: int, *, masked: bool = False) -> bytes:
    """The header of an unfragmented text frame (RFC 6455 §5.2), without the
    masking key that follows it in a client's frame."""
    mask_bit = 0x80 if masked else 0
    if size < 126:
        return bytes((0x81, mask_bit | size))
    if size < 65536:
        return bytes((0x81, mask_bit | 126)) + size.to_bytes(2, "big")
    return bytes((0x81, mask_bit | 127)) + size.to_bytes(8, "big")


def _check_utf8(message: bytes) -> None:
    try:
        message.decode()
    except UnicodeDecodeError:
        raise WSProtocolError(WSCloseCode.INVALID_TEXT, "invalid UTF-8 in a text frame") from None


def _close_reason(reason: str) -> bytes:
    """``reason`` cut to what a close frame carries, on a character boundary."""
    return reason.encode()[:_MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore").encode()


class PicowsLink(WSListener):
    """A picows connection, client or server side: the picows listener of the
    connection and its ``Link`` (a ``SyncWritableLink``)."""

    #: Fail a text message of invalid UTF-8 with 1007 (RFC 6455 §8.1), as the
    #: websockets backend and every ASGI server do; off, such a message reaches
    #: the hub or spoke, which drops and counts it like any undecodable one (B10).
    validate_utf8: ClassVar[bool] = True

    def __init__(self, max_frame_bytes: int, close_timeout: float = 2.0) -> None:
        super().__init__()
        self.max_frame_bytes = max_frame_bytes
        self.close_timeout = close_timeout
        self.transport: WSTransport | None = None
        self._underlying: asyncio.Transport | None = None
        self._server_side = False
        self._received: deque[bytes] = deque()
        self._push: Callable[[bytes], None] | None = None  # push_to's reader
        self._received_bytes = 0
        self._reading_paused = False
        self._receiver: asyncio.Future[None] | None = None  # messages() waiting
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0
        self._fragments_text = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._close_sent: int | None = None  # the code close() sent
        self._failure: BaseException | None = None  # a bug in on_ws_frame
        self._ended = False
        self._outcome: BaseException | None = None  # what messages() raises at the end
        self._disconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: Its dial was given up on (cancelled): never used, disconnected once up.
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True
        if self.transport is not None:
            self.transport.disconnect()

    @property
    def received_bytes(self) -> int:
        """Bytes received and not yet taken by ``messages()``."""
        return self._received_bytes

    @property
    def reading_paused(self) -> bool:
        """The socket is not read until ``messages()`` catches up."""
        return self._reading_paused

    # -- picows callbacks (synchronous, on the loop) -------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self._underlying = transport.underlying_transport
        self._server_side = not transport.is_client_side
        if self.abandoned:
            transport.disconnect()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        try:
            msg_type = frame.msg_type
            if msg_type is _TEXT or msg_type is _BINARY:
                if transport.is_close_frame_sent and self._close_sent is None:
                    # picows is closing the connection for a protocol violation
                    # (e.g. the rest of a frame above max_frame_bytes): drop it.
                    return
                if frame.fin and self._fragments is None:
                    message = frame.get_payload_as_bytes()
                    if msg_type is _TEXT and self.validate_utf8 and not message.isascii():
                        _check_utf8(message)
                    # _deliver's push check, inlined: this runs once per message.
                    push = self._push
                    if push is not None:
                        push(message)
                    else:
                        self._deliver(message)
                else:
                    self._fragments_text = msg_type is _TEXT
                    self._fragment(frame, first=True)
            elif msg_type is _CONTINUATION:
                self._fragment(frame, first=False)
            elif msg_type is _CLOSE:
                # picows does not answer a close frame: echo its code, then
                # close the TCP connection (RFC 6455 §5.5.1).
                if not transport.is_close_frame_sent:
                    code = frame.get_close_code()
                    transport.send_close(code if code.value else WSCloseCode.OK)
                transport.disconnect()
            # PING is answered by picows (enable_auto_pong); PONG needs nothing.
        except WSProtocolError:
            raise  # picows closes with its code
        except Exception as exc:
            self._failure = exc  # a bug: messages() raises it, picows closes with 1011
            raise

    def _fragment(self, frame: WSFrame, *, first: bool) -> None:
        """Reassemble a fragmented message (RFC 6455 §5.4), up to max_frame_bytes."""
        if first != (self._fragments is None):
            raise WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
        if first:
            self._fragments, self._fragments_size = [], 0
        assert self._fragments is not None
        self._fragments_size += frame.payload_size
        if self._fragments_size > self.max_frame_bytes:
            self._fragments = None
            raise WSProtocolError(
                WSCloseCode.MESSAGE_TOO_BIG,
                f"message above max_frame_bytes={self.max_frame_bytes}",
            )
        self._fragments.append(frame.get_payload_as_bytes())
        if frame.fin:
            message = b"".join(self._fragments)
            self._fragments = None
            if self._fragments_text and self.validate_utf8 and not message.isascii():
                _check_utf8(message)
            self._deliver(message)

    def _deliver(self, message: bytes) -> None:
        if self._push is not None:
            self._push(message)
            return
        self._received.append(message)
        self._received_bytes += len(message)
        receiver = self._receiver
        if receiver is not None and not receiver.done():
            receiver.set_result(None)
        if self._received_bytes > RECEIVE_QUEUE_BYTES and not self._reading_paused:
            self._reading_paused = True  # the application fell behind: stop reading
            assert self._underlying is not None
            self._underlying.pause_reading()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._ended = True
        self._outcome = self._end_reason(transport)
        if not self._disconnected.done():
            self._disconnected.set_result(None)
        for waiter in (self._receiver, self._drain_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _end_reason(self, transport: WSTransport) -> BaseException | None:
        """Why the connection ended, as ``WebsocketsLink`` reports it."""
        if self._failure is not None:
            return self._failure
        handshake = transport.close_handshake
        sent = None if handshake is None else handshake.sent
        received = None if handshake is None else handshake.recv
        if sent is not None and self._close_sent is None and not handshake.recv_then_sent:
            # picows closed it: the peer broke the protocol, or stopped answering pings.
            code = sent.code.value
            if code in _VIOLATION_CODES:
                return FramingError(sent.reason or f"WebSocket protocol violation ({code})", code)
            return ConnectionLostError(f"WebSocket connection closed locally with {code}")
        if received is not None:
            code = received.code.value or 1005  # a close frame without a code
            if code in NORMAL_CLOSE_CODES:
                return None
            return LinkClosedError(code, received.reason or "")
        if self._close_sent is not None and self._close_sent in NORMAL_CLOSE_CODES:
            return None  # we closed it ourselves
        return ConnectionLostError("WebSocket connection lost without a close")

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- Link ------------------------------------------------------------------------------

    def writable_now(self) -> bool:
        transport = self.transport
        return (
            not self._writing_paused
            and transport is not None
            and not transport.is_close_frame_sent
            and not transport.is_disconnected
        )

    def write_nowait(self, frames: list[bytes]) -> None:
        transport = self.transport
        if transport is None or transport.is_close_frame_sent or transport.is_disconnected:
            raise ConnectionError("websocket is not open")
        # Every frame in one transport write, framed here, instead of one
        # picows send (one system call) per frame.
        parts: list[bytes] = []
        append = parts.append
        if self._server_side:  # server frames are not masked
            headers = _SHORT_TEXT_HEADERS
            for frame in frames:
                size = len(frame)
                append(headers[size] if size < 126 else _text_frame_header(size))
                append(frame)
        else:  # client frames are masked, each with its own random key
            headers = _SHORT_MASKED_TEXT_HEADERS
            keys = os.urandom(4 * len(frames))
            for index, frame in enumerate(frames):
                size = len(frame)
                key = keys[4 * index : 4 * index + 4]
                append(headers[size] if size < 126 else _text_frame_header(size, masked=True))
                append(key)
                append(apply_mask(frame, key))
        assert self._underlying is not None
        self._underlying.writelines(parts)

    async def send(self, frames: list[bytes]) -> None:
        self.write_nowait(frames)
        while self._writing_paused and not self._ended:  # the transport's flow control
            waiter = self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None
        if self._ended:
            raise ConnectionError("websocket closed while sending")

    def push_to(self, receive: Callable[[bytes | str], None] | None) -> None:
        """From now on hand each message to ``receive`` from ``on_ws_frame``
        (what was queued first, in order); ``None``: queue them again. Nothing
        is queued meanwhile, so the socket is read at the reader's own pace."""
        self._push = receive
        if receive is None:
            return
        received = self._received
        while received and self._push is receive:
            message = received.popleft()
            self._received_bytes -= len(message)
            receive(message)
        if self._reading_paused and not received:
            self._reading_paused = False
            assert self._underlying is not None
            self._underlying.resume_reading()

    async def messages(self) -> AsyncIterator[bytes | str]:
        received = self._received
        while True:
            if received:
                message = received.popleft()
                self._received_bytes -= len(message)
                if self._reading_paused and self._received_bytes <= _RESUME_READING_BYTES:
                    self._reading_paused = False
                    assert self._underlying is not None
                    self._underlying.resume_reading()
                yield message
                continue
            if self._ended:
                if self._outcome is not None:
                    raise self._outcome
                return
            receiver = self._receiver = asyncio.get_running_loop().create_future()
            try:
                await receiver
            finally:
                self._receiver = None

    def transport_buffered(self) -> int:
        underlying = self._underlying
        return 0 if underlying is None else underlying.get_write_buffer_size()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        transport = self.transport
        if transport is None or self._ended:
            return
        try:
            if not transport.is_close_frame_sent:
                self._close_sent = code
                transport.send_close(WSCloseCode(code), _close_reason(reason))
            # The peer's answering close frame makes on_ws_frame disconnect. A
            # peer that stopped reading never lets our close frame out: bound
            # the handshake, then drop the TCP connection.
            await asyncio.wait_for(asyncio.shield(self._disconnected), self.close_timeout)
        except Exception:
            pass
        finally:
            if not self._ended:
                transport.disconnect(graceful=False)


# -- the spoke side ------------------------------------------------------------------------


async def open_picows_link(
    url: str,
    *,
    max_frame_bytes: int,
    headers: Mapping[str, str] | None = None,
    ssl: ssl_module.SSLContext | None = None,
    ping_interval: float | None = 20.0,
    handshake_timeout: float = DEFAULT_OPEN_TIMEOUT,
    close_timeout: float = 2.0,
) -> PicowsLink:
    """Connect to a WebSocket hub with picows; errors as ``WebSocketSpoke`` raises them."""

    made: list[PicowsLink] = []
    gave_up = False

    def listener_factory(request: WSUpgradeRequest, response: Any) -> PicowsLink:
        link = PicowsLink(max_frame_bytes, close_timeout)
        link.abandoned = gave_up
        made.append(link)
        return link

    keepalive: dict[str, Any] = {}
    if ping_interval is not None:
        keepalive = {
            "enable_auto_ping": True,
            "auto_ping_idle_timeout": ping_interval,
            "auto_ping_reply_timeout": ping_interval,
        }
    try:
        _, link = await ws_connect(
            listener_factory,
            url,
            ssl_context=ssl,
            extra_headers=dict(headers) if headers else None,
            max_frame_size=max_frame_bytes,
            # The caller bounds the whole attempt; this one frees the socket of
            # an attempt it gave up on (ws_connect does not on cancellation).
            websocket_handshake_timeout=handshake_timeout,
            read_buffer_init_size=READ_BUFFER_BYTES,
            # asyncio's (or uvloop's) own transports, as on the hub side and with
            # websockets: the same TLS errors and flow control everywhere.
            use_aiofastnet=False,
            **keepalive,
        )
    except asyncio.CancelledError:
        # ws_connect shields the upgrade: cancelled (connect_timeout, a staggered
        # dial that lost) while it is under way, it still completes, and that
        # connection would stay open, owned by nobody.
        gave_up = True
        for made_link in made:
            made_link.abandon()
        raise
    except WSHandshakeError as exc:
        status = None if exc.response is None else int(exc.response.status)
        if status in (401, 403):
            raise ConnectionRefusedByHubError(
                f"hub at {url} refused the connection: HTTP {status}"
            ) from exc
        if status is not None:
            raise ConnectionError(f"hub at {url} answered HTTP {status}") from exc
        raise ConnectionError(f"WebSocket handshake with {url} failed: {exc}") from exc
    return cast(PicowsLink, link)


# -- the hub side --------------------------------------------------------------------------


def _parse_request_head(head: bytes) -> tuple[str, str, list[tuple[str, str]]]:
    """Method, target and header lines of an HTTP/1.x request head; ValueError
    if it is not one."""
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, target, version = request_line.split(" ")
    # HTTP/1.0 too: nginx proxies plain requests (health, metrics) with it.
    if version not in ("HTTP/1.1", "HTTP/1.0") or not target.startswith("/"):
        raise ValueError(f"not an HTTP/1.x request: {request_line!r}")
    pairs = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise ValueError(f"bad header line {line!r}")
        pairs.append((name, value.strip(" \t")))
    return method, target, pairs


def _respond(status: int, text: str) -> Response:
    """A plain-text HTTP response, as websockets' ``connection.respond`` makes it."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:  # a status of the application's own
        phrase = "Refused" if 400 <= status < 500 else "Error"
    body = text.encode()
    headers = HttpHeaders(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", "text/plain; charset=utf-8"),
        ]
    )
    return Response(status, phrase, headers, body)


class _HttpConnection:
    """What an ``http_handler`` gets as its connection on this backend:
    ``respond(status, text)`` and ``remote_address``, as on websockets'."""

    def __init__(self, remote_address: Any) -> None:
        self.remote_address = remote_address

    def respond(self, status: int, text: str) -> Response:
        return _respond(status, text)


class _UpgradeGate(asyncio.Protocol):
    """A connection until its upgrade request is decided: reads the request
    head, answers or refuses it over HTTP, or hands the connection to picows."""

    def __init__(self, acceptor: PicowsAcceptor) -> None:
        self.acceptor = acceptor
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.deciding: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.handed_over = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.timer = asyncio.get_running_loop().call_later(
            self.acceptor.open_timeout, self.transport.abort
        )
        self.acceptor._gates.add(self)

    def data_received(self, data: bytes) -> None:
        self.head += data
        if self.deciding is not None:
            return  # more bytes after the head (pipelined): picows gets them too
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > MAX_REQUEST_HEAD_BYTES:
                self._answer(_respond(431, "Request Header Fields Too Large\n"))
            return
        assert self.transport is not None
        self.transport.pause_reading()
        self.deciding = asyncio.get_running_loop().create_task(self._decide(end))

    def eof_received(self) -> bool:
        return False  # the client gave up: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        if self.deciding is not None:
            self.deciding.cancel()

    def _forget(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.acceptor._gates.discard(self)

    def _answer(self, response: Response) -> None:
        assert self.transport is not None
        self.transport.write(response.serialize())
        self.transport.close()

    async def _decide(self, head_end: int) -> None:
        try:
            await self._decide_upgrade(head_end)
        except Exception:
            logger.exception("failed to serve a WebSocket upgrade request")
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            if self.handed_over:
                transport.abort()
            else:
                self._answer(_respond(500, "Internal Server Error\n"))

    async def _decide_upgrade(self, head_end: int) -> None:
        transport = self.transport
        acceptor = self.acceptor
        assert transport is not None
        assert acceptor.hub is not None
        try:
            method, target, pairs = _parse_request_head(bytes(self.head[:head_end]))
        except ValueError:
            self._answer(_respond(400, "Bad Request\n"))
            return
        remote_address = transport.get_extra_info("peername")
        if acceptor.http_handler is not None:
            request = Request(path=target, headers=HttpHeaders(pairs))
            connection = cast(Any, _HttpConnection(remote_address))
            response = acceptor.http_handler(connection, request)
            if response is not None:
                self._answer(response)
                return
        if method != "GET":
            self._answer(_respond(405, "Method Not Allowed\n"))
            return
        if acceptor.path not in ("", "*") and urlsplit(target).path != acceptor.path:
            self._answer(_respond(404, "Not Found\n"))
            return
        headers = Headers(pairs)
        origin = headers.get("Origin")
        if not acceptor.origins.allows(origin):
            logger.warning("refused a WebSocket from origin %r", origin)
            self._answer(_respond(403, "Origin not allowed\n"))
            return
        offered = _offered_subprotocols(headers.get_all("Sec-WebSocket-Protocol"))
        status = await acceptor.hub.admit(
            ConnectRequest(
                path=target,
                headers=headers,
                remote_address=_address(remote_address),
                transport="ws",
                subprotocols=offered,
            )
        )
        if transport.is_closing():
            return
        # A browser (it sends an Origin) never sees an HTTP status: it is
        # refused in band, with 4401/4403 once upgraded, if it speaks our protocol.
        in_band = status is not None and origin is not None and SUBPROTOCOL in offered
        if status is not None and not in_band:
            self._answer(_respond(status, "Unauthorized\n" if status == 401 else "Forbidden\n"))
            return
        if offered and SUBPROTOCOL not in offered:
            self._answer(_respond(400, f"offer the {SUBPROTOCOL!r} subprotocol\n"))
            return
        self._forget()
        info = {"path": target, "headers": headers, "remote_address": _address(remote_address)}
        self.handed_over = True
        acceptor._hand_over(
            transport,
            bytes(self.head),
            info,
            subprotocol=SUBPROTOCOL if offered else None,
            refused=status,
        )


class PicowsAcceptor:
    """The standalone WebSocket server of a hub, on picows: the counterpart of
    ``WebSocketAcceptor`` (same options, same refusals, same ``http_handler``)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        path: str = "/",
        ssl: ssl_module.SSLContext | None = None,
        close_timeout: float = 2.0,
        ping_interval: float | None = 20.0,
        open_timeout: float = DEFAULT_OPEN_TIMEOUT,
        allowed_origins: Iterable[str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self._ssl = ssl
        self._close_timeout = close_timeout
        self._ping_interval = ping_interval
        self.open_timeout = open_timeout
        self.origins = OriginPolicy(allowed_origins)
        self._server: asyncio.Server | None = None
        self.hub: HubTarget | None = None
        self.url: str | None = None
        #: Answers plain HTTP requests (health, metrics: ``alkpubsub.metrics``)
        #: before any upgrade; returns None to let a request through. Its
        #: connection argument has ``respond(status, text)`` and ``remote_address``.
        self.http_handler: HttpHandler | None = None
        self._gates: set[_UpgradeGate] = set()
        self._serving: set[asyncio.Task[None]] = set()

    async def start(self, hub: HubTarget) -> None:
        self.hub = hub
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _UpgradeGate(self), self.host, self.port, ssl=self._ssl
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        scheme = "wss" if self._ssl is not None else "ws"
        self.url = f"{scheme}://{host}:{port}{self.path}"
        logger.info("server listening on %s (picows)", self.url)

    def _hand_over(
        self,
        transport: asyncio.Transport,
        received: bytes,
        info: dict[str, Any],
        *,
        subprotocol: str | None = None,
        refused: int | None = None,
    ) -> None:
        """Give an accepted connection to picows: its protocol reads the upgrade
        request again (already decided: it gets the listener at once), answers
        101, and from then on calls the link for every frame. A connection
        ``refused`` in band is closed with 4401/4403 instead of being served."""
        assert self.hub is not None
        link = PicowsLink(self.hub.max_frame_bytes, self._close_timeout)
        extra = None if subprotocol is None else [("Sec-WebSocket-Protocol", subprotocol)]
        accepted = WSUpgradeResponseWithListener(
            WSUpgradeResponse.create_101_response(extra_headers=extra), link
        )
        ping = self._ping_interval
        protocol = WSProtocol(
            None,  # host and port: client side only
            None,  # path: client side only
            False,  # is_client_side
            lambda request: accepted,
            _PICOWS_SERVER_LOGGER,
            True,  # disconnect_on_exception
            None,  # handshake timeout: the request is already here
            ping is not None,  # enable_auto_ping
            ping or 20.0,  # auto_ping_idle_timeout
            ping or 20.0,  # auto_ping_reply_timeout
            WSAutoPingStrategy.PING_WHEN_IDLE,
            True,  # enable_auto_pong
            self.hub.max_frame_bytes,
            None,  # extra_headers: client side only
            READ_BUFFER_BYTES,  # read_buffer_init_size
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        view = memoryview(received)
        while view:
            buffer = protocol.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]
        transport.resume_reading()
        if link.transport is None:
            return  # picows refused the upgrade itself (a malformed one: HTTP 400)
        if refused is not None:
            code = CloseCode.UNAUTHORIZED if refused == 401 else CloseCode.FORBIDDEN
            closing = link.close(code, "unauthorized" if refused == 401 else "forbidden")
            task = asyncio.get_running_loop().create_task(closing)
        else:
            task = asyncio.get_running_loop().create_task(self._serve(link, info))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve(self, link: PicowsLink, info: dict[str, Any]) -> None:
        assert self.hub is not None
        try:
            # The gate ran the hub's authenticate policy already.
            await self.hub.serve_link(link, {"transport": "ws", **info}, authenticated=True)
        except TargetClosedError:
            await link.close(CloseCode.GOING_AWAY, "hub closing")
        finally:
            await link.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for gate in list(self._gates):  # upgrades not decided yet
            if gate.transport is not None:
                gate.transport.abort()

    async def release(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._serving, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
