"""``create_pubsub``: publish/subscribe over any ``TypedEventTarget`` (SPEC §6)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar, overload

from pydantic import BaseModel, ValidationError

from .core.envelope import Event, EventEnvelope, make_event, make_topic
from .core.errors import SubscriptionOverflowError
from .target import TypedEventTarget
from .transports.memory import MemoryEventTarget

__all__ = ["DEFAULT_MAX_BUFFER", "Overflow", "PubSub", "Subscription", "create_pubsub"]

logger = logging.getLogger(__name__)

Overflow = Literal["raise", "drop_oldest", "drop_newest"]
DEFAULT_MAX_BUFFER = 1000
_OVERFLOW_POLICIES = ("raise", "drop_oldest", "drop_newest")

M = TypeVar("M", bound=BaseModel)


class _SubscriptionState:
    """Everything the listener touches, kept apart from ``Subscription`` so that
    the target's strong reference to the listener does not keep the iterator
    alive: when a ``for`` loop drops the iterator, ``__del__`` unregisters it."""

    __slots__ = (
        "buffer",
        "dropped",
        "ended",
        "invalid",
        "max_buffer",
        "model",
        "overflow",
        "overflowed",
        "waiter",
    )

    def __init__(self, model: type[BaseModel] | None, max_buffer: int, overflow: Overflow) -> None:
        self.buffer: deque[EventEnvelope] = deque()
        self.model = model
        self.max_buffer = max_buffer
        self.overflow = overflow
        self.waiter: asyncio.Future[None] | None = None
        self.ended = False
        self.overflowed = False
        self.dropped = 0
        self.invalid = 0

    def on_event(self, event: Event) -> None:
        if self.ended or self.overflowed:
            return
        envelope = event.detail
        if self.model is not None:
            try:
                value = self.model.model_validate(envelope.payload)
            except ValidationError as exc:
                self.invalid += 1
                logger.warning("skipping invalid payload on %s: %s", event.type, exc)
                return
            envelope = envelope.model_copy(update={"payload": value})
        buffer = self.buffer
        if len(buffer) >= self.max_buffer:
            if self.overflow == "drop_newest":
                self.dropped += 1
                return
            if self.overflow == "drop_oldest":
                buffer.popleft()
                self.dropped += 1
            else:
                self.overflowed = True
                self._wake()
                return
        buffer.append(envelope)
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Subscription(Generic[M]):
    """Async iterator of envelopes on one topic.

    The listener is registered when ``subscribe()`` returns, so events published
    after that (and after ``await target.flush()`` on network transports) are
    buffered even before the first ``__anext__``. It is removed when the loop
    ends (normally, by ``break`` or by exception), on ``aclose()``, or when the
    target closes (B11).
    """

    def __init__(
        self,
        target: TypedEventTarget,
        topic: str,
        *,
        model: type[M] | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        overflow: Overflow = "raise",
    ) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        if overflow not in _OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {_OVERFLOW_POLICIES}, not {overflow!r}")
        self.topic = topic
        self._target = target
        self._state = _SubscriptionState(model, max_buffer, overflow)
        self._released = False
        target.add_event_listener(topic, self._state.on_event)
        add_close_callback = getattr(target, "add_close_callback", None)
        if add_close_callback is not None:
            add_close_callback(self._state.end)

    @property
    def dropped(self) -> int:
        """Envelopes dropped by the ``drop_oldest``/``drop_newest`` policies."""
        return self._state.dropped

    @property
    def invalid(self) -> int:
        """Envelopes skipped because their payload failed ``model`` validation."""
        return self._state.invalid

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> EventEnvelope:
        state = self._state
        while True:
            if state.buffer:
                return state.buffer.popleft()
            if state.overflowed:
                self._release()
                raise SubscriptionOverflowError(
                    f"subscription to {self.topic!r} overflowed its buffer of "
                    f"{state.max_buffer} envelopes (overflow='raise')"
                )
            if state.ended or self._released:
                self._release()
                raise StopAsyncIteration
            waiter = asyncio.get_running_loop().create_future()
            state.waiter = waiter
            try:
                await waiter
            except BaseException:
                self._release()
                raise
            finally:
                state.waiter = None

    async def aclose(self) -> None:
        self._release()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        self._state.end()
        try:
            self._target.remove_event_listener(self.topic, self._state.on_event)
        finally:
            remove_close_callback = getattr(self._target, "remove_close_callback", None)
            if remove_close_callback is not None:
                remove_close_callback(self._state.end)

    def __del__(self) -> None:
        # Deterministic in CPython when an ``async for`` loop is left by break.
        with contextlib.suppress(Exception):
            self._release()


class PubSub:
    """Typed publish/subscribe over one target."""

    def __init__(self, target: TypedEventTarget | None = None) -> None:
        self.target: TypedEventTarget = target if target is not None else MemoryEventTarget()

    def publish(self, type: str, id: str, payload: Any = None) -> None:
        """Dispatch one envelope on topic ``type:id``; never blocks (B13)."""
        self.target.dispatch_event(make_event(type, id, payload))

    @overload
    def subscribe(
        self,
        type: str,
        id: str,
        *,
        model: None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        overflow: Overflow = "raise",
    ) -> Subscription[Any]: ...

    @overload
    def subscribe(
        self,
        type: str,
        id: str,
        *,
        model: type[M],
        max_buffer: int = DEFAULT_MAX_BUFFER,
        overflow: Overflow = "raise",
    ) -> Subscription[M]: ...

    def subscribe(
        self,
        type: str,
        id: str,
        *,
        model: type[M] | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        overflow: Overflow = "raise",
    ) -> Subscription[Any]:
        """Iterate envelopes of topic ``type:id``; see ``Subscription``."""
        return Subscription(
            self.target, make_topic(type, id), model=model, max_buffer=max_buffer, overflow=overflow
        )

    async def flush(self, timeout: float | None = None) -> None:
        await self.target.flush(timeout)

    async def drain(self) -> None:
        await self.target.drain()

    async def aclose(self) -> None:
        await self.target.aclose()

    async def __aenter__(self) -> Self:
        start = getattr(self.target, "start", None)
        if start is not None:
            await start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def create_pubsub(target: TypedEventTarget | None = None) -> PubSub:
    """A ``PubSub`` over ``target`` (a fresh in-process target when None)."""
    return PubSub(target)
