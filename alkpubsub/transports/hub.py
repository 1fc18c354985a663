"""The hub shell shared by every hub transport.

``HubTarget`` = the core's ``HubRouter`` + any number of acceptors + one served
connection per link: a read loop that feeds the router and performs
authorization, writes of whatever the router queued for that connection, and
a sweep that ticks the router (heartbeats, session expiry). A transport
provides an ``Acceptor`` (its server or accept loop) that turns each accepted
connection into a ``Link`` and calls ``hub.serve_link``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core import control
from ..core.close import CloseCode
from ..core.codec import DEFAULT_MAX_FRAME_BYTES, encode_envelope
from ..core.envelope import Event, validate_topic
from ..core.errors import FramingError, TargetClosedError
from ..core.headers import Headers
from ..core.history import HistoryPolicy, HistoryStore
from ..core.listeners import Listener, ListenerErrorHandler
from ..core.queue import ControlFrame
from ..core.router import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_INVALID_FRAMES,
    DEFAULT_MAX_SUBSCRIPTION_BYTES,
    DEFAULT_MAX_TOPIC_BYTES,
    DEFAULT_MAX_TOPICS_PER_CONNECTION,
    DEFAULT_SESSION_GRACE,
    Action,
    ConnectionState,
    HubConnection,
    HubRouter,
    HubStats,
    Peer,
    PublishRequest,
    Resumed,
    SubscribeRequest,
)
from ..target import BaseEventTarget, call_user
from .bridge import BridgeTarget, HubBridge, StatusCallback
from .link import LINK_ERRORS, Link, SoonWriter, SyncWritableLink, write_loop

__all__ = ["Acceptor", "Authenticate", "Authorize", "ConnectRequest", "HubTarget"]

logger = logging.getLogger(__name__)

Authorize = Callable[[Peer, Action, str], bool | Awaitable[bool]]


@dataclass(frozen=True)
class ConnectRequest:
    """What ``authenticate`` sees of a connection before it is served: the
    upgrade request on WebSocket (path, headers with repeated values kept,
    offered subprotocols), the verified endpoint id on Iroh."""

    path: str | None = None
    headers: Mapping[str, str] = field(default_factory=Headers)
    remote_address: str | None = None
    transport: str = "ws"
    endpoint_id: str | None = None
    subprotocols: tuple[str, ...] = ()


#: ``True`` accepts; ``False`` refuses (forbidden); an int refuses with that HTTP
#: status (401, 403, ...). May be a coroutine function.
Authenticate = Callable[[ConnectRequest], bool | int | Awaitable[bool | int]]

#: How often the router is ticked: heartbeat checks and session expiry.
DEFAULT_TICK_INTERVAL = 1.0
#: How long a subscriber cut off for reading too slowly (1013) keeps its
#: connection to read what was sent before the cut and the ``__close`` that
#: says why (its buffers stay bounded by B8 meanwhile).
DEFAULT_SLOW_CONSUMER_LINGER = 10.0


class Acceptor(Protocol):
    """Accepts connections for a hub and serves each with ``hub.serve_link``
    (a WebSocket server, an Iroh endpoint's accept loop). Several acceptors on
    one hub make one bus across transports; the hub's ``authenticate`` policy
    applies to all of them (``serve_link`` runs it unless the acceptor did)."""

    async def start(self, hub: HubTarget) -> None:
        """Begin accepting; called by ``hub.start()``."""

    async def stop(self) -> None:
        """Stop accepting new connections (the hub then closes the served ones)."""

    async def release(self) -> None:
        """Release what it owns (sockets, endpoints), once every connection is gone."""


class _Served:
    """The shell's side of one served link."""

    __slots__ = (
        "_router",
        "announced",
        "closing",
        "conn",
        "link",
        "soon",
        "tasks",
        "wake",
    )

    def __init__(self, conn: HubConnection, link: Link, router: HubRouter) -> None:
        self.conn = conn  # a resume switches it to the session's connection
        self.link = link
        self.tasks: tuple[asyncio.Task[None], ...] = ()  # reader and writer
        self.closing: asyncio.Task[None] | None = None  # the hub closing the link
        self.wake = asyncio.Event()  # the writer task's
        self.announced = False  # on_connection was called for its spoke
        #: Where the link can write without awaiting: a write at the end of the
        #: loop iteration instead of a task switch per frame (set by the hub).
        self.soon: SoonWriter | None = None
        self._router = router

    def take(self, max_bytes: int | None) -> list[bytes]:
        """What the router queued for this link (nothing once it is cut off)."""
        conn = self.conn
        return self._router.take_outgoing(conn, max_bytes) if conn.open else []


class HubTarget(BaseEventTarget):
    """A hub: a ``TypedEventTarget`` whose listeners hear every spoke (H1, H2)."""

    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        max_topics_per_connection: int = DEFAULT_MAX_TOPICS_PER_CONNECTION,
        max_topic_bytes: int = DEFAULT_MAX_TOPIC_BYTES,
        max_subscription_bytes: int = DEFAULT_MAX_SUBSCRIPTION_BYTES,
        max_invalid_frames: int | None = DEFAULT_MAX_INVALID_FRAMES,
        session_grace: float = DEFAULT_SESSION_GRACE,
        tick_interval: float = DEFAULT_TICK_INTERVAL,
        history: Mapping[str, HistoryPolicy] | None = None,
        authenticate: Authenticate | None = None,
        authorize: Authorize | None = None,
        on_backpressure: Callable[[Peer, int], None] | None = None,
        on_connection: Callable[[Peer], None] | None = None,
        on_disconnection: Callable[[Peer], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_listener_error: ListenerErrorHandler | None = None,
        close_timeout: float = 2.0,
        bridge: BridgeTarget | str | None = None,
        on_bridge_status: StatusCallback | None = None,
        slow_consumer_linger: float = DEFAULT_SLOW_CONSUMER_LINGER,
    ) -> None:
        super().__init__()
        if close_timeout <= 0 or slow_consumer_linger <= 0:
            raise ValueError("close_timeout and slow_consumer_linger must be positive")
        self.close_timeout = close_timeout
        self.slow_consumer_linger = slow_consumer_linger
        self.router = HubRouter(
            max_frame_bytes=max_frame_bytes,
            max_buffered_bytes=max_buffered_bytes,
            max_topics_per_connection=max_topics_per_connection,
            max_topic_bytes=max_topic_bytes,
            max_subscription_bytes=max_subscription_bytes,
            max_invalid_frames=max_invalid_frames,
            session_grace=session_grace,
            tick_interval=tick_interval,
            history=None if not history else HistoryStore(history, tick_interval=tick_interval),
            on_listener_error=on_listener_error,
            schedule=self._scheduler,
        )
        self.max_frame_bytes = max_frame_bytes
        self.tick_interval = tick_interval
        self.authenticate = authenticate
        self._authorize = authorize
        self._on_backpressure = on_backpressure
        self._on_connection = on_connection
        self._on_disconnection = on_disconnection
        self._on_error = on_error
        self._served: dict[HubConnection, _Served] = {}
        # Our own tasks: each connection's reader and writer, link closes,
        # background serving, the sweep. serve_link itself runs in the
        # caller's task, which we never cancel.
        self._io_tasks: set[asyncio.Future[None]] = set()
        self._serving: set[asyncio.Future[None]] = set()
        self._closings: set[asyncio.Task[None]] = set()  # links the hub is closing
        self._acceptors: list[Acceptor] = []
        self._reported_bugs: set[type[BaseException]] = set()
        # -- bridge (SPEC H6): hubs on one broker form one bus; see transports/bridge.py
        self.bridge: HubBridge | None = None
        if bridge is not None:
            self.bridge = HubBridge(
                self.router,
                bridge,
                service=self._service,
                max_frame_bytes=max_frame_bytes,
                on_status=on_bridge_status,
            )

    def add_acceptor(self, acceptor: Acceptor) -> None:
        """Serve connections from ``acceptor`` too; call before ``start()``."""
        if self._started:
            raise RuntimeError("add acceptors before the hub starts")
        self._acceptors.append(acceptor)

    async def start(self) -> None:
        if self._closed:
            raise TargetClosedError("hub is closed")
        if self._started:
            return
        self._started = True
        self.spawn(self._sweep())
        try:
            if self.bridge is not None:  # H6
                await self.bridge.start()
            for acceptor in self._acceptors:
                await acceptor.start(self)
        except BaseException:
            await self.aclose()
            raise

    # -- observability --------------------------------------------------------------

    @property
    def stats(self) -> HubStats:
        return self.router.stats

    @property
    def peers(self) -> list[Peer]:
        """The spokes connected now (not sessions waiting for a resume)."""
        return [conn.peer for conn in self.router.attached]

    @property
    def listener_errors(self) -> int:
        return self.router.registry.listener_errors

    def listener_count(self, topic: str) -> int:
        """The hub's own local listeners for ``topic``."""
        return self.router.registry.count(topic)

    def subscribers(self, topic: str) -> list[Peer]:
        """The spokes subscribed to ``topic`` (sessions waiting for a resume included)."""
        return [conn.peer for conn in self.router.subscriptions.get(topic, {})]

    def topics(self) -> list[str]:
        """Every topic some spoke is subscribed to."""
        return list(self.router.subscriptions)

    async def disconnect_peer(
        self, spoke_id: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> bool:
        """Close one spoke's connection and end its session (it will reconnect
        if it wants to, as a new session)."""
        conn = self.router.connections.get(spoke_id)
        if conn is None:
            return False
        served = self._served.get(conn)
        detached = conn.state is ConnectionState.DETACHED
        self.router.close_connection(conn, code, reason or "disconnected by the hub")
        if detached:  # a session waiting for its spoke: it ends here
            self._disconnected(conn)
        self._service()
        if served is not None and served.closing is not None:
            await asyncio.shield(served.closing)
        return True

    # -- TypedEventTarget -------------------------------------------------------------

    def add_event_listener(self, topic: str, listener: Listener | None) -> None:
        if self._closed or listener is None:
            return
        self.router.add_listener(validate_topic(topic), listener)
        if self.bridge is not None:  # H6: local listeners count toward the bridge's interest
            self.bridge.service()

    def remove_event_listener(self, topic: str, listener: Listener | None) -> None:
        if not self._closed:
            self.router.remove_listener(topic, listener)
            if self.bridge is not None:  # H6
                self.bridge.service()

    def dispatch_event(self, event: Event) -> bool:
        if self._closed:
            raise TargetClosedError("hub is closed")
        if self.bridge is not None:  # H6: refuse before delivering anything (B13)
            self.bridge.check_capacity()
        result = self.router.dispatch(event)
        self._service()
        return result

    async def flush(self, timeout: float | None = None) -> None:
        """The subscription table is local to the hub: nothing to wait for (B4),
        except with a bridge (H6): until the broker confirmed it."""
        if self.bridge is not None and not self._closed:
            await self.bridge.flush(timeout)

    async def drain(self) -> None:
        """Slow subscribers are cut off (B8), so the hub never holds publishers
        back; only a bridge whose outbox is full does (H6)."""
        if self.bridge is not None:
            await self.bridge.drain()

    async def aclose(self) -> None:
        if not self._mark_closed():
            return
        for acceptor in self._acceptors:
            await acceptor.stop()
        for conn in list(self.router.connections.values()):
            detached = conn.state is ConnectionState.DETACHED
            self.router.close_connection(conn, CloseCode.GOING_AWAY, "hub closing")
            if detached:
                self._disconnected(conn)
        self._service()
        await asyncio.gather(*self._closings, return_exceptions=True)
        for task in list(self._io_tasks):
            task.cancel()
        # Every serve_link returns once its reader and writer are gone.
        await asyncio.gather(*self._serving, *self._io_tasks, return_exceptions=True)
        if self.bridge is not None:  # H6
            await self.bridge.aclose()
        self.router.close()
        for acceptor in self._acceptors:
            await acceptor.release()

    # -- serving one connection -----------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task the hub owns: cancelled and awaited on close."""
        task = asyncio.get_running_loop().create_task(coro)
        self._io_tasks.add(task)
        task.add_done_callback(self._io_tasks.discard)
        return task

    async def admit(self, request: ConnectRequest) -> int | None:
        """Run the hub's ``authenticate`` policy: None to accept, or the HTTP
        status of the refusal (401 or 403, ...). Acceptors that can refuse
        before a link exists (an HTTP upgrade) call this themselves."""
        if self.authenticate is None:
            return None
        try:
            verdict = self.authenticate(request)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception:
            logger.exception("authenticate raised; refusing the connection")
            verdict = False
        if verdict is True:
            return None
        status = verdict if isinstance(verdict, int) and verdict not in (0, 1) else 403
        logger.warning(
            "refused %s connection from %s: %d",
            request.transport,
            request.remote_address or request.endpoint_id,
            status,
        )
        return status

    async def serve_link(
        self, link: Link, peer_info: dict[str, Any], *, authenticated: bool = False
    ) -> None:
        """Serve ``link`` until it ends. The caller owns the link; the hub closes
        it only to cut a connection off (B8, B10), to refuse it (``authenticate``,
        unless the acceptor ran it already: ``authenticated=True``) or when the
        hub closes."""
        if self._closed:
            raise TargetClosedError("hub is closed")
        if not authenticated and self.authenticate is not None:
            status = await self.admit(ConnectRequest(**peer_info))
            if status is not None:
                code = CloseCode.UNAUTHORIZED if status == 401 else CloseCode.FORBIDDEN
                reason = "unauthorized" if status == 401 else "forbidden"
                # Announced first (protocol.md §4), for links without close codes.
                with contextlib.suppress(*LINK_ERRORS):
                    async with asyncio.timeout(self.close_timeout):
                        await link.send(
                            [ControlFrame(encode_envelope(control.close(code, reason)))]
                        )
                await link.close(code, reason)
                return
        peer = Peer(spoke_id=self.router.new_spoke_id(), **_peer_fields(peer_info))
        conn = self.router.connect(peer)
        served = self._served[conn] = _Served(conn, link, self.router)
        if isinstance(link, SyncWritableLink):
            served.soon = SoonWriter(
                link, served.wake, served.take, lambda: self._after_send(served.conn, link)
            )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._serving.add(done)
        writer = self.spawn(
            write_loop(
                link,
                served.wake,
                served.take,
                lambda: self._after_send(served.conn, link),
            )
        )
        reader = self.spawn(self._read_loop(served))
        served.tasks = (reader, writer)
        normal_close = False
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if (
                reader.done()
                and not reader.cancelled()
                and reader.exception() is None
                and served.closing is None
            ):
                normal_close = True  # the spoke closed normally: it does not come back
            for task in (reader, writer):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    self._link_failed(served.conn, task.exception())
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            # The finished tasks hold their exceptions, whose tracebacks hold the
            # link's frames; with served they form a cycle that would keep the
            # connection (for Iroh: its endpoint's socket) alive until the cyclic
            # garbage collector runs.
            served.tasks = ()
            closing, served.closing = served.closing, None
            # The router lets go of the link now: a session cut off for
            # silence (4408) or slowness (1013) can be resumed at once, not
            # only once a peer that does not answer let its close time out.
            self._link_ended(served, normal_close)
            if closing is not None:  # the hub is closing the link: let it finish
                await asyncio.gather(closing, return_exceptions=True)
            done.set_result(None)
            self._serving.discard(done)

    def _link_failed(self, conn: HubConnection, error: BaseException | None) -> None:
        if isinstance(error, FramingError):
            # B10: a framing violation closes only this connection.
            self.router.stats.invalid_frames += 1
            self.router.close_connection(conn, error.close_code, str(error))
        elif error is not None and not isinstance(error, LINK_ERRORS):
            self._report_bug(error)
            self.router.close_connection(conn, CloseCode.INTERNAL_ERROR, "internal error")
        self._service()

    def _link_ended(self, served: _Served, normal_close: bool) -> None:
        """The link is gone: its session waits for a resume, or the spoke is gone."""
        conn = served.conn
        if self._served.get(conn) is served:
            del self._served[conn]
        if self.router.connections.get(conn.spoke_id) is not conn:
            return  # already forgotten (remove_connection)
        if self.router.link_lost(conn, normal_close):
            logger.info("spoke %s lost its link; its session waits for a resume", conn.spoke_id)
        elif served.announced:
            self._disconnected(conn)

    def _forget(self, conn: HubConnection) -> None:
        """Stop serving ``conn`` without closing its link, and end its session."""
        served = self._served.pop(conn, None)
        if served is not None:
            for task in served.tasks:
                task.cancel()  # serve_link then returns
        if self.router.disconnect(conn) and (served is None or served.announced):
            self._disconnected(conn)

    def _disconnected(self, conn: HubConnection) -> None:
        code = conn.close_code
        logger.info(
            "spoke %s disconnected (%s)%s",
            conn.spoke_id,
            conn.peer.remote_address or conn.peer.endpoint_id or conn.peer.transport,
            "" if code is None else f" with {code}: {conn.close_reason}",
        )
        call_user(self._on_disconnection, conn.peer, log=logger)
        if self.bridge is not None:  # H6: its topics may have lost their last subscriber
            self.bridge.service()

    def _report_bug(self, error: BaseException) -> None:
        if type(error) not in self._reported_bugs:
            self._reported_bugs.add(type(error))
            logger.error("unexpected error while serving a connection", exc_info=error)
        call_user(self._on_error, error, log=logger)

    # -- the router's decisions -----------------------------------------------------------

    def _service(self) -> None:
        """Carry out what the router decided: write to connections whose queue
        became non-empty, close those it cut off."""
        router = self.router
        if router.ready:
            served_links = self._served
            for conn in router.take_ready():
                served = served_links.get(conn)
                if served is not None:
                    self._schedule_write(served)
        if router.cuts:
            for conn in router.take_cuts():
                self._cut(conn)
        if router.bridge_work and self.bridge is not None:  # H6
            self.bridge.service()

    def _schedule_write(self, served: _Served) -> None:
        """Write at the end of this loop iteration where the link can (see
        ``SoonWriter``), else wake the connection's writer task."""
        if served.soon is None:
            served.wake.set()
        else:
            served.soon.schedule()

    def _after_send(self, conn: HubConnection, link: Link) -> None:
        self.router.report_transport_buffered(conn, link.transport_buffered())
        if self.router.cuts:
            self._service()

    def _cut(self, conn: HubConnection) -> None:
        """The router cut ``conn`` off (B8, a heartbeat timeout, bad input,
        disconnect_peer, hub closing): report a slow consumer, then close its link."""
        code = conn.close_code
        if code is CloseCode.TRY_AGAIN_LATER:
            call_user(self._on_backpressure, conn.peer, conn.buffered_at_cut, log=logger)
        if code not in (CloseCode.GOING_AWAY, CloseCode.NORMAL):
            logger.warning("closing spoke %s with %s: %s", conn.spoke_id, code, conn.close_reason)
        served = self._served.get(conn)
        if served is not None and served.closing is None:
            # Taken now: the router may let go of the connection (a detached
            # session keeps only its data) before the link is closed.
            announcement = self.router.take_announcement(conn)
            closing = self.spawn(
                self._close_link(
                    served, announcement, conn.close_code or CloseCode.NORMAL, conn.close_reason
                )
            )
            served.closing = closing
            self._closings.add(closing)
            closing.add_done_callback(self._closings.discard)

    async def _close_link(
        self, served: _Served, announcement: list[bytes], code: int, reason: str
    ) -> None:
        """Stop the writer, send the router's ``__close`` announcement, then
        close the link with its code; bounded by ``close_timeout`` for a peer
        that stopped reading."""
        link = served.link
        writer = served.tasks[1] if len(served.tasks) > 1 else None
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        if announcement:
            # A slow consumer gets time to read what was already sent to it
            # and then the reason; anyone else gets the closing handshake's.
            slow = code == CloseCode.TRY_AGAIN_LATER
            linger = self.slow_consumer_linger if slow else self.close_timeout
            try:
                async with asyncio.timeout(linger):
                    await link.send(announcement)
                    finish = getattr(link, "finish", None)  # optional: see IrohLink.finish
                    if slow and finish is not None:
                        await finish()
            except LINK_ERRORS:
                pass  # the close below still tells the reason where the link can
        await link.close(code, reason)

    async def _read_loop(self, served: _Served) -> None:
        router, bridge = self.router, self.bridge
        async for message in served.link.messages():
            conn = served.conn
            request = router.receive(conn, message)
            # Neither the frame nor what was decoded from it (CPython objects
            # cost up to ~25 times their JSON) stays referenced while the loop
            # waits for the next frame: an idle connection pinned both.
            del message
            published = False
            if request is not None:
                if isinstance(request, Resumed):
                    self._resumed(served, request.session)
                elif self._authorize is None:
                    router.apply(conn, request)
                    published = isinstance(request, PublishRequest)
                else:
                    applied = await self._authorize_and_apply(conn, request)
                    published = applied and isinstance(request, PublishRequest)
                del request
            if not served.announced and conn.greeted and conn.open:
                self._announce(served)
            if router.ready or router.cuts or router.bridge_work:
                self._service()
            if published and bridge is not None and bridge.congested:
                # H6 backpressure: this spoke is read again once the broker
                # caught up, so its publisher slows down instead of the bridge
                # dropping what it sends.
                await bridge.relieved()

    def _announce(self, served: _Served) -> None:
        served.announced = True
        conn = served.conn
        logger.info(
            "spoke %s connected (%s)",
            conn.spoke_id,
            conn.peer.remote_address or conn.peer.endpoint_id or conn.peer.transport,
        )
        call_user(self._on_connection, conn.peer, log=logger)

    def _resumed(self, served: _Served, session: HubConnection) -> None:
        """This link now serves an earlier session of the same spoke."""
        self._served.pop(served.conn, None)
        served.conn = session
        self._served[session] = served
        served.announced = True  # its spoke was announced with its first link
        logger.info("spoke %s resumed its session", session.spoke_id)

    async def _authorize_and_apply(
        self, conn: HubConnection, request: SubscribeRequest | PublishRequest
    ) -> bool:
        """True when the request was authorized and applied."""
        assert self._authorize is not None
        try:
            verdict = self._authorize(conn.peer, request.action, request.topic)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception:
            logger.exception("authorize raised; refusing %s of %r", request.action, request.topic)
            verdict = False
        if not conn.open:
            return False
        if verdict:
            self.router.apply(conn, request)
            return True
        self.router.refuse(conn, request.action, request.topic)
        return False

    async def _sweep(self) -> None:
        """Tick the router: heartbeats that stopped, sessions whose grace ran out."""
        while True:
            await asyncio.sleep(self.tick_interval)
            for conn in self.router.tick():
                self._disconnected(conn)  # a session whose grace period ran out
            self._service()


def _peer_fields(peer_info: dict[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in peer_info.items() if k != "subprotocols"}
    headers = fields.get("headers")
    if headers is not None and not isinstance(headers, Headers):
        fields["headers"] = Headers(headers)
    return fields
