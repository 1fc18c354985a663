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
