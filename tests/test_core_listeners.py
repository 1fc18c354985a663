"""ListenerRegistry on blinker (SPEC B6, B9)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any

from alkpubsub.core.envelope import Event, make_event
from alkpubsub.core.listeners import Listener, ListenerRegistry
from alkpubsub.target import TaskScheduler
from alkpubsub.testing import within


def test_b6_refcount_transitions() -> None:
    registry = ListenerRegistry()
    first: list[Event] = []
    second: list[Event] = []
    assert registry.add("t:1", first.append) is True
    assert registry.add("t:1", first.append) is False  # same bound method: no-op
    assert registry.add("t:1", second.append) is False
    assert registry.count("t:1") == 2
    assert registry.remove("t:1", second.append) is False
    assert registry.remove("t:1", second.append) is False  # unknown now
    assert registry.remove("t:1", first.append) is True
    assert registry.count("t:1") == 0
    assert "t:1" not in registry
    assert registry.add("t:1", first.append) is True  # re-add after 1 -> 0


def test_b6_none_and_unknown_listeners_are_no_ops() -> None:
    registry = ListenerRegistry()
    assert registry.add("t:1", None) is False
    assert registry.remove("t:1", None) is False
    assert registry.remove("never:1", print) is False
    assert registry.topics() == []


def test_listeners_are_held_strongly() -> None:
    """blinker's weak default would drop a lambda as soon as it is collected."""
    registry = ListenerRegistry()
    seen: list[str] = []
    registry.add("t:1", lambda event: seen.append(event.type))
    gc.collect()
    registry.dispatch(make_event("t", "1"))
    assert seen == ["t:1"]


def test_b9_raising_listener_is_isolated_and_reported() -> None:
    reported: list[tuple[BaseException, str]] = []
    registry = ListenerRegistry(
        on_listener_error=lambda exc, ev, ln: reported.append((exc, ev.type))
    )
    seen: list[int] = []

    def broken(event: Event) -> None:
        raise ValueError("boom")

    registry.add("t:1", broken)
    registry.add("t:1", lambda event: seen.append(event.detail.payload))
    assert registry.dispatch(make_event("t", "1", 7)) == 2
    assert seen == [7]
    assert registry.listener_errors == 1
    assert isinstance(reported[0][0], ValueError)
    assert reported[0][1] == "t:1"


def test_error_handler_that_raises_does_not_escape() -> None:
    def bad_handler(exc: BaseException, event: Event, listener: Listener) -> None:
        raise RuntimeError("handler broken too")

    registry = ListenerRegistry(on_listener_error=bad_handler)
    registry.add("t:1", lambda event: 1 / 0)
    registry.dispatch(make_event("t", "1"))
    assert registry.listener_errors == 1


async def test_b9_coroutine_listeners_are_tasks_and_isolated() -> None:
    reported: list[BaseException] = []
    registry = ListenerRegistry(
        on_listener_error=lambda exc, ev, ln: reported.append(exc), schedule=TaskScheduler()
    )
    started = asyncio.Event()
    release = asyncio.Event()
    done = asyncio.Event()

    async def slow(event: Event) -> None:
        started.set()
        await release.wait()
        done.set()

    async def failing(event: Event) -> None:
        raise KeyError("async boom")

    registry.add("t:1", slow)
    registry.add("t:1", failing)
    registry.dispatch(make_event("t", "1"))  # returns without awaiting
    assert not done.is_set()
    await within(started.wait())
    release.set()
    await within(done.wait())
    assert len(reported) == 1
    assert isinstance(reported[0], KeyError)


def test_coroutine_listener_without_loop_is_dropped_not_raised() -> None:
    registry = ListenerRegistry(schedule=TaskScheduler())

    async def listener(event: Event) -> None:
        return None

    registry.add("t:1", listener)
    assert registry.dispatch(make_event("t", "1")) == 1


def test_coroutine_listener_without_scheduler_is_reported() -> None:
    """The core creates no tasks: without a scheduler a coroutine listener is a
    reported listener error, never an unawaited coroutine."""
    reported: list[BaseException] = []
    registry = ListenerRegistry(on_listener_error=lambda exc, ev, ln: reported.append(exc))

    async def listener(event: Event) -> None:
        return None

    registry.add("t:1", listener)
    registry.dispatch(make_event("t", "1"))
    assert registry.listener_errors == 1
    assert "scheduler" in str(reported[0])


