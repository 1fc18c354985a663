"""The 13 operators of SPEC §6."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import pytest

from alkpubsub import EventEnvelope, MemoryEventTarget, create_pubsub
from alkpubsub import operators as op
from alkpubsub.testing import within


async def source(*items: int) -> AsyncIterator[int]:
    for item in items:
        yield item


async def is_even(x: int) -> bool:
    return x % 2 == 0


async def test_filter_sync_and_async_predicates() -> None:
    assert await op.to_list(op.filter(source(1, 2, 3, 4), lambda x: x > 2)) == [3, 4]
    assert await op.to_list(op.filter(source(1, 2, 3, 4), is_even)) == [2, 4]


async def test_map_sync_and_async() -> None:
    async def double(x: int) -> int:
        return x * 2

    assert await op.to_list(op.map(source(1, 2), str)) == ["1", "2"]
    assert await op.to_list(op.map(source(1, 2), double)) == [2, 4]


async def test_pipe_applies_stages_in_order() -> None:
    piped = op.pipe(
        source(1, 2, 3, 4, 5, 6),
        partial(op.filter, predicate=is_even),
        partial(op.map, fn=lambda x: x * 10),
        partial(op.take, count=2),
    )
    assert await op.to_list(piped) == [20, 40]
    assert await op.to_list(op.pipe(source(1))) == [1]


async def test_take_closes_a_live_subscription() -> None:
    target = MemoryEventTarget()
    pubsub = create_pubsub(target)
    subscription = pubsub.subscribe("t", "1")
    for i in range(5):
        pubsub.publish("t", "1", i)
    taken = await within(op.to_list(op.take(subscription, 3)))
    assert [envelope.payload for envelope in taken] == [0, 1, 2]
    assert target.listener_count("t:1") == 0
    assert await op.to_list(op.take(source(1, 2), 0)) == []
    with pytest.raises(ValueError, match="count"):
        await op.to_list(op.take(source(1), -1))


async def test_reduce_and_to_list() -> None:
    assert await op.reduce(source(1, 2, 3), lambda acc, x: acc + x, 0) == 6
    assert await op.to_list(source()) == []


async def test_batch_by_count_with_final_partial() -> None:
    batches = await op.to_list(op.batch(source(1, 2, 3, 4, 5), 2))
    assert batches == [[1, 2], [3, 4], [5]]


async def test_batch_timeout_emits_partial_batches() -> None:
    queue: asyncio.Queue[int | None] = asyncio.Queue()

    async def slow_source() -> AsyncIterator[int]:
        while (item := await queue.get()) is not None:
            yield item

    batches = op.batch(slow_source(), 10, timeout=0.05)
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert await within(anext(batches)) == [1, 2]  # emitted by timeout, not size
    queue.put_nowait(3)
    queue.put_nowait(None)
    assert await within(anext(batches)) == [3]
    with pytest.raises(StopAsyncIteration):
        await within(anext(batches))


async def test_dedupe_with_default_and_custom_keys() -> None:
    assert await op.to_list(op.dedupe(source(1, 2, 1, 3, 2))) == [1, 2, 3]
    assert await op.to_list(op.dedupe(source(1, 2, 3, 4), key=lambda x: x % 2)) == [1, 2]
    # bounded memory: keys older than `memory` distinct keys can pass again
    assert await op.to_list(op.dedupe(source(1, 2, 1), memory=1)) == [1, 2, 1]
    envelopes = [EventEnvelope(type="t", id="1", payload={"a": i % 2}) for i in range(4)]

    async def env_source() -> AsyncIterator[EventEnvelope]:
        for envelope in envelopes:
            yield envelope

    assert await op.to_list(op.dedupe(env_source())) == envelopes[:2]


async def test_window_sliding_and_stepped() -> None:
    assert await op.to_list(op.window(source(1, 2, 3, 4), 2)) == [(1, 2), (2, 3), (3, 4)]
    assert await op.to_list(op.window(source(1, 2, 3, 4, 5), 2, step=2)) == [(1, 2), (3, 4)]
    assert await op.to_list(op.window(source(1), 2)) == []


async def test_flat_sync_and_async_inner() -> None:
    async def nested() -> AsyncIterator[object]:
        yield [1, 2]
        yield source(3, 4)

    assert await op.to_list(op.flat(nested())) == [1, 2, 3, 4]  # type: ignore[arg-type]


async def test_group_by_keeps_first_seen_order() -> None:
    groups = await op.group_by(source(1, 2, 3, 4, 5), lambda x: "odd" if x % 2 else "even")
    assert groups == {"odd": [1, 3, 5], "even": [2, 4]}
    assert list(groups) == ["odd", "even"]


async def test_chain_is_sequential() -> None:
    assert await op.to_list(op.chain(source(1, 2), source(3), source())) == [1, 2, 3]


async def test_join_merges_concurrently_until_all_end() -> None:
    fast_queue: asyncio.Queue[int | None] = asyncio.Queue()
    slow_queue: asyncio.Queue[int | None] = asyncio.Queue()

    async def from_queue(queue: asyncio.Queue[int | None]) -> AsyncIterator[int]:
        while (item := await queue.get()) is not None:
            yield item

    merged = op.join(from_queue(slow_queue), from_queue(fast_queue))
    fast_queue.put_nowait(1)
    assert await within(anext(merged)) == 1  # does not wait for the slow source
    slow_queue.put_nowait(2)
    assert await within(anext(merged)) == 2
    fast_queue.put_nowait(None)
    slow_queue.put_nowait(None)
    with pytest.raises(StopAsyncIteration):
        await within(anext(merged))


async def test_join_of_subscriptions_releases_all_on_close() -> None:
    target = MemoryEventTarget()
    pubsub = create_pubsub(target)
    merged = op.join(pubsub.subscribe("a", "1"), pubsub.subscribe("b", "1"))
    pubsub.publish("b", "1", "from-b")
    assert (await within(anext(merged))).payload == "from-b"
    await merged.aclose()
    assert target.listener_count("a:1") == target.listener_count("b:1") == 0


# -- issue 11: operators closable from outside, no hangs, no leaks ---------------


class _Started:
    """A source that tells the test when it is waiting, and whether it was closed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[int] = asyncio.Queue()
        self.waiting = asyncio.Event()
        self.closed = False

    async def items(self) -> AsyncIterator[int]:
        try:
            while True:
                self.waiting.set()
                yield await self.queue.get()
        finally:
            self.closed = True


