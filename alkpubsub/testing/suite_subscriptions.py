"""Conformance tests of subscriptions and operators, written once for every bus.

``subscribe()`` iterators and the operators are shared code, but what they rely
on (listeners, close callbacks, refcounted hub subscriptions, delivery on
another task) is each transport's: a transport passes these tests when a user
building a GraphQL or SSE server on it gets no hang, no leak and cancellation
that works. Targets must provide ``listener_count(topic)`` (``ListenerCounting``).

Conventions as in ``suite.py``: no sleeps (readers signal that they are about to
wait; the test waits for that signal), every await bounded with ``within``.
``targets[0]`` publishes and ``targets[-1]`` subscribes: on a hub bus that is
the hub publishing to a spoke, so releases are checked on the hub too.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

import pytest

from .. import operators as op
from ..core.envelope import Event, EventEnvelope, make_event
from ..pubsub import create_pubsub
from ..target import TypedEventTarget
from .harness import BusHarness, HubLike, SpokeLike
from .helpers import Recorder, within

__all__ = ["ListenerCounting", "SubscriptionConformance"]


@runtime_checkable
class ListenerCounting(Protocol):
    """Every alkpubsub target counts its local listeners per topic, so that
    users (and these tests) can check for leaks without private attributes."""

    def listener_count(self, topic: str) -> int: ...


def _count(target: TypedEventTarget, topic: str) -> int:
    assert isinstance(target, ListenerCounting), (
        f"{type(target).__name__} has no listener_count(topic)"
    )
    return target.listener_count(topic)


async def _flush_all(targets: list[TypedEventTarget]) -> None:
    for target in dict.fromkeys(targets):
        await within(target.flush())


async def _hub_subscribed(targets: list[TypedEventTarget], topic: str) -> bool | None:
    """Whether the hub still has the subscriber spoke subscribed to ``topic``
    (None on a bus without a hub)."""
    hub, subscriber = targets[0], targets[-1]
    if subscriber is hub or not isinstance(hub, HubLike):
        return None
    assert isinstance(subscriber, SpokeLike)
    await within(subscriber.flush())
    return any(peer.spoke_id == subscriber.spoke_id for peer in hub.subscribers(topic))


async def _assert_released(targets: list[TypedEventTarget], topic: str) -> None:
    """No listener on the subscriber and, on a hub bus, no hub subscription."""
    assert _count(targets[-1], topic) == 0, f"a listener of {topic!r} outlived its consumer"
    assert await _hub_subscribed(targets, topic) in (False, None), (
        f"the hub still sends {topic!r} to a spoke whose consumer is gone"
    )


class _Reader:
    """A task reading one item, with a signal set just before it awaits, so
    that a test knows the reader is waiting without sleeping."""

    def __init__(self, read: Callable[[], Awaitable[Any]]) -> None:
        self.waiting = asyncio.Event()

        async def run() -> Any:
            self.waiting.set()  # the read below suspends before this task yields
            return await read()

        self.task: asyncio.Task[Any] = asyncio.ensure_future(run())

    async def started(self) -> _Reader:
        await within(self.waiting.wait())
        return self

    async def result(self) -> Any:
        return await within(self.task)

    async def ends(self) -> bool:
        """True when the read ended the iteration (StopAsyncIteration)."""
        try:
            await within(self.task)
        except StopAsyncIteration:
            return True
        return False


async def _readers(count: int, read: Callable[[], Awaitable[Any]]) -> list[_Reader]:
    return [await _Reader(read).started() for _ in range(count)]


async def _subscribed(
    bus: BusHarness, type_: str, id_: str = "1", **options: Any
) -> tuple[list[TypedEventTarget], Any]:
    targets = await bus.open(2)
    subscription = create_pubsub(targets[-1]).subscribe(type_, id_, **options)
    await _flush_all(targets)
    return targets, subscription


def _publish(targets: list[TypedEventTarget], type_: str, *payloads: Any, id_: str = "1") -> None:
    for payload in payloads:
        targets[0].dispatch_event(make_event(type_, id_, payload))


async def _delivered(targets: list[TypedEventTarget], type_: str, count: int) -> None:
    """Publish ``count`` markers after what was published, and wait until the
    last reached the subscriber target (a recorder registered after the
    subscription hears it after it): then everything before it was delivered
    too (per-publisher order)."""
    rec = Recorder("sentinel")
    targets[-1].add_event_listener(f"{type_}:1", rec)
    await _flush_all(targets)
    _publish(targets, type_, *[f"marker-{i}" for i in range(count)])
    await rec.wait_for_payload(f"marker-{count - 1}")
    targets[-1].remove_event_listener(f"{type_}:1", rec)


async def _payloads(iterator: AsyncIterator[EventEnvelope], count: int) -> list[Any]:
    return [(await within(anext(iterator))).payload for _ in range(count)]


@pytest.mark.asyncio
class SubscriptionConformance:
    """``subscribe()`` iterators and operators on a bus (items 1-10 of
    ``docs/subscriptions.md``). Needs a ``bus`` fixture (see plugin)."""

    # -- 1. concurrent readers ------------------------------------------------

    async def test_concurrent_readers_are_served_in_order(self, bus: BusHarness) -> None:
        """Two tasks waiting in ``__anext__`` of one subscription get the next
        envelopes in the order they started waiting; none hangs."""
        targets, subscription = await _subscribed(bus, "sub.concurrent")
        first, second = await _readers(2, lambda: anext(subscription))
        _publish(targets, "sub.concurrent", "x", "y")
        got = [(await reader.result()).payload for reader in (first, second)]
        assert got == ["x", "y"], got
        await subscription.aclose()
        await _assert_released(targets, "sub.concurrent:1")

    async def test_join_of_one_subscription_with_itself(self, bus: BusHarness) -> None:
        """``op.join(s, s)`` (two readers of one subscription) delivers each
        envelope once, and ends when the target closes (both readers end)."""
        targets, subscription = await _subscribed(bus, "sub.selfjoin")
        merged = op.join(subscription, subscription)
        _publish(targets, "sub.selfjoin", 1, 2, 3)
        got = sorted(await _payloads(merged, 3))
        assert got == [1, 2, 3], got
        await within(targets[-1].aclose())
        with pytest.raises(StopAsyncIteration):
            await within(anext(merged))

    async def test_every_waiter_ends_on_aclose(self, bus: BusHarness) -> None:
        """``aclose()`` from another task ends every waiting reader."""
        targets, subscription = await _subscribed(bus, "sub.waiters")
        readers = await _readers(3, lambda: anext(subscription))
        await within(subscription.aclose())
        assert [await reader.ends() for reader in readers] == [True] * 3
        await _assert_released(targets, "sub.waiters:1")

    async def test_every_waiter_ends_when_the_target_closes(self, bus: BusHarness) -> None:
        """B11: closing the target ends every waiting reader of every subscription."""
        targets, subscription = await _subscribed(bus, "sub.close")
        pipeline = op.filter(create_pubsub(targets[-1]).subscribe("sub.close", "2"), bool)
        await _flush_all(targets)
        readers = await _readers(2, lambda: anext(subscription))
        readers.append(await _Reader(lambda: anext(pipeline)).started())
        await within(targets[-1].aclose())
        assert [await reader.ends() for reader in readers] == [True] * 3

    # -- 2. aclose() vs target close ------------------------------------------

    async def test_aclose_discards_buffered_envelopes(self, bus: BusHarness) -> None:
        """After the consumer's ``aclose()`` iteration ends, even with envelopes
        buffered (PEP 525)."""
        targets, subscription = await _subscribed(bus, "sub.discard")
        _publish(targets, "sub.discard", 1, 2)
        await _delivered(targets, "sub.discard", 1)
        await within(subscription.aclose())
        with pytest.raises(StopAsyncIteration):
            await within(anext(subscription))
        assert subscription.closed
        await _assert_released(targets, "sub.discard:1")

    async def test_target_close_drains_buffered_envelopes(self, bus: BusHarness) -> None:
        """B11: when the target closes, what was buffered is still yielded, then
        iteration ends."""
        targets, subscription = await _subscribed(bus, "sub.drain")
        _publish(targets, "sub.drain", 1, 2)
        await _delivered(targets, "sub.drain", 1)
        await within(targets[-1].aclose())
        received = [envelope.payload async for envelope in subscription]
        assert received == [1, 2, "marker-0"], received

    # -- 3. operators cancellable from outside ---------------------------------

    async def test_operator_pipeline_closed_from_another_task(self, bus: BusHarness) -> None:
        """A GraphQL server cancels a client's subscription by closing its
        pipeline from another task: the waiting reader ends, the listener and
        the hub subscription are released."""
        targets, subscription = await _subscribed(bus, "sub.pipeline")
        pipeline = op.take(op.map(op.filter(subscription, bool), lambda e: e.payload), 10)
        reader = await _Reader(lambda: anext(pipeline)).started()
        await within(pipeline.aclose())
        assert await reader.ends()
        await _assert_released(targets, "sub.pipeline:1")
        with pytest.raises(StopAsyncIteration):
            await within(anext(pipeline))

    async def test_async_for_over_a_pipeline_ends_when_closed(self, bus: BusHarness) -> None:
        """The consumer's ``async for`` ends normally (no exception) when another
        task closes the pipeline."""
        targets, subscription = await _subscribed(bus, "sub.loop")
        pipeline = op.batch(op.map(subscription, lambda e: e.payload), 2, timeout=30)
        got: list[list[Any]] = []
        first = asyncio.Event()

        async def consume() -> None:
            async for items in pipeline:
                got.append(items)
                first.set()

        consumer = asyncio.ensure_future(consume())
        _publish(targets, "sub.loop", 1, 2)
        await within(first.wait())
        await within(pipeline.aclose())
        await within(consumer)
        assert got == [[1, 2]], got
        await _assert_released(targets, "sub.loop:1")

    # -- 4. chain ----------------------------------------------------------------

    async def test_chain_closes_sources_not_reached(self, bus: BusHarness) -> None:
        """Closing ``chain`` closes every source, also those it has not reached."""
        targets = await bus.open(2)
        pubsub = create_pubsub(targets[-1])
        # The application keeps its subscriptions (e.g. per client), so they
        # are not released by garbage collection.
        first, second = pubsub.subscribe("sub.chain", "1"), pubsub.subscribe("sub.chain", "2")
        chained = op.chain(first, second)
        await _flush_all(targets)
        _publish(targets, "sub.chain", "first")
        first_items = await _payloads(chained, 1)
        assert first_items == ["first"], first_items
        await within(chained.aclose())
        await _assert_released(targets, "sub.chain:1")
        await _assert_released(targets, "sub.chain:2")
        assert first.closed
        assert second.closed

    # -- 5, 6. dedupe and keys -------------------------------------------------

    async def test_dedupe_keys_envelopes_canonically(self, bus: BusHarness) -> None:
        """Equal envelopes are duplicates whatever the order of their keys."""
        targets, subscription = await _subscribed(bus, "sub.dedupe")
        _publish(targets, "sub.dedupe", {"a": 1, "b": 2}, {"b": 2, "a": 1}, {"a": 1.0, "b": 2})
        _publish(targets, "sub.dedupe", {"a": 2, "b": 2}, "end")
        unique = op.take(op.dedupe(subscription), 3)
        payloads = [envelope.payload async for envelope in unique]
        assert payloads == [{"a": 1, "b": 2}, {"a": 2, "b": 2}, "end"], payloads
        await _assert_released(targets, "sub.dedupe:1")

    async def test_async_key_functions_are_awaited(self, bus: BusHarness) -> None:
        """``dedupe`` and ``group_by`` accept async key functions, as filter,
        map and reduce accept async callables."""
        targets, subscription = await _subscribed(bus, "sub.keys")

        async def parity(envelope: EventEnvelope) -> str:
            return "odd" if envelope.payload % 2 else "even"

        _publish(targets, "sub.keys", 1, 3, 2, 5, 4, 6)
        firsts = op.take(op.dedupe(subscription, key=parity), 2)
        first_payloads = [envelope.payload async for envelope in firsts]
        assert first_payloads == [1, 2], first_payloads
        await _assert_released(targets, "sub.keys:1")
        again = create_pubsub(targets[-1]).subscribe("sub.keys", "2")
        await _flush_all(targets)
        _publish(targets, "sub.keys", 1, 2, 3, id_="2")
        groups = await within(op.group_by(op.take(again, 3), parity))
        grouped = {key: [e.payload for e in group] for key, group in groups.items()}
        assert grouped == {"odd": [1, 3], "even": [2]}, grouped
        await _assert_released(targets, "sub.keys:2")

    # -- 7. removal during dispatch ----------------------------------------------

    async def test_listener_removed_during_dispatch_is_not_called(self, bus: BusHarness) -> None:
        """DOM semantics: a listener removed by another listener while an event
        is being dispatched is not called for that event."""
        targets = await bus.open(2)
        subscriber = targets[-1]
        removed = Recorder("removed")

        def remover(event: Event) -> None:
            subscriber.remove_event_listener("sub.dom:1", removed)

        sentinel = Recorder("sentinel")
        subscriber.add_event_listener("sub.dom:1", remover)
        subscriber.add_event_listener("sub.dom:1", removed)
        subscriber.add_event_listener("sub.dom:1", sentinel)
        await _flush_all(targets)
        _publish(targets, "sub.dom", 1, 2)
        await sentinel.wait_for_count(2)
        assert removed.payloads == [], removed.payloads

    # -- 8. releasing is linear -------------------------------------------------

    async def test_releasing_subscriptions_is_linear(self, bus: BusHarness) -> None:
        """Releasing 4N subscriptions of one topic costs about 4x releasing N,
        at most 8x (quadratic bookkeeping costs 11-16x at these sizes). The best
        of five rounds of CPU time is compared, never a fixed time."""
        targets = await bus.open(2)
        pubsub = create_pubsub(targets[-1])
        small, factor = 2000, 4

        async def release_seconds(count: int, round_: int) -> float:
            topic_id = f"{count}-{round_}"
            subscriptions = [pubsub.subscribe("sub.linear", topic_id) for _ in range(count)]
            await within(targets[-1].flush())
            gc.collect()  # not a collection left over from building them
            started = time.process_time()  # CPU time: immune to the machine's other load
            for subscription in subscriptions:
                await subscription.aclose()  # never suspends: nothing else runs meanwhile
            elapsed = time.process_time() - started
            assert _count(targets[-1], f"sub.linear:{topic_id}") == 0
            return elapsed

        best_small = min([await release_seconds(small, r) for r in range(5)])
        best_large = min([await release_seconds(small * factor, r) for r in range(5)])
        ratio = best_large / max(best_small, 1e-6)
        assert ratio < 2 * factor, (
            f"releasing {small * factor} took {ratio:.1f}x releasing {small} "
            f"({best_large:.4f}s vs {best_small:.4f}s): not linear"
        )

    # -- 9. listener_count ---------------------------------------------------------

    async def test_listener_count_on_every_target(self, bus: BusHarness) -> None:
        """Every target of the bus counts its local listeners per topic."""
        targets = await bus.open(2)
        for target in dict.fromkeys(targets):
            assert _count(target, "sub.count:1") == 0
            subscriptions = [create_pubsub(target).subscribe("sub.count", "1") for _ in range(2)]
            assert _count(target, "sub.count:1") == 2
            await subscriptions[0].aclose()
            assert _count(target, "sub.count:1") == 1
            await subscriptions[1].aclose()
            assert _count(target, "sub.count:1") == 0

    # -- 10. timeouts ----------------------------------------------------------------

    async def test_next_with_timeout_keeps_the_subscription(self, bus: BusHarness) -> None:
        """``next(timeout=)`` raises TimeoutError and the subscription (or
        pipeline) stays live: nothing is lost, nothing is released."""
        targets, subscription = await _subscribed(bus, "sub.heartbeat")
        pipeline = op.map(create_pubsub(targets[-1]).subscribe("sub.heartbeat", "2"), str)
        await _flush_all(targets)
        for _ in range(3):
            with pytest.raises(TimeoutError):
                await within(subscription.next(timeout=0.01))
            with pytest.raises(TimeoutError):
                await within(pipeline.next(timeout=0.01))
        assert _count(targets[-1], "sub.heartbeat:1") == 1
        assert _count(targets[-1], "sub.heartbeat:2") == 1
        _publish(targets, "sub.heartbeat", "beat")
        _publish(targets, "sub.heartbeat", "pipe", id_="2")
        assert (await within(subscription.next(timeout=10))).payload == "beat"
        assert "pipe" in await within(pipeline.next(timeout=10))
        await within(subscription.aclose())
        await within(pipeline.aclose())
        await _assert_released(targets, "sub.heartbeat:1")
        await _assert_released(targets, "sub.heartbeat:2")

    async def test_cancelled_read_ends_the_subscription(self, bus: BusHarness) -> None:
        """A read cancelled from outside (``wait_for`` timing out, a cancelled
        task) ends the subscription and releases it, as it ends an async
        generator: documented, with ``next(timeout=)`` as the safe pattern."""
        targets, subscription = await _subscribed(bus, "sub.cancel")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(subscription), 0.01)
        assert subscription.closed
        await _assert_released(targets, "sub.cancel:1")
        with pytest.raises(StopAsyncIteration):
            await within(anext(subscription))
