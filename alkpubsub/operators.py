"""Async-iterator operators over subscriptions (SPEC §6; names from the seed).

Every operator takes its source first and returns an ``Operator``, an async
iterator of its own, except the terminal ones (``reduce``, ``to_list``,
``group_by``), which are coroutines. ``pipe(source, *stages)`` chains stages
that each take one async iterable, e.g.
``pipe(sub, partial(filter, predicate=is_big), partial(map, fn=to_text))``.
Callables (predicates, functions, keys) may be sync or async everywhere.

An ``Operator`` can be closed from any task: ``aclose()`` ends the reads that
are waiting in other tasks (their ``async for`` ends normally) and closes its
sources, every one of them (so a subscription releases its listener, also one
that ``chain`` had not reached). Several tasks may read one operator: they are
served one after another, in order. ``next(timeout=)`` waits with a timeout and
keeps the operator usable; a read cancelled from outside ends the operator and
closes its sources, as it would end an async generator. See
``docs/subscriptions.md``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
import json
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Iterator,
)
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast, overload

from pydantic_core import to_jsonable_python

from .core.envelope import EventEnvelope

__all__ = [
    "Operator",
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
V = TypeVar("V")
K = TypeVar("K", bound=Hashable)


async def _resolve(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await cast(Awaitable[T], value)
    return value


async def _aclose(iterator: object) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


async def _aclose_all(iterators: Iterable[object]) -> None:
    """Close each once, all of them even if one raises (then raise the first)."""
    error: BaseException | None = None
    for iterator in {id(iterator): iterator for iterator in iterators}.values():
        try:
            await _aclose(iterator)
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a background read's outcome as seen (it is handed out later, or
    dropped when the operator closes)."""
    if not task.cancelled():
        task.exception()


