"""Sans-I/O logic of a point-to-point channel between two symmetric targets
(the worker transport): no hub, the same protocol in both directions.

Each side is a ``PeerSession``. Towards its peer it is a spoke: the
``SubscriptionForwarder`` refcounts its own listeners' topics into
``__subscribe``/``__unsubscribe`` (B6), keeps the outgoing queue (B13) and the
outbox of events dispatched before the channel is up, and answers ``__ping``.
From its peer it is a hub: it records which topics the peer subscribed to, and
``dispatch`` queues an event for the peer only if the peer listens to its topic.

So on a bus of two sides, ``dispatch`` on side A reaches A's own listeners
(locally, once) and B's listeners (through the channel, only when B subscribed
to the topic): SPEC B1 and B2 without a hub.

The peer's interest is known once it declared that it speaks subscriptions
(its ``__hello``, or a first ``__subscribe``/``__unsubscribe``). Before that
(the channel is not up yet, or the peer is a bare program that only sends data,
C2) every event is sent, and the receiving side drops those nobody listens to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from . import control
from .codec import DEFAULT_MAX_FRAME_BYTES, decode_envelope, encode_envelope
from .envelope import CONTROL_PREFIX, Event, EventEnvelope, check_user_event
from .errors import DecodeError
from .forwarder import (
    DEFAULT_MAX_OUTGOING_BYTES,
    DEFAULT_OUTBOX_LIMIT,
    Closing,
    ForwarderStats,
    HubError,
    Pong,
    SpokeState,
    SubscriptionForwarder,
)
from .listeners import Listener, ListenerErrorHandler, ListenerRegistry, Scheduler
from .queue import ControlFrame

__all__ = [
    "DEFAULT_MAX_PEER_TOPICS",
    "PeerEvent",
    "PeerSession",
    "PeerStats",
]

DEFAULT_MAX_PEER_TOPICS: Final = 10_000

#: What ``receive`` hands back to the shell (``Welcome`` means nothing between peers).
PeerEvent = Pong | HubError | Closing


@dataclass
class PeerStats(ForwarderStats):
    """A side's counters: the forwarder's, plus what the peer's interest saved."""

    #: Dispatches delivered locally only: the peer did not listen to their topic.
    filtered_events: int = 0
    #: ``__subscribe``/``__unsubscribe`` frames with no valid topic (C1), or
    #: beyond ``max_peer_topics``.
    invalid_subscriptions: int = 0


