"""The hub shell shared by every hub transport.

``HubTarget`` = ``HubRouter`` + one served connection per link (a read loop
that feeds the router and performs authorization, and a writer task that
flushes the router's queue for that connection). A transport only turns its
connections into ``HubLink`` objects and calls ``serve_link``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast

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
from ..target import BaseEventTarget

__all__ = ["Authorize", "CLOSE_BACKPRESSURE", "HubLink", "HubTarget"]

logger = logging.getLogger("alkpubsub")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_BACKPRESSURE = 1013  # "try again later", SPEC B8

WRITE_CHUNK_BYTES = 256 * 1024

Authorize = Callable[[Peer, Action, str], bool | Awaitable[bool]]


class HubLink(Protocol):
    """One spoke connection, as a hub sees it."""

    async def send(self, frames: list[bytes]) -> None:
        """Write frames in order (may coalesce); raise when the link is gone."""

    def messages(self) -> AsyncIterator[bytes | str]:
        """Whole received messages until the link ends."""

    def transport_buffered(self) -> int:
        """Bytes written but still queued below us (socket/stream buffers)."""

    async def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code``; never raises."""


class SyncWritableLink(HubLink, Protocol):
    """A link that can also write without awaiting while its transport is not
    flow-controlled (what ``websockets.broadcast`` relies on). The hub then
    writes during the fan-out itself instead of waking a writer task per frame."""

    def writable_now(self) -> bool: ...

    def write_nowait(self, frames: list[bytes]) -> None: ...


