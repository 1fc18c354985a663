"""PubSub and Subscription behaviour on the memory target (SPEC §6, B11)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from pydantic import BaseModel

from alkpubsub import (
    Envelope,
    EventEnvelope,
    InvalidTopicError,
    Listener,
    MemoryEventTarget,
    ReservedTypeError,
    Subscription,
    SubscriptionOverflowError,
    create_pubsub,
)
from alkpubsub.testing import within


async def test_publish_dispatches_full_topic_synchronously() -> None:
    target = MemoryEventTarget()
    pubsub = create_pubsub(target)
    seen: list[str] = []
    target.add_event_listener("call.responded:req-1", lambda e: seen.append(e.type))
    pubsub.publish("call.responded", "req-1", {"output": 42})
    assert seen == ["call.responded:req-1"]  # listeners ran before publish returned


async def test_default_target_is_in_process() -> None:
    pubsub = create_pubsub()
    assert isinstance(pubsub.target, MemoryEventTarget)


async def test_subscribe_registers_immediately_and_yields_envelopes() -> None:
    pubsub = create_pubsub()
    subscription = pubsub.subscribe("t", "1")
    pubsub.publish("t", "1", "early")  # before the first __anext__
    pubsub.publish("t", "2", "other")
    envelope = await within(anext(subscription))
    assert (envelope.type, envelope.id, envelope.payload) == ("t", "1", "early")


async def test_break_removes_the_listener() -> None:
    target = MemoryEventTarget()
    pubsub = create_pubsub(target)
    pubsub_iter = pubsub.subscribe("t", "1")
    pubsub.publish("t", "1", 1)
    async for _ in pubsub_iter:
        break
    del pubsub_iter
    gc.collect()
    assert target.listener_count("t:1") == 0


class _SignallingTarget(MemoryEventTarget):
    """Tells the test when a listener was registered."""

    def __init__(self) -> None:
        super().__init__()
        self.listener_added = asyncio.Event()

    def add_event_listener(self, topic: str, listener: Listener | None) -> None:
        super().add_event_listener(topic, listener)
        self.listener_added.set()


async def test_iterator_created_in_the_for_statement_is_released_on_return() -> None:
    target = _SignallingTarget()
    pubsub = create_pubsub(target)

    async def first() -> object:
        async for envelope in pubsub.subscribe("t", "1"):
            return envelope.payload
        return None

    task = asyncio.ensure_future(first())
    await within(target.listener_added.wait())
    pubsub.publish("t", "1", "x")
    assert await within(task) == "x"
    assert target.listener_count("t:1") == 0


async def test_aclose_and_context_manager_remove_the_listener() -> None:
    target = MemoryEventTarget()
    pubsub = create_pubsub(target)
    subscription = pubsub.subscribe("t", "1")
    assert target.listener_count("t:1") == 1
    await subscription.aclose()
    assert target.listener_count("t:1") == 0
    with pytest.raises(StopAsyncIteration):
        await within(anext(subscription))
    async with pubsub.subscribe("t", "2"):
        assert target.listener_count("t:2") == 1
    assert target.listener_count("t:2") == 0


async def test_overflow_raise_is_explicit_after_buffered_items() -> None:
    pubsub = create_pubsub()
    subscription = pubsub.subscribe("t", "1", max_buffer=3)
    for i in range(5):
        pubsub.publish("t", "1", i)
    received = [(await within(anext(subscription))).payload for _ in range(3)]
    assert received == [0, 1, 2]
    with pytest.raises(SubscriptionOverflowError, match="overflowed"):
        await within(anext(subscription))


async def test_overflow_drop_oldest_and_drop_newest_count_drops() -> None:
    pubsub = create_pubsub()
    oldest = pubsub.subscribe("t", "1", max_buffer=2, overflow="drop_oldest")
    newest = pubsub.subscribe("t", "1", max_buffer=2, overflow="drop_newest")
    for i in range(5):
        pubsub.publish("t", "1", i)
    assert [(await within(anext(oldest))).payload for _ in range(2)] == [3, 4]
    assert [(await within(anext(newest))).payload for _ in range(2)] == [0, 1]
    assert oldest.dropped == 3
    assert newest.dropped == 3


async def test_subscribe_argument_errors() -> None:
    pubsub = create_pubsub()
    with pytest.raises(ReservedTypeError):
        pubsub.subscribe("__welcome", "")
    with pytest.raises(ValueError, match="max_buffer"):
        pubsub.subscribe("t", "1", max_buffer=0)
    with pytest.raises(ValueError, match="overflow"):
        pubsub.subscribe("t", "1", overflow="block")  # type: ignore[call-overload]
    # One mistake, one exception, whether publishing or subscribing.
    for call in (pubsub.subscribe, pubsub.publish):
        with pytest.raises(InvalidTopicError, match="id must be a str"):
            call("t", 1)  # type: ignore[operator]
        with pytest.raises(InvalidTopicError, match="invalid event type"):
            call("a b", "1")


async def test_pubsub_context_manager_closes_target() -> None:
    async with create_pubsub(MemoryEventTarget()) as pubsub:
        subscription = pubsub.subscribe("t", "1")
        await pubsub.flush()
        await pubsub.drain()
    assert pubsub.target.closed  # type: ignore[attr-defined]
    with pytest.raises(StopAsyncIteration):
        await within(anext(subscription))


# -- issue 11: readers, closing, timeouts, typed envelopes ---------------------


async def _waiting(subscription: Subscription[Any], count: int) -> list[asyncio.Task[Any]]:
    """``count`` tasks waiting in ``anext(subscription)``, in that order."""
    readers = []
    for _ in range(count):
        started = asyncio.Event()

        async def read(started: asyncio.Event = started) -> Any:
            started.set()
            return await anext(subscription)

        readers.append(asyncio.ensure_future(read()))
        await within(started.wait())
    return readers


async def test_readers_are_served_in_the_order_they_started_waiting() -> None:
    pubsub = create_pubsub()
    subscription = pubsub.subscribe("t", "1")
    readers = await _waiting(subscription, 3)
    for payload in "abc":
        pubsub.publish("t", "1", payload)
    assert [(await within(reader)).payload for reader in readers] == ["a", "b", "c"]


async def test_nothing_is_yielded_after_aclose_even_if_handed_over() -> None:
    """An envelope handed to a waiting reader that has not run yet is dropped
    when the consumer closes the subscription before the reader resumes."""
    target = MemoryEventTarget()
    pubsub = create_pubsub(target)
    subscription = pubsub.subscribe("t", "1")
    (reader,) = await _waiting(subscription, 1)
    pubsub.publish("t", "1", "handed over")
    await subscription.aclose()
    with pytest.raises(StopAsyncIteration):
        await within(reader)
    assert subscription.closed


async def test_cancelling_one_reader_ends_the_subscription_for_all() -> None:
    target = MemoryEventTarget()
    pubsub = create_pubsub(target)
    subscription = pubsub.subscribe("t", "1")
    first, second = await _waiting(subscription, 2)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(first)
    with pytest.raises(StopAsyncIteration):
        await within(second)
    assert target.listener_count("t:1") == 0


async def test_heartbeat_loop_with_next_timeout() -> None:
    """The documented heartbeat pattern: timeouts keep the subscription and
    leave no waiter behind; the loop ends when the target closes."""
    target = MemoryEventTarget()
    pubsub = create_pubsub(target)
    subscription = pubsub.subscribe("t", "1")
    beats, received = 0, []
    while True:
        try:
            envelope = await within(subscription.next(timeout=0.001))
        except TimeoutError:
            beats += 1
            if beats == 20:
                pubsub.publish("t", "1", "data")
            if beats == 30:
                await target.aclose()
            continue
        except StopAsyncIteration:
            break
        received.append(envelope.payload)
        assert not subscription._state.waiters  # timed-out waiters do not pile up
    assert received == ["data"]
    assert beats == 30


async def test_next_with_timeout_returns_what_is_buffered_at_once() -> None:
    pubsub = create_pubsub()
    subscription = pubsub.subscribe("t", "1")
    pubsub.publish("t", "1", 1)
    assert (await within(subscription.next(timeout=0))).payload == 1
    with pytest.raises(TimeoutError):
        await within(subscription.next(timeout=0))
    await subscription.aclose()
    with pytest.raises(StopAsyncIteration):
        await within(subscription.next(timeout=1))


async def test_overflow_raise_still_ends_waiting_readers() -> None:
    pubsub = create_pubsub()
    subscription = pubsub.subscribe("t", "1", max_buffer=1)
    for i in range(3):
        pubsub.publish("t", "1", i)
    assert (await within(anext(subscription))).payload == 0
    with pytest.raises(SubscriptionOverflowError):
        await within(anext(subscription))
    assert subscription.closed


class _Point(BaseModel):
    x: int


async def test_envelope_is_a_typing_view_of_event_envelope() -> None:
    pubsub = create_pubsub()
    subscription = pubsub.subscribe("p", "1", model=_Point)
    pubsub.publish("p", "1", {"x": 3})
    envelope = await within(anext(subscription))
    assert type(envelope) is EventEnvelope
    assert isinstance(envelope, Envelope)
    assert issubclass(EventEnvelope, Envelope)
    assert envelope.payload == _Point(x=3)
    assert Envelope[_Point] is not None  # usable in annotations evaluated at run time
    built = Envelope(type="p", id="1", payload=_Point(x=3))
    assert type(built) is EventEnvelope
    assert built == envelope
