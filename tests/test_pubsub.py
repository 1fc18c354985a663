"""PubSub and Subscription behaviour on the memory target (SPEC §6, B11)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from alkpubsub import (
    InvalidTopicError,
    Listener,
    MemoryEventTarget,
    ReservedTypeError,
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