class Acceptor(Protocol):
    """Something that accepts connections for a hub and serves them with
    ``hub.serve_link`` (an Iroh endpoint's accept loop, say). Several acceptors
    on one hub make one bus across transports."""

    async def start(self, hub: HubTarget) -> None: ...

    async def stop(self) -> None:
        """Stop accepting new connections."""

    async def release(self) -> None:
        """Release what it owns, once every connection is gone."""


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
        on_listener_error: ListenerErrorHandler | None = None,
    ) -> None:
        super().__init__()
        self.router = HubRouter(
            max_frame_bytes=max_frame_bytes,
            max_buffered_bytes=max_buffered_bytes,
            max_topics_per_connection=max_topics_per_connection,
            on_overflow=self._on_overflow,
            on_listener_error=on_listener_error,
        )
        self.max_frame_bytes = max_frame_bytes
        self._authorize = authorize
        self._on_backpressure = on_backpressure
        self._on_connection = on_connection
        self._on_disconnection = on_disconnection
        self._links: dict[HubConnection, HubLink] = {}
        # Our own tasks: each connection's reader and writer, and close tasks.
        # serve_link itself runs in the caller's task, which we never cancel.
        self._io_tasks: dict[HubConnection, tuple[asyncio.Future[None], ...]] = {}
        self._serving: set[asyncio.Future[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._acceptors: list[Acceptor] = []

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
        await self._start_transport()
        for acceptor in self._acceptors:
            await acceptor.start(self)

    async def _start_transport(self) -> None:
        """Start the transport's own listener, if it has one. For transports."""

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

    async def disconnect_peer(
        self, spoke_id: str, code: int = CLOSE_NORMAL, reason: str = ""
    ) -> bool:
        """Close one spoke's connection (it will reconnect if it wants to)."""
        conn = self.router.connections.get(spoke_id)
        link = None if conn is None else self._links.get(conn)
        if link is None:
            return False
        await link.close(code, reason or "disconnected by the hub")
        return True

    def subscribers(self, topic: str) -> list[Peer]:
        return [conn.peer for conn in self.router.subscriptions.get(topic, {})]

    # -- TypedEventTarget -------------------------------------------------------------

    def add_event_listener(self, topic: str, listener: Listener | None) -> None:
        if self._closed or listener is None:
            return
        self.router.registry.add(validate_topic(topic), listener)

    def remove_event_listener(self, topic: str, listener: Listener | None) -> None:
        if not self._closed:
            self.router.registry.remove(topic, listener)

    def dispatch_event(self, event: Event) -> bool:
        if self._closed:
            raise TargetClosedError("hub is closed")
        return self.router.dispatch(event)

    async def flush(self, timeout: float | None = None) -> None:
        """The subscription table is local to the hub: nothing to wait for (B4)."""
        return None

    async def drain(self) -> None:
        """Slow subscribers are cut off (B8), so the hub never holds publishers back."""
        return None

    async def aclose(self) -> None:
        if not self._mark_closed():
            return
        await self._stop_accepting()
        for link in list(self._links.values()):
            await link.close(CLOSE_GOING_AWAY, "hub closing")
        for tasks in list(self._io_tasks.values()):
            for task in tasks:
                task.cancel()
        for task in list(self._background):
            task.cancel()
        # Every serve_link returns once its reader and writer are gone.
        await asyncio.gather(*self._serving, *self._background, return_exceptions=True)
        self.router.close()
        await self._finish_close()

    async def _stop_accepting(self) -> None:
        """Stop accepting new connections (server, endpoint). Extended by transports."""
        for acceptor in self._acceptors:
            await acceptor.stop()

    async def _finish_close(self) -> None:
        """Release what the transport owns once every connection is gone."""
        for acceptor in self._acceptors:
            await acceptor.release()

    # -- serving one connection -----------------------------------------------------------

    async def serve_link(self, link: HubLink, peer_info: dict[str, Any]) -> None:
        """Serve ``link`` until it ends; the caller owns and closes the link."""
        if self._closed:
            raise TargetClosedError("hub is closed")
        wake = asyncio.Event()
        holder: list[HubConnection] = []
        conn = self.router.connect(
            Peer(spoke_id=self.router.new_spoke_id(), **peer_info),
            self._waker(link, wake, holder),
        )
        holder.append(conn)
        self._links[conn] = link
        served: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._serving.add(served)
        self._call(self._on_connection, conn.peer)
        writer = asyncio.ensure_future(self._write_loop(conn, link, wake))
        try:
            reader = asyncio.ensure_future(self._read_loop(conn, link))
            self._io_tasks[conn] = (reader, writer)
            try:
                await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
                if reader.done() and not reader.cancelled():
                    error = reader.exception()
                    if isinstance(error, FramingError):
                        # B10: a framing violation closes only this connection.
                        self.router.stats.invalid_frames += 1
                        await link.close(error.close_code, str(error))
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            self._io_tasks.pop(conn, None)
            self._forget(conn)
            served.set_result(None)
            self._serving.discard(served)

    def _forget(self, conn: HubConnection) -> None:
        self._links.pop(conn, None)
        if self.router.disconnect(conn):
            self._call(self._on_disconnection, conn.peer)

    def _waker(
        self, link: HubLink, wake: asyncio.Event, holder: list[HubConnection]
    ) -> Callable[[], None]:
        """What the router calls when a connection's queue becomes non-empty.

        Where the link can write without awaiting, the write happens at the end
        of the current loop iteration (``call_soon``): every frame fanned out in
        that iteration goes out in one write, with no task switch per frame.
        Otherwise, or while the transport is flow-controlled, the connection's
        writer task is woken (it awaits the drain)."""
        if not (hasattr(link, "writable_now") and hasattr(link, "write_nowait")):
            return wake.set
        router = self.router
        sync_link = cast(SyncWritableLink, link)
        loop = asyncio.get_running_loop()
        scheduled = False

        def flush() -> None:
            nonlocal scheduled
            scheduled = False
            conn = holder[0]
            if conn.closing or not conn.queue:
                return
            if not sync_link.writable_now():
                wake.set()
                return
            try:
                sync_link.write_nowait(router.take_outgoing(conn))
            except Exception:
                wake.set()  # the writer task meets the error and ends the link
                return
            router.report_transport_buffered(conn, sync_link.transport_buffered())

        def schedule_flush() -> None:
            nonlocal scheduled
            if not holder:  # during router.connect(): the __welcome
                wake.set()
            elif not scheduled:
                scheduled = True
                loop.call_soon(flush)

        return schedule_flush

    async def _read_loop(self, conn: HubConnection, link: HubLink) -> None:
        router = self.router
        async for message in link.messages():
            request = router.receive(conn, message)
            if request is None:
                continue
            if self._authorize is None:
                router.apply(conn, request)
            else:
                await self._authorize_and_apply(conn, request)

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
        if conn.closing:
            return
        if verdict:
            self.router.apply(conn, request)
        else:
            self.router.refuse(conn, request.action, request.topic)

    async def _write_loop(self, conn: HubConnection, link: HubLink, wake: asyncio.Event) -> None:
        router = self.router
        while True:
            if not conn.queue:
                wake.clear()
                await wake.wait()
                continue
            frames = router.take_outgoing(conn, WRITE_CHUNK_BYTES)
            await link.send(frames)
            router.report_transport_buffered(conn, link.transport_buffered())

    def _on_overflow(self, conn: HubConnection) -> None:
        """Called by the router inside a fan-out when ``conn`` exceeds B8's limit."""
        self._call(self._on_backpressure, conn.peer, conn.buffered_bytes)
        link = self._links.get(conn)
        if link is not None:
            task = asyncio.get_running_loop().create_task(
                link.close(CLOSE_BACKPRESSURE, "slow consumer: too much buffered")
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    @staticmethod
    def _call(callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            logger.exception("hub callback %r raised", callback)
