"""Bus harnesses: how the conformance suite builds a bus of one transport."""

from __future__ import annotations

import abc
from typing import Any, Protocol, runtime_checkable

from ..core.router import Peer
from ..target import TypedEventTarget
from ..transports.memory import MemoryEventTarget

__all__ = [
    "BusHarness",
    "HubAndSpokesBus",
    "HubLike",
    "IrohBus",
    "MemoryBus",
    "MixedBus",
    "SpokeLike",
    "StalledSubscriber",
    "WebSocketBus",
]


class _SpokeStats(Protocol):
    @property
    def received_events(self) -> int:
        """Data frames received, counted before any listener lookup."""


class _HubStats(Protocol):
    @property
    def backpressure_disconnects(self) -> int:
        """Connections cut off for being too slow (B8)."""


@runtime_checkable
class SpokeLike(TypedEventTarget, Protocol):
    """What the hub suites need of a spoke (``SpokeTarget`` provides it)."""

    @property
    def spoke_id(self) -> str | None: ...

    @property
    def stats(self) -> _SpokeStats: ...

    async def wait_connected(self, timeout: float | None = None) -> None: ...

    async def wait_disconnected(self, timeout: float | None = None) -> None: ...


@runtime_checkable
class HubLike(TypedEventTarget, Protocol):
    """What the hub suites need of a hub (``HubTarget`` provides it)."""

    @property
    def stats(self) -> _HubStats: ...

    def subscribers(self, topic: str) -> list[Peer]: ...

    async def disconnect_peer(self, spoke_id: str, code: int = ..., reason: str = "") -> bool: ...


class BusHarness(abc.ABC):
    """Builds buses for the suite. Subclass it for a transport.

    ``open(n)`` returns ``n`` started targets of ONE bus. Where the bus has a
    hub, ``targets[0]`` is the hub and the rest are spokes. Every target it
    opened is closed by ``aclose()``, which must tolerate targets the test
    already closed.
    """

    #: A short name for test ids.
    name: str = "bus"

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

    async def stalled_subscriber(self, hub: Any, topic: str) -> StalledSubscriber:
        """A raw client subscribed to ``topic`` (subscription in effect) that
        then stops reading, for B8. Transports override this."""
        raise NotImplementedError(f"{type(self).__name__} has no stalled_subscriber hook")

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


class StalledSubscriber(abc.ABC):
    """A subscriber that stopped reading (B8 hook)."""

    @abc.abstractmethod
    async def close_code(self) -> int | None:
        """Resume reading and return the code the hub closed the connection with."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class _StalledWebSocket(StalledSubscriber):
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def close_code(self) -> int | None:
        from websockets.exceptions import ConnectionClosed

        self.ws.transport.resume_reading()
        try:
            while True:
                await self.ws.recv()
        except ConnectionClosed as exc:
            return None if exc.rcvd is None else int(exc.rcvd.code)

    async def aclose(self) -> None:
        self.ws.transport.abort()


class _StalledIroh(StalledSubscriber):
    def __init__(self, endpoint: Any, connection: Any, send: Any, recv: Any) -> None:
        # Keep the send stream: dropping it would finish the stream (quinn).
        self.endpoint, self.connection, self.send, self.recv = endpoint, connection, send, recv

    async def close_code(self) -> int | None:
        from iroh import IrohError

        from ..transports.iroh import close_code_of

        try:
            while await self.recv.read(65536):
                pass
        except IrohError as exc:
            return close_code_of(exc)
        # The hub finished the stream after its __close frame, then closed the
        # connection with the code.
        return close_code_of(await self.connection.closed())

    async def aclose(self) -> None:
        self.connection.close(0, b"")
        await self.endpoint.close()


def _subscribe_then_ping(topic: str) -> list[bytes]:
    import json

    return [
        json.dumps({"type": "__subscribe", "id": "", "payload": {"topic": topic}}).encode(),
        json.dumps({"type": "__ping", "id": "stall", "payload": {}}).encode(),
    ]


def _is_pong(message: bytes | str) -> bool:
    return b'"__pong"' in (message.encode() if isinstance(message, str) else message)


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

    async def stalled_subscriber(self, hub: Any, topic: str) -> StalledSubscriber:
        import socket

        from websockets.asyncio.client import connect

        host, port = hub.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills up quickly
        sock.connect((host.strip("[]"), int(port)))
        ws = await connect(hub.url, sock=sock, compression=None)
        for frame in _subscribe_then_ping(topic):
            await ws.send(frame.decode())
        while not _is_pong(await ws.recv()):
            pass
        ws.transport.pause_reading()
        return _StalledWebSocket(ws)


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

    async def stalled_subscriber(self, hub: Any, topic: str) -> StalledSubscriber:
        from iroh import EndpointTicket

        from ..core.codec import FrameDecoder, pack_frames
        from ..transports.iroh import ALPN, bind_endpoint

        endpoint = await bind_endpoint(
            secret_key=None, bind_addr="127.0.0.1:0", alpns=[], relay_mode=None, preset=None
        )
        addr = EndpointTicket.from_string(hub.ticket).endpoint_addr()
        connection = await endpoint.connect(addr, ALPN)
        stream = await connection.open_bi()
        send, recv, decoder = stream.send(), stream.recv(), FrameDecoder()
        await send.write_all(pack_frames(_subscribe_then_ping(topic)))
        while not any(_is_pong(frame) for frame in decoder.feed(await recv.read(65536))):
            pass
        return _StalledIroh(endpoint, connection, send, recv)  # and it reads no more


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

    def _same_kind(self, hub: Any) -> HubAndSpokesBus:
        return IrohBus() if hub.transport_name == "iroh-hub" else WebSocketBus()

    def restart_options(self, hub: Any) -> dict[str, Any]:
        self._opened -= 1  # the replacement is of the same kind
        return self._same_kind(hub).restart_options(hub)

    async def stalled_subscriber(self, hub: Any, topic: str) -> StalledSubscriber:
        return await self._same_kind(hub).stalled_subscriber(hub, topic)
