"""Raw clients that speak bytes to a hub: what a broken or hostile peer sends."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from alkpubsub.core.codec import FrameDecoder, pack_frames
from alkpubsub.testing import within


def envelope(type_: str, payload: Any = None, id_: str = "") -> bytes:
    frame = {"type": type_, "id": id_, "payload": payload}
    return json.dumps(frame, separators=(",", ":")).encode()


HELLO_SESSION = envelope("__hello", {"protocol": 1, "session": True})


class RawIroh:
    """A hand-driven Iroh client: one connection, one bi stream (or more)."""

    def __init__(self, endpoint: Any, connection: Any, stream: Any) -> None:
        self.endpoint = endpoint
        self.connection = connection
        self.send = stream.send()
        self.recv = stream.recv()
        self.decoder = FrameDecoder(64 * 1024 * 1024)
        self.frames: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, ticket: str, secret_key: bytes | None = None) -> RawIroh:
        from iroh import EndpointTicket

        from alkpubsub.transports._iroh_fastpath import install_fast_write
        from alkpubsub.transports.iroh import ALPN, bind_endpoint

        install_fast_write(True)  # megabytes go out fast (checked byte for byte)
        endpoint = await bind_endpoint(
            secret_key=secret_key,
            bind_addr="127.0.0.1:0",
            alpns=[],
            relay_mode=None,
            preset=None,
        )
        addr = EndpointTicket.from_string(ticket).endpoint_addr()
        connection = await within(endpoint.connect(addr, ALPN))
        stream = await within(connection.open_bi())
        return cls(endpoint, connection, stream)

    async def write(self, data: bytes) -> None:
        from iroh import IrohError

        from alkpubsub.transports.iroh import describe

        try:
            await within(self.send.write_all(data))
        except IrohError as exc:
            raise ConnectionError(f"write failed: {describe(exc)}") from None

    async def write_frames(self, *frames: bytes) -> None:
        await self.write(pack_frames(list(frames)))

    async def read_until(self, type_: str, timeout: float = 10.0) -> dict[str, Any]:
        """Read frames until one of ``type_`` arrives; returns it."""
        async with asyncio.timeout(timeout):
            while True:
                for index, frame in enumerate(self.frames):
                    if frame["type"] == type_:
                        del self.frames[: index + 1]
                        return frame
                chunk = await self.recv.read(65536)
                if not chunk:
                    raise ConnectionError("stream finished")
                self.frames += [json.loads(f) for f in self.decoder.feed(chunk)]

    async def close_code(self, timeout: float = 10.0) -> int | None:
        """Read until the hub ends the connection; the code it closed with."""
        from iroh import IrohError

        from alkpubsub.transports.iroh import close_code_of

        try:
            async with asyncio.timeout(timeout):
                while chunk := await self.recv.read(65536):
                    self.frames += [json.loads(f) for f in self.decoder.feed(chunk)]
                # Finished (a slow consumer, after the __close frame): the code
                # comes with the connection's close.
                return close_code_of(await self.connection.closed())
        except IrohError as exc:
            return close_code_of(exc)

    async def drop(self, code: int = 4000) -> None:
        """Give the link up as a spoke does (4000: it will resume)."""
        self.connection.close(code, b"")

    async def aclose(self) -> None:
        self.connection.close(0, b"")
        await self.endpoint.close()


class RawWs:
    """A hand-driven WebSocket client (``websockets``), frames as JSON text."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, **options: Any) -> RawWs:
        from websockets.asyncio.client import connect

        return cls(await within(connect(url, compression=None, **options)))

    async def write_frames(self, *frames: bytes) -> None:
        for frame in frames:
            await within(self.ws.send(frame.decode()))

    async def read_until(self, type_: str, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for index, frame in enumerate(self.frames):
                    if frame["type"] == type_:
                        del self.frames[: index + 1]
                        return frame
                self.frames.append(json.loads(await self.ws.recv()))

    async def close_code(self, timeout: float = 10.0) -> int | None:
        """Read until the hub closes the connection; its close code."""
        from websockets.exceptions import ConnectionClosed

        try:
            async with asyncio.timeout(timeout):
                while True:
                    self.frames.append(json.loads(await self.ws.recv()))
        except ConnectionClosed as exc:
            return None if exc.rcvd is None else int(exc.rcvd.code)

    async def drop(self, code: int = 4000) -> None:
        """Give the link up as a spoke does (4000: it will resume)."""
        await within(self.ws.close(code))

    async def aclose(self) -> None:
        self.ws.transport.abort()


def hello(resume: str | None = None, received: int = 0) -> bytes:
    payload: dict[str, Any] = {"protocol": 1, "session": True}
    if resume is not None:
        payload.update(resume=resume, received=received)
    return envelope("__hello", payload)
