"""Async-iterator operators over subscriptions (SPEC §6; names from the seed).

Every operator takes its source first and returns a new async iterator, except
the terminal ones (``reduce``, ``to_list``, ``group_by``), which are coroutines.
``pipe(source, *stages)`` chains stages that each take one async iterable, e.g.
``pipe(sub, partial(filter, predicate=is_big), partial(map, fn=to_text))``.
Closing an operator's iterator closes its source (so a subscription releases
its listener when a ``take`` ends).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Hashable, Iterable
from typing import Any, TypeVar, cast

__all__ = [
    "batch",
    "chain",
    "dedupe",
    "filter",
    "flat",
    "group_by",
    "join",
    "map",
    "pipe",
    "reduce",
    "take",
    "to_list",
    "window",
]

T = TypeVar("T")
U = TypeVar("U")
K = TypeVar("K", bound=Hashable)


async def _resolve(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await cast(Awaitable[T], value)
    return value


async def _aclose(iterator: object) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


async def filter(
    source: AsyncIterable[T], predicate: Callable[[T], bool | Awaitable[bool]]
) -> AsyncIterator[T]:
    """Items for which ``predicate`` (sync or async) is true."""
    iterator = aiter(source)
    try:
        async for item in iterator:
            if await _resolve(predicate(item)):
                yield item
    finally:
        await _aclose(iterator)


async def map(source: AsyncIterable[T], fn: Callable[[T], U | Awaitable[U]]) -> AsyncIterator[U]:
    """``fn(item)`` (sync or async) for every item."""
    iterator = aiter(source)
    try:
        async for item in iterator:
            yield await _resolve(fn(item))
    finally:
        await _aclose(iterator)


def pipe(
    source: AsyncIterable[Any], *stages: Callable[[AsyncIterable[Any]], AsyncIterable[Any]]
) -> AsyncIterable[Any]:
    """Apply ``stages`` left to right: ``pipe(s, f, g) == g(f(s))``."""
    result: AsyncIterable[Any] = source
    for stage in stages:
        result = stage(result)
    return result


async def take(source: AsyncIterable[T], count: int) -> AsyncIterator[T]:
    """The first ``count`` items, then stop (closing the source)."""
    if count < 0:
        raise ValueError("count must be >= 0")
    iterator = aiter(source)
    try:
        if count == 0:
            return
        seen = 0
        async for item in iterator:
            yield item
            seen += 1
            if seen >= count:
                return
    finally:
        await _aclose(iterator)


async def reduce(source: AsyncIterable[T], fn: Callable[[U, T], U | Awaitable[U]], initial: U) -> U:
    """Fold the whole (finite) source into one value."""
    accumulator = initial
    iterator = aiter(source)
    try:
        async for item in iterator:
            accumulator = await _resolve(fn(accumulator, item))
    finally:
        await _aclose(iterator)
    return accumulator


async def to_list(source: AsyncIterable[T]) -> list[T]:
    """Collect a finite source (combine with ``take`` for live subscriptions)."""
    return await reduce(source, _append, [])


def _append(items: list[T], item: T) -> list[T]:
    items.append(item)
    return items


async def batch(
    source: AsyncIterable[T], size: int, timeout: float | None = None
) -> AsyncIterator[list[T]]:
    """Lists of up to ``size`` items; with ``timeout``, a partial list is emitted
    once ``timeout`` seconds passed since its first item. The last partial list
    is emitted when the source ends."""
    if size < 1:
        raise ValueError("size must be >= 1")
    iterator = aiter(source)
    pending: asyncio.Task[T] | None = None
    current: list[T] = []
    try:
        if timeout is None:
            async for item in iterator:
                current.append(item)
                if len(current) >= size:
                    yield current
                    current = []
        else:
            loop = asyncio.get_running_loop()
            deadline: float | None = None
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(iterator))
                wait = None if deadline is None else builtins.max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait({pending}, timeout=wait)
                if not done:
                    yield current
                    current, deadline = [], None
                    continue
                task, pending = pending, None
                try:
                    item = task.result()
                except StopAsyncIteration:
                    break
                if not current:
                    deadline = loop.time() + timeout
                current.append(item)
                if len(current) >= size:
                    yield current
                    current, deadline = [], None
        if current:
            yield current
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await _aclose(iterator)


async def dedupe(
    source: AsyncIterable[T],
    key: Callable[[T], Hashable] | None = None,
    memory: int = 1000,
) -> AsyncIterator[T]:
    """Drop items whose key was seen among the last ``memory`` distinct keys.

    The default key is the item itself; for envelopes it is ``(type, id,
    JSON of payload)``, since payloads are not hashable."""
    if memory < 1:
        raise ValueError("memory must be >= 1")
    seen: set[Hashable] = set()
    order: deque[Hashable] = deque()
    iterator = aiter(source)
    try:
        async for item in iterator:
            marker = key(item) if key is not None else _default_key(item)
            if marker in seen:
                continue
            seen.add(marker)
            order.append(marker)
            if len(order) > memory:
                seen.discard(order.popleft())
            yield item
    finally:
        await _aclose(iterator)


def _default_key(item: object) -> Hashable:
    from .core.envelope import EventEnvelope

    if isinstance(item, EventEnvelope):
        return item.model_dump_json()
    return item


async def window(
    source: AsyncIterable[T], size: int, step: int = 1
) -> AsyncIterator[tuple[T, ...]]:
    """Sliding windows of ``size`` items, one every ``step`` items."""
    if size < 1 or step < 1:
        raise ValueError("size and step must be >= 1")
    items: deque[T] = deque(maxlen=size)
    total = 0
    iterator = aiter(source)
    try:
        async for item in iterator:
            items.append(item)
            total += 1
            if total >= size and (total - size) % step == 0:
                yield tuple(items)
    finally:
        await _aclose(iterator)


async def flat(source: AsyncIterable[Iterable[T] | AsyncIterable[T]]) -> AsyncIterator[T]:
    """Flatten one level of (sync or async) iterables."""
    iterator = aiter(source)
    try:
        async for inner in iterator:
            if isinstance(inner, AsyncIterable):
                async for item in inner:
                    yield item
            else:
                for item in inner:
                    yield item
    finally:
        await _aclose(iterator)


async def group_by(source: AsyncIterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    """Collect a finite source into lists keyed by ``key(item)``, in first-seen order."""
    groups: dict[K, list[T]] = {}
    iterator = aiter(source)
    try:
        async for item in iterator:
            groups.setdefault(key(item), []).append(item)
    finally:
        await _aclose(iterator)
    return groups


async def chain(*sources: AsyncIterable[T]) -> AsyncIterator[T]:
    """All items of the first source, then of the second, and so on."""
    for source in sources:
        iterator = aiter(source)
        try:
            async for item in iterator:
                yield item
        finally:
            await _aclose(iterator)


async def join(*sources: AsyncIterable[T]) -> AsyncIterator[T]:
    """Merge sources concurrently, items in arrival order; ends when all end."""
    iterators = [aiter(source) for source in sources]
    pending: dict[asyncio.Task[T], AsyncIterator[T]] = {}
    try:
        for iterator in iterators:
            pending[asyncio.ensure_future(anext(iterator))] = iterator
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                iterator = pending.pop(task)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(iterator))] = iterator
                yield item
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await task
        for iterator in iterators:
            await _aclose(iterator)
