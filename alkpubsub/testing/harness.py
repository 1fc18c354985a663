"""Bus harnesses: how the conformance suite builds a bus of one transport."""

from __future__ import annotations

import abc
from typing import Any

from ..target import TypedEventTarget
from ..transports.memory import MemoryEventTarget

__all__ = ["BusHarness", "MemoryBus"]


class BusHarness(abc.ABC):
    """Builds buses for the suite. Subclass it for a transport.

    ``open(n)`` returns ``n`` started targets of ONE bus. Where the bus has a
    hub, ``targets[0]`` is the hub and the rest are spokes. Every target it
    opened is closed by ``aclose()``, which must tolerate targets the test
    already closed.
    """

    #: A short name for test ids.
    name: str = "bus"
    #: Targets encode envelopes (so E6 limits apply).
    encodes: bool = False
    #: The bus has a hub as targets[0] (E5, B12 apply).
    has_hub: bool = False

    @abc.abstractmethod
    async def open(self, n: int, **options: Any) -> list[TypedEventTarget]: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class MemoryBus(BusHarness):
    """The in-process bus: every target is the same ``MemoryEventTarget``."""

    name = "memory"

    def __init__(self) -> None:
        self._targets: list[MemoryEventTarget] = []

    async def open(self, n: int, **options: Any) -> list[TypedEventTarget]:
        target = MemoryEventTarget(**options)
        await target.start()
        self._targets.append(target)
        return [target] * n

    async def aclose(self) -> None:
        for target in self._targets:
            await target.aclose()
        self._targets.clear()
