"""A complete alkpubsub transport over Unix domain sockets, written only against
the public extension API (``alkpubsub.transports.base``). It passes the
conformance suite (tests/test_example_transport.py); docs/transports.md walks
through it.

Framing: the same 4-byte length prefix as Iroh (SPEC F2), decoded by the
core's ``FrameDecoder``. URLs: ``unix:///path/to/socket``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from alkpubsub.transports.base import (
    CloseCode,
    FrameDecoder,
    HubTarget,
    Link,
    SpokeTarget,
    TargetClosedError,
    pack_frames,
)

READ_CHUNK_BYTES = 64 * 1024


class StreamLink:
    """One connection: an asyncio stream pair."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame_bytes: int
    ) -> None:
        self.reader, self.writer = reader, writer
        self.max_frame_bytes = max_frame_bytes

    async def send(self, frames: list[bytes]) -> None:
        self.writer.write(pack_frames(frames))  # every queued frame in one write
        await self.writer.drain()  # raises ConnectionError once the peer is gone

    async def messages(self) -> AsyncIterator[bytes]:
        decoder = FrameDecoder(self.max_frame_bytes)
        while chunk := await self.reader.read(READ_CHUNK_BYTES):
            for frame in decoder.feed(chunk):  # FramingError on a bad length prefix
                yield frame
        if not decoder.at_frame_boundary():
            raise ConnectionError("connection ended inside a frame")

    def transport_buffered(self) -> int:
        return self.writer.transport.get_write_buffer_size()

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        # A byte stream carries no close code; the hub announced it already in
        # a __close frame, which the spoke reports to on_disconnect.
        self.writer.close()


class UnixAcceptor:
    """Listens on a Unix socket and hands every connection to the hub."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._server: asyncio.Server | None = None

    async def start(self, hub: HubTarget) -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            link = StreamLink(reader, writer, hub.max_frame_bytes)
            try:
                await hub.serve_link(link, {"transport": "unix", "path": self.path})
            except TargetClosedError:
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_unix_server(serve, self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def release(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()


class UnixHub(HubTarget):
    transport_name = "unix-hub"

    def __init__(self, path: str, **hub_options: Any) -> None:
        super().__init__(**hub_options)
        self.path = path
        self.add_acceptor(UnixAcceptor(path))

    @property
    def url(self) -> str:
        return f"unix://{self.path}"


class UnixSpoke(SpokeTarget):
    transport_name = "unix-spoke"
    url_schemes: ClassVar[tuple[str, ...]] = ("unix",)

    def __init__(self, path: str, **spoke_options: Any) -> None:
        super().__init__(**spoke_options)
        self.path = path

    @classmethod
    def from_url(cls, url: str, **options: Any) -> UnixSpoke:
        return cls(url.removeprefix("unix://"), **options)

    async def open_link(self) -> Link:
        reader, writer = await asyncio.open_unix_connection(self.path)
        return StreamLink(reader, writer, self.max_frame_bytes)
