"""Hub-side state: who is subscribed to what, and where each envelope goes.

Sans-I/O. The shell registers a connection with two hooks (``wake`` when its
queue becomes non-empty, and the router's ``on_overflow`` when it must be cut
off), feeds it received messages, performs authorization where the router asks
for it, and writes whatever ``take_outgoing`` returns (SPEC B8, B12, C1, C2, H1-H3).
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from . import control
from .codec import DEFAULT_MAX_FRAME_BYTES, decode_envelope, encode_envelope
from .envelope import Event, EventEnvelope, check_user_event
from .errors import DecodeError, TargetClosedError
from .listeners import ListenerErrorHandler, ListenerRegistry, Scheduler

__all__ = [
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_TOPICS_PER_CONNECTION",
    "HubConnection",
    "HubRouter",
    "HubStats",
    "Peer",
    "PublishRequest",
    "SubscribeRequest",
]

DEFAULT_MAX_BUFFERED_BYTES: Final = 1024 * 1024
DEFAULT_MAX_TOPICS_PER_CONNECTION: Final = 10_000
DIRECT_TYPE: Final = "direct"

Action = Literal["subscribe", "publish"]


@dataclass(frozen=True)
class Peer:
    """What a hub knows about a connected spoke; passed to ``authorize`` (B12)."""

    spoke_id: str
    transport: str
    remote_address: str | None = None
    path: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    endpoint_id: str | None = None


@dataclass(frozen=True)
class SubscribeRequest:
    """A valid ``__subscribe`` that needs ``authorize(peer, "subscribe", topic)``."""

    topic: str
    action: Action = "subscribe"


@dataclass(frozen=True)
class PublishRequest:
    """A data envelope from a spoke that needs ``authorize(peer, "publish", topic)``."""

    envelope: EventEnvelope
    action: Action = "publish"

    @property
    def topic(self) -> str:
        return self.envelope.topic


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


class HubConnection:
    """One spoke as the router sees it."""

    __slots__ = (
        "closing",
        "peer",
        "queue",
        "queued_bytes",
        "said_hello",
        "topics",
        "transport_buffered",
        "wake",
    )

    def __init__(self, peer: Peer, wake: Callable[[], None]) -> None:
        self.peer = peer
        self.wake = wake
        self.topics: set[str] = set()
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        # Bytes the shell reports as still sitting in the socket/stream buffers.
        self.transport_buffered = 0
        self.closing = False
        self.said_hello = False

    @property
    def spoke_id(self) -> str:
        return self.peer.spoke_id

    @property
    def buffered_bytes(self) -> int:
        return self.queued_bytes + self.transport_buffered

    def __repr__(self) -> str:
        return f"<HubConnection {self.peer.spoke_id} topics={len(self.topics)}>"


class HubRouter:
    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        max_topics_per_connection: int = DEFAULT_MAX_TOPICS_PER_CONNECTION,
        on_overflow: Callable[[HubConnection], None] | None = None,
        on_listener_error: ListenerErrorHandler | None = None,
        schedule: Scheduler | None = None,
    ) -> None:
        self.registry = ListenerRegistry(on_listener_error=on_listener_error, schedule=schedule)
        self.stats = HubStats()
        self.max_frame_bytes = max_frame_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.max_topics_per_connection = max_topics_per_connection
        self.on_overflow: Callable[[HubConnection], None] = on_overflow or _ignore_conn
        self.connections: dict[str, HubConnection] = {}
        # E2: keyed by the full topic. Dict values keep insertion order.
        self.subscriptions: dict[str, dict[HubConnection, None]] = {}
        self._ids = itertools.count(1)
        self._id_salt = secrets.token_hex(4)
        self.closed = False

    # -- connections -----------------------------------------------------------

    def new_spoke_id(self) -> str:
        return f"{self._id_salt}-{next(self._ids)}"

    def connect(self, peer: Peer, wake: Callable[[], None]) -> HubConnection:
        """Register a connection and queue its ``__welcome``."""
        if self.closed:
            raise TargetClosedError("hub is closed")
        if peer.spoke_id in self.connections:
            raise ValueError(f"spoke id {peer.spoke_id!r} is already connected")
        conn = HubConnection(peer, wake)
        self.connections[peer.spoke_id] = conn
        self.stats.connections += 1
        self._send_control(conn, control.welcome(peer.spoke_id))
        return conn

    def disconnect(self, conn: HubConnection) -> bool:
        """Forget a connection; False when it was already gone (idempotent)."""
        if self.connections.get(conn.spoke_id) is not conn:
            return False
        del self.connections[conn.spoke_id]
        for topic in conn.topics:
            self._drop_subscriber(topic, conn)
        conn.topics.clear()
        conn.queue.clear()
        conn.queued_bytes = 0
        conn.closing = True
        return True

    # -- receiving ----------------------------------------------------------------

    def receive(
        self, conn: HubConnection, message: bytes | str
    ) -> SubscribeRequest | PublishRequest | None:
        """Handle one message; returns what needs authorization, if anything."""
        if conn.closing:
            return None
        self.stats.received_frames += 1
        try:
            envelope = decode_envelope(message)
        except DecodeError:
            self.stats.invalid_frames += 1
            return None
        if not envelope.is_control:
            return PublishRequest(envelope)
        kind = envelope.type
        if kind == control.SUBSCRIBE:
            topic = control.subscription_topic(envelope)
            if topic is None:
                self.stats.invalid_control += 1  # C1
                return None
            if topic in conn.topics:
                return None
            if self._is_foreign_direct(conn, topic):
                self.refuse(conn, "subscribe", topic, "direct topics belong to their spoke")
                return None
            if len(conn.topics) >= self.max_topics_per_connection:
                self.stats.refused += 1
                self._send_control(
                    conn,
                    control.error(
                        control.TOO_MANY_TOPICS,
                        f"at most {self.max_topics_per_connection} topics per connection",
                        topic,
                    ),
                )
                return None
            return SubscribeRequest(topic)
        if kind == control.UNSUBSCRIBE:
            topic = control.subscription_topic(envelope)
            if topic is None:
                self.stats.invalid_control += 1
            else:
                self.unsubscribe(conn, topic)
        elif kind == control.PING:
            self._send_control(conn, control.pong(envelope.id))
        elif kind == control.HELLO:
            conn.said_hello = True
        elif kind == control.PONG:
            pass
        else:
            self.stats.unknown_control += 1  # C2
        return None

    def _is_foreign_direct(self, conn: HubConnection, topic: str) -> bool:
        type_, _, id_ = topic.partition(":")
        return type_ == DIRECT_TYPE and id_ != conn.spoke_id

    # -- applying decisions -------------------------------------------------------

    def subscribe(self, conn: HubConnection, topic: str) -> None:
        if conn.closing or topic in conn.topics:
            return
        conn.topics.add(topic)
        self.subscriptions.setdefault(topic, {})[conn] = None

    def unsubscribe(self, conn: HubConnection, topic: str) -> None:
        if topic in conn.topics:
            conn.topics.discard(topic)
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
        else:
            self.stats.relayed_events += 1
            self.publish(request.envelope)

    def dispatch(self, event: Event) -> bool:
        """The hub's own ``dispatch_event`` (H1)."""
        if self.closed:
            raise TargetClosedError("hub is closed")
        check_user_event(event)
        self._fan_out(event.type, event.detail)
        self.registry.dispatch(event)
        return True

    def publish(self, envelope: EventEnvelope) -> None:
        """Relay an envelope that entered the hub from a spoke or a bridge (H2)."""
        self._fan_out(envelope.topic, envelope)
        self.registry.dispatch(Event.from_envelope(envelope))

    def _fan_out(self, topic: str, envelope: EventEnvelope) -> None:
        # H3: encoded once per dispatch; also enforces E6 when nobody listens.
        frame = encode_envelope(envelope, self.max_frame_bytes)
        subscribers = self.subscriptions.get(topic)
        if not subscribers:
            return
        size = len(frame)
        limit = self.max_buffered_bytes
        for conn in list(subscribers):
            if conn.closing:
                continue
            queue = conn.queue
            queue.append(frame)
            conn.queued_bytes += size
            if conn.queued_bytes + conn.transport_buffered > limit:
                self._overflow(conn)
            elif len(queue) == 1:
                conn.wake()

    def _overflow(self, conn: HubConnection) -> None:
        self.stats.backpressure_disconnects += 1
        conn.closing = True
        self.on_overflow(conn)

    # -- writing -------------------------------------------------------------------

    def take_outgoing(self, conn: HubConnection, max_bytes: int | None = None) -> list[bytes]:
        queue = conn.queue
        if max_bytes is None or conn.queued_bytes <= max_bytes:
            frames = list(queue)
            queue.clear()
            conn.queued_bytes = 0
            return frames
        frames = []
        taken = 0
        while queue and (not frames or taken + len(queue[0]) <= max_bytes):
            frame = queue.popleft()
            frames.append(frame)
            taken += len(frame)
        conn.queued_bytes -= taken
        return frames

    def report_transport_buffered(self, conn: HubConnection, nbytes: int) -> None:
        """The shell tells how much still sits in the socket; may trigger B8."""
        conn.transport_buffered = nbytes
        if not conn.closing and conn.buffered_bytes > self.max_buffered_bytes:
            self._overflow(conn)

    def close(self) -> None:
        self.closed = True
        for conn in list(self.connections.values()):
            self.disconnect(conn)
        self.registry.clear()
        self.registry.cancel_pending()

    # -- internals -----------------------------------------------------------------

    def _drop_subscriber(self, topic: str, conn: HubConnection) -> None:
        subscribers = self.subscriptions.get(topic)
        if subscribers is not None:
            subscribers.pop(conn, None)
            if not subscribers:
                del self.subscriptions[topic]

    def _send_control(self, conn: HubConnection, envelope: EventEnvelope) -> None:
        if conn.closing:
            return
        frame = encode_envelope(envelope, self.max_frame_bytes)
        conn.queue.append(frame)
        conn.queued_bytes += len(frame)
        if len(conn.queue) == 1:
            conn.wake()


def _ignore_conn(_: HubConnection) -> None:
    return None
