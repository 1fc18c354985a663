"""A hub's bridge to a broker: hubs on one broker form one bus (SPEC H6).

The bridge is a hub feature, not a Redis feature: a hub holds at most one
*symmetric* target (``RedisEventTarget`` today; any target with the small
``BridgeTarget`` interface) and

- subscribes on it to exactly the union of the topics that its connections and
  its own local listeners want: the router reports when that interest goes
  0 -> 1 and 1 -> 0 (``take_interest_changes``), and the bridge adds or removes
  ONE listener on the target, whose forwarder turns that into one ``SUBSCRIBE``
  / ``UNSUBSCRIBE`` (the same refcounting as a spoke's);
- publishes every event that enters the hub, from a spoke or from the hub's own
  ``dispatch_event``, to the target once (``take_outbound``);
- delivers what arrives from the target to local subscribers and listeners only
  (``router.publish``): never published back;
- never hears itself: the target runs with ``echo=False``, so the hub's own
  publications, which it already delivered locally, are dropped when the broker
  sends them back (on Redis they carry an origin mark; see docs/scale-out.md).

``flush`` semantics carry over the bridge: a spoke's ``__ping`` is answered once
the bridge confirmed everything before it (subscriptions live on the broker,
publications accepted by it), so ``flush()`` on a spoke means the same on a
bridged bus as on one hub.

Backpressure: bridged publications wait in bounded outboxes (the target's, then
``max_pending`` of its own). While the broker is reachable but slower than the
events entering the hub, the outbox past half full is *congestion*: the hub
stops reading from a spoke after each event it publishes until the outbox is
down to a quarter (``relieved``), so the spoke's socket and then its own outbox
fill and its publisher gets ``BackpressureError`` (B13) instead of events being
dropped. While the broker is unreachable the hub serves its local bus, answers
pings at once and reads on; past both outboxes, events from spokes are
delivered locally and counted in ``stats.dropped``. The hub's own
``dispatch_event`` raises ``BackpressureError`` when the outbox is full
(``await hub.drain()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..core.codec import decode_envelope
from ..core.envelope import Event
from ..core.errors import (
    AlkPubSubError,
    BackpressureError,
    FrameTooLargeError,
    TargetClosedError,
)
from ..core.router import HubConnection, HubRouter
from ..target import TypedEventTarget, call_user

__all__ = ["BridgeStats", "BridgeTarget", "HubBridge"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 10_000

StatusCallback = Callable[[bool, BaseException | None], None]


@runtime_checkable
class BridgeTarget(TypedEventTarget, Protocol):
    """A symmetric target that can bridge hubs (``RedisEventTarget`` is one)."""

    #: False: the target never delivers its own publications back to itself.
    echo: bool

    @property
    def connected(self) -> bool: ...

    async def start(self) -> None: ...

    async def wait_connected(self, timeout: float | None = None) -> None: ...

    async def wait_disconnected(self, timeout: float | None = None) -> None: ...


@dataclass
class BridgeStats:
    connected: bool = False
    outages: int = 0  # times the bridge went from connected to not connected
    published: int = 0  # events handed to the bridge target
    received: int = 0  # events from the broker, delivered locally
    dropped: int = 0  # events from spokes not bridged: both outboxes were full
    throttled: int = 0  # times a spoke was not read until a congested outbox drained
    unconfirmed_pongs: int = 0  # pings answered without the broker's confirmation
    too_large: int = 0  # bridged events above this hub's max_frame_bytes (E6)
    topics: int = 0  # topics subscribed on the broker


class HubBridge:
    """Owned by a ``HubTarget`` (``bridge=``); started and closed with it."""

    def __init__(
        self,
        router: HubRouter,
        target: BridgeTarget | str,
        *,
        service: Callable[[], None],
        max_frame_bytes: int,
        max_pending: int = DEFAULT_MAX_PENDING,
        confirm_timeout: float = 10.0,
        on_status: StatusCallback | None = None,
    ) -> None:
        if isinstance(target, str):
            from ..registry import transport_from_url

            target = transport_from_url(target, max_frame_bytes=max_frame_bytes)  # type: ignore[assignment]
        if not isinstance(target, BridgeTarget):
            raise TypeError(
                f"a bridge needs a symmetric target with 'echo' (e.g. redis://...), "
                f"not {type(target).__name__}"
            )
        if max_pending <= 0:
            raise ValueError("max_pending must be positive")
        target.echo = False
        self.target: BridgeTarget = target
        self.router = router
        router.bridged = True
        self.stats = BridgeStats()
        self.max_pending = max_pending
        self.confirm_timeout = confirm_timeout
        self._service_hub = service
        self._on_status = on_status
        self._listening: set[str] = set()
        self._pending: deque[bytes] = deque()  # encoded envelopes
        # Set, and replaced by a fresh one, whenever the outbox shrank or stopped
        # draining: drain() and relieved() wait on it and check their own mark.
        self._shrank = asyncio.Event()
        # A target that takes encoded envelopes (SpokeTarget.dispatch_encoded)
        # is spared a second encoding; any other gets the event.
        self._dispatch_frame: Callable[[bytes], bool] = getattr(
            target, "dispatch_encoded", self._dispatch_decoded
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._drainer: asyncio.Task[None] | None = None
        self._next_pongs: list[tuple[HubConnection, str]] = []
        self._confirmer: asyncio.Task[None] | None = None
        self._warned_drop = False
        self._closed = False

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self.service()  # listeners added before start
        await self.target.start()
        self._spawn(self._watch())

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._announce_shrink()
        await self.target.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _watch(self) -> None:
        """Report the broker's outages and recoveries (``on_bridge_status``, stats)."""
        target = self.target
        with contextlib.suppress(TargetClosedError):
            while True:
                await target.wait_connected()
                self.stats.connected = True
                call_user(self._on_status, True, None, log=logger)
                await target.wait_disconnected()
                self.stats.connected = False
                self.stats.outages += 1
                reason = getattr(target, "last_error", None)
                logger.warning("hub bridge lost its broker; serving the local bus meanwhile")
                call_user(self._on_status, False, reason, log=logger)

    # -- what the router decided -----------------------------------------------------------

    def service(self) -> None:
        """Carry out the router's bridge decisions (called from the hub's ``_service``)."""
        router = self.router
        if not router.bridge_work or self._closed:
            return
        router.bridge_work = False
        changes = router.take_interest_changes()
        if changes:
            self._apply_interest(changes)
        outbound = router.take_outbound()
        if outbound:
            self._publish(outbound)
        pongs = router.take_held_pongs()
        if pongs:
            self._answer(pongs)

    def _apply_interest(self, changes: dict[str, bool]) -> None:
        target, listening, deliver = self.target, self._listening, self._deliver
        for topic, wanted in changes.items():
            if wanted and topic not in listening:
                listening.add(topic)
                target.add_event_listener(topic, deliver)
            elif not wanted and topic in listening:
                listening.discard(topic)
                target.remove_event_listener(topic, deliver)
        self.stats.topics = len(listening)

    def _deliver(self, event: Event) -> None:
        """An event from the broker: local subscribers and listeners only."""
        router = self.router
        if router.closed:
            return
        self.stats.received += 1
        try:
            router.publish(event.detail)
        except FrameTooLargeError as exc:  # another hub allows larger envelopes (E6)
            self.stats.too_large += 1
            logger.debug("bridged event not relayed: %s", exc)
            return
        self._service_hub()

    # -- publishing -----------------------------------------------------------------------------

    def check_capacity(self) -> None:
        """For the hub's own ``dispatch_event``: refuse before anything is delivered (B13)."""
        if len(self._pending) >= self.max_pending:
            raise BackpressureError(
                f"bridge outbox is full ({self.max_pending} events); await hub.drain()"
            )

    def _dispatch_decoded(self, frame: bytes) -> bool:
        return self.target.dispatch_event(Event.from_envelope(decode_envelope(frame)))

    def _publish(self, frames: list[bytes]) -> None:
        dispatch, pending, stats = self._dispatch_frame, self._pending, self.stats
        for frame in frames:
            if pending:  # keep the order behind what already waits
                self._hold(frame)
                continue
            try:
                dispatch(frame)
            except BackpressureError:
                self._hold(frame)
            except AlkPubSubError as exc:  # closing, or larger than the target accepts
                stats.dropped += 1
                logger.warning("event not bridged: %s", exc)
            else:
                stats.published += 1

    def _hold(self, frame: bytes) -> None:
        pending = self._pending
        if len(pending) >= self.max_pending:
            self.stats.dropped += 1
            if not self._warned_drop:
                self._warned_drop = True
                logger.warning(
                    "bridge outbox full (%d events): events from spokes are delivered "
                    "locally only and counted in bridge.stats.dropped",
                    self.max_pending,
                )
            return
        pending.append(frame)
        if self._drainer is None:
            self._drainer = self._spawn(self._drain_pending())

    async def _drain_pending(self) -> None:
        target, pending, stats = self.target, self._pending, self.stats
        dispatch = self._dispatch_frame
        try:
            while pending:
                await target.drain()
                while pending:
                    try:
                        dispatch(pending[0])
                    except BackpressureError:
                        break
                    except AlkPubSubError as exc:
                        stats.dropped += 1
                        logger.warning("event not bridged: %s", exc)
                    else:
                        stats.published += 1
                    pending.popleft()
                self._announce_shrink()
            self._warned_drop = False
        finally:
            self._drainer = None
            self._announce_shrink()

    def _announce_shrink(self) -> None:
        shrank, self._shrank = self._shrank, asyncio.Event()
        shrank.set()

    @property
    def congested(self) -> bool:
        """The broker is reachable and the outbox is past its low-water mark:
        the broker takes events more slowly than they enter the hub."""
        return len(self._pending) > self.max_pending // 2 and self.target.connected

    async def relieved(self) -> None:
        """Return once the outbox is down to a quarter (so that a congested
        bridge pauses its publishers once, not after every event), the broker
        is unreachable (the local bus is served on) or the bridge closed: what
        a hub awaits before reading on from a spoke whose event met congestion."""
        if not self.congested or self._closed:
            return
        self.stats.throttled += 1
        lost = asyncio.ensure_future(self.target.wait_disconnected())
        try:
            while (
                len(self._pending) > self.max_pending // 4
                and self.target.connected
                and not self._closed
                and not lost.done()
            ):
                shrank = asyncio.ensure_future(self._shrank.wait())
                try:
                    await asyncio.wait({shrank, lost}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    shrank.cancel()
        finally:
            lost.cancel()
            await asyncio.gather(lost, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until the bridge's own outbox is under its low-water mark."""
        while len(self._pending) > self.max_pending // 2 and not self._closed:
            await self._shrank.wait()

    # -- confirmations ------------------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the broker confirmed the hub's subscriptions and accepted its
        publications so far; at once while the broker is unreachable."""
        self.service()
        await self._confirm(timeout)

    async def _confirm(self, timeout: float | None = None) -> bool:
        target = self.target
        if not target.connected or self._closed:
            return False
        flushed = asyncio.ensure_future(target.flush())
        lost = asyncio.ensure_future(target.wait_disconnected())
        try:
            done, _ = await asyncio.wait(
                {flushed, lost},
                timeout=self.confirm_timeout if timeout is None else timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in (flushed, lost):
                waiter.cancel()
            await asyncio.gather(flushed, lost, return_exceptions=True)
        return flushed in done and not flushed.cancelled() and flushed.exception() is None

    def _answer(self, pongs: list[tuple[HubConnection, str]]) -> None:
        if not self.target.connected:
            self._send_pongs(pongs, confirmed=False)
            return
        # One confirmation in flight at a time: pings that arrive meanwhile wait
        # for the next one (which starts after them), so a hub whose spokes ping
        # often sends the broker one PING per round trip, not one per spoke.
        self._next_pongs.extend(pongs)
        if self._confirmer is None:
            self._confirmer = self._spawn(self._confirm_rounds())

    async def _confirm_rounds(self) -> None:
        try:
            while self._next_pongs:
                pongs, self._next_pongs = self._next_pongs, []
                confirmed = False
                try:
                    confirmed = await self._confirm()
                finally:
                    self._send_pongs(pongs, confirmed=confirmed)
        finally:
            self._confirmer = None

    def _send_pongs(self, pongs: list[tuple[HubConnection, str]], *, confirmed: bool) -> None:
        router = self.router
        if router.closed:
            return
        if not confirmed:
            self.stats.unconfirmed_pongs += len(pongs)
        for conn, nonce in pongs:
            router.send_pong(conn, nonce)
        self._service_hub()
