"""Spoke-side subscription forwarding, shared by every hub-and-spoke transport.

Sans-I/O, in the manner of python-websockets' ``Protocol``: calls go in,
decisions come out. Listener changes and dispatches become encoded frames on an
outgoing queue that the shell pulls with ``take_outgoing()`` (it polls
``wants_write`` after each call to know when a writer must wake); received
messages go to ``receive()``, which delivers data envelopes to the local
listeners and returns the control events the shell must act on (pongs, the
hub's welcome, hub errors, acks). B4, B6, B7, B13 of docs/protocol.md.

With sessions (protocol.md §5) the forwarder also counts data frames both
ways, acknowledges what it received, keeps what it sent until the hub
acknowledged it, and after a reconnect resumes the session: the hub restores
the spoke id and subscriptions and resends what the spoke missed; the spoke
resends what the hub did not confirm. Nothing is sent but the ``__hello``
until the hub's ``__welcome`` arrives.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from pydantic import ValidationError

from . import control
from .codec import DEFAULT_MAX_FRAME_BYTES, encode_envelope, validate_envelope_json
from .envelope import CONTROL_PREFIX, Event, EventEnvelope, check_user_event, validate_topic
from .errors import BackpressureError, FrameTooLargeError, ReservedTypeError, TargetClosedError
from .history import StreamPosition
from .listeners import Listener, ListenerErrorHandler, ListenerRegistry, Scheduler
from .queue import ControlFrame, FrameQueue
from .session import Receipts, SentLog

__all__ = [
    "DEFAULT_MAX_OUTGOING_BYTES",
    "Acked",
    "Closing",
    "DEFAULT_OUTBOX_LIMIT",
    "ForwarderStats",
    "HubError",
    "Pong",
    "Positioned",
    "SpokeEvent",
    "SpokeState",
    "SubscriptionForwarder",
    "Welcome",
]

DEFAULT_MAX_OUTGOING_BYTES: Final = 1024 * 1024
DEFAULT_OUTBOX_LIMIT: Final = 10_000


class SpokeState(Enum):
    """A spoke's life: one state, changed only by the transition methods."""

    OFFLINE = "offline"  # no link: before the first one, or between two
    CONNECTING = "connecting"  # a link is being opened, or greeted (hello sent)
    OPEN = "open"  # welcomed: frames flow
    CLOSED = "closed"  # closed by the application: final


_CLOSED: Final = SpokeState.CLOSED
#: How every control frame of ``encode_envelope`` starts.
_CONTROL_FRAME_HEAD: Final = b'{"type":"' + CONTROL_PREFIX.encode()


@dataclass(frozen=True, slots=True)
class Pong:
    """The hub answered the ``__ping`` with this nonce: it processed everything before it."""

    nonce: str


@dataclass(frozen=True, slots=True)
class Welcome:
    """The hub welcomed this link: the spoke is OPEN.

    ``resumed``: the hub continued the previous session (same spoke id,
    subscriptions, and what was published meanwhile). ``gap``: events published
    while the spoke was away may be missing (no session, an expired one, or a
    catch-up buffer that overflowed). ``undelivered``: data frames this spoke
    sent in a session that could not be resumed and that the hub never
    confirmed: possibly lost, reported to the application."""

    spoke_id: str | None
    resumed: bool = False
    gap: bool = False
    undelivered: list[bytes] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Acked:
    """The hub confirmed data frames: the outgoing budget (B13) may have room."""


@dataclass(frozen=True, slots=True)
class HubError:
    """An ``__error`` frame: a refused request or a protocol complaint."""

    code: str
    message: str
    topic: str | None


