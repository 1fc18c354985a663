"""Local listener registry on blinker (SPEC B6, B9).

blinker gives us identity-based de-duplication of receivers (bound methods
included) in a private ``Namespace``; we connect with ``weak=False`` because a
weak receiver (blinker's default) silently vanishes when a lambda or closure is
collected, and would leak our refcounts. blinker's own ``send`` stops at the
first raising receiver and awaits coroutines one after another, so dispatch is
done here: every listener isolated, coroutine results handed to ``schedule``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from types import BuiltinMethodType
from typing import Any, TypeAlias, cast

from blinker import ANY, Namespace

from .envelope import Event

__all__ = ["Listener", "ListenerErrorHandler", "ListenerRegistry", "Scheduler"]

logger = logging.getLogger("alkpubsub")

Listener: TypeAlias = Callable[[Event], Awaitable[None] | None]
ListenerErrorHandler: TypeAlias = Callable[[BaseException, Event, Listener], None]
Scheduler: TypeAlias = Callable[[Coroutine[Any, Any, None]], None]


class _TaskScheduler:
    """Default scheduler: a task on the running loop, kept alive until it ends."""

    def __init__(self, report: Callable[[BaseException], None]) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._report = report

    def __call__(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._report(exc)

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class ListenerRegistry:
    """Listeners keyed by full topic, with refcount transitions reported to the caller."""

    def __init__(
        self,
        *,
        on_listener_error: ListenerErrorHandler | None = None,
        schedule: Scheduler | None = None,
    ) -> None:
        self._signals = Namespace()
        # Per-topic tuple of listeners, rebuilt on every add/remove, so that
        # dispatch (the hot path) is one dict lookup and no copying.
        self._snapshots: dict[str, tuple[Listener, ...]] = {}
        self._on_listener_error = on_listener_error
        self._default_scheduler: _TaskScheduler | None = None
        self._schedule = schedule
        self.listener_errors = 0

    # -- registration ------------------------------------------------------

    def add(self, topic: str, listener: Listener | None) -> bool:
        """Register; True when ``topic`` went from 0 to 1 listener (B6)."""
        if listener is None:
            return False
        signal = self._signals.get(topic)
        if signal is None:
            signal = self._signals.signal(topic)
        elif self._builtin_twin(signal.receivers, listener) is not None:
            return False
        before = len(signal.receivers)
        signal.connect(listener, sender=ANY, weak=False)
        self._snapshot(topic, signal.receivers)
        return before == 0 and len(signal.receivers) == 1

    def remove(self, topic: str, listener: Listener | None) -> bool:
        """Unregister; True when ``topic`` went from 1 to 0 listeners (B6)."""
        if listener is None:
            return False
        signal = self._signals.get(topic)
        if signal is None:
            return False
        before = len(signal.receivers)
        signal.disconnect(self._builtin_twin(signal.receivers, listener) or listener, sender=ANY)
        if len(signal.receivers) == before:
            return False
        if not signal.receivers:
            # Namespaces never shrink on their own: one signal per topic forever.
            del self._signals[topic]
            del self._snapshots[topic]
            return True
        self._snapshot(topic, signal.receivers)
        return False

    def _snapshot(self, topic: str, receivers: dict[Any, Any]) -> None:
        # Receivers are connected with weak=False, so values are the callables.
        self._snapshots[topic] = tuple(cast(list[Listener], list(receivers.values())))

    @staticmethod
    def _builtin_twin(receivers: dict[Any, Any], listener: Listener) -> Listener | None:
        """The connected receiver equal to a builtin bound method, if any.

        blinker keys receivers by identity, which equates Python bound methods
        of one object; builtin bound methods (``list.append``) are new objects on
        every access, so they are matched by equality.
        """
        if isinstance(listener, BuiltinMethodType) and not inspect.ismodule(listener.__self__):
            for receiver in receivers.values():
                if receiver == listener:
                    return cast(Listener, receiver)
        return None

    def count(self, topic: str) -> int:
        receivers = self._snapshots.get(topic)
        return 0 if receivers is None else len(receivers)

    def topics(self) -> list[str]:
        """Topics with at least one listener, in registration order."""
        return list(self._signals)

    def __contains__(self, topic: object) -> bool:
        return topic in self._signals

    def clear(self) -> None:
        self._signals.clear()
        self._snapshots.clear()

    # -- dispatch ----------------------------------------------------------

    def dispatch(self, event: Event) -> int:
        """Call every listener of ``event.type``; returns how many were called."""
        receivers = self._snapshots.get(event.type)
        if receivers is None:
            return 0
        for listener in receivers:
            try:
                result = listener(event)
            except Exception as exc:
                self._report(exc, event, listener)
                continue
            if result is not None and inspect.isawaitable(result):
                self._spawn(result, event, listener)
        return len(receivers)

    async def _guard(self, awaitable: Awaitable[None], event: Event, listener: Listener) -> None:
        try:
            await awaitable
        except Exception as exc:
            self._report(exc, event, listener)

    def _spawn(self, awaitable: Awaitable[None], event: Event, listener: Listener) -> None:
        if self._schedule is not None:
            self._schedule(self._guard(awaitable, event, listener))
            return
        if self._default_scheduler is None:
            self._default_scheduler = _TaskScheduler(lambda exc: logger.error("%r", exc))
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            logger.error("coroutine listener %r called outside a running event loop", listener)
            return
        self._default_scheduler(self._guard(awaitable, event, listener))

    def cancel_pending(self) -> None:
        """Cancel coroutine listeners still running (on close)."""
        if self._default_scheduler is not None:
            self._default_scheduler.cancel_all()

    def _report(self, exc: BaseException, event: Event, listener: Listener) -> None:
        self.listener_errors += 1
        logger.error("listener %r raised on topic %r", listener, event.type, exc_info=exc)
        if self._on_listener_error is not None:
            try:
                self._on_listener_error(exc, event, listener)
            except Exception:
                logger.exception("on_listener_error itself raised")
