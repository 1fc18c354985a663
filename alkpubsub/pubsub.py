"""``create_pubsub``: publish/subscribe over any ``TypedEventTarget`` (SPEC §6)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, Self, TypeVar, cast, overload

from pydantic import BaseModel, ValidationError

from .core.envelope import Event, EventEnvelope, make_event, make_topic
from .core.errors import SubscriptionOverflowError
from .core.forwarder import NOT_GIVEN, _NotGiven
from .core.history import StreamPosition
from .target import TypedEventTarget
from .transports.memory import MemoryEventTarget

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "Envelope",
    "Overflow",
    "PubSub",
    "Subscription",
    "create_pubsub",
]

logger = logging.getLogger(__name__)

Overflow = Literal["raise", "drop_oldest", "drop_newest"]
DEFAULT_MAX_BUFFER = 1000
_OVERFLOW_POLICIES = ("raise", "drop_oldest", "drop_newest")

P = TypeVar("P", covariant=True)
M = TypeVar("M", bound=BaseModel)

if TYPE_CHECKING:

    class Envelope(EventEnvelope, Generic[P]):
        """An ``EventEnvelope`` whose ``payload`` is a ``P`` (typing only)."""

        payload: P

else:

    class _EnvelopeView(type):
        # Every EventEnvelope is an Envelope: isinstance() and issubclass()
        # answer for EventEnvelope, so narrowing with Envelope never lies.
        def __instancecheck__(cls, instance: object) -> bool:
            return isinstance(instance, EventEnvelope)

        def __subclasscheck__(cls, subclass: type) -> bool:
            return issubclass(subclass, EventEnvelope)

    class Envelope(Generic[P], metaclass=_EnvelopeView):
        """``Envelope[M]``: an ``EventEnvelope`` whose ``payload`` is an ``M``.

        A typing view, not a model of its own: ``subscribe(..., model=M)``
        yields ordinary ``EventEnvelope`` objects (the wire model) typed as
        ``Envelope[M]``, so ``envelope.payload.x`` type-checks. ``Envelope[M]``
        works at run time in annotations; ``Envelope(...)`` builds an
        ``EventEnvelope``.
        """

        def __new__(cls, *args: Any, **kwargs: Any) -> EventEnvelope:  # type: ignore[misc]
            return EventEnvelope(*args, **kwargs)


class _Signal:
    """What a waiting reader is woken with, besides an envelope."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_ENDED: Final = _Signal("ended")
_TIMED_OUT: Final = _Signal("timed out")


