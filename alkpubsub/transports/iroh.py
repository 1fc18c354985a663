"""Iroh transport: ``iroh-hub`` and ``iroh-spoke`` over P2P QUIC (SPEC F2/F3).

ALPN ``alkpubsub/1``; the spoke dials the hub and opens one bidirectional
stream; frames are a 4-byte big-endian length and that many bytes of JSON.
Writes coalesce every queued frame into one ``write_all``; reads take up to
64 KiB per call and split frames with the core's ``FrameDecoder``: one FFI
call per frame is too slow and, under load, makes quinn drop the connection.
Subscriptions, relaying, reconnects and backpressure come from the shared
shells and the core, exactly as for WebSocket.

Endpoints are configured for offline use by default (``preset_minimal()``,
relays disabled, bound to 127.0.0.1). Relays and n0 discovery are an explicit
opt-in (``relay_mode=`` / ``preset=``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import re
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, ClassVar, Final

import iroh
from iroh import (
    Connection,
    Endpoint,
    EndpointAddr,
    EndpointId,
    EndpointOptions,
    EndpointTicket,
    IrohError,
    RecvStream,
    RelayMode,
    SendStream,
    preset_minimal,
)

from ..core.close import NORMAL_CLOSE_CODES, CloseCode
from ..core.codec import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, pack_frames
from ..core.errors import (
    ConnectionLostError,
    ConnectionRefusedByHubError,
    FramingError,
    LinkClosedError,
    TargetClosedError,
)
from ._iroh_fastpath import install_fast_write
from .hub import HubTarget
from .link import Link
from .spoke import SpokeTarget

__all__ = ["ALPN", "IrohAcceptor", "IrohHub", "IrohLink", "IrohSpoke", "load_secret_key"]

logger = logging.getLogger(__name__)

ALPN: Final = b"alkpubsub/1"
READ_CHUNK_BYTES: Final = 64 * 1024
DEFAULT_BIND: Final = "127.0.0.1:0"
#: QUIC's own "no error" code: what a connection closed by an endpoint shutdown carries.
QUIC_NO_ERROR: Final = 0
REBIND_SECONDS: Final = 2.0
# "ApplicationClose { error_code: 1013, ...", "... (code 1013)", "closed by peer: 1013"
_CLOSE_CODE = re.compile(r"error_code: (\d+)|\(code (\d+)\)|closed by peer: (\d+)")


def bind_uniffi_loop() -> None:
    """Point the bindings at the running loop.

    The generated code prefers a loop registered with ``uniffi_set_event_loop``
    over the running one, so a loop left from an earlier ``asyncio.run`` (or a
    previous pytest test) would make every call fail with "attached to a
    different loop". We only call iroh from coroutines on the running loop.
    """
    loop = asyncio.get_running_loop()
    if getattr(iroh.iroh_ffi, "_UNIFFI_GLOBAL_EVENT_LOOP", None) not in (None, loop):
        iroh.iroh_ffi.uniffi_set_event_loop(loop)  # type: ignore[arg-type]


def load_secret_key(key: bytes | str | os.PathLike[str] | None) -> bytes | None:
    """32 raw bytes, or a key file (created with a fresh key, mode 0600, if missing)."""
    if key is None or isinstance(key, bytes):
        if key is not None and len(key) != 32:
            raise ValueError("an iroh secret key is 32 bytes")
        return key
    path = Path(key)
    if path.exists():
        data = path.read_bytes()
        if len(data) != 32:
            raise ValueError(f"{path} does not hold a 32-byte iroh secret key")
        return data
    data = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return data


async def bind_endpoint(
    *,
    secret_key: bytes | None,
    bind_addr: str,
    alpns: list[bytes],
    relay_mode: RelayMode | None,
    preset: Any,
) -> Endpoint:
    options = EndpointOptions(
        preset=preset if preset is not None else preset_minimal(),
        bind_addr=bind_addr,
        secret_key=secret_key,
        alpns=alpns,
        relay_mode=relay_mode if relay_mode is not None else RelayMode.disabled(),
    )
    # A closed endpoint lets go of its UDP socket a moment after close()
    # returns (its Rust tasks wind down): a hub restarted on the same port in
    # the same process retries briefly instead of failing.
    deadline = asyncio.get_running_loop().time() + REBIND_SECONDS
    while True:
        try:
            return await Endpoint.bind(options)
        except IrohError as exc:
            retry = "Address already in use" in describe(exc) and not bind_addr.endswith(":0")
            if not retry or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.05)


class EndpointHolder:
    """An Iroh endpoint that is either the caller's (borrowed: never closed by
    us) or bound by us on first use and closed on release. Shared by the
    acceptor and the spoke."""

    def __init__(
        self,
        *,
        endpoint: Endpoint | None,
        secret_key: bytes | str | os.PathLike[str] | None,
        bind_addr: str,
        relay_mode: RelayMode | None,
        preset: Any,
        fast_write: bool,
    ) -> None:
        self._endpoint = endpoint
        self.owned = endpoint is None
        self._secret_key = load_secret_key(secret_key)
        self._bind_addr = bind_addr
        self._relay_mode = relay_mode
        self._preset = preset
        self._fast_write = fast_write

    @property
    def endpoint(self) -> Endpoint:
        if self._endpoint is None:
            raise RuntimeError("not started, or already closed")
        return self._endpoint

    async def acquire(self, alpns: list[bytes]) -> Endpoint:
        """The endpoint, bound now if it is ours and not bound yet."""
        bind_uniffi_loop()
        install_fast_write(self._fast_write)
        if self._endpoint is None:
            self._endpoint = await bind_endpoint(
                secret_key=self._secret_key,
                bind_addr=self._bind_addr,
                alpns=alpns,
                relay_mode=self._relay_mode,
                preset=self._preset,
            )
        elif alpns and not self.owned:
            self._endpoint.set_alpns(alpns)
        return self._endpoint

    async def release(self) -> None:
        """Close the endpoint if it is ours."""
        endpoint, self._endpoint = self._endpoint, (None if self.owned else self._endpoint)
        if self.owned and endpoint is not None:
            with contextlib.suppress(Exception):
                await endpoint.close()
            # The UDP sockets are released only when the Rust object is dropped.
            del endpoint


def describe(error: BaseException | str) -> str:
    """``str(IrohError)`` is empty; the details live in ``message()``."""
    message = getattr(error, "message", None)
    if callable(message):
        with contextlib.suppress(Exception):
            return str(message())
    return str(error) or repr(error)


def close_code_of(error: BaseException | str) -> int | None:
    """The application close code carried by a connection-lost error (or a
    ``Connection.closed()`` / ``close_reason()`` string), if any."""
    match = _CLOSE_CODE.search(describe(error))
    if match is None:
        return None
    return int(next(group for group in match.groups() if group is not None))


class IrohLink:
    """One bidirectional stream of one QUIC connection, for a hub or a spoke."""

    def __init__(
        self,
        connection: Connection,
        send: SendStream,
        recv: RecvStream,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.connection: Connection | None = connection
        self._send: SendStream | None = send
        self._recv: RecvStream | None = recv
        self._max_frame_bytes = max_frame_bytes
        self._closed = False
        self.remote_id = ""

    async def send(self, frames: list[bytes]) -> None:
        if self._send is None:
            raise ConnectionError("iroh link is closed")
        # F3: every queued frame in one write, one FFI call.
        try:
            await self._send.write_all(pack_frames(frames))
        except IrohError as exc:
            raise ConnectionError(f"iroh stream write failed: {describe(exc)}") from None

    async def messages(self) -> AsyncIterator[bytes]:
        if self._recv is None:
            return
        decoder = FrameDecoder(self._max_frame_bytes)
        while True:
            # No local reference to the stream: a traceback kept by the task
            # that ran this would keep the connection and its endpoint's
            # socket alive until the cyclic garbage collector runs.
            recv = self._recv
            if recv is None:
                raise ConnectionLostError("iroh link closed")
            try:
                chunk = await recv.read(READ_CHUNK_BYTES)
                del recv
            except IrohError as exc:
                del recv
                # The close code tells why, even in the middle of a frame: a
                # peer that closes drops what it had not sent yet.
                code = close_code_of(exc)
                if code == CloseCode.POLICY_VIOLATION:
                    raise ConnectionRefusedByHubError(
                        f"hub refused this endpoint: {describe(exc)}"
                    ) from exc
                if code is None:
                    # Timed out, reset (a peer that forgot the connection), or
                    # our own close: a partial frame at the end of a broken
                    # connection is no protocol violation (only a FIN is).
                    raise ConnectionLostError(f"iroh connection lost: {describe(exc)}") from None
                if code != QUIC_NO_ERROR and code not in NORMAL_CLOSE_CODES:
                    raise LinkClosedError(code, describe(exc)) from None
                return
            if not chunk:
                if not decoder.at_frame_boundary():
                    raise FramingError("stream finished inside a frame")
                return
            # Popped, so that neither the chunk nor its last frame stays
            # referenced while the next read waits.
            frames = decoder.feed(chunk)
            del chunk
            frames.reverse()
            while frames:
                yield frames.pop()

    def transport_buffered(self) -> int:
        return 0  # write_all returns once quinn accepted the bytes (flow control)

    async def finish(self) -> None:
        """Send nothing more, and return once the peer's QUIC stack has
        acknowledged everything sent: a close then no longer drops it (the hub
        uses this before cutting a slow consumer off, so that it reads why)."""
        send = self._send
        if send is None:
            raise ConnectionError("iroh link is closed")
        try:
            await send.finish()
            await send.stopped()
        except IrohError as exc:
            raise ConnectionError(f"iroh stream finish failed: {describe(exc)}") from None
        finally:
            del send

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close(code, reason.encode()[:100])
        # Only now drop the Rust handles (dropping a quinn SendStream finishes
        # it, which must not overtake the close code). A connection keeps its
        # endpoint and UDP socket alive, and tracebacks of cancelled tasks keep
        # links around, so do not wait for garbage collection.
        self._send = self._recv = None


def parse_hub_address(
    hub: str | EndpointAddr | EndpointTicket, addresses: Iterable[str] | None
) -> EndpointAddr:
    """A ticket string, an ``EndpointTicket``/``EndpointAddr``, or an endpoint id
    with ``hub_addresses``."""
    if isinstance(hub, EndpointAddr):
        return hub
    if isinstance(hub, EndpointTicket):
        return hub.endpoint_addr()
    text = hub.removeprefix("iroh://").strip().rstrip("/")
    if addresses is not None:
        return EndpointAddr(EndpointId.from_string(text), None, list(addresses))
    try:
        return EndpointTicket.from_string(text).endpoint_addr()
    except Exception as exc:
        raise ValueError(f"not an iroh endpoint ticket: {hub!r} ({exc})") from None


class IrohAcceptor:
    """Accepts Iroh connections for a hub: binds (or borrows) an endpoint, runs
    the accept loop, checks the allow-list and hands each spoke's stream to
    ``hub.serve_link`` (H5). Add it to any hub with ``hub.add_acceptor``."""

    def __init__(
        self,
        *,
        endpoint: Endpoint | None = None,
        secret_key: bytes | str | os.PathLike[str] | None = None,
        bind_addr: str = DEFAULT_BIND,
        allowed_peers: Iterable[str] | None = None,
        relay_mode: RelayMode | None = None,
        preset: Any = None,
        handshake_timeout: float = 10.0,
        fast_write: bool = True,
    ) -> None:
        self._holder = EndpointHolder(
            endpoint=endpoint,
            secret_key=secret_key,
            bind_addr=bind_addr,
            relay_mode=relay_mode,
            preset=preset,
            fast_write=fast_write,
        )
        self._allowed = None if allowed_peers is None else {str(p) for p in allowed_peers}
        self.handshake_timeout = handshake_timeout
        self._hub: HubTarget | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self._endpoint_id: str | None = None
        self._ticket: str | None = None
        self.refused_peers = 0
        #: Connections closed because they opened more than the one stream.
        self.refused_streams = 0

    @property
    def endpoint(self) -> Endpoint:
        return self._holder.endpoint

    @property
    def endpoint_id(self) -> str:
        if self._endpoint_id is None:
            raise RuntimeError("not started")
        return self._endpoint_id

    @property
    def ticket(self) -> str:
        """The ``EndpointTicket`` a spoke dials."""
        if self._ticket is None:
            raise RuntimeError("not started")
        return self._ticket

    async def start(self, hub: HubTarget) -> None:
        self._hub = hub
        endpoint = await self._holder.acquire([ALPN])
        self._endpoint_id = str(endpoint.id())
        self._ticket = str(EndpointTicket.from_addr(endpoint.addr()))
        self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        endpoint = self.endpoint
        while True:
            try:
                incoming = await endpoint.accept_next()
            except IrohError as exc:
                if endpoint.is_closed():
                    return
                logger.warning("iroh accept failed: %s", describe(exc))
                continue
            if incoming is None:  # endpoint closed
                return
            task = asyncio.ensure_future(self._handle(incoming))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handle(self, incoming: Any) -> None:
        assert self._hub is not None
        link = await self._handshake(incoming, self._hub.max_frame_bytes)
        del incoming  # holds the endpoint; tracebacks must not keep it alive
        if link is None:
            return
        # Past the handshake: the hub closes this connection (going away) when it closes.
        task = asyncio.current_task()
        if task is not None:
            self._handshakes.discard(task)
            self._connections.add(task)
        guard = asyncio.ensure_future(self._one_stream_only(link))
        try:
            await self._hub.serve_link(link, {"transport": "iroh", "endpoint_id": link.remote_id})
        except TargetClosedError:
            pass
        finally:
            await link.close(CloseCode.NORMAL, "")
            # Closing the connection ends the guard's pending accepts. Waiting
            # for that, rather than cancelling them, matters: a cancelled
            # accept leaves its Rust future, the connection and the endpoint's
            # socket alive.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(guard, self.handshake_timeout)
            if task is not None:
                self._connections.discard(task)

    async def _one_stream_only(self, link: IrohLink) -> None:
        """The protocol uses one bidirectional stream, but QUIC grants a peer
        about 100 more of each kind and buffers what it writes into them (up to
        ~238 MiB per connection with the bindings' defaults, which they do not
        let us lower): the first extra stream closes the connection."""
        connection = link.connection
        if connection is None:
            return

        async def opened(accept: Any) -> bool:
            try:
                await accept()
            except IrohError:  # the connection ended first
                return False
            return True

        watchers = [
            asyncio.ensure_future(opened(connection.accept_bi)),
            asyncio.ensure_future(opened(connection.accept_uni)),
        ]
        del connection  # the link owns it; closing must be able to drop it
        done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        if any(task.result() for task in done):
            self.refused_streams += 1
            logger.warning("closing iroh peer %s: it opened a second stream", link.remote_id)
            await link.close(CloseCode.POLICY_VIOLATION, "one stream per connection")
        # The close ends the other accept too (see _handle).
        await asyncio.gather(*watchers, return_exceptions=True)

    async def _handshake(self, incoming: Any, max_frame_bytes: int) -> IrohLink | None:
        """Accept, check the allow-list, wait for the spoke's stream; None if refused."""
        connection: Connection | None = None
        try:
            async with asyncio.timeout(self.handshake_timeout):
                accepting = await incoming.accept()
                connection = await accepting.connect()
                remote = str(connection.remote_id())
                if self._allowed is not None and remote not in self._allowed:
                    self.refused_peers += 1
                    logger.info("refusing iroh peer %s: not in allowed_peers", remote)
                    connection.close(CloseCode.POLICY_VIOLATION, b"endpoint not allowed")
                    return None
                # The stream is invisible until the spoke writes (its __hello).
                stream = await connection.accept_bi()
        except (TimeoutError, IrohError) as exc:
            logger.info("iroh handshake failed: %s", describe(exc))
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close(CloseCode.PROTOCOL_ERROR, b"handshake failed")
            return None
        link = IrohLink(connection, stream.send(), stream.recv(), max_frame_bytes)
        link.remote_id = remote
        return link

    async def stop(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
        for task in list(self._handshakes):
            task.cancel()

    async def release(self) -> None:
        await asyncio.gather(*self._handshakes, *self._connections, return_exceptions=True)
        await self._holder.release()


_ACCEPTOR_OPTIONS: Final = frozenset(
    name for name in inspect.signature(IrohAcceptor.__init__).parameters if name != "self"
)


class IrohHub(HubTarget):
    """An Iroh hub: a hub whose only acceptor is an ``IrohAcceptor``.

    Takes the ``IrohAcceptor`` options (``endpoint``, ``secret_key``,
    ``bind_addr``, ``allowed_peers``, ``relay_mode``, ``preset``,
    ``handshake_timeout``, ``fast_write``) and every ``HubTarget`` option.
    """

    transport_name = "iroh-hub"

    def __init__(self, **options: Any) -> None:
        acceptor_options = {k: options.pop(k) for k in _ACCEPTOR_OPTIONS if k in options}
        super().__init__(**options)
        self.iroh = IrohAcceptor(**acceptor_options)
        self.add_acceptor(self.iroh)

    @property
    def endpoint(self) -> Endpoint:
        return self.iroh.endpoint

    @property
    def endpoint_id(self) -> str:
        return self.iroh.endpoint_id

    @property
    def ticket(self) -> str:
        """The ``EndpointTicket`` a spoke dials (``iroh://<ticket>`` as a URL)."""
        return self.iroh.ticket

    @property
    def url(self) -> str:
        return f"iroh://{self.ticket}"

    @property
    def refused_peers(self) -> int:
        return self.iroh.refused_peers


class IrohSpoke(SpokeTarget):
    """A spoke dialing an Iroh hub by ticket (or endpoint id and addresses)."""

    transport_name = "iroh-spoke"
    url_schemes: ClassVar[tuple[str, ...]] = ("iroh",)
    default_dial_stagger: ClassVar[float] = 1.0

    def __init__(
        self,
        hub: str | EndpointAddr | EndpointTicket,
        *,
        hub_addresses: Iterable[str] | None = None,
        endpoint: Endpoint | None = None,
        secret_key: bytes | str | os.PathLike[str] | None = None,
        bind_addr: str = DEFAULT_BIND,
        relay_mode: RelayMode | None = None,
        preset: Any = None,
        fast_write: bool = True,
        **spoke_options: Any,
    ) -> None:
        self.hub_addr = parse_hub_address(hub, hub_addresses)
        super().__init__(**spoke_options)
        self._holder = EndpointHolder(
            endpoint=endpoint,
            secret_key=secret_key,
            bind_addr=bind_addr,
            relay_mode=relay_mode,
            preset=preset,
            fast_write=fast_write,
        )
        self._endpoint_id: str | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> IrohSpoke:
        """``iroh://<ticket>``."""
        return cls(url, **options)

    @property
    def endpoint_id(self) -> str:
        if self._endpoint_id is None:
            raise RuntimeError("spoke is not started")
        return self._endpoint_id

    async def start(self) -> None:
        if self._closed:
            raise TargetClosedError("target is closed")
        endpoint = await self._holder.acquire([])
        self._endpoint_id = str(endpoint.id())
        await super().start()

    async def open_link(self) -> Link:
        endpoint = self._holder.endpoint
        try:
            connection = await endpoint.connect(self.hub_addr, ALPN)
            stream = await connection.open_bi()
        except IrohError as exc:
            raise ConnectionError(f"cannot reach the iroh hub: {describe(exc)}") from None
        return IrohLink(connection, stream.send(), stream.recv(), self.max_frame_bytes)

    async def aclose(self) -> None:
        was_open = not self._closed
        await super().aclose()
        if was_open:
            await self._holder.release()
