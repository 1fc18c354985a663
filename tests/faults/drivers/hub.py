"""A hub in a process of its own: WebSocket (``--ws-port``), Iroh
(``--iroh-bind``), or both on one bus.

Reports ``ready`` (its URL, ticket, endpoint id), every connection and
disconnection, and answers ``stats`` (counters, peers, sessions, RSS), ``trim``
(RSS after garbage collection and ``malloc_trim``) and ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import socket
from typing import Any

from common import commands, report, rss_kib, setup_logging, trim

from alkpubsub.transports.hub import HubTarget
from alkpubsub.transports.iroh import IrohAcceptor
from alkpubsub.transports.ws import WebSocketHub


class UnixRelay(asyncio.DatagramProtocol):
    """Datagrams between a Unix socket and the hub's UDP port, for a hub in a
    network namespace of its own: the fault proxy outside reaches it only
    through this socket (a filesystem path crosses namespaces), so Iroh cannot
    find a direct path around the proxy. One UDP socket per proxy client."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.transport: asyncio.DatagramTransport | None = None
        self.upstreams: dict[str, asyncio.DatagramTransport | None] = {}
        self.opening: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if addr in self.upstreams:
            upstream = self.upstreams[addr]
            if upstream is not None:  # else being opened: lost, as UDP may be
                upstream.sendto(data)
            return
        self.upstreams[addr] = None
        task = asyncio.ensure_future(self._open(addr, data))
        self.opening.add(task)
        task.add_done_callback(self.opening.discard)

    async def _open(self, client: str, first: bytes) -> None:
        relay = self

        class Upstream(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if relay.transport is not None:
                    relay.transport.sendto(data, client)

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Upstream, local_addr=("127.0.0.1", 0), remote_addr=self.target
        )
        self.upstreams[client] = transport
        transport.sendto(first)


def peer_fields(peer: Any) -> dict[str, Any]:
    return {"spoke_id": peer.spoke_id, "transport": peer.transport}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ws-port", type=int)
    parser.add_argument("--iroh-bind")
    parser.add_argument("--iroh-key", help="hex of a 32-byte secret key")
    parser.add_argument("--options", default="{}", help="JSON of HubTarget options")
    parser.add_argument("--relay", help="a Unix socket path relaying datagrams to the Iroh port")
    args = parser.parse_args()
    setup_logging()
    options: dict[str, Any] = json.loads(args.options)
    hub_options: dict[str, Any] = {
        **options,
        "on_connection": lambda peer: report("connected", **peer_fields(peer)),
        "on_disconnection": lambda peer: report("disconnected", **peer_fields(peer)),
        "on_backpressure": lambda peer, n: report("backpressure", buffered=n, **peer_fields(peer)),
    }
    hub: HubTarget
    acceptor: IrohAcceptor | None = None
    if args.ws_port is not None:
        hub = WebSocketHub(port=args.ws_port, **hub_options)
    else:
        hub = HubTarget(**hub_options)
    if args.iroh_bind is not None:
        key = bytes.fromhex(args.iroh_key) if args.iroh_key else None
        acceptor = IrohAcceptor(bind_addr=args.iroh_bind, secret_key=key)
        hub.add_acceptor(acceptor)
    async with hub:
        ready: dict[str, Any] = {"pid_rss": rss_kib()}
        if isinstance(hub, WebSocketHub):
            ready["url"] = hub.url
        if acceptor is not None:
            ready.update(ticket=acceptor.ticket, endpoint_id=acceptor.endpoint_id)
        if args.relay is not None:
            host, port = args.iroh_bind.rsplit(":", 1)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.relay)
            await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: UnixRelay((host, int(port))), local_addr=args.relay, family=socket.AF_UNIX
            )
        report("ready", **ready)
        async for command in commands():
            name = command["cmd"]
            if name == "stats":
                router = hub.router
                report(
                    "stats",
                    stats=dataclasses.asdict(hub.stats),
                    peers=[peer.spoke_id for peer in hub.peers],
                    connections=len(router.connections),
                    sessions=len(router.sessions),
                    subscriptions=sum(len(s) for s in router.subscriptions.values()),
                    topics=len(router.subscriptions),
                    refused_streams=None if acceptor is None else acceptor.refused_streams,
                    rss=rss_kib(),
                )
            elif name == "trim":
                report("trim", rss=trim())
            elif name == "quit":
                break
    report("closed")


if __name__ == "__main__":
    asyncio.run(main())