class _Core(Generic[T]):
    """An operator's state and logic; ``Operator`` is the handle users hold.

    The split lets an ``Operator`` dropped without ``aclose()`` (``break`` out
    of ``async for``) be finalized even while a read of its own is still
    running in a task: that task references the core, never the handle.
    Subclasses implement ``_step()`` (the next item, or ``StopAsyncIteration``)
    and open their sources with ``_open()``; ``_cleanup()`` closes them.
    """

    def __init__(self, *sources: AsyncIterable[Any]) -> None:
        self._sources = sources
        self._iterators: list[AsyncIterator[Any]] = []
        self._closed = False  # aclose() was called: nothing more is yielded
        self._finished = False  # no more items: ended, failed, cancelled or closed
        self._cleanup_done: asyncio.Future[None] | None = None
        self._lock: asyncio.Lock | None = None
        # Tasks inside _read, and whether aclose() interrupted them.
        self._readers: dict[asyncio.Task[Any], bool] = {}
        self._reader_left: asyncio.Event | None = None
        self._pending: asyncio.Task[T] | None = None  # a read left by next(timeout=)

    # -- for subclasses ---------------------------------------------------------

    def _open(self, source: AsyncIterable[V]) -> AsyncIterator[V]:
        iterator = aiter(source)
        self._iterators.append(iterator)
        return iterator

    async def _step(self) -> T:
        raise NotImplementedError

    async def _cleanup(self) -> None:
        """Close every iterator opened and every source that is an iterator
        (also sources not reached yet). Subclasses release their own first."""
        sources = [source for source in self._sources if isinstance(source, AsyncIterator)]
        await _aclose_all([*self._iterators, *sources])

    def _background(self) -> list[asyncio.Future[Any]]:
        """Reads running in tasks of this operator's own (``join``, ``batch``
        with a timeout)."""
        return []

    def tasks(self) -> list[asyncio.Future[Any]]:
        """Every task this operator runs: its background reads and the read a
        ``next(timeout=)`` left pending."""
        pending = [] if self._pending is None else [self._pending]
        return [*self._background(), *pending]

    def dropped(self) -> None:
        """The handle was dropped unclosed: cancel the reads running in tasks of
        our own; a cancelled read ends the operator, which closes its sources
        (a cancelled subscription read releases the subscription)."""
        if not self._finished:
            for task in self.tasks():
                task.cancel()

    # -- reading ------------------------------------------------------------------

    async def anext(self) -> T:
        if self._pending is not None:
            return await self._from_pending(None)
        return await self._read()

    async def next(self, timeout: float | None) -> T:
        if timeout is None and self._pending is None:
            return await self._read()
        return await self._from_pending(timeout)

    async def _from_pending(self, timeout: float | None) -> T:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            pending = self._pending
            if pending is None:
                if self._finished:
                    raise StopAsyncIteration
                pending = self._pending = asyncio.ensure_future(self._read())
                pending.add_done_callback(_retrieve)
            remaining = None if deadline is None else builtins.max(0.0, deadline - loop.time())
            try:
                await asyncio.wait({pending}, timeout=remaining)
            except asyncio.CancelledError:
                # A cancelled read ends the operator, as a direct read does;
                # return once it has (sources closed).
                pending.cancel()
                await asyncio.wait({pending})
                raise
            if self._pending is not pending:
                continue  # another reader took that item; wait for the next one
            if not pending.done():
                raise TimeoutError(f"no item within {timeout}s")
            self._pending = None
            if pending.cancelled() or self._closed:
                raise StopAsyncIteration  # nothing is handed out after aclose()
            return pending.result()

    async def _read(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        task = asyncio.current_task()
        assert task is not None, "operators are read inside a task"
        readers = self._readers
        if task in readers:
            raise RuntimeError(f"{type(self).__name__[1:]} read again by the task reading it")
        readers[task] = False
        if self._lock is None:
            self._lock = asyncio.Lock()
        ended = True
        uncancelled = False
        try:
            async with self._lock:  # concurrent readers are served in order
                if self._finished:
                    raise StopAsyncIteration
                item = await self._step()
            if self._closed:
                raise StopAsyncIteration  # closed by another task meanwhile
            ended = False
            return item
        except asyncio.CancelledError:
            if readers[task]:  # aclose() interrupted this read: end it normally
                uncancelled = True
                if task.uncancel() == 0:
                    raise StopAsyncIteration from None
            raise
        finally:
            interrupted = readers.pop(task)
            if interrupted and not uncancelled and task.cancelling():
                task.uncancel()  # the interruption was swallowed below us
            if ended:
                self._finished = True
            if self._reader_left is not None:
                self._reader_left.set()
            if ended and not readers:
                await self._finish()  # the last reader out closes the sources

    async def _finish(self) -> None:
        """Run ``_cleanup`` once; later callers wait for it."""
        self._finished = True
        done = self._cleanup_done
        if done is None:
            done = self._cleanup_done = asyncio.get_running_loop().create_future()
            try:
                await self._cleanup()
            finally:
                done.set_result(None)
        elif not done.done():
            await asyncio.shield(done)

    # -- closing ------------------------------------------------------------------

    async def aclose(self) -> None:
        self._closed = self._finished = True
        current = asyncio.current_task()
        for task, interrupted in list(self._readers.items()):
            if task is not current and not interrupted:
                self._readers[task] = True
                task.cancel()
        while any(task is not current for task in self._readers):
            if self._reader_left is None:
                self._reader_left = asyncio.Event()
            self._reader_left.clear()
            await self._reader_left.wait()
        await self._finish()


class Operator(AsyncIterator[T]):
    """What every operator returns: an async iterator closable from any task.

    - ``aclose()`` (or leaving ``async with``) ends the reads waiting in other
      tasks (their ``async for`` ends normally) and closes every source.
    - Several tasks may read it at once; they are served in order.
    - ``next(timeout=)`` waits with a timeout and keeps the operator usable.
    - A read cancelled from outside ends it and closes its sources, as an
      async generator ends when a read is cancelled.
    - Dropped without ``aclose()`` (``break``), it releases its sources too.
    """

    def __init__(self, core: _Core[T]) -> None:
        self._core = core

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        return await self._core.anext()

    async def next(self, timeout: float | None = None) -> T:
        """The next item, waiting at most ``timeout`` seconds.

        Raises ``TimeoutError`` when none came in time and keeps the operator
        usable: the read goes on in the background and its item is the next
        one handed out. Raises ``StopAsyncIteration`` at the end, like
        ``anext()``.
        """
        return await self._core.next(timeout)

    async def aclose(self) -> None:
        """End iteration for every reader and close every source. Idempotent."""
        await self._core.aclose()

    @property
    def closed(self) -> bool:
        """True once no more items will be yielded."""
        return self._core._finished

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Deterministic in CPython when an ``async for`` loop is left by break.
        with contextlib.suppress(Exception):  # e.g. the event loop is closed
            self._core.dropped()


# -- one-source operators ----------------------------------------------------------


class _Filter(_Core[T]):
    def __init__(
        self, source: AsyncIterable[T], predicate: Callable[[T], bool | Awaitable[bool]]
    ) -> None:
        super().__init__(source)
        self._source = self._open(source)
        self._predicate = predicate

    async def _step(self) -> T:
        while True:
            item = await anext(self._source)
            if await _resolve(self._predicate(item)):
                return item


def filter(
    source: AsyncIterable[T], predicate: Callable[[T], bool | Awaitable[bool]]
) -> Operator[T]:
    """Items for which ``predicate`` (sync or async) is true."""
    return Operator(_Filter(source, predicate))


class _Map(_Core[U]):
    def __init__(self, source: AsyncIterable[T], fn: Callable[[T], U | Awaitable[U]]) -> None:
        super().__init__(source)
        self._source = self._open(source)
        self._fn = fn

    async def _step(self) -> U:
        return await _resolve(self._fn(await anext(self._source)))


@overload
def map(source: AsyncIterable[T], fn: Callable[[T], Awaitable[U]]) -> Operator[U]: ...


@overload
def map(source: AsyncIterable[T], fn: Callable[[T], U]) -> Operator[U]: ...


def map(source: AsyncIterable[T], fn: Callable[[T], U | Awaitable[U]]) -> Operator[U]:
    """``fn(item)`` (sync or async) for every item."""
    return Operator(_Map(source, fn))


def pipe(
    source: AsyncIterable[Any], *stages: Callable[[AsyncIterable[Any]], AsyncIterable[Any]]
) -> AsyncIterable[Any]:
    """Apply ``stages`` left to right: ``pipe(s, f, g) == g(f(s))``."""
    result: AsyncIterable[Any] = source
    for stage in stages:
        result = stage(result)
    return result


class _Take(_Core[T]):
    def __init__(self, source: AsyncIterable[T], count: int) -> None:
        if count < 0:
            raise ValueError("count must be >= 0")
        super().__init__(source)
        self._source = self._open(source)
        self._remaining = count

    async def _step(self) -> T:
        if self._remaining <= 0:
            raise StopAsyncIteration
        item = await anext(self._source)
        self._remaining -= 1
        if self._remaining == 0:
            await _aclose(self._source)  # release a subscription with its last item
        return item


def take(source: AsyncIterable[T], count: int) -> Operator[T]:
    """The first ``count`` items, then stop; the source is closed as soon as
    the last one is taken."""
    return Operator(_Take(source, count))


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


class _Batch(_Core[list[T]]):
    def __init__(self, source: AsyncIterable[T], size: int, timeout: float | None) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        super().__init__(source)
        self._source = self._open(source)
        self._size = size
        self._timeout = timeout
        self._current: list[T] = []
        self._deadline: float | None = None
        self._source_ended = False
        self._next_item: asyncio.Future[T] | None = None  # timeout mode: the read in progress

    def _emit(self) -> list[T]:
        current, self._current, self._deadline = self._current, [], None
        return current

    def _end(self) -> list[T]:
        self._source_ended = True
        if self._current:
            return self._emit()
        raise StopAsyncIteration

    async def _step(self) -> list[T]:
        if self._source_ended:
            raise StopAsyncIteration
        if self._timeout is None:
            while True:
                try:
                    item = await anext(self._source)
                except StopAsyncIteration:
                    return self._end()
                self._current.append(item)
                if len(self._current) >= self._size:
                    return self._emit()
        loop = asyncio.get_running_loop()
        while True:
            if self._next_item is None:
                self._next_item = asyncio.ensure_future(anext(self._source))
            wait = (
                None if self._deadline is None else builtins.max(0.0, self._deadline - loop.time())
            )
            done, _ = await asyncio.wait({self._next_item}, timeout=wait)
            if not done:
                return self._emit()  # the batch's first item is `timeout` old
            reading, self._next_item = self._next_item, None
            try:
                item = reading.result()
            except StopAsyncIteration:
                return self._end()
            if not self._current:
                self._deadline = loop.time() + self._timeout
            self._current.append(item)
            if len(self._current) >= self._size:
                return self._emit()

    def _background(self) -> list[asyncio.Future[Any]]:
        return [] if self._next_item is None else [self._next_item]

    async def _cleanup(self) -> None:
        reading, self._next_item = self._next_item, None
        try:
            if reading is not None:
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
        finally:
            await super()._cleanup()


def batch(source: AsyncIterable[T], size: int, timeout: float | None = None) -> Operator[list[T]]:
    """Lists of up to ``size`` items; with ``timeout``, a partial list is emitted
    once ``timeout`` seconds passed since its first item. The last partial list
    is emitted when the source ends."""
    return Operator(_Batch(source, size, timeout))


_JSON_KEY = object()  # namespaces canonical-JSON keys apart from hashable items


def _normalise(value: Any) -> Any:
    """JSON-able ``value`` with integral floats as integers (1.0 == 1, as in
    JSON numbers and RFC 8785)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {key: _normalise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalise(item) for item in value]
    return value


def canonical_json(value: Any) -> str:
    """One text per JSON value: keys sorted, no whitespace, integral floats
    written as integers. Pydantic models and other JSON-able Python values are
    converted first."""
    plain = _normalise(to_jsonable_python(value))
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _default_key(item: object) -> Hashable:
    if isinstance(item, EventEnvelope):
        return (item.type, item.id, canonical_json(item.payload))
    try:
        hash(item)
    except TypeError:
        return (_JSON_KEY, canonical_json(item))
    return item


class _Dedupe(_Core[T]):
    def __init__(
        self,
        source: AsyncIterable[T],
        key: Callable[[T], Hashable | Awaitable[Hashable]] | None,
        memory: int,
    ) -> None:
        if memory < 1:
            raise ValueError("memory must be >= 1")
        super().__init__(source)
        self._source = self._open(source)
        self._key = key
        self._memory = memory
        self._seen: set[Hashable] = set()
        self._order: deque[Hashable] = deque()

    async def _step(self) -> T:
        while True:
            item = await anext(self._source)
            if self._key is None:
                marker = _default_key(item)
            else:
                marker = await _resolve(self._key(item))
            if marker in self._seen:
                continue
            self._seen.add(marker)
            self._order.append(marker)
            if len(self._order) > self._memory:
                self._seen.discard(self._order.popleft())
            return item


def dedupe(
    source: AsyncIterable[T],
    key: Callable[[T], Hashable | Awaitable[Hashable]] | None = None,
    memory: int = 1000,
) -> Operator[T]:
    """Drop items whose key was seen among the last ``memory`` distinct keys.

    ``key`` may be sync or async. The default key is the item itself; for
    envelopes it is ``(type, id, canonical JSON of payload)``, so envelopes
    that are equal (whatever the order of their keys) are duplicates; other
    unhashable items are keyed by their canonical JSON too."""
    return Operator(_Dedupe(source, key, memory))


class _Window(_Core[tuple[T, ...]]):
    def __init__(self, source: AsyncIterable[T], size: int, step: int) -> None:
        if size < 1 or step < 1:
            raise ValueError("size and step must be >= 1")
        super().__init__(source)
        self._source = self._open(source)
        self._size = size
        self._every = step
        self._items: deque[T] = deque(maxlen=size)
        self._total = 0

    async def _step(self) -> tuple[T, ...]:
        while True:
            self._items.append(await anext(self._source))
            self._total += 1
            if self._total >= self._size and (self._total - self._size) % self._every == 0:
                return tuple(self._items)


def window(source: AsyncIterable[T], size: int, step: int = 1) -> Operator[tuple[T, ...]]:
    """Sliding windows of ``size`` items, one every ``step`` items."""
    return Operator(_Window(source, size, step))


class _Flat(_Core[T]):
    def __init__(self, source: AsyncIterable[Iterable[T] | AsyncIterable[T]]) -> None:
        super().__init__(source)
        self._source = self._open(source)
        self._inner: AsyncIterator[T] | Iterator[T] | None = None

    async def _step(self) -> T:
        while True:
            inner = self._inner
            if inner is None:
                nested = await anext(self._source)
                self._inner = aiter(nested) if isinstance(nested, AsyncIterable) else iter(nested)
            elif isinstance(inner, AsyncIterator):
                try:
                    return await anext(inner)
                except StopAsyncIteration:
                    self._inner = None
                    await _aclose(inner)
            else:
                try:
                    return builtins.next(inner)
                except StopIteration:
                    self._inner = None

    async def _cleanup(self) -> None:
        inner, self._inner = self._inner, None
        try:
            await _aclose(inner)
        finally:
            await super()._cleanup()


def flat(source: AsyncIterable[Iterable[T] | AsyncIterable[T]]) -> Operator[T]:
    """Flatten one level of (sync or async) iterables."""
    return Operator(_Flat(source))


@overload
async def group_by(
    source: AsyncIterable[T], key: Callable[[T], Awaitable[K]]
) -> dict[K, list[T]]: ...


@overload
async def group_by(source: AsyncIterable[T], key: Callable[[T], K]) -> dict[K, list[T]]: ...


async def group_by(
    source: AsyncIterable[T], key: Callable[[T], K | Awaitable[K]]
) -> dict[K, list[T]]:
    """Collect a finite source into lists keyed by ``key(item)`` (sync or
    async), in first-seen order."""
    groups: dict[K, list[T]] = {}
    iterator = aiter(source)
    try:
        async for item in iterator:
            groups.setdefault(await _resolve(key(item)), []).append(item)
    finally:
        await _aclose(iterator)
    return groups


# -- several sources ---------------------------------------------------------------


class _Chain(_Core[T]):
    def __init__(self, *sources: AsyncIterable[T]) -> None:
        super().__init__(*sources)
        self._next_source = 0
        self._current: AsyncIterator[T] | None = None

    async def _step(self) -> T:
        while True:
            if self._current is None:
                if self._next_source >= len(self._sources):
                    raise StopAsyncIteration
                self._current = self._open(self._sources[self._next_source])
                self._next_source += 1
            try:
                return await anext(self._current)
            except StopAsyncIteration:
                current, self._current = self._current, None
                await _aclose(current)


def chain(*sources: AsyncIterable[T]) -> Operator[T]:
    """All items of the first source, then of the second, and so on. Closing
    it closes every source, also those not reached yet."""
    return Operator(_Chain(*sources))


class _Join(_Core[T]):
    def __init__(self, *sources: AsyncIterable[T]) -> None:
        super().__init__(*sources)
        self._waiting = [self._open(source) for source in sources]  # not read yet
        self._reading: dict[asyncio.Future[T], AsyncIterator[T]] = {}
        self._ready: deque[T] = deque()

    def _read_from(self, iterator: AsyncIterator[T]) -> None:
        self._reading[asyncio.ensure_future(anext(iterator))] = iterator

    async def _step(self) -> T:
        waiting, self._waiting = self._waiting, []
        for iterator in waiting:
            self._read_from(iterator)
        while not self._ready:
            if not self._reading:
                raise StopAsyncIteration
            done, _ = await asyncio.wait(self._reading, return_when=asyncio.FIRST_COMPLETED)
            # In the order the reads started: two reads of one source (join(s, s))
            # then yield its items in order.
            for reading in [reading for reading in self._reading if reading in done]:
                iterator = self._reading.pop(reading)
                try:
                    item = reading.result()
                except StopAsyncIteration:
                    continue
                self._ready.append(item)
                self._read_from(iterator)
        return self._ready.popleft()

    def _background(self) -> list[asyncio.Future[Any]]:
        return list(self._reading)

    async def _cleanup(self) -> None:
        reading, self._reading = list(self._reading), {}
        try:
            for future in reading:
                future.cancel()
            await asyncio.gather(*reading, return_exceptions=True)
        finally:
            await super()._cleanup()


def join(*sources: AsyncIterable[T]) -> Operator[T]:
    """Merge sources concurrently, items in arrival order; ends when all end.
    Closing it closes every source."""
    return Operator(_Join(*sources))
