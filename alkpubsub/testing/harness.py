"""Bus harnesses: how the conformance suite builds a bus of one transport."""

from __future__ import annotations

import abc
from typing import Any

from ..target import TypedEventTarget
from ..transports.memory import MemoryEventTarget

__all__ = ["BusHarness", "HubAndSpokesBus", "MemoryBus", "WebSocketBus"]


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


_SHARED_OPTIONS = ("on_listener_error",)


class HubAndSpokesBus(BusHarness):
    """One hub (``targets[0]``) and ``n - 1`` spokes connected to it.

    Subclasses say how to build the hub and a spoke for it. ``open`` options
    prefixed ``hub_`` or ``spoke_`` go to one side; ``on_listener_error`` to both.
    """

    encodes = True
    has_hub = True

    def __init__(self) -> None:
        self.hubs: list[Any] = []
        self.spokes: list[Any] = []

    @abc.abstractmethod
    def make_hub(self, **options: Any) -> Any: ...

    @abc.abstractmethod
    def make_spoke(self, hub: Any, **options: Any) -> Any: ...

    async def open(self, n: int, **options: Any) -> list[TypedEventTarget]:
        hub_options = {k[4:]: v for k, v in options.items() if k.startswith("hub_")}
        spoke_options = {k[6:]: v for k, v in options.items() if k.startswith("spoke_")}
        for key in _SHARED_OPTIONS:
            if key in options:
                hub_options[key] = spoke_options[key] = options[key]
        hub = self.make_hub(**hub_options)
        self.hubs.append(hub)
        await hub.start()
        spokes = []
        for _ in range(n - 1):
            spoke = self.make_spoke(hub, **spoke_options)
            self.spokes.append(spoke)
            await spoke.start()
            spokes.append(spoke)
        return [hub, *spokes]

    async def restart_hub(self, hub: Any, before_start: Any = None) -> Any:
        """Close ``hub`` and start a new one its spokes can reach at the same
        address; ``before_start`` (an async callable) runs while no hub is up."""
        options = self.restart_options(hub)
        await hub.aclose()
        replacement = self.make_hub(**options)
        self.hubs.append(replacement)
        if before_start is not None:
            await before_start()
        await replacement.start()
        return replacement

    @abc.abstractmethod
    def restart_options(self, hub: Any) -> dict[str, Any]:
        """Options for a new hub at the same address as ``hub``."""

    async def add_spoke(self, hub: Any, **options: Any) -> Any:
        spoke = self.make_spoke(hub, **options)
        self.spokes.append(spoke)
        await spoke.start()
        return spoke

    async def aclose(self) -> None:
        for target in [*self.spokes, *self.hubs]:
            await target.aclose()
        self.spokes.clear()
        self.hubs.clear()


class WebSocketBus(HubAndSpokesBus):
    """A ``ws-hub`` on loopback with ``ws-spoke`` targets."""

    name = "ws"

    def make_hub(self, **options: Any) -> Any:
        from ..transports.ws import WebSocketHub

        options.setdefault("port", 0)
        return WebSocketHub(**options)

    def make_spoke(self, hub: Any, **options: Any) -> Any:
        from ..transports.ws import WebSocketSpoke

        return WebSocketSpoke(hub.url, **options)

    def restart_options(self, hub: Any) -> dict[str, Any]:
        host, port = hub.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        return {"host": host.strip("[]"), "port": int(port)}
