"""Hub-side state: who is subscribed to what, and where each envelope goes.

Sans-I/O. The shell registers connections, feeds them received messages,
performs authorization where the router asks for it (``SubscribeRequest``,
``PublishRequest``), tells it when a link ended (``link_lost``) and when a
heartbeat interval passed (``tick``), and pulls the router's decisions:
``take_ready()`` lists the connections whose queue became non-empty (to be
written with ``take_outgoing``), ``take_cuts()`` those that must be closed,
with the code in ``conn.close_code``. A ``Resumed`` result tells the shell that
its link now serves an earlier session. B8, B12, C1, C2, H1-H3 and the sessions
of docs/protocol.md §5.

A ``HubConnection`` outlives its link when it holds a session: detached, it
keeps its spoke id, subscriptions, unconfirmed frames and, bounded in bytes,
what was published for it meanwhile, until a link resumes it or its grace
period runs out.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Literal

from . import control
from .close import CloseCode
from .codec import DEFAULT_MAX_FRAME_BYTES, decode_envelope, encode_envelope
from .envelope import CONTROL_PREFIX, Event, EventEnvelope, check_user_event
from .errors import DecodeError, FrameTooLargeError, InvalidEnvelopeError, TargetClosedError
from .headers import SECRET_HEADERS, Headers
from .history import HistoryStore, StreamPosition
from .listeners import Listener, ListenerErrorHandler, ListenerRegistry, Scheduler
from .queue import ControlFrame, FrameQueue
from .session import Receipts, SentLog, new_token

__all__ = [
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_INVALID_FRAMES",
    "DEFAULT_MAX_SUBSCRIPTION_BYTES",
    "DEFAULT_MAX_TOPICS_PER_CONNECTION",
    "DEFAULT_MAX_TOPIC_BYTES",
    "DEFAULT_SESSION_GRACE",
    "ConnectionState",
    "HubConnection",
    "HubRouter",
    "HubStats",
    "Peer",
    "PublishRequest",
    "Resumed",
    "SubscribeRequest",
]

DEFAULT_MAX_BUFFERED_BYTES: Final = 1024 * 1024
DEFAULT_MAX_TOPICS_PER_CONNECTION: Final = 10_000
DEFAULT_MAX_TOPIC_BYTES: Final = 1024
DEFAULT_MAX_SUBSCRIPTION_BYTES: Final = 1024 * 1024
DEFAULT_MAX_INVALID_FRAMES: Final = 100
DEFAULT_SESSION_GRACE: Final = 30.0
DEFAULT_MAX_DETACHED_BYTES: Final = 64 * 1024 * 1024
#: Frames written to a session's spoke and not yet acknowledged, per session.
#: Not part of B8 (a busy spoke's acks queue behind its own publications, and
#: the frames are mostly shared with other subscribers): past this the hub
#: stops keeping them, and a resume reports a gap instead of resending.
DEFAULT_MAX_UNCONFIRMED_BYTES: Final = 4 * 1024 * 1024
#: A spoke that promised a heartbeat every T seconds is cut after 3 T of silence.
HEARTBEAT_MISSES: Final = 3
#: ``__error`` frames answering bad input, per connection (then only counted).
MAX_COMPLAINTS: Final = 10
DIRECT_TYPE: Final = "direct"

Action = Literal["subscribe", "publish"]

#: Closes after which a session waits for its spoke instead of ending.
_SESSION_SURVIVES: Final = frozenset({CloseCode.TRY_AGAIN_LATER, CloseCode.HEARTBEAT_TIMEOUT})


@dataclass(frozen=True)
class Peer:
    """What a hub knows about a connected spoke; passed to ``authorize`` (B12)."""

    spoke_id: str
    transport: str
    remote_address: str | None = None
    path: str | None = None
    headers: Mapping[str, str] = field(default_factory=Headers)
    endpoint_id: str | None = None

    def __repr__(self) -> str:
        headers = {
            name: "<redacted>" if name.lower() in SECRET_HEADERS else value
            for name, value in self.headers.items()
        }
        return (
            f"Peer(spoke_id={self.spoke_id!r}, transport={self.transport!r}, "
            f"remote_address={self.remote_address!r}, path={self.path!r}, "
            f"headers={headers!r}, endpoint_id={self.endpoint_id!r})"
        )


@dataclass(frozen=True)
class SubscribeRequest:
    """A valid ``__subscribe`` that needs ``authorize(peer, "subscribe", topic)``.

    ``since`` (a position, ``""``, or None) asks for the topic's stream position
    and, with a position, for the events after it (topic history)."""

    topic: str
    action: Action = "subscribe"
    since: str | None = None


@dataclass(slots=True)  # one per received event: not frozen, whose __init__ costs 3x
class PublishRequest:
    """A data envelope from a spoke that needs ``authorize(peer, "publish", topic)``."""

    envelope: EventEnvelope
    action: Action = "publish"

    @property
    def topic(self) -> str:
        return self.envelope.topic


@dataclass(frozen=True)
class Resumed:
    """The link now serves ``session``, an earlier connection of this spoke;
    the provisional connection it was registered with is gone."""

    session: HubConnection


@dataclass
class HubStats:
    connections: int = 0
    received_frames: int = 0
    relayed_events: int = 0
    invalid_frames: int = 0
    invalid_control: int = 0
    unknown_control: int = 0
    refused: int = 0
    backpressure_disconnects: int = 0
    heartbeat_timeouts: int = 0
    sessions_resumed: int = 0
    sessions_expired: int = 0
    #: Detached sessions that had to drop buffered events (their spoke is told).
    session_gaps: int = 0


class ConnectionState(Enum):
    OPEN = "open"  # a link serves it
    DETACHED = "detached"  # its link is gone; the session waits for a resume
    CLOSING = "closing"  # cut off by the router; the shell is closing its link
    GONE = "gone"  # forgotten: nothing is queued or relayed for it any more


_OPEN: Final = ConnectionState.OPEN
_DETACHED: Final = ConnectionState.DETACHED
_CLOSING: Final = ConnectionState.CLOSING


class HubConnection:
    """One spoke as the router sees it: a link's connection, or a session."""

    __slots__ = (
        "buffered_at_cut",
        "close_code",
        "close_reason",
        "expires_in",
        "frames_received",
        "gap",
        "greeted",
        "heartbeat_ticks",
        "held",
        "invalid_frames",
        "last_frames_received",
        "peer",
        "previous_token",
        "queue",
        "receipts",
        "sent",
        "silent_ticks",
        "socket_buffered",
        "state",
        "token",
        "topic_bytes",
        "topics",
    )

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.topics: set[str] = set()
        self.topic_bytes = 0
        self.queue = FrameQueue()
        # Bytes held besides the queue: in the socket (B8) while attached, and
        # the unconfirmed ones while detached (its catch-up budget).
        self.held = 0
        self.socket_buffered = 0
        self.state = ConnectionState.OPEN
        self.close_code: CloseCode | int | None = None
        self.close_reason = ""
        #: What was buffered for it when the router cut it off (for on_backpressure).
        self.buffered_at_cut = 0
        self.greeted = False
        self.invalid_frames = 0
        # Session: token, what we sent it and it did not confirm, what it sent us.
        self.token: str | None = None
        #: The token its spoke resumed with, valid until the spoke shows it got
        #: the new one (a welcome lost with its link must not end the session).
        self.previous_token: str | None = None
        self.sent: SentLog | None = None
        self.receipts: Receipts | None = None
        self.gap = False  # events for it were dropped while it was away
        self.expires_in = 0  # ticks left while detached
        # Heartbeat: ticks of silence allowed, and the count seen at the last tick.
        self.heartbeat_ticks: int | None = None
        self.frames_received = 0
        self.last_frames_received = 0
        self.silent_ticks = 0

    @property
    def spoke_id(self) -> str:
        return self.peer.spoke_id

    @property
    def open(self) -> bool:
        return self.state is ConnectionState.OPEN

    @property
    def buffered_bytes(self) -> int:
        return self.queue.nbytes + self.held

    def __repr__(self) -> str:
        return f"<HubConnection {self.peer.spoke_id} {self.state.value} topics={len(self.topics)}>"


