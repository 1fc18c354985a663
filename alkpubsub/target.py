"""The ``TypedEventTarget`` interface every transport exposes (SPEC §6), and the
asyncio pieces every target shares: life cycle, close callbacks, the task
scheduler for coroutine listeners, and calling user callbacks safely."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from .core.envelope import Event
from .core.errors import BackpressureError
from .core.listeners import Listener

__all__ = [
    "BaseEventTarget",
    "TaskScheduler",
    "TypedEventTarget",
    "call_user",
    "dispatch_all",
]

logger = logging.getLogger(__name__)


@runtime_checkable
class TypedEventTarget(Protocol):
    def add_event_listener(self, topic: str, listener: Listener | None) -> None: ...

    def remove_event_listener(self, topic: str, listener: Listener | None) -> None: ...

    def dispatch_event(self, event: Event) -> bool: ...

    async def flush(self, timeout: float | None = None) -> None: ...

    async def drain(self) -> None: ...

    async def aclose(self) -> None: ...


def call_user(
    callback: Callable[..., object] | None,
    *args: Any,
    log: logging.Logger = logger,
) -> None:
    """Call an application callback; if it raises, log it and carry on.

    Callbacks report events to the application; an exception in one must never
    break the connection or the loop that called it.
    """
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        log.exception("callback %r raised", callback)


class TaskScheduler:
    """Runs coroutine listeners as tasks on the running loop (B9), keeps them
    referenced until they end, and cancels the rest when its target closes.

    The core's ``ListenerRegistry`` only calls ``schedule(coro)``: this is the
    asyncio side of that seam."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task; RuntimeError outside a running event loop."""
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()
            raise RuntimeError("coroutine listener called outside a running event loop") from None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class BaseEventTarget:
    """Life cycle shared by every target: async context manager, close callbacks,
    and the scheduler its listener registry uses.

    ``add_close_callback`` lets ``subscribe()`` iterators end when their target
    closes (B11) without the target knowing about them.
    """

    transport_name: str = "base"

    def __init__(self) -> None:
        self._closed = False
        self._started = False
        self._close_callbacks: dict[Callable[[], None], None] = {}
        self._scheduler = TaskScheduler()

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        """Start the target (connect, bind, serve). Idempotent."""
        self._started = True

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def add_close_callback(self, callback: Callable[[], None]) -> None:
        if self._closed:
            callback()
        else:
            self._close_callbacks[callback] = None

    def remove_close_callback(self, callback: Callable[[], None]) -> None:
        self._close_callbacks.pop(callback, None)

    def _mark_closed(self) -> bool:
        """Flag the target closed, run close callbacks and cancel coroutine
        listeners still running; False if it already was closed."""
        if self._closed:
            return False
        self._closed = True
        callbacks, self._close_callbacks = self._close_callbacks, {}
        for callback in callbacks:
            call_user(callback)
        self._scheduler.cancel_all()
        return True

    async def aclose(self) -> None:
        self._mark_closed()


async def dispatch_all(target: TypedEventTarget, events: Iterable[Event]) -> int:
    """Dispatch every event, waiting in ``drain()`` whenever the target pushes
    back (B13): the publisher loop that never grows memory without bound."""
    sent = 0
    for event in events:
        while True:
            try:
                target.dispatch_event(event)
                break
            except BackpressureError:
                await target.drain()
        sent += 1
    return sent