async def _reading(iterator: AsyncIterator[object], ready: asyncio.Event) -> asyncio.Task[object]:
    task: asyncio.Task[object] = asyncio.ensure_future(anext(iterator))
    await within(ready.wait())
    return task


async def test_closing_from_another_task_ends_a_read_in_a_foreign_generator() -> None:
    """The RuntimeError 'aclose(): asynchronous generator is already running'
    of async-generator operators is gone: the read ends, the source is closed."""
    source = _Started()
    pipeline = op.map(op.filter(source.items(), lambda x: x > 0), str)
    reader = await _reading(pipeline, source.waiting)
    await within(pipeline.aclose())
    with pytest.raises(StopAsyncIteration):
        await within(reader)
    assert source.closed
    assert pipeline.closed


async def test_closing_interrupts_a_read_waiting_in_an_async_callable() -> None:
    gate, entered = asyncio.Event(), asyncio.Event()

    async def slow(x: int) -> int:
        entered.set()
        await gate.wait()
        return x

    mapped = op.map(source(1, 2), slow)
    reader = await _reading(mapped, entered)
    await within(mapped.aclose())
    with pytest.raises(StopAsyncIteration):
        await within(reader)


async def test_outside_cancellation_wins_over_closing() -> None:
    """A read cancelled from outside and interrupted by aclose() at once ends
    cancelled: aclose() never swallows someone else's cancellation."""
    source_ = _Started()
    pipeline = op.filter(source_.items(), bool)
    reader = await _reading(pipeline, source_.waiting)
    reader.cancel()
    await within(pipeline.aclose())
    with pytest.raises(asyncio.CancelledError):
        await within(reader)
    assert source_.closed


