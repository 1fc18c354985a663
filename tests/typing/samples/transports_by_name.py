"""User code that must type-check under ``mypy --strict`` (tests/typing).

Each transport name gives its class; any other name a ``Transport`` that works
with ``async with``.
"""

from __future__ import annotations

import asyncio
from typing import assert_type

from alkpubsub import PubSub, create_pubsub, get_transport, transport_from_env
from alkpubsub.core.router import HubStats, Peer
from alkpubsub.registry import Transport
from alkpubsub.transports.iroh import IrohHub, IrohSpoke
from alkpubsub.transports.memory import MemoryEventTarget
from alkpubsub.transports.ws import WebSocketHub, WebSocketSpoke


async def hub_and_spoke() -> None:
    async with get_transport("ws-hub", port=0) as hub:
        assert_type(hub, WebSocketHub)
        url: str = hub.url
        peers: list[Peer] = hub.peers
        stats: HubStats = hub.stats
        async with get_transport("ws-spoke", url=url) as spoke:
            assert_type(spoke, WebSocketSpoke)
            spoke_id: str | None = spoke.spoke_id
            print(peers, stats.connections, spoke_id, spoke.stats.sent_events)


async def iroh() -> None:
    async with get_transport("iroh-hub") as hub:
        assert_type(hub, IrohHub)
        ticket: str = hub.ticket
        async with get_transport("iroh-spoke", hub=ticket) as spoke:
            assert_type(spoke, IrohSpoke)
            print(hub.url, spoke.endpoint_id)


async def by_configuration(name: str) -> None:
    memory = get_transport("memory")
    assert_type(memory, MemoryEventTarget)
    async with get_transport(name) as target:
        assert_type(target, Transport)
        await target.flush(1.0)
    async with create_pubsub(transport_from_env()) as pubsub:
        assert_type(pubsub, PubSub)
        pubsub.publish("job.status", "1", {"state": "done"})


if __name__ == "__main__":
    asyncio.run(by_configuration("memory"))
