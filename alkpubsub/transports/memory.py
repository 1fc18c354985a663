"""The in-process target: synchronous delivery, the same payload semantics as
the network transports.

By default every dispatched envelope goes through the core codec
(``encode_envelope`` then ``decode_envelope``), exactly as it would on its way
through a hub: listeners receive JSON values (a ``datetime`` becomes an ISO
string, a set or tuple a list, a pydantic model a dict, NaN ``None``, integer
keys strings) and a payload that cannot cross a network is refused with the
same error (``InvalidEnvelopeError``, ``FrameTooLargeError`` above
``max_frame_bytes``). Code written on the embedded default therefore behaves
the same when only the URL changes. ``raw=True`` passes envelopes by reference
instead: faster, but in-process only.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..core.codec import DEFAULT_MAX_FRAME_BYTES, decode_envelope, encode_envelope
from ..core.envelope import Event, check_user_event, validate_topic
from ..core.errors import TargetClosedError
from ..core.listeners import Listener, ListenerErrorHandler, ListenerRegistry
from ..target import BaseEventTarget

__all__ = ["MemoryEventTarget"]


class MemoryEventTarget(BaseEventTarget):
    """Listeners run inside ``dispatch_event``.

    ``raw=False`` (default): payloads are normalised to JSON values and checked
    against ``max_frame_bytes`` like on every network transport (E6).
    ``raw=True``: envelopes are passed by reference, nothing is encoded, and
    any Python object is accepted as a payload.
    """

    transport_name = "memory"
    url_schemes: ClassVar[tuple[str, ...]] = ("memory",)

    def __init__(
        self,
        *,
        raw: bool = False,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        on_listener_error: ListenerErrorHandler | None = None,
    ) -> None:
        super().__init__()
        if max_frame_bytes <= 0:
            raise ValueError("max_frame_bytes must be positive")
        self.raw = raw
        self.max_frame_bytes = max_frame_bytes
        self._registry = ListenerRegistry(
            on_listener_error=on_listener_error, schedule=self._scheduler
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryEventTarget:
        """``memory://``: a fresh in-process bus (the URL carries nothing else)."""
        return cls(**options)

    @property
    def listener_errors(self) -> int:
        return self._registry.listener_errors

    def add_event_listener(self, topic: str, listener: Listener | None) -> None:
        if self._closed or listener is None:
            return
        self._registry.add(validate_topic(topic), listener)

    def remove_event_listener(self, topic: str, listener: Listener | None) -> None:
        if not self._closed:
            self._registry.remove(topic, listener)

    def listener_count(self, topic: str) -> int:
        return self._registry.count(topic)

    def dispatch_event(self, event: Event) -> bool:
        if self._closed:
            raise TargetClosedError("target is closed")
        event = check_user_event(event)
        if not self.raw:
            # Encoded even when nobody listens, so that refusals do not depend
            # on who listens (as on a hub); decoded only for listeners.
            frame = encode_envelope(event.detail, self.max_frame_bytes)
            if self._registry.count(event.type):
                event = Event.from_envelope(decode_envelope(frame))
        self._registry.dispatch(event)
        return True

    async def flush(self, timeout: float | None = None) -> None:
        return None

    async def drain(self) -> None:
        return None

    async def aclose(self) -> None:
        if self._mark_closed():
            self._registry.clear()
