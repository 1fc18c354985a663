"""What a transport implements: a ``Link``, one live connection that moves
frames. Everything else (subscriptions, reconnects, backpressure, relaying)
lives in ``SpokeTarget``/``HubTarget`` and the core.

A link's contract:

- ``send(frames)`` writes encoded envelopes in order (it may coalesce them)
  and returns once the transport accepted them under its flow control; it
  raises ``ConnectionError`` (or a subclass) when the link is gone.
- ``messages()`` yields whole received messages (one envelope each). It ends
  normally when the peer closed with a normal code (``NORMAL_CLOSE_CODES``), raises
  ``LinkClosedError(code)`` for another close code, ``FramingError`` for a
  framing violation (the shell then closes the link with its ``close_code``),
  and ``ConnectionError`` when the connection broke without a close.
- ``transport_buffered()`` is how many written bytes still sit below (socket
  buffers); 0 where ``send`` only returns once they left.
- ``close(code, reason)`` closes the connection and never raises.
- optionally ``push_to(receive)`` (``PushLink``): hand each message to
  ``receive`` as it arrives, in the transport's own callback, instead of
  queueing it for ``messages()``, which then only ends or raises as the link
  does; ``push_to(None)`` goes back to queueing.
- optionally ``finish()``: return once what was sent left our buffers or reached
  the peer, so that a close no longer drops it (a hub calls it, bounded by
  ``slow_consumer_linger``, before closing a slow consumer with 1013).

Any other exception from a link is a bug: the shells log it with its
traceback and report it to ``on_error``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Final, Protocol, runtime_checkable

from ..core.close import CloseCode
from ..core.errors import FramingError

__all__ = [
    "LINK_ERRORS",
    "WRITE_CHUNK_BYTES",
    "Link",
    "PushLink",
    "SoonWriter",
    "SyncWritableLink",
    "read_loop",
    "write_loop",
]

#: Bytes handed to a link per ``send``: large enough to coalesce, small
#: enough that one write does not monopolise the loop.
WRITE_CHUNK_BYTES: Final = 256 * 1024

#: Queued but unwritten bytes past which a spoke writes at once, without waiting
#: for the end of the loop iteration (a publisher looping on dispatch_event).
WRITE_THROUGH_BYTES: Final = 64 * 1024

#: What a link raises when the network, not our code, failed.
LINK_ERRORS: Final = (ConnectionError, OSError, TimeoutError, FramingError)


class Link(Protocol):
    """One live connection, as a hub or a spoke sees it."""

    async def send(self, frames: list[bytes]) -> None:
        """Write frames in order (may coalesce); raise when the link is gone."""

    def messages(self) -> AsyncIterator[bytes | str]:
        """Whole received messages until the link ends."""

    def transport_buffered(self) -> int:
        """Bytes written but still queued below us (socket/stream buffers)."""

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the connection with ``code``; never raises."""


@runtime_checkable
class SyncWritableLink(Link, Protocol):
    """A link that can also write without awaiting while its transport is not
    flow-controlled (what ``websockets.broadcast`` relies on). A hub then writes
    at the end of the loop iteration in which frames were queued, instead of
    waking a writer task per frame."""

    def writable_now(self) -> bool: ...

    def write_nowait(self, frames: list[bytes]) -> None: ...


@runtime_checkable
class PushLink(Link, Protocol):
    """A link whose transport parses messages in a synchronous callback (picows):
    it can hand each one straight to the reader, saving a queue and a task
    switch per message. A reader that returns normally keeps the order."""

    def push_to(self, receive: Callable[[bytes | str], None] | None) -> None: ...


async def read_loop(link: Link, receive: Callable[[bytes | str], None]) -> None:
    """Hand every message of ``link`` to ``receive`` until the link ends
    (returns on a normal close, raises as ``messages()`` does otherwise); pushed
    by the transport where the link is a ``PushLink``, never after this returns."""
    pusher = link if isinstance(link, PushLink) else None
    try:
        if pusher is not None:
            pusher.push_to(receive)  # may run receive on what was queued: inside the try
        async for message in link.messages():
            receive(message)
    finally:
        if pusher is not None:
            pusher.push_to(None)


async def write_loop(
    link: Link,
    wake: asyncio.Event,
    take: Callable[[int], list[bytes]],
    after_send: Callable[[], None],
) -> None:
    """The one writer loop of every link: sleep until ``wake`` is set, send up
    to ``WRITE_CHUNK_BYTES`` of what ``take`` returns, report, repeat.

    ``take`` returning nothing means the queue is empty: the loop sleeps again.
    Runs until the link raises (the caller cancels it otherwise).
    """
    while True:
        frames = take(WRITE_CHUNK_BYTES)
        if not frames:
            wake.clear()
            await wake.wait()
            continue
        await link.send(frames)
        after_send()


class SoonWriter:
    """Writes a ``SyncWritableLink`` at the end of the loop iteration in which
    frames were queued (``loop.call_soon``): everything queued in that
    iteration goes out in one write, with no task switch per frame (what
    ``websockets.broadcast`` does). While the transport is flow-controlled, or
    when the write fails, the link's writer task is woken instead: it awaits
    the drain, or meets the error and ends the link. Used by hubs and spokes."""

    __slots__ = ("_after_send", "_link", "_loop", "_scheduled", "_take", "_wake")

    def __init__(
        self,
        link: SyncWritableLink,
        wake: asyncio.Event,
        take: Callable[[int | None], list[bytes]],
        after_send: Callable[[], None],
    ) -> None:
        self._link = link
        self._wake = wake
        self._take = take
        self._after_send = after_send
        self._scheduled = False
        # The link's loop, not the caller's running one: dispatch_event may be
        # called between runs of that loop (run_until_complete step by step).
        self._loop = asyncio.get_running_loop()

    def schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._write)

    def write_now(self) -> None:
        """Write what is queued now (a publisher that queues a lot without
        yielding to the loop would otherwise hold it all until it awaits)."""
        self._write()

    def _write(self) -> None:
        self._scheduled = False
        link = self._link
        if not link.writable_now():
            self._wake.set()
            return
        frames = self._take(None)
        if not frames:
            return
        try:
            link.write_nowait(frames)
        except Exception:
            self._wake.set()  # the writer task meets the error and ends the link
            return
        self._after_send()
