"""Bus harnesses: how the conformance suite builds a bus of one transport."""

from __future__ import annotations

import abc
from typing import Any

from ..target import TypedEventTarget
from ..transports.memory import MemoryEventTarget

__all__ = ["BusHarness", "HubAndSpokesBus", "IrohBus", "MemoryBus", "MixedBus", "WebSocketBus"]


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


class IrohBus(HubAndSpokesBus):
    """An ``iroh-hub`` bound to 127.0.0.1 with ``iroh-spoke`` targets dialing its
    ticket. Run it only where no packet can leave the machine (see
    ``docs/iroh.md``: iroh endpoints probe for port mappings)."""

    name = "iroh"

    def make_hub(self, **options: Any) -> Any:
        from ..transports.iroh import IrohHub

        return IrohHub(**options)

    def make_spoke(self, hub: Any, **options: Any) -> Any:
        from ..transports.iroh import IrohSpoke

        return IrohSpoke(hub.ticket, **options)

    def restart_options(self, hub: Any) -> dict[str, Any]:
        # Same key and same UDP port: the spokes' ticket stays valid.
        ipv4 = next(s for s in hub.endpoint.bound_sockets() if not s.startswith("["))
        return {"secret_key": hub.endpoint.secret_key().to_bytes(), "bind_addr": ipv4}


class MixedBus(HubAndSpokesBus):
    """The same harness code on a WS hub for one ``open`` and an Iroh hub for
    the next: hubs come from ``get_transport(name)``, spokes only from the
    hub's URL through ``transport_from_url`` (configuration, not code)."""

    name = "mixed"
    hub_names = ("ws-hub", "iroh-hub")

    def __init__(self) -> None:
        super().__init__()
        self._opened = 0

    def make_hub(self, **options: Any) -> Any:
        from ..registry import get_transport

        name = self.hub_names[self._opened % len(self.hub_names)]
        self._opened += 1
        if name == "ws-hub":
            options.setdefault("port", 0)
        return get_transport(name, **options)

    def make_spoke(self, hub: Any, **options: Any) -> Any:
        from ..registry import transport_from_url

        return transport_from_url(hub.url, **options)

    def restart_options(self, hub: Any) -> dict[str, Any]:
        self._opened -= 1  # the replacement is of the same kind
        if hub.transport_name == "iroh-hub":
            return IrohBus.restart_options(IrohBus(), hub)
        return WebSocketBus.restart_options(WebSocketBus(), hub)