def _time_out(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


class _SubscriptionState:
    """Everything the listener touches, kept apart from ``Subscription`` so that
    the target's strong reference to the listener does not keep the iterator
    alive: when a ``for`` loop drops the iterator, ``__del__`` unregisters it.

    Readers wait in ``waiters`` (FIFO futures); an arriving envelope is handed
    to the first waiter, or buffered when nobody waits, so ``buffer`` is only
    non-empty while no reader waits.
    """

    __slots__ = (
        "buffer",
        "closed",
        "dropped",
        "ended",
        "invalid",
        "max_buffer",
        "model",
        "overflow",
        "overflowed",
        "positions",
        "waiters",
    )

    def __init__(self, model: type[BaseModel] | None, max_buffer: int, overflow: Overflow) -> None:
        self.buffer: deque[EventEnvelope] = deque()
        self.waiters: deque[asyncio.Future[EventEnvelope | _Signal]] = deque()
        self.model = model
        self.max_buffer = max_buffer
        self.overflow = overflow
        self.ended = False  # no more envelopes will arrive
        self.closed = False  # the consumer closed it: nothing more is yielded
        self.overflowed = False
        self.dropped = 0
        self.invalid = 0
        #: Stream positions of buffered or handed-out envelopes, by id (since=).
        self.positions: dict[int, StreamPosition] | None = None

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
        if self.positions is not None and event.position is not None:
            self.positions[id(envelope)] = event.position
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # else it timed out or was cancelled
                waiter.set_result(envelope)
                return
        buffer = self.buffer
        if len(buffer) >= self.max_buffer:
            if self.overflow == "drop_newest":
                self.dropped += 1
                return
            if self.overflow == "drop_oldest":
                dropped = buffer.popleft()
                if self.positions is not None:
                    self.positions.pop(id(dropped), None)
                self.dropped += 1
            else:
                self.overflowed = True
                return
        buffer.append(envelope)

    def end(self) -> None:
        """No more envelopes: wake every waiting reader (what is buffered is
        still yielded unless the consumer closed the subscription)."""
        self.ended = True
        waiters, self.waiters = self.waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(_ENDED)

    def close(self) -> None:
        """The consumer is done: drop what is buffered and end."""
        self.closed = True
        self.buffer.clear()
        self.end()


class Subscription(Generic[M]):
    """Async iterator of envelopes on one topic.

    The listener is registered when ``subscribe()`` returns, so events published
    after that (and after ``await target.flush()`` on network transports) are
    buffered even before the first ``__anext__``. It is removed when the loop
    ends (normally, by ``break`` or by exception), on ``aclose()``, or when the
    target closes (B11).

    - Several tasks may wait in ``__anext__`` at once: they are served in the
      order they started waiting, each envelope to one of them.
    - ``aclose()`` (from any task) ends every waiting reader, and iteration
      ends at once: what was buffered is dropped (PEP 525). When the *target*
      closes, what was buffered is still yielded, then iteration ends.
    - A read cancelled from outside (a cancelled task, ``asyncio.wait_for``
      timing out) ends the subscription, as it ends an async generator. Use
      ``next(timeout=...)`` to wait with a timeout and keep the subscription.
    """

    def __init__(
        self,
        target: TypedEventTarget,
        topic: str,
        *,
        model: type[M] | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        overflow: Overflow = "raise",
        since: StreamPosition | str | _NotGiven | None = NOT_GIVEN,
    ) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        if overflow not in _OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {_OVERFLOW_POLICIES}, not {overflow!r}")
        self.topic = topic
        self._target = target
        self._state = _SubscriptionState(model, max_buffer, overflow)
        self._released = False
        self._position: StreamPosition | None = None
        if isinstance(since, _NotGiven):
            target.add_event_listener(topic, self._state.on_event)
        else:
            self._position = StreamPosition.parse(since) if isinstance(since, str) else since
            self._state.positions = {}
            try:
                target.add_event_listener(topic, self._state.on_event, since=since)  # type: ignore[call-arg]
            except TypeError as exc:
                raise TypeError(
                    f"{type(target).__name__} keeps no topic history: since= needs a spoke "
                    "of a hub with history"
                ) from exc
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

    @property
    def closed(self) -> bool:
        """True once the iterator is finished: closed by the consumer, cancelled,
        or ended (target closed and buffer drained, overflow raised)."""
        return self._released

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Envelope[M]:
        return await self._read(None)

    async def next(self, timeout: float | None = None) -> Envelope[M]:
        """The next envelope, waiting at most ``timeout`` seconds.

        Raises ``TimeoutError`` when none arrived in time; unlike a cancelled
        ``anext()``, the subscription stays live and loses nothing (the safe
        pattern for heartbeat loops). Raises ``StopAsyncIteration`` once the
        subscription has ended, like ``anext()``.
        """
        return await self._read(timeout)

    async def _read(self, timeout: float | None) -> Envelope[M]:
        state = self._state
        while True:
            if state.buffer:
                return self._handed_out(state.buffer.popleft())
            if state.overflowed:
                self._release()
                raise SubscriptionOverflowError(
                    f"subscription to {self.topic!r} overflowed its buffer of "
                    f"{state.max_buffer} envelopes (overflow='raise')"
                )
            if state.ended:
                self._release()
                raise StopAsyncIteration
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[EventEnvelope | _Signal] = loop.create_future()
            state.waiters.append(waiter)
            timer = None if timeout is None else loop.call_later(timeout, _time_out, waiter)
            try:
                received = await waiter
            except BaseException:
                # Cancelled from outside: the consumer is gone (see the class doc).
                self._release()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            if state.closed:
                raise StopAsyncIteration  # closed while this reader waited
            if received is _TIMED_OUT:
                with contextlib.suppress(ValueError):
                    state.waiters.remove(waiter)
                raise TimeoutError(f"no envelope on {self.topic!r} within {timeout}s")
            if received is not _ENDED:
                return self._handed_out(cast(EventEnvelope, received))

    def _handed_out(self, envelope: EventEnvelope) -> Envelope[M]:
        positions = self._state.positions
        if positions is not None:
            self._position = positions.pop(id(envelope), self._position)
        return cast(Envelope[M], envelope)

    @property
    def position(self) -> StreamPosition | None:
        """The stream position of the last envelope yielded (with ``since=``):
        give it as ``since`` to a later subscription to get what came after."""
        return self._position

    @property
    def recovered(self) -> bool | None:
        """With ``since=``: whether the hub's history still held everything
        after the position (False: some events are missing); None until known."""
        stream_state = getattr(self._target, "stream_state", None)
        return None if stream_state is None else stream_state(self.topic)[1]

    async def aclose(self) -> None:
        """End iteration now, for every reader; release the listener."""
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
        self._state.close()
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
        since: StreamPosition | str | _NotGiven | None = NOT_GIVEN,
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
        since: StreamPosition | str | _NotGiven | None = NOT_GIVEN,
    ) -> Subscription[M]: ...

    def subscribe(
        self,
        type: str,
        id: str,
        *,
        model: type[M] | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        overflow: Overflow = "raise",
        since: StreamPosition | str | _NotGiven | None = NOT_GIVEN,
    ) -> Subscription[Any]:
        """Iterate envelopes of topic ``type:id``; see ``Subscription``.

        ``since``: on a spoke of a hub with topic history, a stream position
        (``subscription.position`` of an earlier subscription) to recover what
        came after it, or None to start tracking positions from now."""
        return Subscription(
            self.target,
            make_topic(type, id),
            model=model,
            max_buffer=max_buffer,
            overflow=overflow,
            since=since,
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
