"""The spoke shell shared by every hub-and-spoke transport.

``SpokeTarget`` = ``SubscriptionForwarder`` + a supervisor task that (re)opens a
link with capped, jittered exponential backoff + one writer and one reader per
link. A transport only implements ``_open_link`` and the small ``SpokeLink``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from ..core.codec import DEFAULT_MAX_FRAME_BYTES
from ..core.envelope import Event, EventEnvelope
from ..core.errors import (
    ConnectionRefusedByHubError,
    HubRefusalError,
    TargetClosedError,
)
from ..core.forwarder import (
    DEFAULT_MAX_OUTGOING_BYTES,
    DEFAULT_OUTBOX_LIMIT,
    SubscriptionForwarder,
)
from ..core.listeners import Listener, ListenerErrorHandler
from ..target import BaseEventTarget

__all__ = ["SpokeLink", "SpokeTarget"]

logger = logging.getLogger("alkpubsub")

# Bytes handed to the link per write call: large enough to coalesce, small
# enough that one write does not monopolise the loop.
WRITE_CHUNK_BYTES = 256 * 1024


class SpokeLink(Protocol):
    """One live connection to a hub, as a spoke sees it."""

    async def send(self, frames: list[bytes]) -> None:
        """Write frames in order (may coalesce); raise when the link is gone."""

    def messages(self) -> AsyncIterator[bytes | str]:
        """Whole received messages until the link ends."""

    async def close(self) -> None:
        """Close the link; never raises."""


class SpokeTarget(BaseEventTarget, abc.ABC):
    """A ``TypedEventTarget`` connected to a hub, reconnecting by itself (B7)."""

    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_outgoing_bytes: int = DEFAULT_MAX_OUTGOING_BYTES,
        outbox_limit: int = DEFAULT_OUTBOX_LIMIT,
        connect_timeout: float = 10.0,
        wait_connected: bool = True,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[BaseException | None], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_listener_error: ListenerErrorHandler | None = None,
        send_hello: bool = True,
    ) -> None:
        super().__init__()
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        self._forwarder = SubscriptionForwarder(
            max_frame_bytes=max_frame_bytes,
            max_outgoing_bytes=max_outgoing_bytes,
            outbox_limit=outbox_limit,
            on_listener_error=on_listener_error,
            send_hello=send_hello,
        )
        self._forwarder.on_output = self._on_output
        self._forwarder.on_pong = self._on_pong
        self._forwarder.on_hub_error = self._on_hub_error
        self.connect_timeout = connect_timeout
        self._wait_connected = wait_connected
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_error = on_error
        self._supervisor: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._drained = asyncio.Event()
        self._ping_waiters: dict[str, asyncio.Future[bool]] = {}
        self.connect_attempts = 0
        self.last_error: BaseException | None = None
        self.connections_made = 0

    # -- transport hook ------------------------------------------------------------

    @abc.abstractmethod
    async def _open_link(self) -> SpokeLink:
        """Open one link to the hub (raise ``ConnectionRefusedByHubError`` on refusal)."""

    # -- observability ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._forwarder.connected

    @property
    def spoke_id(self) -> str | None:
        """The id the hub gave this spoke (``direct:<spoke_id>``), once welcomed."""
        return self._forwarder.spoke_id

    @property
    def stats(self) -> Any:
        return self._forwarder.stats

    @property
    def listener_errors(self) -> int:
        return self._forwarder.registry.listener_errors

    async def wait_connected(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def wait_disconnected(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self._disconnected.wait()

    # -- TypedEventTarget --------------------------------------------------------------

    def add_event_listener(self, topic: str, listener: Listener | None) -> None:
        self._forwarder.add_listener(topic, listener)

    def remove_event_listener(self, topic: str, listener: Listener | None) -> None:
        self._forwarder.remove_listener(topic, listener)

    def dispatch_event(self, event: Event) -> bool:
        return self._forwarder.dispatch(event)

    async def flush(self, timeout: float | None = None) -> None:
        """Return once the hub processed everything sent before (B4)."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not self._closed:
                await self._connected.wait()
                nonce = self._forwarder.new_ping()
                if nonce is None:
                    continue
                waiter: asyncio.Future[bool] = loop.create_future()
                self._ping_waiters[nonce] = waiter
                try:
                    if await waiter:
                        return
                finally:
                    self._ping_waiters.pop(nonce, None)

    async def drain(self) -> None:
        """Wait until the outgoing queue is back under its low-water mark (B13)."""
        while not self._forwarder.drained():
            if self._closed:
                raise TargetClosedError("target is closed")
            self._drained.clear()
            await self._drained.wait()

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._supervisor is not None:
            return
        if self._closed:
            raise TargetClosedError("target is closed")
        self._started = True
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        if self._wait_connected:
            try:
                await self.wait_connected(self.connect_timeout)
            except TimeoutError:
                last_error = self.last_error
                await self.aclose()
                detail = f" (last error: {last_error})" if last_error is not None else ""
                raise ConnectionError(
                    f"could not connect to the hub within {self.connect_timeout}s{detail}"
                ) from None

    async def aclose(self) -> None:
        if not self._mark_closed():
            return
        self._forwarder.close()
        self._drained.set()
        self._resolve_pings(False)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor

    # -- the supervisor ----------------------------------------------------------------

    def backoff_delay(self, failures: int) -> float:
        """Exponential with 'equal jitter': never near zero, capped (B7)."""
        ceiling: float = min(self.backoff_max, self.backoff_initial * 2.0 ** min(failures, 32))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _supervise(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while not self._closed:
            self.connect_attempts += 1
            try:
                async with asyncio.timeout(self.connect_timeout):
                    link = await self._open_link()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = exc
                self._report(exc)
                await asyncio.sleep(self.backoff_delay(failures))
                failures += 1
                continue
            self.connections_made += 1
            up_since = loop.time()
            reason = await self._run_link(link)
            if self._closed:
                return
            if isinstance(reason, ConnectionRefusedByHubError):
                self.last_error = reason
                self._report(reason)
            # A link that died at once counts as a failure: no tight reconnect loop.
            failures = 0 if loop.time() - up_since > self.backoff_max else failures + 1
            self._notify_disconnect(reason)
            await asyncio.sleep(self.backoff_delay(failures - 1 if failures else 0))

    async def _run_link(self, link: SpokeLink) -> BaseException | None:
        forwarder = self._forwarder
        forwarder.connection_made()
        self._disconnected.clear()
        self._connected.set()
        if self._on_connect is not None:
            try:
                self._on_connect()
            except Exception:
                logger.exception("on_connect raised")
        writer = asyncio.ensure_future(self._write_loop(link))
        reader = asyncio.ensure_future(self._read_loop(link))
        reason: BaseException | None = None
        try:
            done, _ = await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    reason = task.exception()
        finally:
            writer.cancel()
            reader.cancel()
            await asyncio.gather(writer, reader, return_exceptions=True)
            self._connected.clear()
            forwarder.connection_lost()
            self._resolve_pings(False)
            self._disconnected.set()
            await link.close()
        return reason

    async def _write_loop(self, link: SpokeLink) -> None:
        forwarder = self._forwarder
        while True:
            if not forwarder.has_output():
                self._wake.clear()
                await self._wake.wait()
                continue
            frames = forwarder.take_outgoing(WRITE_CHUNK_BYTES)
            if forwarder.drained():
                self._drained.set()
            await link.send(frames)

    async def _read_loop(self, link: SpokeLink) -> None:
        receive = self._forwarder.receive
        async for message in link.messages():
            receive(message)

    # -- forwarder hooks ----------------------------------------------------------------

    def _on_output(self) -> None:
        self._wake.set()

    def _on_pong(self, nonce: str) -> None:
        waiter = self._ping_waiters.get(nonce)
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _on_hub_error(self, envelope: EventEnvelope) -> None:
        payload = envelope.payload if isinstance(envelope.payload, dict) else {}
        topic = payload.get("topic")
        self._report(
            HubRefusalError(
                str(payload.get("code", "unknown")),
                str(payload.get("message", "")),
                topic if isinstance(topic, str) else None,
            )
        )

    def _resolve_pings(self, ok: bool) -> None:
        for waiter in self._ping_waiters.values():
            if not waiter.done():
                waiter.set_result(ok)

    def _report(self, exc: BaseException) -> None:
        level = logging.WARNING if isinstance(exc, ConnectionRefusedByHubError) else logging.INFO
        logger.log(level, "%s: %s", type(self).__name__, exc)
        if self._on_error is not None:
            try:
                self._on_error(exc)
            except Exception:
                logger.exception("on_error raised")

    def _notify_disconnect(self, reason: BaseException | None) -> None:
        if self._on_disconnect is not None:
            try:
                self._on_disconnect(reason)
            except Exception:
                logger.exception("on_disconnect raised")
