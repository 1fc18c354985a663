"""Local listener registry on blinker (SPEC B6, B9).

One ``blinker.Signal`` per topic, used through its public API only: receivers are
connected with ``weak=False`` (a weak receiver, blinker's default, silently
vanishes when a lambda or closure is collected and would leak our refcounts),
de-duplicated by blinker's identity rules, and kept in connection order through
``Signal.set_class``. blinker's own ``send`` stops at the first raising receiver
and awaits coroutines one after another, so dispatch is done here: every
listener is isolated, and coroutine results are handed to the ``schedule``
callable that the asyncio shell injects (the core never touches an event loop).

Dispatch iterates a per-topic list that is rebuilt lazily after a change, so
adding and removing listeners is O(1) amortised and dispatch is one dict
lookup. A listener removed while an event is being dispatched is not called for
that event (it is replaced, in the list being dispatched, by a marker that
costs nothing on the common path); one added meanwhile is called from the next
event on (DOM semantics).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from types import BuiltinMethodType
from typing import Any, TypeAlias

from blinker import ANY, Signal

from .envelope import Event

__all__ = ["Listener", "ListenerErrorHandler", "ListenerRegistry", "Scheduler"]

logger = logging.getLogger(__name__)

Listener: TypeAlias = Callable[[Event], Awaitable[None] | None]
ListenerErrorHandler: TypeAlias = Callable[[BaseException, Event, Listener], None]
Scheduler: TypeAlias = Callable[[Coroutine[Any, Any, None]], None]


class _ConnectionOrderedSet(set[Any]):
    """A set that iterates in insertion order, for ``Signal.set_class``."""

    def __init__(self, items: Iterable[Any] = ()) -> None:
        super().__init__()
        self._order: dict[Any, None] = {}
        for item in items:
            self.add(item)

    def add(self, item: Any) -> None:
        super().add(item)
        self._order[item] = None

    def discard(self, item: Any) -> None:
        super().discard(item)
        self._order.pop(item, None)

    def remove(self, item: Any) -> None:
        super().remove(item)
        del self._order[item]

    def clear(self) -> None:
        super().clear()
        self._order.clear()

    def copy(self) -> _ConnectionOrderedSet:
        return _ConnectionOrderedSet(self._order)

    def __or__(self, other: Any) -> _ConnectionOrderedSet:
        merged = _ConnectionOrderedSet(self._order)
        for item in other:
            merged.add(item)
        return merged

    def __iter__(self) -> Any:
        return iter(list(self._order))


def _identity(listener: Listener) -> object:
    """What blinker de-duplicates receivers by: bound methods of one object and
    function are one listener, anything else is its object."""
    if inspect.ismethod(listener):
        return (id(listener.__self__), id(listener.__func__))
    return id(listener)


class _TopicSignal(Signal):
    set_class = _ConnectionOrderedSet


class _Removed(Exception):
    """Raised by the marker that stands for a listener removed during a dispatch."""


def _removed_listener(event: Event) -> None:
    raise _Removed


class ListenerRegistry:
    """Listeners keyed by full topic, with refcount transitions reported to the caller."""

    def __init__(
        self,
        *,
        on_listener_error: ListenerErrorHandler | None = None,
        schedule: Scheduler | None = None,
    ) -> None:
        self._signals: dict[str, _TopicSignal] = {}
        # Per-topic listeners for dispatch; None = rebuild from the signal first.
        # A list is never changed once built, except that remove() replaces an
        # entry by _removed_listener, for dispatches iterating it right now.
        self._snapshots: dict[str, list[Listener] | None] = {}
        self._on_listener_error = on_listener_error
        self._schedule = schedule
        self.listener_errors = 0

    # -- registration ------------------------------------------------------

    def add(self, topic: str, listener: Listener | None) -> bool:
        """Register; True when ``topic`` went from 0 to 1 listener (B6)."""
        if listener is None:
            return False
        signal = self._signals.get(topic)
        if signal is None:
            signal = self._signals[topic] = _TopicSignal()
        elif self._builtin_twin(signal, listener) is not None:
            return False
        had_listeners = signal.has_receivers_for(ANY)
        signal.connect(listener, sender=ANY, weak=False)
        self._snapshots[topic] = None
        return not had_listeners

    def remove(self, topic: str, listener: Listener | None) -> bool:
        """Unregister; True when ``topic`` went from 1 to 0 listeners (B6)."""
        if listener is None:
            return False
        signal = self._signals.get(topic)
        if signal is None:
            return False
        registered = self._builtin_twin(signal, listener) or listener
        signal.disconnect(registered, sender=ANY)
        snapshot = self._snapshots.get(topic)
        if snapshot is not None:
            # A dispatch may be iterating this list: skip the listener there.
            # Scanning is needed only once per change (the list is dropped).
            identity = _identity(registered)
            for index, item in enumerate(snapshot):
                if _identity(item) == identity:
                    snapshot[index] = _removed_listener
                    break
        self._snapshots[topic] = None
        if signal.has_receivers_for(ANY):
            return False
        # The last one is gone: forget the topic, so memory does not grow with
        # every topic ever used. (Removing an unknown listener of a topic that
        # has others ends above; of a topic with none, there is no signal.)
        del self._signals[topic]
        del self._snapshots[topic]
        return True

    @staticmethod
    def _builtin_twin(signal: Signal, listener: Listener) -> Listener | None:
        """The connected receiver equal to a builtin bound method, if any.

        blinker identifies receivers by ``id()``, which equates Python bound
        methods of one object; builtin bound methods (``list.append``) are new
        objects on every access, so they are matched by equality.
        """
        if isinstance(listener, BuiltinMethodType) and not inspect.ismodule(listener.__self__):
            for receiver in signal.receivers_for(ANY):
                if receiver == listener:
                    return receiver
        return None

    def _listeners(self, topic: str) -> list[Listener]:
        listeners = self._snapshots.get(topic)
        if listeners is None:
            signal = self._signals.get(topic)
            if signal is None:
                return []
            listeners = self._snapshots[topic] = list(signal.receivers_for(ANY))
        return listeners

    def count(self, topic: str) -> int:
        signal = self._signals.get(topic)
        return 0 if signal is None else len(signal.receivers)

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
        listeners = self._snapshots.get(event.type, ())
        if listeners is None:
            listeners = self._listeners(event.type)
        skipped = 0
        for listener in listeners:
            try:
                result = listener(event)
            except Exception as exc:
                if type(exc) is _Removed:
                    skipped += 1
                else:
                    self._report(exc, event, listener)
                continue
            if result is not None and inspect.isawaitable(result):
                self._spawn(result, event, listener)
        return len(listeners) - skipped

    async def _guard(self, awaitable: Awaitable[None], event: Event, listener: Listener) -> None:
        try:
            await awaitable
        except Exception as exc:
            self._report(exc, event, listener)

    def _spawn(self, awaitable: Awaitable[None], event: Event, listener: Listener) -> None:
        try:
            if self._schedule is None:
                raise RuntimeError("a coroutine listener needs a target with a scheduler")
            self._schedule(self._guard(awaitable, event, listener))
        except Exception as exc:  # e.g. no running event loop
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            self._report(exc, event, listener)

    def _report(self, exc: BaseException, event: Event, listener: Listener) -> None:
        self.listener_errors += 1
        logger.error("listener %r raised on topic %r", listener, event.type, exc_info=exc)
        if self._on_listener_error is not None:
            try:
                self._on_listener_error(exc, event, listener)
            except Exception:
                logger.exception("on_listener_error itself raised")