@dataclass(frozen=True, slots=True)
class Closing:
    """The hub announced that it is closing the link, and why (``__close``)."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Positioned:
    """The hub told a tracked topic's stream position (``__position``):
    ``recovered`` says whether everything after the asked position followed."""

    topic: str
    position: StreamPosition | None
    recovered: bool


class _NotGiven:
    """The type of ``NOT_GIVEN``: ``since`` was not passed at all."""


NOT_GIVEN: Final = _NotGiven()


class _Stream:
    """A topic whose stream positions are tracked (``since=``)."""

    __slots__ = ("awaiting", "position", "recovered")

    def __init__(self, position: StreamPosition | None) -> None:
        self.position = position
        self.recovered: bool | None = None
        self.awaiting = False  # its __position is due: ignore its frames until then


SpokeEvent = Pong | Welcome | HubError | Closing | Acked | Positioned


@dataclass
class ForwarderStats:
    """Counters a spoke exposes for observability."""

    sent_events: int = 0
    received_events: int = 0
    invalid_frames: int = 0
    unknown_control: int = 0
    hub_errors: int = 0
    #: Links welcomed, and how many of them resumed the previous session.
    welcomes: int = 0
    resumed_sessions: int = 0
    #: Reconnects after which events published meanwhile may be missing.
    gaps: int = 0
    #: Data frames that may not have reached the hub (a session that could not be
    #: resumed, or a close that could not flush), reported to the application.
    undelivered_events: int = 0


class SubscriptionForwarder:
    """Refcounted ``__subscribe``/``__unsubscribe`` forwarding plus the outgoing queue.

    Life cycle driven by the shell: ``connecting()`` when it starts opening a
    link, ``connection_made()`` when it is up (the queue is rebuilt as hello +
    one subscribe per live topic + the offline outbox), ``connection_lost()``
    when it dies, ``close()`` at the end.
    """

    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_outgoing_bytes: int = DEFAULT_MAX_OUTGOING_BYTES,
        outbox_limit: int = DEFAULT_OUTBOX_LIMIT,
        on_listener_error: ListenerErrorHandler | None = None,
        schedule: Scheduler | None = None,
        send_hello: bool = True,
        session: bool = True,
        heartbeat: float | None = None,
    ) -> None:
        if max_outgoing_bytes <= 0 or outbox_limit <= 0:
            raise ValueError("max_outgoing_bytes and outbox_limit must be positive")
        self.registry = ListenerRegistry(on_listener_error=on_listener_error, schedule=schedule)
        self.stats = ForwarderStats()
        self.max_frame_bytes = max_frame_bytes
        self.max_outgoing_bytes = max_outgoing_bytes
        self.outbox_limit = outbox_limit
        self._low_water = max_outgoing_bytes // 4
        self._send_hello = send_hello
        self.session = session and send_hello  # sessions are negotiated in the hello
        self.heartbeat = heartbeat
        # Frames for the current link; data dispatched while not OPEN waits in
        # the outbox. Control frames (ControlFrame) are never kept across links.
        self._queue = FrameQueue()
        self._outbox: deque[bytes] = deque()
        self._link_up = False
        self._ping_ids = itertools.count(1)
        self._pending_pings: set[str] = set()
        self.state = SpokeState.OFFLINE
        self.spoke_id: str | None = None
        # The session: its resume token, what we sent and it did not confirm,
        # what we received, the topics the hub holds for us.
        self.token: str | None = None
        self.sent = SentLog()
        self.receipts = Receipts()
        self._hub_topics: set[str] = set()
        self._streams: dict[str, _Stream] = {}
        self._welcomed_before = False
        #: Frames received and written, for heartbeat decisions.
        self.frames_received = 0
        self.frames_sent = 0
        #: Set when the queue goes from empty to non-empty while a link is up;
        #: the shell clears it when it wakes its writer.
        self.wants_write = False

    @property
    def connected(self) -> bool:
        return self.state is SpokeState.OPEN

    @property
    def closed(self) -> bool:
        return self.state is SpokeState.CLOSED

    # -- user-facing operations ---------------------------------------------

    def add_listener(
        self,
        topic: str,
        listener: Listener | None,
        *,
        since: StreamPosition | str | _NotGiven | None = NOT_GIVEN,
    ) -> None:
        """Register ``listener``. With ``since`` (a ``StreamPosition``, its string,
        or None for "from now"), the topic's stream positions are tracked and,
        from a position, what came after it is recovered from the hub's history
        (``stream_state(topic)`` tells whether it was); only the first listener
        of a topic may ask for that."""
        if self.state is SpokeState.CLOSED or listener is None:
            return
        validate_topic(topic)
        tracking = not isinstance(since, _NotGiven)
        position: StreamPosition | None = None
        if tracking:
            if isinstance(since, StreamPosition):
                position = since
            elif isinstance(since, str):
                position = StreamPosition.parse(since)
                if position is None:
                    raise ValueError(f"not a stream position: {since!r}")
            if topic in self.registry:
                raise ValueError(
                    f"{topic!r} has listeners already: since= needs its first listener"
                )
        if not self.registry.add(topic, listener):
            return
        if tracking:
            self._streams[topic] = _Stream(position)
        if self.state is SpokeState.OPEN:
            self._subscribe(topic)
            self._hub_topics.add(topic)

    def remove_listener(self, topic: str, listener: Listener | None) -> None:
        if self.state is SpokeState.CLOSED:
            return
        if self.registry.remove(topic, listener):
            self._streams.pop(topic, None)
            if self.state is SpokeState.OPEN:
                self._push_control(control.unsubscribe(topic))
                self._hub_topics.discard(topic)

    def stream_state(self, topic: str) -> tuple[StreamPosition | None, bool | None]:
        """A tracked topic's last stream position, and whether its recovery
        succeeded (None: not known yet, or not tracked)."""
        stream = self._streams.get(topic)
        return (None, None) if stream is None else (stream.position, stream.recovered)

    def _subscribe(self, topic: str) -> None:
        """``__subscribe``; for a tracked topic with ``since``, and frames of that
        topic are ignored until its ``__position`` arrives (they precede it)."""
        stream = self._streams.get(topic)
        if stream is None:
            self._push_control(control.subscribe(topic))
            return
        stream.awaiting = True
        since = "" if stream.position is None else str(stream.position)
        self._push_control(control.subscribe(topic, since))

    def dispatch(self, event: Event) -> bool:
        """Encode and queue ``event``; never blocks (B13)."""
        if self.state is SpokeState.CLOSED:
            raise TargetClosedError("target is closed")
        check_user_event(event)
        return self._accept(encode_envelope(event.detail, self.max_frame_bytes))

    def dispatch_encoded(self, frame: bytes) -> bool:
        """``dispatch`` of a user envelope already checked and encoded by the
        caller within ``max_frame_bytes`` (a hub's bridge forwards the frame it
        fanned out, instead of encoding the envelope again)."""
        if self.state is SpokeState.CLOSED:
            raise TargetClosedError("target is closed")
        if len(frame) > self.max_frame_bytes:
            raise FrameTooLargeError(len(frame), self.max_frame_bytes)
        if frame.startswith(_CONTROL_FRAME_HEAD):  # never a control frame in disguise
            raise ReservedTypeError("dispatch_encoded takes user envelopes, not control frames")
        return self._accept(frame)

    def _accept(self, frame: bytes) -> bool:
        if self.state is SpokeState.OPEN:
            # B13: accepted but not written, or written but not confirmed.
            pending = self._queue.nbytes + self.sent.nbytes
            if pending and pending + len(frame) > self.max_outgoing_bytes:
                raise BackpressureError(
                    f"{pending} bytes not yet confirmed by the hub (max_outgoing_bytes="
                    f"{self.max_outgoing_bytes}); await target.drain()"
                )
            self._push(frame)
        else:
            if len(self._outbox) + len(self.sent) >= self.outbox_limit:
                raise BackpressureError(
                    f"offline outbox is full ({self.outbox_limit} events); await target.drain()"
                )
            self._outbox.append(frame)
        self.stats.sent_events += 1
        return True

    def new_ping(self) -> str | None:
        """Queue a ``__ping``; returns its nonce, or None while offline (B4)."""
        if self.state is not SpokeState.OPEN:
            return None
        nonce = str(next(self._ping_ids))
        self._pending_pings.add(nonce)
        self._push_control(control.ping(nonce, self._ack_count()))
        return nonce

    # -- queue state ---------------------------------------------------------

    @property
    def queued_bytes(self) -> int:
        """Bytes accepted and not yet confirmed: queued, in the outbox, unacknowledged."""
        return self._queue.nbytes + sum(map(len, self._outbox)) + self.sent.nbytes

    @property
    def queued_events(self) -> int:
        """Data frames accepted and not yet confirmed by the hub."""
        return self._queue.data_frames + len(self._outbox) + len(self.sent)

    @property
    def unwritten_bytes(self) -> int:
        """Bytes queued for the current link and not yet taken by a writer."""
        return self._queue.nbytes

    def drained(self) -> bool:
        """True when a publisher waiting in ``drain()`` may go on (low-water mark)."""
        if self.state is SpokeState.OPEN:
            return self._queue.nbytes + self.sent.nbytes <= self._low_water
        return len(self._outbox) + len(self.sent) <= self.outbox_limit // 2

    def settled(self) -> bool:
        """Nothing accepted is waiting: all written and, in a session, confirmed."""
        return not self._queue.data_frames and not self._outbox and not len(self.sent)

    def has_output(self) -> bool:
        return self._link_up and bool(self._queue)

    def take_outgoing(self, max_bytes: int | None = None) -> list[bytes]:
        """Remove and return queued frames (all, or about ``max_bytes`` worth)."""
        if not self._link_up:
            return []
        frames = self._queue.take(max_bytes)
        if self.token is not None:
            self.sent.record(frames)
        self.frames_sent += len(frames)
        return frames

    # -- transitions -----------------------------------------------------------

    def connecting(self) -> None:
        if self.state is SpokeState.OFFLINE:
            self.state = SpokeState.CONNECTING

    def connection_made(self) -> None:
        """A link is up: greet the hub (hello) and wait for its welcome; without
        a hello (a bare-protocol spoke) resubscribe and send the outbox at once."""
        if self.state is SpokeState.CLOSED:
            return
        self._link_up = True
        self._queue.clear()
        self._pending_pings.clear()
        if not self._send_hello:  # a bare-protocol spoke: a new connection, nothing to resume
            self._welcomed_before = True
            self._hub_topics.clear()
            self._open([])
            return
        self.state = SpokeState.CONNECTING
        resume = self.token if self.session else None
        self._push_control(
            control.hello(
                session=self.session,
                resume=resume,
                received=self.receipts.received,
                heartbeat=self.heartbeat,
            )
        )

    def _welcome(self, envelope: EventEnvelope) -> Welcome | None:
        """The hub's welcome: resume or start the session, then OPEN (B7)."""
        welcome = control.Welcome(envelope)
        if not self._link_up or self.state is not SpokeState.CONNECTING:
            return None  # unexpected: only the first frame of a link welcomes
        resumed = welcome.resumed and self.token is not None and self.sent.ack(welcome.received)
        undelivered: list[bytes] = []
        if resumed:
            resend = self.sent.clear()  # not confirmed: sent again, counted again
            gap = welcome.gap
            self.stats.resumed_sessions += 1
        else:
            resend = []
            gap = self._welcomed_before
            undelivered = self.sent.clear()
            self.sent = SentLog()
            self.receipts = Receipts()
            self._hub_topics.clear()
        self._welcomed_before = True
        self.token = welcome.token if self.session else None
        self.spoke_id = welcome.spoke_id
        self.stats.welcomes += 1
        self.stats.gaps += gap
        self.stats.undelivered_events += len(undelivered)
        if resumed:
            # Tells the hub at once that the welcome (and its new token) arrived,
            # which spends the token this spoke resumed with (protocol.md §5).
            self._push_control(control.ack(self.receipts.acknowledged()))
        self._open(resend, recover=gap or not resumed)
        return Welcome(welcome.spoke_id, resumed, gap, undelivered)

    def _open(self, resend: list[bytes], recover: bool = True) -> None:
        """OPEN: subscriptions first, then what was not confirmed, then the outbox.

        A tracked topic asks again for what came after its last position when
        something may be missing (``recover``): no session, a new one, a gap."""
        self.state = SpokeState.OPEN
        topics = self.registry.topics()
        for topic in self._hub_topics.difference(topics):
            self._push_control(control.unsubscribe(topic))
        for topic in topics:
            if recover or topic not in self._hub_topics:
                self._subscribe(topic)
            else:
                self._push_control(control.subscribe(topic))  # idempotent on the hub
        self._hub_topics = set(topics)
        for frame in resend:
            self._push(frame)
        outbox, self._outbox = self._outbox, deque()
        for frame in outbox:
            self._push(frame)

    def connection_lost(self) -> None:
        """The link died (or never came up): what was not written yet goes back
        to the front of the outbox; what was written stays in the session log."""
        if self.state is SpokeState.CLOSED:
            return
        self.state = SpokeState.OFFLINE
        self._link_up = False
        self.wants_write = False
        self._pending_pings.clear()
        unwritten = self._queue.data()
        self._queue.clear()
        if unwritten:
            self._outbox.extendleft(reversed(unwritten))

    def close(self) -> list[bytes]:
        """Final; returns the data frames that were accepted and never confirmed."""
        undelivered = [*self.sent.clear(), *self._queue.data(), *self._outbox]
        self.stats.undelivered_events += len(undelivered)
        self.state = SpokeState.CLOSED
        self._link_up = False
        self.wants_write = False
        self._queue.clear()
        self._outbox.clear()
        self._pending_pings.clear()
        self.registry.clear()
        return undelivered

    # -- receiving --------------------------------------------------------------

    def receive(self, message: bytes | str) -> SpokeEvent | None:
        """Handle one received message (one envelope).

        Data envelopes go to the local listeners; a control frame that the
        shell must act on comes back as a ``SpokeEvent``.
        """
        # The hot path of every spoke: pydantic's validator without the
        # decode_envelope wrapper, whose error message nobody reads here.
        if self.state is _CLOSED:
            return None
        self.frames_received += 1
        try:
            envelope = validate_envelope_json(message)
        except ValidationError:
            self.stats.invalid_frames += 1
            return None
        if envelope.type.startswith(CONTROL_PREFIX):
            return self._receive_control(envelope)
        if self.token is not None:
            receipts = self.receipts
            if receipts.count(len(message)):
                self._push_control(control.ack(receipts.acknowledged()))
        self.stats.received_events += 1
        event = Event.from_envelope(envelope)
        if self._streams:
            stream = self._streams.get(event.type)
            if stream is not None:
                if stream.awaiting:
                    return None  # sent before its __position: recovery covers it
                if stream.position is not None:
                    stream.position = event.position = stream.position.next()
        self.registry.dispatch(event)
        return None

    def _receive_control(self, envelope: EventEnvelope) -> SpokeEvent | None:
        kind = envelope.type
        if kind == control.ACK:
            return self._acked(envelope)
        if kind == control.PONG:
            self._acked(envelope)
            if envelope.id in self._pending_pings:
                self._pending_pings.discard(envelope.id)
                return Pong(envelope.id)
        elif kind == control.PING:
            self._acked(envelope)
            if self._link_up:
                self._push_control(control.pong(envelope.id, self._ack_count()))
        elif kind == control.WELCOME:
            return self._welcome(envelope)
        elif kind == control.ERROR:
            self.stats.hub_errors += 1
            code, message, topic = control.error_fields(envelope)
            return HubError(code, message, topic)
        elif kind == control.CLOSE:
            close = control.close_fields(envelope)
            if close is not None:
                return Closing(*close)
            self.stats.invalid_frames += 1
        elif kind == control.POSITION:
            fields = control.position_fields(envelope)
            if fields is None:
                self.stats.invalid_frames += 1
                return None
            topic, at, recovered = fields
            tracked = self._streams.get(topic)
            if tracked is not None:
                tracked.position = StreamPosition.parse(at)
                tracked.recovered = recovered
                tracked.awaiting = False
                return Positioned(topic, tracked.position, recovered)
        else:
            self.stats.unknown_control += 1  # C2: forward compatibility
        return None

    # -- internals ---------------------------------------------------------------

    def _acked(self, envelope: EventEnvelope) -> Acked | None:
        """The hub confirmed data frames (``__ack``, or the count on a ping/pong)."""
        received = control.received_count(envelope)
        if received is None or self.token is None:
            return None
        if not self.sent.ack(received):
            self.stats.invalid_frames += 1  # the hub confirmed more than we sent
            return None
        return Acked()

    def _ack_count(self) -> int | None:
        """The count to put on an outgoing ping/pong (an ack), in a session."""
        return self.receipts.acknowledged() if self.token is not None else None

    def _push_control(self, envelope: EventEnvelope) -> None:
        self._push(ControlFrame(encode_envelope(envelope, self.max_frame_bytes)))

    def _push(self, frame: bytes) -> None:
        if self._queue.push(frame) and self._link_up:
            self.wants_write = True