class PeerSession:
    """One side of a peer channel. The shell drives the life cycle
    (``connection_made()``, ``close()``), feeds ``receive()`` and pulls
    ``take_outgoing()`` whenever ``wants_write`` is raised (then clears it with
    ``clear_wants_write()``)."""

    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_outgoing_bytes: int = DEFAULT_MAX_OUTGOING_BYTES,
        outbox_limit: int = DEFAULT_OUTBOX_LIMIT,
        max_peer_topics: int = DEFAULT_MAX_PEER_TOPICS,
        on_listener_error: ListenerErrorHandler | None = None,
        schedule: Scheduler | None = None,
    ) -> None:
        if max_peer_topics <= 0:
            raise ValueError("max_peer_topics must be positive")
        self.forwarder = SubscriptionForwarder(
            max_frame_bytes=max_frame_bytes,
            max_outgoing_bytes=max_outgoing_bytes,
            outbox_limit=outbox_limit,
            on_listener_error=on_listener_error,
            schedule=schedule,
            # Two equal ends: nobody welcomes anybody, so the forwarder opens at
            # once, without a session; our own hello goes first (connection_made).
            send_hello=False,
            session=False,
        )
        self.stats = PeerStats()
        self.forwarder.stats = self.stats  # one set of counters for the side
        self._registry = self.forwarder.registry
        self.max_peer_topics = max_peer_topics
        #: Topics the peer has at least one listener for (its refcounted subscriptions).
        self.peer_topics: set[str] = set()
        #: The protocol version of the peer's ``__hello`` (None until it arrived).
        self.peer_protocol: int | None = None
        #: The peer said it speaks subscriptions: from now on, filter by its interest.
        self.peer_declared = False
        # Our own control frames that are not the forwarder's (``__error``);
        # they go out ahead of the forwarder's queue.
        self._control: list[bytes] = []

    # -- state ---------------------------------------------------------------------

    @property
    def registry(self) -> ListenerRegistry:
        return self._registry

    @property
    def state(self) -> SpokeState:
        return self.forwarder.state

    @property
    def max_frame_bytes(self) -> int:
        return self.forwarder.max_frame_bytes

    @property
    def wants_write(self) -> bool:
        return self.forwarder.wants_write or bool(self._control)

    def clear_wants_write(self) -> None:
        self.forwarder.wants_write = False

    def drained(self) -> bool:
        return self.forwarder.drained()

    @property
    def queued_bytes(self) -> int:
        return self.forwarder.queued_bytes

    def has_output(self) -> bool:
        return bool(self._control) or self.forwarder.has_output()

    # -- user-facing operations ----------------------------------------------------

    def add_listener(self, topic: str, listener: Listener | None) -> None:
        self.forwarder.add_listener(topic, listener)

    def remove_listener(self, topic: str, listener: Listener | None) -> None:
        self.forwarder.remove_listener(topic, listener)

    def dispatch(self, event: Event) -> bool:
        """Queue ``event`` for the peer if it listens to the topic (or while its
        interest is not known), then call the local listeners once.

        Raises ``TargetClosedError`` once closed and ``BackpressureError`` when
        the queue is full; then nothing was delivered, locally or remotely, so a
        publisher that drains and retries delivers the event exactly once.
        """
        forwarder = self.forwarder
        if (
            self.peer_declared
            and event.type not in self.peer_topics
            and forwarder.state is SpokeState.OPEN
        ):
            # The same checks as a sent event (E3, E4, E6), so that behaviour
            # does not depend on who listens.
            check_user_event(event)
            encode_envelope(event.detail, forwarder.max_frame_bytes)
            self.stats.filtered_events += 1
        else:
            forwarder.dispatch(event)  # raises TargetClosedError when closed
        self._registry.dispatch(event)
        return True

    def new_ping(self) -> str | None:
        """Queue a ``__ping`` (B4); its ``__pong`` proves the peer processed
        everything sent before it. None while the channel is not up."""
        return self.forwarder.new_ping()

    # -- life cycle ------------------------------------------------------------------

    def connection_made(self) -> None:
        """The channel is up: ``__hello``, one ``__subscribe`` per live topic, then
        the outbox."""
        self.forwarder.connection_made()
        self._control.insert(0, ControlFrame(encode_envelope(control.hello())))

    def close(self) -> None:
        """Final: drops the queue and every listener; ``dispatch`` raises from now on."""
        self.forwarder.close()
        self._control.clear()
        self.peer_topics.clear()

    def take_outgoing(self, max_bytes: int | None = None) -> list[bytes]:
        """Remove and return frames to write (all, or about ``max_bytes`` worth)."""
        if self._control:
            frames, self._control = self._control, []
            return frames + self.forwarder.take_outgoing(max_bytes)
        return self.forwarder.take_outgoing(max_bytes)

    def close_frame(self, code: int, reason: str) -> bytes:
        """The encoded ``__close`` that a side writes last, before closing its end."""
        return ControlFrame(encode_envelope(control.close(code, reason)))

    # -- receiving -------------------------------------------------------------------

    def receive(self, message: bytes | str) -> PeerEvent | None:
        """Handle one received frame. Data goes to the local listeners; the peer's
        subscriptions update ``peer_topics``; what the shell must act on comes back
        (``Pong``, ``HubError`` for a peer's ``__error``, ``Closing``)."""
        forwarder = self.forwarder
        if forwarder.state is SpokeState.CLOSED:
            return None
        try:
            envelope = decode_envelope(message)
        except DecodeError:
            self.stats.invalid_frames += 1  # B10: dropped and counted
            return None
        kind = envelope.type
        if kind[:2] != CONTROL_PREFIX:
            self.stats.received_events += 1
            self._registry.dispatch(Event.from_envelope(envelope))
            return None
        if kind == control.SUBSCRIBE or kind == control.UNSUBSCRIBE:
            self.peer_declared = True
            self._peer_subscription(kind == control.SUBSCRIBE, control.subscription_topic(envelope))
            return None
        if kind == control.HELLO:
            payload = envelope.payload
            version = payload.get("protocol") if isinstance(payload, dict) else None
            self.peer_protocol = version if isinstance(version, int) else 0
            self.peer_declared = True
            return None
        # Ping, pong, error, close, unknown types (C2): the forwarder's rules.
        event = forwarder.receive(message)
        return None if event is None or not isinstance(event, Pong | HubError | Closing) else event

    def _peer_subscription(self, subscribe: bool, topic: str | None) -> None:
        if topic is None:
            self.stats.invalid_subscriptions += 1  # C1
        elif not subscribe:
            self.peer_topics.discard(topic)
        elif topic not in self.peer_topics:
            if len(self.peer_topics) >= self.max_peer_topics:
                self.stats.invalid_subscriptions += 1
                self._push_control(
                    control.error(
                        control.TOO_MANY_TOPICS,
                        f"at most {self.max_peer_topics} topics per channel",
                        topic,
                    )
                )
            else:
                self.peer_topics.add(topic)

    def _push_control(self, envelope: EventEnvelope) -> None:
        if self.forwarder.state is SpokeState.OPEN:
            self._control.append(ControlFrame(encode_envelope(envelope)))
