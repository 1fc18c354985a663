"""Event-driven test helpers: no sleeps, every wait bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from ..core.envelope import Event
from ..target import TypedEventTarget, dispatch_all

__all__ = ["DEFAULT_TIMEOUT", "Recorder", "publish_all", "within"]

DEFAULT_TIMEOUT = 10.0

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout: float = DEFAULT_TIMEOUT) -> T:
    """Await with a bound, so that a hang fails the test quickly."""
    return await asyncio.wait_for(awaitable, timeout)


class Recorder:
    """A listener that records events and lets a test wait for a condition."""

    def __init__(self, name: str = "recorder") -> None:
        self.name = name
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    @property
    def payloads(self) -> list[Any]:
        return [event.detail.payload for event in self.events]

    @property
    def topics(self) -> list[str]:
        return [event.type for event in self.events]

    async def wait_until(
        self, condition: Callable[[Recorder], bool], timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        async def waiter() -> None:
            while not condition(self):
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(waiter(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: condition not met within {timeout}s; got {self.topics!r}"
            ) from None

    async def wait_for_count(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        await self.wait_until(lambda r: len(r.events) >= count, timeout)

    async def wait_for_payload(self, payload: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        await self.wait_until(lambda r: payload in r.payloads, timeout)


async def publish_all(
    target: TypedEventTarget, events: Iterable[Event], timeout: float = DEFAULT_TIMEOUT
) -> int:
    """``dispatch_all`` with every wait bounded (B13)."""
    return await within(dispatch_all(target, events), timeout)
