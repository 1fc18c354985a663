"""The spoke shell shared by every hub-and-spoke transport.

``SpokeTarget`` = the core's ``SubscriptionForwarder`` + a supervisor task that
(re)opens a link with capped, jittered exponential backoff + per link a writer,
a reader and a watch (the hub's welcome within ``connect_timeout``, then the
heartbeat). A transport subclasses it and implements ``open_link()``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from ..core.close import FINAL_CLOSE_CODES, NORMAL_CLOSE_CODES, CloseCode
from ..core.codec import DEFAULT_MAX_FRAME_BYTES, decode_envelope
from ..core.envelope import Event, EventEnvelope
from ..core.errors import (
    ConnectionLostError,
    ConnectionRefusedByHubError,
    DecodeError,
    HubRefusalError,
    LinkClosedError,
    TargetClosedError,
)
from ..core.forwarder import (
    DEFAULT_MAX_OUTGOING_BYTES,
    DEFAULT_OUTBOX_LIMIT,
    NOT_GIVEN,
    Acked,
    Closing,
    ForwarderStats,
    HubError,
    Pong,
    SpokeEvent,
    SpokeState,
    SubscriptionForwarder,
    Welcome,
    _NotGiven,
)
from ..core.history import StreamPosition
from ..core.listeners import Listener, ListenerErrorHandler
from ..core.session import Liveness
from ..target import BaseEventTarget, call_user
from .link import (
    LINK_ERRORS,
    WRITE_THROUGH_BYTES,
    Link,
    SoonWriter,
    SyncWritableLink,
    read_loop,
    write_loop,
)

__all__ = ["SessionInfo", "SpokeState", "SpokeTarget"]

#: How long a spoke whose write failed waits for its reader to say why the link ended.
READER_GRACE = 0.5
#: Staggered dials in flight at once (``dial_stagger``): with a stagger of
#: 1 s, a fresh handshake packet about every second over the first ten while
#: the older dials back off.
MAX_PARALLEL_DIALS = 3

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionInfo:
    """Passed to ``on_session`` each time the hub welcomes a link.

    ``resumed``: the hub continued the previous session (same ``spoke_id``,
    subscriptions, ``direct:`` inbox, and the events published meanwhile).
    ``gap``: events published while this spoke was away may be missing.
    ``undelivered``: events this spoke sent that may not have reached the hub
    (also passed to ``on_undelivered``)."""

    spoke_id: str | None
    resumed: bool
    gap: bool
    undelivered: int


class SpokeTarget(BaseEventTarget, abc.ABC):
    """A ``TypedEventTarget`` connected to a hub, reconnecting by itself (B7).

    Subclass it and implement ``open_link()``; see ``docs/transports.md``.
    """

    #: URL schemes this transport serves through ``transport_from_url``.
    url_schemes: ClassVar[tuple[str, ...]] = ()
    #: ``dial_stagger`` when the caller gives none (0: one dial at a time).
    default_dial_stagger: ClassVar[float] = 0.0

    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_outgoing_bytes: int = DEFAULT_MAX_OUTGOING_BYTES,
        outbox_limit: int = DEFAULT_OUTBOX_LIMIT,
        connect_timeout: float = 10.0,
        dial_stagger: float | None = None,
        wait_connected: bool = True,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        session: bool = True,
        heartbeat_interval: float | None = 1.0,
        heartbeat_timeout: float = 3.0,
        flush_timeout: float | None = 30.0,
        close_timeout: float = 5.0,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[BaseException | None], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_session: Callable[[SessionInfo], None] | None = None,
        on_undelivered: Callable[[list[EventEnvelope]], None] | None = None,
        on_listener_error: ListenerErrorHandler | None = None,
        send_hello: bool = True,
    ) -> None:
        super().__init__()
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        for name, value in (("connect_timeout", connect_timeout), ("close_timeout", close_timeout)):
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        if flush_timeout is not None and flush_timeout <= 0:
            raise ValueError("flush_timeout must be positive (or None: wait forever)")
        if dial_stagger is not None and dial_stagger < 0:
            raise ValueError("dial_stagger must be >= 0 (0: one dial at a time)")
        self._liveness_args = (
            None if heartbeat_interval is None else (heartbeat_interval, heartbeat_timeout)
        )
        if heartbeat_interval is not None:
            Liveness(heartbeat_interval, heartbeat_timeout)  # validates the pair
        self._forwarder = SubscriptionForwarder(
            max_frame_bytes=max_frame_bytes,
            max_outgoing_bytes=max_outgoing_bytes,
            outbox_limit=outbox_limit,
            on_listener_error=on_listener_error,
            schedule=self._scheduler,
            send_hello=send_hello,
            session=session,
            heartbeat=heartbeat_interval,
        )
        self.connect_timeout = connect_timeout
        self.dial_stagger = self.default_dial_stagger if dial_stagger is None else dial_stagger
        self.flush_timeout = flush_timeout
        self.close_timeout = close_timeout
        self._wait_connected = wait_connected
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_error = on_error
        self._on_session = on_session
        self._on_undelivered = on_undelivered
        self._supervisor: asyncio.Task[None] | None = None
        self._closing_links: set[asyncio.Task[None]] = set()  # links given up on
        self._dials: set[asyncio.Task[Link]] = set()  # staggered dials in flight
        self._wake = asyncio.Event()  # the writer's: the queue has frames
        self._state_changed = asyncio.Event()  # replaced at every transition
        self._drained = asyncio.Event()
        self._ping_waiters: dict[str, asyncio.Future[bool]] = {}
        self._reported_bugs: set[type[BaseException]] = set()
        self._announced_close: Closing | None = None  # the hub's __close on this link
        self._soon: SoonWriter | None = None  # the link's write-soon path, if it has one
        self.connect_attempts = 0
        self.last_error: BaseException | None = None
        self.connections_made = 0

    # -- for transports ---------------------------------------------------------------

    @abc.abstractmethod
    async def open_link(self) -> Link:
        """Open one link to the hub.

        Raise ``ConnectionRefusedByHubError`` when the hub refused this spoke,
        another ``ConnectionError``/``OSError`` when it could not be reached;
        the supervisor bounds the call by ``connect_timeout`` and retries with
        backoff.
        """

    @property
    def max_frame_bytes(self) -> int:
        """E6: the largest encoded envelope this spoke sends or accepts."""
        return self._forwarder.max_frame_bytes

    # -- observability ---------------------------------------------------------------

    @property
    def state(self) -> SpokeState:
        return self._forwarder.state

    @property
    def connected(self) -> bool:
        return self._forwarder.state is SpokeState.OPEN

    @property
    def spoke_id(self) -> str | None:
        """The id the hub gave this spoke (``direct:<spoke_id>``); set when
        ``start()`` returns, and kept across resumed sessions."""
        return self._forwarder.spoke_id

    @property
    def stats(self) -> ForwarderStats:
        return self._forwarder.stats

    @property
    def listener_errors(self) -> int:
        return self._forwarder.registry.listener_errors

    def listener_count(self, topic: str) -> int:
        """Local listeners registered for ``topic``."""
        return self._forwarder.registry.count(topic)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a link is up and the hub welcomed it."""
        await self._wait_until(lambda state: state is SpokeState.OPEN, timeout)

    async def wait_disconnected(self, timeout: float | None = None) -> None:
        await self._wait_until(lambda state: state is not SpokeState.OPEN, timeout)

    async def _wait_until(
        self, condition: Callable[[SpokeState], bool], timeout: float | None
    ) -> None:
        async with asyncio.timeout(timeout):
            while not condition(self._forwarder.state):
                if self._forwarder.state is SpokeState.CLOSED:
                    raise TargetClosedError("target is closed")
                await self._state_changed.wait()

    def _changed(self) -> None:
        """Wake everyone waiting for a state change (after each transition)."""
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    # -- TypedEventTarget --------------------------------------------------------------

    def add_event_listener(
        self,
        topic: str,
        listener: Listener | None,
        *,
        since: StreamPosition | str | _NotGiven | None = NOT_GIVEN,
    ) -> None:
        """Register ``listener`` for ``topic``. ``since`` (a ``StreamPosition``
        or None for "from now") tracks the topic's stream positions
        (``event.position``) and recovers what came after the position from
        the hub's topic history; ``stream_state(topic)`` says whether it did."""
        self._forwarder.add_listener(topic, listener, since=since)
        self._kick()

    def stream_state(self, topic: str) -> tuple[StreamPosition | None, bool | None]:
        """A tracked topic's last position and whether its recovery succeeded."""
        return self._forwarder.stream_state(topic)

    def remove_event_listener(self, topic: str, listener: Listener | None) -> None:
        self._forwarder.remove_listener(topic, listener)
        self._kick()

    def dispatch_event(self, event: Event) -> bool:
        return self._queued(self._forwarder.dispatch(event))

    def dispatch_encoded(self, frame: bytes) -> bool:
        """``dispatch_event`` of an envelope already encoded by ``encode_envelope``
        and checked as a user event (what a hub's bridge forwards): the same
        rules (B13, E6) without encoding it again."""
        return self._queued(self._forwarder.dispatch_encoded(frame))

    def _queued(self, result: bool) -> bool:
        forwarder = self._forwarder
        if forwarder.wants_write:
            self._kick()
        elif self._soon is not None and forwarder.unwritten_bytes >= WRITE_THROUGH_BYTES:
            self._soon.write_now()  # a publisher in a loop: do not hold it all
        return result

    def _kick(self) -> None:
        """Write (soon) what the forwarder queued for the link: at the end of
        this loop iteration where the link can write without awaiting, else
        by the writer task."""
        forwarder = self._forwarder
        if forwarder.wants_write:
            forwarder.wants_write = False
            if self._soon is not None:
                self._soon.schedule()
            else:
                self._wake.set()

    async def flush(self, timeout: float | None = None) -> None:
        """Return once the hub processed everything sent before (B4).

        ``timeout`` defaults to ``flush_timeout`` (``TimeoutError`` past it)."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.flush_timeout if timeout is None else timeout):
            while not self._closed:
                await self.wait_connected()
                nonce = self._forwarder.new_ping()
                if nonce is None:
                    continue
                self._kick()
                waiter: asyncio.Future[bool] = loop.create_future()
                self._ping_waiters[nonce] = waiter
                try:
                    if await waiter:
                        return
                finally:
                    self._ping_waiters.pop(nonce, None)

    async def drain(self) -> None:
        """Wait until what was accepted and not yet written (or, in a session,
        not yet confirmed by the hub) is back under its low-water mark (B13)."""
        while not self._forwarder.drained():
            if self._closed:
                raise TargetClosedError("target is closed")
            self._drained.clear()
            await self._drained.wait()

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect; returns once the hub welcomed this spoke (``spoke_id`` is
        set), or raises ``ConnectionError`` after ``connect_timeout``. With
        ``wait_connected=False`` it returns at once and connects in the
        background."""
        if self._supervisor is not None:
            return
        if self._closed:
            raise TargetClosedError("target is closed")
        self._started = True
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        if self._wait_connected:
            try:
                await self.wait_connected(self.connect_timeout)
            except (TimeoutError, TargetClosedError):
                last_error = self.last_error
                await self._shutdown()
                detail = f" (last error: {last_error})" if last_error is not None else ""
                if isinstance(last_error, ConnectionRefusedByHubError):
                    raise last_error from None
                raise ConnectionError(
                    f"could not connect to the hub within {self.connect_timeout}s{detail}"
                ) from None

    async def aclose(self) -> None:
        """Close: first deliver what was accepted (written and, in a session,
        confirmed by the hub) within ``close_timeout``, then close the link.
        What could not be delivered is reported to ``on_undelivered``."""
        if self._closed:
            return
        if not self._forwarder.settled() and self._supervisor is not None:
            with contextlib.suppress(TimeoutError, TargetClosedError):
                await self.flush(self.close_timeout)
        await self._shutdown()

    async def _shutdown(self) -> None:
        if not self._mark_closed():
            return
        undelivered = self._forwarder.close()
        self._changed()
        self._drained.set()
        self._resolve_pings(False)
        if self._supervisor is not None and self._supervisor is not asyncio.current_task():
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._dials:  # cancelled; one that still opens a link closes it unused
            await asyncio.wait(self._dials, timeout=self.close_timeout)
        # Each bounded by the link's own close timeout.
        while self._closing_links:
            await asyncio.gather(*self._closing_links, return_exceptions=True)
        if undelivered:
            self._report_undelivered(undelivered, "the target closed before the hub confirmed them")

    # -- the supervisor ----------------------------------------------------------------

    def backoff_delay(self, failures: int) -> float:
        """Exponential with 'equal jitter': never near zero, capped (B7)."""
        ceiling: float = min(self.backoff_max, self.backoff_initial * 2.0 ** min(failures, 32))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _supervise(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        forwarder = self._forwarder
        while not self._closed:
            self.connect_attempts += 1
            forwarder.connecting()
            self._changed()
            try:
                async with asyncio.timeout(self.connect_timeout):
                    link = await self._dial()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                forwarder.connection_lost()
                self._changed()
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
            if isinstance(reason, LinkClosedError) and reason.code in FINAL_CLOSE_CODES:
                # A final refusal (4401/4403): never retried.
                refusal = ConnectionRefusedByHubError(
                    f"hub refused this spoke ({reason.code}: {reason.reason or 'refused'})"
                )
                self.last_error = refusal
                self._report(refusal)
                call_user(self._on_disconnect, reason, log=logger)
                await self._shutdown()
                return
            if isinstance(reason, ConnectionRefusedByHubError):
                self.last_error = reason
                self._report(reason)
            elif reason is not None and not isinstance(reason, LINK_ERRORS):
                self._report(reason)
            if reason is not None:
                self.last_error = reason
            # A link that died at once counts as a failure: no tight reconnect loop.
            failures = 0 if loop.time() - up_since > self.backoff_max else failures + 1
            call_user(self._on_disconnect, reason, log=logger)
            await asyncio.sleep(self.backoff_delay(failures - 1 if failures else 0))

    async def _dial(self) -> Link:
        """``open_link``, staggered: a dial still pending after ``dial_stagger``
        seconds gets a fresh one alongside (up to ``MAX_PARALLEL_DIALS``) and
        the first link wins. A handshake whose first packets fell into a brief
        outage is retried on QUIC's or TCP's exponential timers (1, 3, 7 s ...);
        a fresh dial sends at once, and a slow but working one is never cut."""
        if not self.dial_stagger:
            return await self.open_link()
        pending: set[asyncio.Task[Link]] = set()
        try:
            while True:
                if len(pending) < MAX_PARALLEL_DIALS:
                    dial = asyncio.ensure_future(self.open_link())
                    self._dials.add(dial)
                    dial.add_done_callback(self._dials.discard)
                    pending.add(dial)
                done, pending = await asyncio.wait(
                    pending, timeout=self.dial_stagger, return_when=asyncio.FIRST_COMPLETED
                )
                links = [t for t in done if not t.cancelled() and t.exception() is None]
                for extra in links[1:]:
                    self._close_unused_link(extra)
                if links:
                    return links[0].result()
                if done:
                    # An answer (refused, nothing listening, an HTTP error) is
                    # fresher news than a dial still waiting: backed off as usual.
                    raise _first_failure(done)
        finally:
            for task in pending:
                task.cancel()
                task.add_done_callback(self._close_unused_link)

    def _close_unused_link(self, dial: asyncio.Task[Link]) -> None:
        """A dial that lost the race but opened a link: closed unused."""
        if dial.cancelled() or dial.exception() is not None:
            return
        closing = asyncio.ensure_future(dial.result().close(CloseCode.NORMAL))
        self._closing_links.add(closing)
        closing.add_done_callback(self._closing_links.discard)

    async def _run_link(self, link: Link) -> BaseException | None:
        """Serve one link until it ends; returns why it ended (None: normal close)."""
        forwarder = self._forwarder
        self._announced_close = None
        if isinstance(link, SyncWritableLink):
            self._soon = SoonWriter(link, self._wake, forwarder.take_outgoing, self._after_send)
        forwarder.connection_made()
        self._changed()
        self._kick()
        if forwarder.state is SpokeState.OPEN:  # no hello: nothing to wait for
            call_user(self._on_connect, log=logger)
        reader = asyncio.ensure_future(self._read_loop(link))
        writer = asyncio.ensure_future(
            write_loop(link, self._wake, forwarder.take_outgoing, self._after_send)
        )
        tasks = {reader, writer, asyncio.ensure_future(self._watch())}
        reason: BaseException | None = None
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if writer in done and reader not in done:
                # A write failed: the reader, which sees the close code or the
                # loss itself, tells why better ("websocket is not open" vs
                # ConnectionLostError or LinkClosedError); it ends at once.
                await asyncio.wait({reader}, timeout=READER_GRACE)
                done = {task for task in tasks if task.done()}
            if reader in done and not reader.cancelled():
                reason = reader.exception()  # None: the hub closed normally
            else:
                reason = next(
                    (t.exception() for t in done if not t.cancelled() and t.exception()), None
                )
            reason = self._announced_reason(_without_frames(reason))
        finally:
            self._soon = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not self._closed:
                forwarder.connection_lost()
                self._changed()
            self._resolve_pings(False)
            if self._closed:
                await link.close(CloseCode.NORMAL)  # only closing the spoke ends the session
            else:
                # A link given up on is closed as such, so that the hub keeps
                # the session for a resume; without waiting for the closing
                # handshake, which a dead or frozen hub never answers: the
                # report and the reconnect would wait for the close timeout.
                closing = asyncio.ensure_future(link.close(CloseCode.RECONNECTING))
                self._closing_links.add(closing)
                closing.add_done_callback(self._closing_links.discard)
        return reason

    async def _watch(self) -> None:
        """The hub must welcome the link within ``connect_timeout``; then the
        heartbeat: a ping when a tick passed in silence either way, and the
        link is declared lost after ``heartbeat_timeout`` without a frame."""
        forwarder = self._forwarder
        try:
            await self._wait_until(lambda state: state is SpokeState.OPEN, self.connect_timeout)
        except TimeoutError:
            raise ConnectionError(
                f"the hub did not welcome this spoke within {self.connect_timeout}s"
            ) from None
        if self._liveness_args is None:
            await asyncio.Event().wait()  # no heartbeat: only the reader ends a link
            return
        interval, timeout = self._liveness_args
        liveness = Liveness(interval, timeout)
        while True:
            await asyncio.sleep(interval)
            verdict = liveness.tick(forwarder.frames_received, forwarder.frames_sent)
            if verdict == Liveness.DEAD:
                raise ConnectionLostError(f"nothing heard from the hub for {timeout}s")
            if verdict == Liveness.PING:
                forwarder.new_ping()
                self._kick()

    def _announced_reason(self, reason: BaseException | None) -> BaseException | None:
        """A link that cannot carry a close code (or lost it behind unread data)
        still tells why it ended: the hub announced it with ``__close``."""
        announced = self._announced_close
        if (
            announced is None
            or isinstance(reason, LinkClosedError)
            or announced.code in NORMAL_CLOSE_CODES
        ):
            return reason
        return LinkClosedError(announced.code, announced.reason)

    def _after_send(self) -> None:
        if self._forwarder.drained():
            self._drained.set()

    async def _read_loop(self, link: Link) -> None:
        forwarder = self._forwarder
        receive = forwarder.receive
        handle, kick = self._handle, self._kick

        def on_message(message: bytes | str) -> None:
            event = receive(message)
            if event is not None:
                handle(event)
            if forwarder.wants_write:
                kick()

        await read_loop(link, on_message)

    def _handle(self, event: SpokeEvent) -> None:
        if isinstance(event, Acked):
            if self._forwarder.drained():
                self._drained.set()
        elif isinstance(event, Pong):
            waiter = self._ping_waiters.get(event.nonce)
            if waiter is not None and not waiter.done():
                waiter.set_result(True)
            if self._forwarder.drained():
                self._drained.set()
        elif isinstance(event, HubError):
            self._report(HubRefusalError(event.code, event.message, event.topic))
        elif isinstance(event, Welcome):
            self._welcomed(event)
        elif isinstance(event, Closing):
            self._announced_close = event

    def _welcomed(self, event: Welcome) -> None:
        self._changed()
        if event.undelivered:
            self._report_undelivered(event.undelivered, "the hub could not resume the session")
        if event.gap:
            logger.warning(
                "%s reconnected as %s; events published while it was away may be missing",
                type(self).__name__,
                event.spoke_id,
            )
        info = SessionInfo(event.spoke_id, event.resumed, event.gap, len(event.undelivered))
        call_user(self._on_session, info, log=logger)
        call_user(self._on_connect, log=logger)

    def _report_undelivered(self, frames: list[bytes], why: str) -> None:
        """Events accepted by ``dispatch_event`` that may not have reached the
        hub: never dropped silently (B7)."""
        envelopes = []
        for frame in frames:
            with contextlib.suppress(DecodeError):
                envelopes.append(decode_envelope(frame))
        logger.warning(
            "%s: %d events may not have reached the hub: %s", type(self).__name__, len(frames), why
        )
        call_user(self._on_undelivered, envelopes, log=logger)

    def _resolve_pings(self, ok: bool) -> None:
        for waiter in self._ping_waiters.values():
            if not waiter.done():
                waiter.set_result(ok)

    def _report(self, exc: BaseException) -> None:
        """Log and pass to ``on_error``. Network conditions are logged briefly;
        anything else is a bug and is logged once with its traceback."""
        if isinstance(exc, ConnectionRefusedByHubError | HubRefusalError):
            logger.warning("%s: %s", type(self).__name__, exc)
        elif isinstance(exc, LINK_ERRORS):
            logger.info("%s: %s", type(self).__name__, exc)
        elif type(exc) not in self._reported_bugs:
            self._reported_bugs.add(type(exc))
            logger.error("%s: unexpected error", type(self).__name__, exc_info=exc)
        call_user(self._on_error, exc, log=logger)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._forwarder.state.value} id={self.spoke_id}>"


def _without_frames(reason: BaseException | None) -> BaseException | None:
    """A network condition kept as ``last_error`` or passed to callbacks needs
    no traceback; keeping one would keep the dead link's frames (and its
    connection) alive."""
    if isinstance(reason, LINK_ERRORS):
        reason.__traceback__ = None
        reason.__context__ = None
        reason.__cause__ = None
    return reason


def _first_failure(dials: set[asyncio.Task[Link]]) -> BaseException:
    """Why dials failed: a refusal by the hub first (it is final news)."""
    failures = [
        ConnectionError("dial cancelled") if dial.cancelled() else dial.exception()
        for dial in dials
    ]
    found = [failure for failure in failures if failure is not None]
    refusal = next((f for f in found if isinstance(f, ConnectionRefusedByHubError)), None)
    return refusal or found[0]
