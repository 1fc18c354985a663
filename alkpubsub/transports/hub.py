"""The hub shell shared by every hub transport.

``HubTarget`` = the core's ``HubRouter`` + any number of acceptors + one served
connection per link: a read loop that feeds the router and performs
authorization, and writes of whatever the router queued for that connection.
A transport provides an ``Acceptor`` (its server or accept loop) that turns each
accepted connection into a ``Link`` and calls ``hub.serve_link``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from ..core.close import CloseCode
from ..core.codec import DEFAULT_MAX_FRAME_BYTES
from ..core.envelope import Event, validate_topic
from ..core.errors import FramingError, TargetClosedError
from ..core.listeners import Listener, ListenerErrorHandler
from ..core.router import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_TOPICS_PER_CONNECTION,
    Action,
    HubConnection,
    HubRouter,
    HubStats,
    Peer,
    PublishRequest,
    SubscribeRequest,
)
from ..target import BaseEventTarget, call_user
from .bridge import BridgeTarget, HubBridge, StatusCallback
from .link import LINK_ERRORS, Link, SyncWritableLink, write_loop

__all__ = ["Acceptor", "Authorize", "HubTarget"]

logger = logging.getLogger(__name__)

Authorize = Callable[[Peer, Action, str], bool | Awaitable[bool]]


class Acceptor(Protocol):
    """Accepts connections for a hub and serves each with ``hub.serve_link``
    (a WebSocket server, an Iroh endpoint's accept loop). Several acceptors on
    one hub make one bus across transports."""

    async def start(self, hub: HubTarget) -> None:
        """Begin accepting; called by ``hub.start()``."""

    async def stop(self) -> None:
        """Stop accepting new connections (the hub then closes the served ones)."""

    async def release(self) -> None:
        """Release what it owns (sockets, endpoints), once every connection is gone."""


class _Served:
    """The shell's side of one served connection."""

    __slots__ = ("closing", "conn", "link", "scheduled", "sync_link", "tasks", "wake")

    def __init__(self, conn: HubConnection, link: Link) -> None:
        self.conn = conn
        self.link = link
        self.tasks: tuple[asyncio.Task[None], ...] = ()  # reader and writer
        self.closing: asyncio.Task[None] | None = None  # the hub closing the link
        self.wake = asyncio.Event()  # the writer task's
        self.scheduled = False  # a write at the end of this loop iteration is due
        self.sync_link = link if isinstance(link, SyncWritableLink) else None


class HubTarget(BaseEventTarget):
    """A hub: a ``TypedEventTarget`` whose listeners hear every spoke (H1, H2)."""

    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        max_topics_per_connection: int = DEFAULT_MAX_TOPICS_PER_CONNECTION,
        authorize: Authorize | None = None,
        on_backpressure: Callable[[Peer, int], None] | None = None,
        on_connection: Callable[[Peer], None] | None = None,
        on_disconnection: Callable[[Peer], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_listener_error: ListenerErrorHandler | None = None,
        close_timeout: float = 2.0,
        bridge: BridgeTarget | str | None = None,
        on_bridge_status: StatusCallback | None = None,
    ) -> None:
        super().__init__()
        if close_timeout <= 0:
            raise ValueError("close_timeout must be positive")
        self.close_timeout = close_timeout
        self.router = HubRouter(
            max_frame_bytes=max_frame_bytes,
            max_buffered_bytes=max_buffered_bytes,
            max_topics_per_connection=max_topics_per_connection,
            on_listener_error=on_listener_error,
            schedule=self._scheduler,
        )
        self.max_frame_bytes = max_frame_bytes
        self._authorize = authorize
        self._on_backpressure = on_backpressure
        self._on_connection = on_connection
        self._on_disconnection = on_disconnection
        self._on_error = on_error
        self._served: dict[HubConnection, _Served] = {}
        # Our own tasks: each connection's reader and writer, link closes,
        # background serving. serve_link itself runs in the caller's task,
        # which we never cancel.
        self._io_tasks: set[asyncio.Future[None]] = set()
        self._serving: set[asyncio.Future[None]] = set()
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
        return [conn.peer for conn in self.router.connections.values()]

    @property
    def listener_errors(self) -> int:
        return self.router.registry.listener_errors

    def listener_count(self, topic: str) -> int:
        """The hub's own local listeners for ``topic``."""
        return self.router.registry.count(topic)

    def subscribers(self, topic: str) -> list[Peer]:
        """The spokes subscribed to ``topic``."""
        return [conn.peer for conn in self.router.subscriptions.get(topic, {})]

    async def disconnect_peer(
        self, spoke_id: str, code: int = CloseCode.NORMAL, reason: str = ""
    ) -> bool:
        """Close one spoke's connection (it will reconnect if it wants to)."""
        conn = self.router.connections.get(spoke_id)
        served = None if conn is None else self._served.get(conn)
        if served is None or conn is None:
            return False
        self.router.close_connection(conn, code, reason or "disconnected by the hub")
        self._service()
        if served.closing is not None:
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
        for conn in list(self._served):
            self.router.close_connection(conn, CloseCode.GOING_AWAY, "hub closing")
        self._service()
        closing = [served.closing for served in self._served.values() if served.closing]
        await asyncio.gather(*closing, return_exceptions=True)
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

    async def serve_link(self, link: Link, peer_info: dict[str, Any]) -> None:
        """Serve ``link`` until it ends. The caller owns the link; the hub closes
        it only to cut a connection off (B8, B10) or when the hub closes."""
        if self._closed:
            raise TargetClosedError("hub is closed")
        conn = self.router.connect(Peer(spoke_id=self.router.new_spoke_id(), **peer_info))
        served = self._served[conn] = _Served(conn, link)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._serving.add(done)
        call_user(self._on_connection, conn.peer, log=logger)
        writer = self.spawn(
            write_loop(
                link,
                served.wake,
                lambda max_bytes: self.router.take_outgoing(conn, max_bytes),
                lambda: self._after_send(conn, link),
            )
        )
        reader = self.spawn(self._read_loop(conn, link))
        served.tasks = (reader, writer)
        self._service()  # the __welcome
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in (reader, writer):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    self._link_failed(conn, task.exception())
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            if served.closing is not None:  # the hub is closing it: let it finish
                await asyncio.gather(served.closing, return_exceptions=True)
            self._forget(conn)
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

    def _forget(self, conn: HubConnection) -> None:
        """Stop serving ``conn`` without closing its link (idempotent)."""
        served = self._served.pop(conn, None)
        if served is not None:
            for task in served.tasks:
                task.cancel()  # serve_link then returns
        if self.router.disconnect(conn):
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
        """Where the link can write without awaiting, the write happens at the
        end of the current loop iteration (``call_soon``): every frame fanned
        out in that iteration goes out in one write, with no task switch per
        frame. Otherwise, or while the transport is flow-controlled, the
        connection's writer task is woken (it awaits the drain)."""
        if served.sync_link is None:
            served.wake.set()
        elif not served.scheduled:
            served.scheduled = True
            asyncio.get_running_loop().call_soon(self._write_now, served)

    def _write_now(self, served: _Served) -> None:
        served.scheduled = False
        conn, link = served.conn, served.sync_link
        assert link is not None
        if not conn.open or not conn.queue:
            return
        if not link.writable_now():
            served.wake.set()
            return
        try:
            link.write_nowait(self.router.take_outgoing(conn))
        except Exception:
            served.wake.set()  # the writer task meets the error and ends the link
            return
        self._after_send(conn, link)

    def _after_send(self, conn: HubConnection, link: Link) -> None:
        self.router.report_transport_buffered(conn, link.transport_buffered())
        if self.router.cuts:
            self._service()

    def _cut(self, conn: HubConnection) -> None:
        """The router cut ``conn`` off (B8, disconnect_peer, hub closing):
        report a slow consumer, then close its link."""
        if conn.close_code is CloseCode.TRY_AGAIN_LATER:
            call_user(self._on_backpressure, conn.peer, conn.buffered_at_cut, log=logger)
        served = self._served.get(conn)
        if served is not None and served.closing is None:
            served.closing = self.spawn(self._close_link(served))

    async def _close_link(self, served: _Served) -> None:
        """Stop the writer, send what the router left queued (the ``__close``
        announcement), then close the link with the router's code; bounded by
        ``close_timeout`` for a peer that stopped reading."""
        conn, link = served.conn, served.link
        writer = served.tasks[1] if len(served.tasks) > 1 else None
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        frames = self.router.take_outgoing(conn)
        if frames:
            try:
                async with asyncio.timeout(self.close_timeout):
                    await link.send(frames)
            except LINK_ERRORS:
                pass  # the close below still tells the reason where the link can
        await link.close(conn.close_code or CloseCode.NORMAL, conn.close_reason)

    async def _read_loop(self, conn: HubConnection, link: Link) -> None:
        router = self.router
        async for message in link.messages():
            request = router.receive(conn, message)
            if request is not None:
                if self._authorize is None:
                    router.apply(conn, request)
                else:
                    await self._authorize_and_apply(conn, request)
            if router.ready or router.cuts or router.bridge_work:
                self._service()

    async def _authorize_and_apply(
        self, conn: HubConnection, request: SubscribeRequest | PublishRequest
    ) -> None:
        assert self._authorize is not None
        try:
            verdict = self._authorize(conn.peer, request.action, request.topic)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception:
            logger.exception("authorize raised; refusing %s of %r", request.action, request.topic)
            verdict = False
        if not conn.open:
            return
        if verdict:
            self.router.apply(conn, request)
        else:
            self.router.refuse(conn, request.action, request.topic)