def test_listeners_are_called_in_registration_order() -> None:
    registry = ListenerRegistry()
    calls: list[int] = []
    listeners = [lambda event, i=i: calls.append(i) for i in range(50)]
    for listener in listeners:
        registry.add("t:1", listener)
    registry.remove("t:1", listeners[10])
    registry.add("t:1", listeners[10])
    registry.dispatch(make_event("t", "1"))
    assert calls == [*range(10), *range(11, 50), 10]


def test_listener_removed_during_dispatch_is_not_called() -> None:
    """DOM EventTarget semantics: a listener removed by an earlier listener of
    the same event is skipped; one added meanwhile runs from the next event."""
    registry = ListenerRegistry()
    calls: list[str] = []

    class Handler:
        def second(self, event: Event) -> None:
            calls.append("second")

    handler = Handler()

    def first(event: Event) -> None:
        calls.append("first")
        registry.remove("t:1", handler.second)  # a new bound-method object
        registry.add("t:1", late)

    def late(event: Event) -> None:
        calls.append("late")

    registry.add("t:1", first)
    registry.add("t:1", handler.second)
    assert registry.dispatch(make_event("t", "1")) == 1
    assert calls == ["first"]
    registry.remove("t:1", first)
    registry.dispatch(make_event("t", "1"))
    assert calls == ["first", "late"]


def test_removal_during_dispatch_skips_only_that_topic() -> None:
    registry = ListenerRegistry()
    calls: list[str] = []

    def shared(event: Event) -> None:
        calls.append(event.type)

    def on_a(event: Event) -> None:
        registry.remove("a:1", shared)
        registry.dispatch(make_event("b", "1"))  # nested dispatch of another topic

    registry.add("a:1", on_a)
    registry.add("a:1", shared)
    registry.add("b:1", shared)
    registry.dispatch(make_event("a", "1"))
    assert calls == ["b:1"]


async def test_custom_scheduler_receives_coroutines() -> None:
    scheduled: list[Coroutine[Any, Any, None]] = []
    ran: list[str] = []
    registry = ListenerRegistry(schedule=scheduled.append)

    async def listener(event: Event) -> None:
        ran.append(event.type)

    registry.add("t:1", listener)
    registry.dispatch(make_event("t", "1"))
    assert ran == []
    assert len(scheduled) == 1
    await within(scheduled[0])
    assert ran == ["t:1"]


def test_b6_bound_methods_of_one_object_are_one_listener() -> None:
    class Handler:
        def __init__(self) -> None:
            self.seen = 0

        def on_event(self, event: Event) -> None:
            self.seen += 1

    handler = Handler()
    registry = ListenerRegistry()
    assert registry.add("t:1", handler.on_event) is True
    assert registry.add("t:1", handler.on_event) is False
    registry.dispatch(make_event("t", "1"))
    assert handler.seen == 1
    assert registry.remove("t:1", handler.on_event) is True


def test_removal_during_nested_dispatch_of_the_same_topic() -> None:
    """A listener removed inside a nested dispatch of the same topic is skipped
    by the outer dispatch too; counts stay exact for each dispatch."""
    registry = ListenerRegistry()
    calls: list[str] = []
    counts: list[int] = []

    def first(event: Event) -> None:
        calls.append(f"first:{event.detail.payload}")
        if event.detail.payload == "outer":
            counts.append(registry.dispatch(make_event("t", "1", "inner")))

    def remover(event: Event) -> None:
        calls.append(f"remover:{event.detail.payload}")
        registry.remove("t:1", last)
        registry.remove("t:1", first)  # already called in this dispatch: still counted

    def last(event: Event) -> None:
        calls.append(f"last:{event.detail.payload}")

    for listener in (first, remover, last):
        registry.add("t:1", listener)
    counts.append(registry.dispatch(make_event("t", "1", "outer")))
    assert calls == ["first:outer", "first:inner", "remover:inner", "remover:outer"]
    assert counts == [2, 2]
    assert registry.count("t:1") == 1


def test_count_does_not_rebuild_the_dispatch_list() -> None:
    registry = ListenerRegistry()
    listeners = [lambda event, i=i: None for i in range(3)]
    for listener in listeners:
        registry.add("t:1", listener)
    registry.dispatch(make_event("t", "1"))
    registry.remove("t:1", listeners[0])
    assert registry.count("t:1") == 2
    assert registry.count("none:1") == 0
    assert registry.dispatch(make_event("t", "1")) == 2
