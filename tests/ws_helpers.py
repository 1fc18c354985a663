"""Servers for the WebSocket integration tests, all on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any


def bound_socket() -> socket.socket:
    """A listening loopback socket: clients may connect before the server runs
    (the kernel queues them), so tests never wait for a server to 'be ready'."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def ws_url(sock: socket.socket, path: str) -> str:
    host, port = sock.getsockname()[:2]
    return f"ws://{host}:{port}{path}"


@contextlib.asynccontextmanager
async def uvicorn_serving(app: Any) -> AsyncIterator[socket.socket]:
    import uvicorn

    sock = bound_socket()
    config = uvicorn.Config(
        app, log_level="warning", ws="websockets-sansio", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        yield sock
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@contextlib.asynccontextmanager
async def aiohttp_serving(app: Any) -> AsyncIterator[socket.socket]:
    from aiohttp import web

    sock = bound_socket()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield sock
    finally:
        await asyncio.wait_for(runner.cleanup(), 10)
        sock.close()