class HubRouter:
    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        max_topics_per_connection: int = DEFAULT_MAX_TOPICS_PER_CONNECTION,
        max_topic_bytes: int = DEFAULT_MAX_TOPIC_BYTES,
        max_subscription_bytes: int = DEFAULT_MAX_SUBSCRIPTION_BYTES,
        max_invalid_frames: int | None = DEFAULT_MAX_INVALID_FRAMES,
        session_grace: float = DEFAULT_SESSION_GRACE,
        max_detached_bytes: int = DEFAULT_MAX_DETACHED_BYTES,
        max_unconfirmed_bytes: int = DEFAULT_MAX_UNCONFIRMED_BYTES,
        tick_interval: float = 1.0,
        history: HistoryStore | None = None,
        on_listener_error: ListenerErrorHandler | None = None,
        schedule: Scheduler | None = None,
    ) -> None:
        if min(max_buffered_bytes, max_topic_bytes, max_subscription_bytes, tick_interval) <= 0:
            raise ValueError("limits and tick_interval must be positive")
        if session_grace < 0:
            raise ValueError("session_grace must not be negative")
        self.registry = ListenerRegistry(on_listener_error=on_listener_error, schedule=schedule)
        #: Topic history for recovery from a stream position (None: no topic has any).
        self.history = history if history else None
        self.stats = HubStats()
        self.max_frame_bytes = max_frame_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.max_topics_per_connection = max_topics_per_connection
        self.max_topic_bytes = max_topic_bytes
        self.max_subscription_bytes = max_subscription_bytes
        self.max_invalid_frames = max_invalid_frames
        self.tick_interval = tick_interval
        self.grace_ticks = int(-(-session_grace // tick_interval))  # ceil
        self.max_detached_bytes = max_detached_bytes
        self.max_unconfirmed_bytes = max_unconfirmed_bytes
        #: Every connection and detached session, by spoke id.
        self.connections: dict[str, HubConnection] = {}
        #: Sessions by resume token.
        self.sessions: dict[str, HubConnection] = {}
        # Detached sessions, oldest first.
        self._detached: dict[HubConnection, None] = {}
        # E2: keyed by the full topic. Dict values keep insertion order.
        self.subscriptions: dict[str, dict[HubConnection, None]] = {}
        #: Connections whose queue became non-empty: the shell writes them.
        self.ready: list[HubConnection] = []
        #: Connections the router cut off: the shell closes their links.
        self.cuts: list[HubConnection] = []
        self.closed = False
        # -- bridge (SPEC H6): state pulled by transports/bridge.HubBridge ----------
        #: Set by a bridge: track interest, hold pongs, keep what enters the hub.
        self.bridged = False
        #: Set when a take_* list of the bridge gets something; the bridge clears it.
        self.bridge_work = False
        self._interest_changes: dict[str, bool] = {}
        self._outbound: list[bytes] = []  # encoded envelopes for the bridge (H6)
        self._held_pongs: list[tuple[HubConnection, str]] = []

    # -- connections -----------------------------------------------------------

    def new_spoke_id(self) -> str:
        """A fresh, unguessable spoke id (``direct:<id>`` must not be enumerable)."""
        while True:
            spoke_id = secrets.token_urlsafe(12)
            if spoke_id not in self.connections:
                return spoke_id

    def connect(self, peer: Peer) -> HubConnection:
        """Register a connection. Its ``__welcome`` goes out when its first
        frame arrives: a ``__hello`` may ask to resume a session."""
        if self.closed:
            raise TargetClosedError("hub is closed")
        if peer.spoke_id in self.connections:
            raise ValueError(f"spoke id {peer.spoke_id!r} is already connected")
        conn = HubConnection(peer)
        self.connections[peer.spoke_id] = conn
        self.stats.connections += 1
        return conn

    @property
    def attached(self) -> list[HubConnection]:
        """Connections served by a link (not detached sessions)."""
        return [conn for conn in self.connections.values() if conn.state is _OPEN]

    def link_lost(self, conn: HubConnection, normal_close: bool) -> bool:
        """``conn``'s link ended. A session survives a lost link (not a normal
        close, not a close decided by the hub other than B8 or a heartbeat
        timeout) and waits ``session_grace``; returns True if it does."""
        if self.connections.get(conn.spoke_id) is not conn:
            return False
        keep = (
            conn.token is not None
            and not normal_close
            and self.grace_ticks > 0
            and (conn.state is _OPEN or conn.close_code in _SESSION_SURVIVES)
        )
        if not keep:
            self.disconnect(conn)
            return False
        conn.state = _DETACHED
        conn.expires_in = self.grace_ticks
        conn.socket_buffered = 0
        conn.heartbeat_ticks = None
        self._hold(conn)
        # Anything still queued that is not data (acks, pongs, __close) is for
        # the dead link only.
        data = conn.queue.data()
        conn.queue.clear()
        for frame in data:
            conn.queue.push(frame)
        self._detached[conn] = None
        if conn.buffered_bytes > self.max_buffered_bytes // 2:
            self._trim_detached(conn)
        return True

    def disconnect(self, conn: HubConnection) -> bool:
        """Forget a connection or session; False when it was already gone."""
        if self.connections.get(conn.spoke_id) is not conn:
            return False
        del self.connections[conn.spoke_id]
        if conn.token is not None:
            self.sessions.pop(conn.token, None)
        if conn.previous_token is not None:
            self.sessions.pop(conn.previous_token, None)
        self._detached.pop(conn, None)
        for topic in conn.topics:
            self._drop_subscriber(topic, conn)
        conn.topics.clear()
        conn.topic_bytes = 0
        conn.queue.clear()
        if conn.sent is not None:
            conn.sent.clear()
        conn.state = ConnectionState.GONE
        return True

    # -- receiving ----------------------------------------------------------------

    def receive(
        self, conn: HubConnection, message: bytes | str
    ) -> SubscribeRequest | PublishRequest | Resumed | None:
        """Handle one message; returns what needs authorization, or a resume."""
        if conn.state is not _OPEN:
            return None
        if conn.previous_token is not None:
            self._welcome_confirmed(conn)
        conn.frames_received += 1
        self.stats.received_frames += 1
        try:
            envelope = decode_envelope(message)
        except DecodeError as exc:
            if not conn.greeted:
                conn.greeted = True
                self._send_control(conn, control.welcome(conn.spoke_id))
            self._bad_input(conn, control.INVALID_FRAME, str(exc))
            return None
        if not conn.greeted:
            conn.greeted = True
            if envelope.type == control.HELLO:
                return self._hello(conn, control.Hello(envelope))
            self._send_control(conn, control.welcome(conn.spoke_id))  # a bare-protocol peer
        if not envelope.type.startswith(CONTROL_PREFIX):  # is_control, without a call
            receipts = conn.receipts
            if receipts is not None and receipts.count(len(message)):
                self._send_control(conn, control.ack(receipts.acknowledged()))
            return PublishRequest(envelope)
        kind = envelope.type
        if kind == control.SUBSCRIBE:
            return self._subscribe_request(conn, envelope)
        if kind == control.UNSUBSCRIBE:
            topic = control.subscription_topic(envelope)
            if topic is None:
                self._bad_input(conn, control.INVALID_CONTROL, "__unsubscribe needs a valid topic")
            else:
                self.unsubscribe(conn, topic)
        elif kind == control.PING:
            self._acked(conn, envelope)
            if self.bridged:  # H6: answered once the bridge confirmed what came before
                self._held_pongs.append((conn, envelope.id))
                self.bridge_work = True
            else:
                self._pong(conn, envelope.id)
        elif kind == control.ACK or kind == control.PONG:
            self._acked(conn, envelope)
        elif kind != control.HELLO:
            self.stats.unknown_control += 1  # C2
        return None

    def _subscribe_request(
        self, conn: HubConnection, envelope: EventEnvelope
    ) -> SubscribeRequest | None:
        topic = control.subscription_topic(envelope)
        if topic is None:
            self._bad_input(conn, control.INVALID_CONTROL, "__subscribe needs a valid topic")
            return None
        since = control.subscription_since(envelope)
        if topic in conn.topics:
            if since is not None:  # subscribed already: a request for what it missed
                self._recover(conn, topic, since)
            return None
        if self._is_foreign_direct(conn, topic):
            self.refuse(conn, "subscribe", topic, "direct topics belong to their spoke")
            return None
        size = _utf8_size(topic)
        if size > self.max_topic_bytes:
            self.stats.refused += 1
            message = f"topics are at most {self.max_topic_bytes} bytes"
            self._send_control(conn, control.error(control.TOPIC_TOO_LONG, message))
            return None
        if (
            len(conn.topics) >= self.max_topics_per_connection
            or conn.topic_bytes + size > self.max_subscription_bytes
        ):
            self.stats.refused += 1
            message = (
                f"at most {self.max_topics_per_connection} topics and "
                f"{self.max_subscription_bytes} bytes of topics per connection"
            )
            self._send_control(conn, control.error(control.TOO_MANY_TOPICS, message, topic))
            return None
        return SubscribeRequest(topic, since=since)

    def _recover(self, conn: HubConnection, topic: str, since: str) -> None:
        """``__position`` for ``topic``, then what came after ``since`` if the
        history still has all of it; the live events follow in the queue."""
        history = self.history
        recovery = None if history is None else history.after(topic, StreamPosition.parse(since))
        if recovery is None:
            self._send_control(conn, control.position(topic, None, False))
            return
        if recovery.recovered and since:
            start = StreamPosition.parse(since)
            assert start is not None
        else:
            start = recovery.position  # from now on (or recovery failed)
        recovered = recovery.recovered and bool(since)
        self._send_control(conn, control.position(topic, str(start), recovered))
        for frame in recovery.frames if recovered else ():
            if conn.queue.push(frame):
                self.ready.append(conn)

    def _hello(self, conn: HubConnection, hello: control.Hello) -> Resumed | None:
        if hello.heartbeat is not None:
            # Rounded first: 3 * 0.4 / 0.1 is 12.000000000000002, which is 12 ticks.
            ticks = round(HEARTBEAT_MISSES * hello.heartbeat / self.tick_interval, 6)
            conn.heartbeat_ticks = max(2, math.ceil(ticks))
        if hello.session and hello.resume is not None:
            session = self.sessions.get(hello.resume)
            if session is not None and session.state is not _DETACHED:
                # Live elsewhere (or being cut): a stolen or duplicated token.
                self.stats.refused += 1
                self._cut(conn, CloseCode.SESSION_IN_USE, "session in use by another connection")
                return None
            if session is not None and session.peer.endpoint_id == conn.peer.endpoint_id:
                return self._resume(conn, session, hello)
        if hello.session:
            conn.token = new_token()
            conn.sent = SentLog()
            conn.receipts = Receipts()
            self.sessions[conn.token] = conn
        self._send_control(
            conn, control.welcome(conn.spoke_id, token=conn.token, gap=hello.resume is not None)
        )
        return None

    def _resume(self, conn: HubConnection, session: HubConnection, hello: control.Hello) -> Resumed:
        """The provisional ``conn`` hands its link to the detached ``session``."""
        assert session.sent is not None
        assert session.receipts is not None
        del self.connections[conn.spoke_id]
        conn.state = ConnectionState.GONE
        self._detached.pop(session, None)
        assert session.token is not None
        assert hello.resume is not None
        # A used token is never valid again once the spoke has the new one;
        # until then (the welcome may be lost with this link) it still resumes.
        for token in (session.token, session.previous_token):
            if token is not None:
                del self.sessions[token]
        session.previous_token = hello.resume
        self.sessions[hello.resume] = session
        session.token = new_token()
        self.sessions[session.token] = session
        session.peer = dataclasses.replace(conn.peer, spoke_id=session.spoke_id)
        session.state = _OPEN
        session.greeted = True
        session.heartbeat_ticks = conn.heartbeat_ticks
        session.silent_ticks = 0
        session.close_code = None
        session.close_reason = ""
        gap = session.gap
        if session.sent.ack(hello.received):
            resend = session.sent.clear()
        else:  # frames it missed were dropped while it was away
            gap = True
            resend = []
            session.sent = SentLog(acked=hello.received)
        caught_up = session.queue.data()
        session.queue.clear()
        session.gap = gap  # cleared once the spoke shows it got this welcome
        self._hold(session)
        self.stats.sessions_resumed += 1
        self._send_control(
            session,
            control.welcome(
                session.spoke_id,
                token=session.token,
                resumed=True,
                received=session.receipts.received,
                gap=gap,
            ),
        )
        for frame in (*resend, *caught_up):
            session.queue.push(frame)
        return Resumed(session)

    def _welcome_confirmed(self, conn: HubConnection) -> None:
        """A frame arrived after a resumed session's welcome: its spoke holds
        the new token (it sends nothing before the welcome), so the one it
        resumed with is spent, and the gap was reported."""
        assert conn.previous_token is not None
        self.sessions.pop(conn.previous_token, None)
        conn.previous_token = None
        conn.gap = False

    def _acked(self, conn: HubConnection, envelope: EventEnvelope) -> None:
        sent = conn.sent
        if sent is None:
            return
        received = control.received_count(envelope)
        if received is not None and not sent.ack(received) and sent.intact:
            self._bad_input(conn, control.INVALID_CONTROL, "acknowledged more than was sent")

    def _pong(self, conn: HubConnection, nonce: str) -> None:
        """Answer a ``__ping``; in a session the pong also acknowledges."""
        receipts = conn.receipts
        received = receipts.acknowledged() if receipts is not None else None
        self._send_control(conn, control.pong(nonce, received))

    def _bad_input(self, conn: HubConnection, code: str, reason: str) -> None:
        """B10: drop, count, tell the spoke (a few times), and cut a connection
        that keeps sending garbage (``max_invalid_frames``)."""
        if code == control.INVALID_FRAME:
            self.stats.invalid_frames += 1
        else:
            self.stats.invalid_control += 1
        conn.invalid_frames += 1
        if conn.invalid_frames <= MAX_COMPLAINTS:
            self._send_control(conn, control.error(code, reason[:200]))
        limit = self.max_invalid_frames
        if limit is not None and conn.invalid_frames > limit:
            self._cut(conn, CloseCode.POLICY_VIOLATION, f"more than {limit} invalid frames")

    def _is_foreign_direct(self, conn: HubConnection, topic: str) -> bool:
        type_, _, id_ = topic.partition(":")
        return type_ == DIRECT_TYPE and id_ != conn.spoke_id

    # -- applying decisions -------------------------------------------------------

    def subscribe(self, conn: HubConnection, topic: str) -> None:
        if conn.state is not _OPEN or topic in conn.topics:
            return
        conn.topics.add(topic)
        conn.topic_bytes += _utf8_size(topic)
        subscribers = self.subscriptions.setdefault(topic, {})
        if not subscribers and self.bridged and topic not in self.registry:
            self._interest(topic, True)  # H6
        subscribers[conn] = None

    def unsubscribe(self, conn: HubConnection, topic: str) -> None:
        if topic in conn.topics:
            conn.topics.discard(topic)
            conn.topic_bytes -= _utf8_size(topic)
            self._drop_subscriber(topic, conn)

    def refuse(self, conn: HubConnection, action: Action, topic: str, message: str = "") -> None:
        """Answer a refused subscribe/publish with ``__error`` ``forbidden`` (B12)."""
        self.stats.refused += 1
        text = message or f"{action} refused for topic {topic!r}"
        self._send_control(conn, control.error(control.FORBIDDEN, text, topic))

    def apply(self, conn: HubConnection, request: SubscribeRequest | PublishRequest) -> None:
        """Carry out an authorized request."""
        if isinstance(request, SubscribeRequest):
            self.subscribe(conn, request.topic)
            if request.since is not None and conn.state is _OPEN:
                self._recover(conn, request.topic, request.since)
            return
        try:
            frame = self.publish(request.envelope)
        except FrameTooLargeError as exc:
            # Under the limit as received, above it as re-encoded (1E2 -> 100.0).
            self.stats.invalid_frames += 1
            self._cut(conn, CloseCode.MESSAGE_TOO_BIG, str(exc))
            return
        except InvalidEnvelopeError as exc:  # e.g. a lone surrogate in a string
            self._bad_input(conn, control.INVALID_FRAME, str(exc))
            return
        self.stats.relayed_events += 1
        if self.bridged:  # H6: what enters the hub goes to the bridge once
            self._outbound.append(frame)
            self.bridge_work = True

    def dispatch(self, event: Event) -> bool:
        """The hub's own ``dispatch_event`` (H1)."""
        if self.closed:
            raise TargetClosedError("hub is closed")
        check_user_event(event)
        frame = self._fan_out(event.type, event.detail)
        # Local listeners get the JSON-normalised payload every spoke gets
        # (same payload semantics on every target; decoded only if listened).
        if self.registry.count(event.type):
            event = Event.from_envelope(decode_envelope(frame))
        self.registry.dispatch(event)
        if self.bridged:  # H6
            self._outbound.append(frame)
            self.bridge_work = True
        return True

    def publish(self, envelope: EventEnvelope) -> bytes:
        """Relay an envelope that entered the hub from a spoke or a bridge (H2);
        returns it encoded."""
        frame = self._fan_out(envelope.topic, envelope)
        self.registry.dispatch(Event.from_envelope(envelope))
        return frame

    def _fan_out(self, topic: str, envelope: EventEnvelope) -> bytes:
        # H3: encoded once per dispatch; also enforces E6 when nobody listens.
        frame = encode_envelope(envelope, self.max_frame_bytes)
        if self.history is not None:
            self.history.record(topic, frame)
        subscribers = self.subscriptions.get(topic)
        if not subscribers:
            return frame
        limit = self.max_buffered_bytes
        detached_limit = limit // 2
        ready = self.ready
        for conn in subscribers:
            state = conn.state
            if state is not _OPEN and state is not _DETACHED:
                if state is _CLOSING:  # cut off during this fan-out or an earlier one
                    self._keep_for_resume(conn, frame)
                continue
            queue = conn.queue
            if queue.push(frame) and state is _OPEN:
                ready.append(conn)
            # B8: the one place where a connection is found too slow.
            if queue.nbytes + conn.held > (limit if state is _OPEN else detached_limit):
                self._over_limit(conn)
        return frame

    def _keep_for_resume(self, conn: HubConnection, frame: bytes) -> None:
        """An event for a connection whose link is being closed: a session that
        survives the cut (B8, heartbeat) keeps it for its resume, within
        ``max_buffered_bytes`` (past it the resume reports a gap)."""
        if conn.token is None or conn.close_code not in _SESSION_SURVIVES:
            return
        if conn.queue.nbytes + conn.held + len(frame) <= self.max_buffered_bytes:
            conn.queue.push(frame)  # not ready: only the __close is written
        elif not conn.gap:
            conn.gap = True
            self.stats.session_gaps += 1

    def _over_limit(self, conn: HubConnection) -> None:
        if conn.state is _DETACHED:
            self._trim_detached(conn)
        elif conn.state is _OPEN:
            self.stats.backpressure_disconnects += 1
            self._cut(conn, CloseCode.TRY_AGAIN_LATER, "slow consumer: too much buffered")

    def _trim_detached(self, conn: HubConnection) -> None:
        """A detached session over its budget (half of ``max_buffered_bytes``, so
        that a resumed link has room for live events while it catches up, and
        is not cut at once as a slow consumer) drops its oldest events: first
        what its last link never confirmed, then queued ones, and will tell its
        spoke about the gap on resume."""
        if not conn.gap:
            conn.gap = True
            self.stats.session_gaps += 1
        if conn.sent is not None and len(conn.sent):
            conn.sent.lose()
            self._hold(conn)
        queue = conn.queue
        while queue and queue.nbytes + conn.held > self.max_buffered_bytes // 4:
            queue.take(1)

    def close_connection(self, conn: HubConnection, code: CloseCode | int, reason: str) -> None:
        """Cut ``conn`` off with ``code`` (``disconnect_peer``, hub shutdown);
        a detached session is simply forgotten."""
        if conn.state is _OPEN:
            self._cut(conn, code, reason)
        elif conn.state is _DETACHED:
            self.disconnect(conn)

    def _cut(self, conn: HubConnection, code: CloseCode | int, reason: str) -> None:
        """Stop serving ``conn`` and ask the shell to close its link."""
        conn.state = ConnectionState.CLOSING
        conn.close_code = code
        conn.close_reason = reason
        conn.buffered_at_cut = conn.buffered_bytes
        # Only the announcement of the close is written, at the head of the
        # queue, so that links without close codes tell the reason too; a
        # session that survives keeps its queued data for a resume, anything
        # else is dropped.
        kept = conn.queue.data() if conn.token is not None and code in _SESSION_SURVIVES else []
        conn.queue.clear()
        conn.queue.push(ControlFrame(encode_envelope(control.close(code, reason))))
        for frame in kept:
            conn.queue.push(frame)
        self.cuts.append(conn)

    def take_announcement(self, conn: HubConnection) -> list[bytes]:
        """The ``__close`` frame of a connection the router cut off."""
        queue = conn.queue
        return queue.take(1) if queue and type(queue.peek()) is not bytes else []

    # -- time -----------------------------------------------------------------------

    def tick(self) -> list[HubConnection]:
        """One ``tick_interval`` passed: cut spokes whose heartbeat stopped,
        expire sessions whose grace ran out, keep detached sessions in budget.
        Returns the sessions that ended (their spokes are gone for good)."""
        expired: list[HubConnection] = []
        if self.history is not None:
            self.history.advance()
        for conn in list(self.connections.values()):
            state = conn.state
            if state is _OPEN and conn.heartbeat_ticks is not None:
                if conn.frames_received == conn.last_frames_received:
                    conn.silent_ticks += 1
                    if conn.silent_ticks >= conn.heartbeat_ticks:
                        self.stats.heartbeat_timeouts += 1
                        self._cut(conn, CloseCode.HEARTBEAT_TIMEOUT, "heartbeat missed")
                else:
                    conn.silent_ticks = 0
                conn.last_frames_received = conn.frames_received
            elif state is _DETACHED:
                conn.expires_in -= 1
                if conn.expires_in <= 0:
                    self.stats.sessions_expired += 1
                    self.disconnect(conn)
                    expired.append(conn)
        total = sum(conn.buffered_bytes for conn in self._detached)
        while total > self.max_detached_bytes and self._detached:
            oldest = next(iter(self._detached))
            total -= oldest.buffered_bytes
            self.stats.sessions_expired += 1
            self.disconnect(oldest)
            expired.append(oldest)
        return expired

    # -- what the shell pulls ------------------------------------------------------

    def take_ready(self) -> list[HubConnection]:
        """Connections whose queue became non-empty since the last call."""
        ready, self.ready = self.ready, []
        return ready

    def take_cuts(self) -> list[HubConnection]:
        """Connections the router cut off since the last call (close with
        ``conn.close_code``)."""
        cuts, self.cuts = self.cuts, []
        return cuts

    def take_outgoing(self, conn: HubConnection, max_bytes: int | None = None) -> list[bytes]:
        if conn.state is _CLOSING:
            # Only the __close goes out on a link being closed; data queued
            # behind it waits for a resume (a session that survives the cut).
            return self.take_announcement(conn)
        frames = conn.queue.take(max_bytes)
        sent = conn.sent
        if sent is not None and conn.state is _OPEN and sent.intact:
            sent.record(frames)
            if sent.nbytes > self.max_unconfirmed_bytes:
                sent.lose()  # a spoke that does not ack pins no memory
        return frames

    def report_transport_buffered(self, conn: HubConnection, nbytes: int) -> None:
        """The shell tells how much still sits in the socket; may trigger B8."""
        conn.socket_buffered = nbytes
        self._hold(conn)
        if conn.state is _OPEN and conn.queue.nbytes + conn.held > self.max_buffered_bytes:
            self._over_limit(conn)

    def close(self) -> None:
        self.closed = True
        for conn in list(self.connections.values()):
            self.disconnect(conn)
        self.registry.clear()

    # -- internals -----------------------------------------------------------------

    @staticmethod
    def _hold(conn: HubConnection) -> None:
        sent = conn.sent
        detached = conn.state is _DETACHED and sent is not None
        conn.held = sent.nbytes if detached and sent is not None else conn.socket_buffered

    def _drop_subscriber(self, topic: str, conn: HubConnection) -> None:
        subscribers = self.subscriptions.get(topic)
        if subscribers is not None:
            subscribers.pop(conn, None)
            if not subscribers:
                del self.subscriptions[topic]
                if self.bridged and topic not in self.registry:
                    self._interest(topic, False)  # H6

    def _send_control(self, conn: HubConnection, envelope: EventEnvelope) -> None:
        if conn.state is not _OPEN:
            return
        if conn.queue.push(ControlFrame(encode_envelope(envelope, self.max_frame_bytes))):
            self.ready.append(conn)

    # -- bridge (SPEC H6): pulled by transports/bridge.HubBridge -----------------------

    def add_listener(self, topic: str, listener: Listener | None) -> None:
        """A local listener of the hub (H1); counts toward the bridge's interest."""
        if self.registry.add(topic, listener) and self.bridged and topic not in self.subscriptions:
            self._interest(topic, True)

    def remove_listener(self, topic: str, listener: Listener | None) -> None:
        if (
            self.registry.remove(topic, listener)
            and self.bridged
            and topic not in self.subscriptions
        ):
            self._interest(topic, False)

    def take_interest_changes(self) -> dict[str, bool]:
        """Topics whose union interest (connections + local listeners) went
        0 -> 1 (True) or 1 -> 0 (False) since the last call; the latest state only."""
        changes, self._interest_changes = self._interest_changes, {}
        return changes

    def take_outbound(self) -> list[bytes]:
        """Envelopes that entered the hub (from a spoke or ``dispatch``), for the
        bridge: encoded, as every connection got them (H3)."""
        outbound, self._outbound = self._outbound, []
        return outbound

    def take_held_pongs(self) -> list[tuple[HubConnection, str]]:
        """``__ping`` nonces held until the bridge confirmed what came before."""
        pongs, self._held_pongs = self._held_pongs, []
        return pongs

    def send_pong(self, conn: HubConnection, nonce: str) -> None:
        self._pong(conn, nonce)

    def _interest(self, topic: str, wanted: bool) -> None:
        self._interest_changes[topic] = wanted
        self.bridge_work = True


def _utf8_size(topic: str) -> int:
    """What a topic weighs against the budgets: its UTF-8 size, never less
    than what CPython stores for it."""
    return len(topic.encode("utf-8", "surrogatepass"))
