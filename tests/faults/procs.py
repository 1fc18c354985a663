"""Hubs and spokes in processes of their own (drivers/hub.py, drivers/spoke.py),
and the checks of what sequenced subscribers received."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from typing import Any

from .support import Child, Children, free_port

#: Heartbeats short enough that a blackhole of a few hundred ms drops an Iroh
#: link on both sides (the hub's tick must be as short for its side).
FAST_HEARTBEAT = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.3}
FAST_TICK = {"tick_interval": 0.1}


@dataclass
class HubProcess:
    """How to (re)start one hub at a fixed address, and its current process."""

    transport: str  # "ws", "iroh" or "both"
    options: dict[str, Any] = field(default_factory=dict)
    ws_port: int = 0
    iroh_port: int = 0
    key: str = field(default_factory=lambda: os.urandom(32).hex())
    child: Child | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    #: In a network namespace of its own, reachable over Iroh only through
    #: the Unix relay at ``relay`` (see ``UdpFaultProxy``).
    own_netns: bool = False
    relay: str = ""

    def __post_init__(self) -> None:
        if self.transport in ("ws", "both") and not self.ws_port:
            self.ws_port = free_port()
        if self.transport in ("iroh", "both") and not self.iroh_port:
            self.iroh_port = free_port(socket.SOCK_DGRAM)
        if self.own_netns and not self.relay:
            self.relay = os.path.join(tempfile.mkdtemp(prefix="alk-hub-"), "relay")

    async def start(self, children: Children) -> HubProcess:
        args = ["--options", json.dumps(self.options)]
        if self.transport in ("ws", "both"):
            args += ["--ws-port", str(self.ws_port)]
        if self.transport in ("iroh", "both"):
            args += ["--iroh-bind", self.iroh_address, "--iroh-key", self.key]
        if self.own_netns:
            args += ["--relay", self.relay]
            relay_dir = os.path.dirname(self.relay)
            children.cleanups.append(lambda: shutil.rmtree(relay_dir, ignore_errors=True))
        name = f"hub#{self.restarts}"
        self.restarts += 1
        self.child = await children.start(name, "hub.py", *args, own_netns=self.own_netns)
        self.ready = await self.child.next("ready")
        return self

    @property
    def iroh_address(self) -> str:
        return f"127.0.0.1:{self.iroh_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    @property
    def endpoint_id(self) -> str:
        return str(self.ready["endpoint_id"])

    def address_args(self, transport: str, via: str | None = None) -> list[str]:
        """Spoke arguments to reach this hub over ``transport``, directly or
        through a proxy at ``via`` (a ws:// URL or a UDP host:port)."""
        if transport == "ws":
            return ["--ws", via or self.ws_url]
        return ["--iroh", self.endpoint_id, "--iroh-address", via or self.iroh_address]

    async def stats(self) -> dict[str, Any]:
        assert self.child is not None
        return await self.child.ask("stats")


async def start_spoke(
    children: Children,
    role: str,
    name: str,
    address: list[str],
    options: dict[str, Any] | None = None,
    topic: str = "seq:all",
    direct: bool = False,
) -> Child:
    args = [*address, "--role", role, "--name", name, "--topic", topic]
    args += ["--options", json.dumps(options or {})]
    if direct:
        args.append("--direct")
    return await children.start(name, "spoke.py", *args)


@dataclass
class Sequences:
    """What one subscriber received from one publisher, against what was published."""

    received: list[int]
    published: int

    @property
    def duplicates(self) -> int:
        return len(self.received) - len(set(self.received))

    @property
    def reordered(self) -> int:
        return sum(1 for a, b in zip(self.received, self.received[1:], strict=False) if b <= a)

    @property
    def missing(self) -> set[int]:
        return set(range(self.published)) - set(self.received)

    def summary(self) -> str:
        return (
            f"{len(self.received)}/{self.published} received, {len(self.missing)} missing, "
            f"{self.duplicates} duplicates, {self.reordered} out of order"
        )
