"""Spoke-side subscription forwarding, shared by every hub-and-spoke transport.

Sans-I/O: it turns listener changes and dispatches into encoded frames on an
outgoing queue, and received frames into listener calls. The transport shell
only moves the queued frames to its link and feeds received messages back
(SPEC B4, B6, B7, B13).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from . import control
from .codec import DEFAULT_MAX_FRAME_BYTES, decode_envelope, encode_envelope
from .envelope import CONTROL_PREFIX, Event, EventEnvelope, check_user_event, validate_topic
from .errors import BackpressureError, DecodeError, TargetClosedError
from .listeners import Listener, ListenerErrorHandler, ListenerRegistry, Scheduler

__all__ = [
    "DEFAULT_MAX_OUTGOING_BYTES",
    "DEFAULT_OUTBOX_LIMIT",
    "ForwarderStats",
    "SubscriptionForwarder",
]

DEFAULT_MAX_OUTGOING_BYTES: Final = 1024 * 1024
DEFAULT_OUTBOX_LIMIT: Final = 10_000


@dataclass
class ForwarderStats:
    """Counters a spoke exposes for observability."""

    sent_events: int = 0
    received_events: int = 0
    invalid_frames: int = 0
    unknown_control: int = 0
    hub_errors: int = 0


class SubscriptionForwarder:
    """Refcounted ``__subscribe``/``__unsubscribe`` forwarding plus the outgoing queue.

    Life cycle seen by the shell: ``connection_made()`` when a link is up (the
    queue is rebuilt as hello + one subscribe per live topic + the offline
    outbox), ``take_outgoing()`` from the writer, ``receive(message)`` from the
    reader, ``connection_lost()`` when the link dies.
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
        # (frame, is_data): control frames are regenerated after a reconnect,
        # data frames survive it as the offline outbox.
        self._queue: deque[tuple[bytes, bool]] = deque()
        self._queued_bytes = 0
        self._queued_data = 0
        self._ping_ids = itertools.count(1)
        self._pending_pings: set[str] = set()
        self.connected = False
        self.closed = False
        self.spoke_id: str | None = None
        # Hooks set by the shell (no I/O in here).
        self.on_output: Callable[[], None] = _noop
        self.on_pong: Callable[[str], None] = _noop_str
        self.on_hub_error: Callable[[EventEnvelope], None] = _noop_envelope

    # -- user-facing operations ---------------------------------------------

    def add_listener(self, topic: str, listener: Listener | None) -> None:
        if self.closed or listener is None:
            return
        validate_topic(topic)
        if self.registry.add(topic, listener) and self.connected:
            self._push_control(control.subscribe(topic))

    def remove_listener(self, topic: str, listener: Listener | None) -> None:
        if self.closed:
            return
        if self.registry.remove(topic, listener) and self.connected:
            self._push_control(control.unsubscribe(topic))

    def dispatch(self, event: Event) -> bool:
        """Encode and queue ``event``; never blocks (B13)."""
        if self.closed:
            raise TargetClosedError("target is closed")
        check_user_event(event)
        frame = encode_envelope(event.detail, self.max_frame_bytes)
        if self.connected:
            if self._queued_bytes and self._queued_bytes + len(frame) > self.max_outgoing_bytes:
                raise BackpressureError(
                    f"{self._queued_bytes} bytes queued (max_outgoing_bytes="
                    f"{self.max_outgoing_bytes}); await target.drain()"
                )
        elif self._queued_data >= self.outbox_limit:
            raise BackpressureError(
                f"offline outbox is full ({self.outbox_limit} events); await target.drain()"
            )
        self._push(frame, True)
        self.stats.sent_events += 1
        return True

    def new_ping(self) -> str | None:
        """Queue a ``__ping``; returns its nonce, or None while offline (B4)."""
        if not self.connected:
            return None
        nonce = str(next(self._ping_ids))
        self._pending_pings.add(nonce)
        self._push_control(control.ping(nonce))
        return nonce

    def pending_ping(self, nonce: str) -> bool:
        return nonce in self._pending_pings

    # -- queue state ---------------------------------------------------------

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def queued_events(self) -> int:
        return self._queued_data

    def drained(self) -> bool:
        """True when a publisher waiting in ``drain()`` may go on (low-water mark)."""
        return self._queued_bytes <= self._low_water and self._queued_data <= self.outbox_limit // 2

    def has_output(self) -> bool:
        return self.connected and bool(self._queue)

    def take_outgoing(self, max_bytes: int | None = None) -> list[bytes]:
        """Remove and return queued frames (all, or about ``max_bytes`` worth)."""
        if not self.connected:
            return []
        queue = self._queue
        frames: list[bytes] = []
        taken_bytes = 0
        taken_data = 0
        while queue:
            frame, is_data = queue[0]
            if max_bytes is not None and frames and taken_bytes + len(frame) > max_bytes:
                break
            queue.popleft()
            frames.append(frame)
            taken_bytes += len(frame)
            taken_data += is_data
        self._queued_bytes -= taken_bytes
        self._queued_data -= taken_data
        return frames

    # -- link life cycle -------------------------------------------------------

    def connection_made(self) -> None:
        """A link is up: hello, resubscribe every live topic, then the outbox (B7)."""
        if self.closed:
            return
        outbox = [item for item in self._queue if item[1]]
        self._queue.clear()
        self._queued_bytes = self._queued_data = 0
        self._pending_pings.clear()
        self.connected = True
        if self._send_hello:
            self._push_control(control.hello())
        for topic in self.registry.topics():
            self._push_control(control.subscribe(topic))
        for frame, _ in outbox:
            self._push(frame, True)

    def connection_lost(self) -> None:
        """The link died: keep unsent data as the outbox, drop control frames."""
        self.connected = False
        self.spoke_id = None
        self._pending_pings.clear()
        kept = [item for item in self._queue if item[1]]
        self._queue = deque(kept)
        self._queued_bytes = sum(len(frame) for frame, _ in kept)
        self._queued_data = len(kept)

    def close(self) -> None:
        self.closed = True
        self.connected = False
        self._queue.clear()
        self._queued_bytes = self._queued_data = 0
        self._pending_pings.clear()
        self.registry.clear()
        self.registry.cancel_pending()

    # -- receiving --------------------------------------------------------------

    def receive(self, message: bytes | str) -> None:
        """Handle one received message (one envelope)."""
        if self.closed:
            return
        try:
            envelope = decode_envelope(message)
        except DecodeError:
            self.stats.invalid_frames += 1
            return
        if envelope.type[:2] == CONTROL_PREFIX:
            self._receive_control(envelope)
            return
        self.stats.received_events += 1
        self.registry.dispatch(Event.from_envelope(envelope))

    def _receive_control(self, envelope: EventEnvelope) -> None:
        kind = envelope.type
        if kind == control.PONG:
            if envelope.id in self._pending_pings:
                self._pending_pings.discard(envelope.id)
                self.on_pong(envelope.id)
        elif kind == control.PING:
            if self.connected:
                self._push_control(control.pong(envelope.id))
        elif kind == control.WELCOME:
            self.spoke_id = control.welcome_spoke_id(envelope)
        elif kind == control.ERROR:
            self.stats.hub_errors += 1
            self.on_hub_error(envelope)
        else:
            self.stats.unknown_control += 1  # C2: forward compatibility

    # -- internals ---------------------------------------------------------------

    def _push_control(self, envelope: EventEnvelope) -> None:
        frame = encode_envelope(envelope, self.max_frame_bytes)
        self._push(frame, False)

    def _push(self, frame: bytes, is_data: bool) -> None:
        was_empty = not self._queue
        self._queue.append((frame, is_data))
        self._queued_bytes += len(frame)
        self._queued_data += is_data
        if was_empty and self.connected:
            self.on_output()


def _noop() -> None:
    return None


def _noop_str(_: str) -> None:
    return None


def _noop_envelope(_: EventEnvelope) -> None:
    return None