async def test_concurrent_readers_of_an_operator_are_served_in_order() -> None:
    source_ = _Started()
    doubled = op.map(source_.items(), lambda x: x * 2)
    first = await _reading(doubled, source_.waiting)
    second: asyncio.Task[object] = asyncio.ensure_future(anext(doubled))
    source_.queue.put_nowait(1)
    source_.queue.put_nowait(2)
    assert await within(first) == 2
    assert await within(second) == 4
    await within(doubled.aclose())


async def test_reading_an_operator_from_its_own_callable_is_refused() -> None:
    async def reenter(x: int) -> bool:
        await anext(looping)
        return True

    looping = op.filter(source(1, 2), reenter)
    with pytest.raises(RuntimeError, match="read again"):
        await within(anext(looping))


async def test_a_cancelled_read_ends_the_operator_and_closes_its_source() -> None:
    target = MemoryEventTarget()
    pubsub = create_pubsub(target)
    pipeline = op.map(pubsub.subscribe("t", "1"), lambda e: e.payload)
    reader: asyncio.Task[object] = asyncio.ensure_future(anext(pipeline))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(reader), 0.01)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(reader)
    assert pipeline.closed
    assert target.listener_count("t:1") == 0
    with pytest.raises(StopAsyncIteration):
        await within(anext(pipeline))


async def test_next_with_timeout_loses_nothing_and_mixes_with_async_for() -> None:
    source_ = _Started()
    pipeline = op.map(source_.items(), lambda x: x * 10)
    for _ in range(3):
        with pytest.raises(TimeoutError):
            await within(pipeline.next(timeout=0.01))
    source_.queue.put_nowait(1)
    source_.queue.put_nowait(2)
    received = []
    async for item in pipeline:  # first the item of the read left pending
        received.append(item)
        if len(received) == 2:
            break
    assert received == [10, 20]
    with pytest.raises(TimeoutError):
        await within(pipeline.next(timeout=0))
    await within(pipeline.aclose())  # also ends the read left pending
    assert source_.closed
    with pytest.raises(StopAsyncIteration):
        await within(pipeline.next(timeout=1))


async def test_operators_are_async_context_managers() -> None:
    target = MemoryEventTarget()
    pubsub = create_pubsub(target)
    async with op.filter(pubsub.subscribe("t", "1"), bool) as pipeline:
        pubsub.publish("t", "1", "x")
        assert (await within(anext(pipeline))).payload == "x"
    assert target.listener_count("t:1") == 0


async def test_break_releases_a_pipeline_without_aclose() -> None:
    target = MemoryEventTarget()
    pubsub = create_pubsub(target)
    subscription = pubsub.subscribe("t", "1")
    pubsub.publish("t", "1", "x")
    async for _ in op.map(op.filter(subscription, bool), str):
        break
    del subscription  # the pipeline was the other reference: nothing is left
    assert target.listener_count("t:1") == 0


async def test_take_releases_the_subscription_with_its_last_item() -> None:
    target = MemoryEventTarget()
    pubsub = create_pubsub(target)
    taken = op.take(pubsub.subscribe("t", "1"), 2)
    pubsub.publish("t", "1", 1)
    pubsub.publish("t", "1", 2)
    assert (await within(anext(taken))).payload == 1
    assert target.listener_count("t:1") == 1
    assert (await within(anext(taken))).payload == 2
    assert target.listener_count("t:1") == 0  # before anyone asks for more
    with pytest.raises(StopAsyncIteration):
        await within(anext(taken))


async def test_chain_closes_foreign_sources_it_has_not_reached() -> None:
    first, second = _Started(), _Started()
    later = second.items()
    await anext(op.chain(source(1)))  # chains over plain generators still work
    chained = op.chain(first.items(), later)
    first.queue.put_nowait(7)
    assert await within(anext(chained)) == 7
    await within(chained.aclose())
    assert first.closed
    with pytest.raises(StopAsyncIteration):
        await within(anext(later))  # closed before it ever started


async def test_flat_batch_and_join_close_what_they_hold() -> None:
    inner = _Started()

    async def nested() -> AsyncIterator[AsyncIterator[int]]:
        yield inner.items()

    flattened = op.flat(nested())
    inner.queue.put_nowait(1)
    assert await within(anext(flattened)) == 1
    await within(flattened.aclose())
    assert inner.closed

    slow = _Started()
    batched = op.batch(slow.items(), 5, timeout=30)
    reader = await _reading(batched, slow.waiting)
    await within(batched.aclose())
    with pytest.raises(StopAsyncIteration):
        await within(reader)
    assert slow.closed

    left, right = _Started(), _Started()
    merged = op.join(left.items(), right.items())
    right.queue.put_nowait(2)
    assert await within(anext(merged)) == 2
    await within(merged.aclose())
    assert left.closed
    assert right.closed


