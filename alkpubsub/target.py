"""The ``TypedEventTarget`` interface every transport exposes (SPEC §6)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from .core.envelope import Event
from .core.errors import BackpressureError
from .core.listeners import Listener

__all__ = ["BaseEventTarget", "TypedEventTarget", "dispatch_all"]

logger = logging.getLogger("alkpubsub")


@runtime_checkable
class TypedEventTarget(Protocol):
    def add_event_listener(self, topic: str, listener: Listener | None) -> None: ...

    def remove_event_listener(self, topic: str, listener: Listener | None) -> None: ...

    def dispatch_event(self, event: Event) -> bool: ...

    async def flush(self, timeout: float | None = None) -> None: ...

    async def drain(self) -> None: ...

    async def aclose(self) -> None: ...


class BaseEventTarget:
    """Life cycle shared by every target: async context manager and close hooks.

    ``add_close_callback`` lets ``subscribe()`` iterators end when their target
    closes (B11) without the target knowing about them.
    """

    transport_name: str = "base"

    def __init__(self) -> None:
        self._closed = False
        self._started = False
        self._close_callbacks: list[Callable[[], None]] = []

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
            self._close_callbacks.append(callback)

    def remove_close_callback(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._close_callbacks.remove(callback)

    def _mark_closed(self) -> bool:
        """Flag the target closed and run close callbacks; False if it already was."""
        if self._closed:
            return False
        self._closed = True
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("close callback raised")
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
