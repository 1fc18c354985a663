"""Hub-side state: who is subscribed to what, and where each envelope goes.

Sans-I/O. The shell registers connections, feeds them received messages,
performs authorization where the router asks for it (``SubscribeRequest``,
``PublishRequest``) and pulls the router's decisions: ``take_ready()`` lists
the connections whose queue became non-empty (to be written with
``take_outgoing``), ``take_cuts()`` those that must be closed, with the code in
``conn.close_code`` (SPEC B8, B12, C1, C2, H1-H3).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Literal

from . import control
from .close import CloseCode
from .codec import DEFAULT_MAX_FRAME_BYTES, decode_envelope, encode_envelope
from .envelope import Event, EventEnvelope, check_user_event
from .errors import DecodeError, TargetClosedError
from .listeners import Listener, ListenerErrorHandler, ListenerRegistry, Scheduler
from .queue import ControlFrame, FrameQueue

__all__ = [
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_TOPICS_PER_CONNECTION",
    "ConnectionState",
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


#: Header values that never appear in a repr or a log line.
SECRET_HEADERS: Final = frozenset({"authorization", "cookie", "proxy-authorization"})


@dataclass(frozen=True)
class Peer:
    """What a hub knows about a connected spoke; passed to ``authorize`` (B12)."""

    spoke_id: str
    transport: str
    remote_address: str | None = None
    path: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
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


class ConnectionState(Enum):
    OPEN = "open"
    CLOSING = "closing"  # cut off by the router; the shell closes the link
    GONE = "gone"  # disconnected: nothing is queued or relayed for it any more


_OPEN: Final = ConnectionState.OPEN


class HubConnection:
    """One spoke as the router sees it."""

    __slots__ = (
        "buffered_at_cut",
        "close_code",
        "close_reason",
        "peer",
        "queue",
        "said_hello",
        "state",
        "topics",
        "transport_buffered",
    )

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.topics: set[str] = set()
        self.queue = FrameQueue()
        # Bytes the shell reports as still sitting in the socket/stream buffers.
        self.transport_buffered = 0
        self.state = ConnectionState.OPEN
        self.close_code: CloseCode | int | None = None
        self.close_reason = ""
        #: What was buffered for it when the router cut it off (for on_backpressure).
        self.buffered_at_cut = 0
        self.said_hello = False

    @property
    def spoke_id(self) -> str:
        return self.peer.spoke_id

    @property
    def open(self) -> bool:
        return self.state is ConnectionState.OPEN

    @property
    def buffered_bytes(self) -> int:
        return self.queue.nbytes + self.transport_buffered

    def __repr__(self) -> str:
        return f"<HubConnection {self.peer.spoke_id} {self.state.value} topics={len(self.topics)}>"


class HubRouter:
    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        max_topics_per_connection: int = DEFAULT_MAX_TOPICS_PER_CONNECTION,
        on_listener_error: ListenerErrorHandler | None = None,
        schedule: Scheduler | None = None,
    ) -> None:
        self.registry = ListenerRegistry(on_listener_error=on_listener_error, schedule=schedule)
        self.stats = HubStats()
        self.max_frame_bytes = max_frame_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.max_topics_per_connection = max_topics_per_connection
        self.connections: dict[str, HubConnection] = {}
        # E2: keyed by the full topic. Dict values keep insertion order.
        self.subscriptions: dict[str, dict[HubConnection, None]] = {}
        #: Connections whose queue became non-empty: the shell writes them.
        self.ready: list[HubConnection] = []
        #: Connections the router cut off (B8): the shell closes their links.
        self.cuts: list[HubConnection] = []
        self.closed = False
        # -- bridge (SPEC H6): state pulled by transports/bridge.HubBridge ----------
        #: Set by a bridge: track interest, hold pongs, keep what enters the hub.
        self.bridged = False
        #: Set when a take_* list of the bridge gets something; the bridge clears it.
        self.bridge_work = False
        self._interest_changes: dict[str, bool] = {}
        self._outbound: list[EventEnvelope] = []
        self._held_pongs: list[tuple[HubConnection, str]] = []

    # -- connections -----------------------------------------------------------

    def new_spoke_id(self) -> str:
        """A fresh, unguessable spoke id (``direct:<id>`` must not be enumerable)."""
        while True:
            spoke_id = secrets.token_urlsafe(12)
            if spoke_id not in self.connections:
                return spoke_id

    def connect(self, peer: Peer) -> HubConnection:
        """Register a connection and queue its ``__welcome``."""
        if self.closed:
            raise TargetClosedError("hub is closed")
        if peer.spoke_id in self.connections:
            raise ValueError(f"spoke id {peer.spoke_id!r} is already connected")
        conn = HubConnection(peer)
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
        conn.state = ConnectionState.GONE
        return True

    # -- receiving ----------------------------------------------------------------

    def receive(
        self, conn: HubConnection, message: bytes | str
    ) -> SubscribeRequest | PublishRequest | None:
        """Handle one message; returns what needs authorization, if anything."""
        if conn.state is not ConnectionState.OPEN:
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
            if self.bridged:  # H6: answered once the bridge confirmed what came before
                self._held_pongs.append((conn, envelope.id))
                self.bridge_work = True
            else:
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
        if conn.state is not ConnectionState.OPEN or topic in conn.topics:
            return
        conn.topics.add(topic)
        subscribers = self.subscriptions.setdefault(topic, {})
        if not subscribers and self.bridged and topic not in self.registry:
            self._interest(topic, True)  # H6
        subscribers[conn] = None

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
            if self.bridged:  # H6: what enters the hub goes to the bridge once
                self._outbound.append(request.envelope)
                self.bridge_work = True

    def dispatch(self, event: Event) -> bool:
        """The hub's own ``dispatch_event`` (H1)."""
        if self.closed:
            raise TargetClosedError("hub is closed")
        check_user_event(event)
        self._fan_out(event.type, event.detail)
        self.registry.dispatch(event)
        if self.bridged:  # H6
            self._outbound.append(event.detail)
            self.bridge_work = True
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
        limit = self.max_buffered_bytes
        ready = self.ready
        for conn in subscribers:
            if conn.state is not _OPEN:
                continue  # cut off during this fan-out or an earlier one
            queue = conn.queue
            if queue.push(frame):
                ready.append(conn)
            # B8: the one place where a connection is found too slow.
            if queue.nbytes + conn.transport_buffered > limit:
                self._cut_slow(conn)

    def close_connection(self, conn: HubConnection, code: CloseCode | int, reason: str) -> None:
        """Cut ``conn`` off with ``code`` (``disconnect_peer``, hub shutdown)."""
        if conn.state is ConnectionState.OPEN:
            self._cut(conn, code, reason)

    def _cut_slow(self, conn: HubConnection) -> None:
        if conn.state is not ConnectionState.OPEN:
            return
        self.stats.backpressure_disconnects += 1
        self._cut(conn, CloseCode.TRY_AGAIN_LATER, "slow consumer: too much buffered")

    def _cut(self, conn: HubConnection, code: CloseCode | int, reason: str) -> None:
        """Stop serving ``conn`` and ask the shell to close its link."""
        conn.state = ConnectionState.CLOSING
        conn.close_code = code
        conn.close_reason = reason
        conn.buffered_at_cut = conn.buffered_bytes
        # What was queued is dropped; only the announcement of the close is
        # written, so that links without close codes tell the reason too.
        conn.queue.clear()
        conn.queue.push(ControlFrame(encode_envelope(control.close(code, reason))))
        self.cuts.append(conn)

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
        return conn.queue.take(max_bytes)

    def report_transport_buffered(self, conn: HubConnection, nbytes: int) -> None:
        """The shell tells how much still sits in the socket; may trigger B8."""
        conn.transport_buffered = nbytes
        if conn.queue.nbytes + nbytes > self.max_buffered_bytes:
            self._cut_slow(conn)

    def close(self) -> None:
        self.closed = True
        for conn in list(self.connections.values()):
            self.disconnect(conn)
        self.registry.clear()

    # -- internals -----------------------------------------------------------------

    def _drop_subscriber(self, topic: str, conn: HubConnection) -> None:
        subscribers = self.subscriptions.get(topic)
        if subscribers is not None:
            subscribers.pop(conn, None)
            if not subscribers:
                del self.subscriptions[topic]
                if self.bridged and topic not in self.registry:
                    self._interest(topic, False)  # H6

    def _send_control(self, conn: HubConnection, envelope: EventEnvelope) -> None:
        if conn.state is not ConnectionState.OPEN:
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

    def take_outbound(self) -> list[EventEnvelope]:
        """Envelopes that entered the hub (from a spoke or ``dispatch``), for the bridge."""
        outbound, self._outbound = self._outbound, []
        return outbound

    def take_held_pongs(self) -> list[tuple[HubConnection, str]]:
        """``__ping`` nonces held until the bridge confirmed what came before."""
        pongs, self._held_pongs = self._held_pongs, []
        return pongs

    def send_pong(self, conn: HubConnection, nonce: str) -> None:
        self._send_control(conn, control.pong(nonce))

    def _interest(self, topic: str, wanted: bool) -> None:
        self._interest_changes[topic] = wanted
        self.bridge_work = True