async def test_dedupe_default_key_is_canonical_json() -> None:
    def envelope(payload: object) -> EventEnvelope:
        return EventEnvelope(type="t", id="1", payload=payload)

    items = [
        envelope({"a": 1, "b": {"c": [1, 2], "d": None}}),
        envelope({"b": {"d": None, "c": [1, 2]}, "a": 1}),  # same, keys reordered
        envelope({"a": 1.0, "b": {"c": [1.0, 2], "d": None}}),  # 1.0 == 1
        envelope({"a": 1, "b": {"c": [2, 1], "d": None}}),  # list order matters
        envelope({"a": True, "b": {"c": [1, 2], "d": None}}),  # true is not 1
        EventEnvelope(type="t", id="2", payload={"a": 1, "b": {"c": [1, 2], "d": None}}),
    ]

    async def envelopes() -> AsyncIterator[EventEnvelope]:
        for item in items:
            yield item

    unique = await op.to_list(op.dedupe(envelopes()))
    assert unique == [items[0], items[3], items[4], items[5]]
    assert op.canonical_json({"b": [1.0, {"z": 1, "y": "ü"}], "a": 2.5}) == (
        '{"a":2.5,"b":[1,{"y":"ü","z":1}]}'
    )

    async def dicts() -> AsyncIterator[dict[str, int]]:
        for item in ({"a": 1, "b": 2}, {"b": 2, "a": 1}, {"a": 2}):
            yield item

    assert await op.to_list(op.dedupe(dicts())) == [{"a": 1, "b": 2}, {"a": 2}]


async def test_dedupe_and_group_by_await_async_keys() -> None:
    async def parity(x: int) -> str:
        return "odd" if x % 2 else "even"

    assert await op.to_list(op.dedupe(source(1, 3, 2, 5, 4), key=parity)) == [1, 2]
    groups = await op.group_by(source(1, 2, 3), parity)
    assert groups == {"odd": [1, 3], "even": [2]}


async def test_argument_errors_are_raised_at_once() -> None:
    with pytest.raises(ValueError, match="count"):
        op.take(source(1), -1)
    with pytest.raises(ValueError, match="size"):
        op.batch(source(1), 0)
    with pytest.raises(ValueError, match="memory"):
        op.dedupe(source(1), memory=0)
    with pytest.raises(ValueError, match="size and step"):
        op.window(source(1), 2, step=0)


async def test_dropping_a_join_cancels_its_reads_and_releases_its_sources() -> None:
    """``break`` out of ``async for`` over ``join`` (no aclose): the reads it
    runs in its own tasks are cancelled, so the subscriptions are released."""
    target = MemoryEventTarget()
    pubsub = create_pubsub(target)
    merged = op.join(pubsub.subscribe("a", "1"), pubsub.subscribe("b", "1"))
    pubsub.publish("a", "1", "x")
    async for _ in merged:
        break
    reads = merged._core.tasks()
    assert len(reads) == 2
    del merged
    await within(asyncio.gather(*reads, return_exceptions=True))
    del reads  # a read cancelled before it started holds its source until freed
    assert target.listener_count("a:1") == target.listener_count("b:1") == 0


async def test_break_after_a_timed_out_next_releases_the_subscription() -> None:
    """The read that ``next(timeout=)`` left running does not keep a dropped
    pipeline's subscription alive."""
    target = MemoryEventTarget()
    pubsub = create_pubsub(target)
    pipeline = op.map(pubsub.subscribe("t", "1"), str)
    with pytest.raises(TimeoutError):
        await pipeline.next(timeout=0.001)  # bounded by its timeout
    reads = pipeline._core.tasks()
    assert len(reads) == 1
    del pipeline
    await within(asyncio.gather(*reads, return_exceptions=True))
    assert target.listener_count("t:1") == 0
